//! The model options `image` and `video` share, and the model they build.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use gstsam2refiner::device::{check_dtype, select_device};
use gstsam2refiner::model::refiner::{RefineMode, Refiner};
use gstsam2refiner::model::weights::build_model;
use gstsam2refiner::model::{BuildMode, Sam2Base, Sam2Config, nano};

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Official Hydra YAML, or a preset: sam2.1_nano (ours, weights built in), sam2.1_hiera_t,
    /// sam2.1_hiera_s, ...
    #[arg(long, default_value = nano::PRESET)]
    pub config: String,
    /// Official `.pt` checkpoint or `.safetensors` with the same keys (default: the built-in
    /// weights of sam2.1_nano, the only config that has them).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute precision: f32 (the parity reference), f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// SAM2Refiner modules (a .safetensors refiner file) trained for these weights: masks come
    /// out refined (see models/refiner). A file trained for other weights is refused.
    #[arg(long, value_name = "WEIGHTS")]
    pub refiner: Option<PathBuf>,
    /// Where the refiner looks: quadrants (the four quadrants of the frame: finest, five encoder
    /// passes) or roi (one window on the object: two passes), or off. Default: quadrants for
    /// `image`, roi for `video`.
    #[arg(long, value_name = "MODE")]
    pub refine_mode: Option<RefineMode>,
}

/// A model ready to run, with the config it was built from.
pub struct LoadedModel {
    pub config: Sam2Config,
    pub model: Sam2Base,
    pub device: Device,
    /// The refiner, when `--refiner` was given.
    pub refiner: Option<Refiner>,
}

impl ModelArgs {
    /// Checks the device and precision, reads the config (with the predictor's overrides for
    /// `mode`) and builds the model from its weights.
    pub fn load(&self, mode: BuildMode) -> Result<LoadedModel> {
        let device = select_device(&self.device)?;
        let dtype = crate::parse_dtype(&self.dtype)?;
        check_dtype(&device, dtype)?;
        let mut config = Sam2Config::load(&self.config)?;
        config.apply_build_overrides(mode);
        let weights = nano::weights_for(&self.config, self.weights.as_deref())?;
        let refiner = match &self.refiner {
            Some(path) => Some(Refiner::load_for_base(
                path,
                &self.config,
                &weights,
                dtype,
                &device,
            )?),
            None => None,
        };
        let model = build_model(&config, weights, dtype, &device)?;
        Ok(LoadedModel {
            config,
            model,
            device,
            refiner,
        })
    }
}
