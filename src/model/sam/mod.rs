//! The SAM heads (`sam2/modeling/sam`): prompt encoder, mask decoder and their transformer.

pub mod mask_decoder;
pub mod prompt_encoder;
pub mod transformer;
