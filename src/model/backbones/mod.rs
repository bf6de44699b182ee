//! The image encoder (`sam2/modeling/backbones`).

pub mod hieradet;
pub mod image_encoder;
