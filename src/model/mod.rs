//! SAM 2 in candle: one struct per official module, built with `vb.pp("<official name>")` so
//! that checkpoint keys map one to one. Pure tensors in, tensors out: no GStreamer here.
//!
//! Module tree (official names): `image_encoder.{trunk, neck}`, `sam_prompt_encoder`,
//! `sam_mask_decoder`, `memory_attention`, `memory_encoder`, and the `SAM2Base` parameters.

pub mod backbones;
pub mod config;
pub mod fill_holes;
pub mod image_predictor;
mod kernels;
pub mod memory_attention;
pub mod memory_encoder;
pub mod nano;
pub mod nn;
pub mod position_encoding;
pub mod refiner;
pub mod resample;
pub mod sam;
pub mod sam2_base;
pub mod transforms;
pub mod weights;

pub use config::{BuildMode, Sam2Config};
pub use image_predictor::{ImagePrediction, ImagePredictor, ImagePrompt};
pub use sam::prompt_encoder::PointInputs;
pub use sam2_base::{
    FrameFeatures, MemoryRef, ObjectMemory, PointerRef, Sam2Base, TrackStepInput, TrackStepOutput,
};
pub use weights::{WeightFile, load_model};
