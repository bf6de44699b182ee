//! The nano model: the SAM 2.1 architecture at 256 px with a small Hiera trunk, trained by us on
//! generated scenes (`models/nano`: config, training code, model card). Its config is the preset
//! [`PRESET`] and its weights are built into the library, so a new user needs no download.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::weights::WeightFile;

/// The preset name of the nano config (also accepted: `nano`).
pub const PRESET: &str = "sam2.1_nano";

/// The released weights (f16 safetensors, 19 MB), as committed in `models/nano`.
const WEIGHTS: &[u8] = include_bytes!("../../models/nano/sam2.1_nano.safetensors");

/// What the weights are called in messages, where a file would be named.
pub const BUILT_IN_WEIGHTS: &str = "<built-in sam2.1_nano weights>";

/// The nano model's built-in weights.
pub fn weights() -> Result<WeightFile> {
    WeightFile::from_safetensors_bytes(WEIGHTS, Path::new(BUILT_IN_WEIGHTS))
}

/// The weights a model is built from: the file if one is given, else the built-in ones of a
/// config that has them (only nano's). `config` is the name the user gave (a preset or a YAML).
pub fn weights_for(config: &str, file: Option<&Path>) -> Result<WeightFile> {
    match file {
        Some(path) => WeightFile::load(path),
        None if crate::model::config::is_preset(config, PRESET) => weights(),
        None => Err(Error::weights(
            config,
            format!(
                "no weights given: only the {PRESET} preset has weights built in; give an official \
                 .pt checkpoint or a .safetensors file for this config"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::model::Sam2Config;
    use crate::model::weights::build_model;

    #[test]
    fn the_built_in_weights_fit_the_nano_config_under_both_names() {
        for name in [PRESET, "nano"] {
            let config = Sam2Config::load(name).unwrap();
            assert_eq!(config.image_size, 256);
            let weights = weights_for(name, None).unwrap();
            assert_eq!(weights.path, Path::new(BUILT_IN_WEIGHTS));
            build_model(&config, weights, DType::F32, &Device::Cpu).unwrap();
        }
    }

    #[test]
    fn other_configs_need_a_weights_file() {
        let err = weights_for("sam2.1_hiera_t", None).unwrap_err().to_string();
        assert!(
            err.contains("sam2.1_hiera_t") && err.contains("no weights given"),
            "{err}"
        );
    }
}
