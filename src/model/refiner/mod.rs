//! The SAM2Refiner modules (arXiv 2502.09660): localization augment, prompt retargeting and
//! mask refinement, on top of a frozen SAM 2. The design is ours, from the paper's description
//! (its method section is not public); `models/refiner/refiner.py` is the PyTorch reference that
//! trains them, and these modules compute the same function from the same file. Every module
//! enters SAM 2 as a residual that starts at zero: untrained, the output is SAM 2's.
//!
//! A refiner file is safetensors with the modules' parameters under their PyTorch names and
//! metadata naming the base it was trained on (config, and a hash of the base's weights): it
//! refuses to load on any other base.

pub mod clicks;
pub mod crops;
pub mod guided_filter;
mod localization_augment;
mod mask_refinement;
mod prompt_retargeting;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use clicks::Click;
pub use crops::{LocalFeatures, crop_bounds, local_features, quadrant_origins, roi_origin};
pub use localization_augment::LocalizationAugment;
pub use mask_refinement::{MaskRefinement, RefinedMasks};
pub use prompt_retargeting::PromptRetargeting;

use crate::error::{Error, Result};
use crate::model::weights::{WeightFile, build_strict, parse_safetensors};

/// The `format` metadata of a refiner file.
pub const REFINER_FORMAT: &str = "sam2refiner-refiner/1";

/// Where localization augment looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefineMode {
    /// Plain SAM 2, bit for bit.
    #[default]
    Off,
    /// The four quadrants of the frame: five encoder passes per frame (images, offline video).
    Quadrants,
    /// One half-size window on the object's box: two encoder passes per frame (live video).
    Roi,
}

impl RefineMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Quadrants => "quadrants",
            Self::Roi => "roi",
        }
    }
}

impl fmt::Display for RefineMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefineMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "quadrants" => Ok(Self::Quadrants),
            "roi" => Ok(Self::Roi),
            other => Err(format!(
                "unknown refine mode {other:?} (expected off, quadrants or roi)"
            )),
        }
    }
}

/// What the memory encoder of a refined tracking step is fed. The default is SAM 2's own mask,
/// chosen by measurement: on the held-out clips the nano refiner tracks at mIoU 29.8 and mBIoU
/// 24.6 with it, 24.3 and 19.7 when the memory is fed the refined mask (plain SAM 2: 28.8 and
/// 19.4; `models/refiner/MODEL_CARD.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryMask {
    /// The refined mask: the memory remembers the detail the output shows.
    Refined,
    /// SAM 2's own mask, as without the refiner: the memory path stays exactly SAM 2's.
    #[default]
    Sam2,
}

impl MemoryMask {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refined => "refined",
            Self::Sam2 => "sam2",
        }
    }
}

impl fmt::Display for MemoryMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemoryMask {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "refined" => Ok(Self::Refined),
            "sam2" => Ok(Self::Sam2),
            other => Err(format!(
                "unknown memory mask {other:?} (expected refined or sam2)"
            )),
        }
    }
}

/// What a refined tracking step needs beyond SAM 2's inputs.
#[derive(Debug, Clone, Copy)]
pub struct RefineStep<'a> {
    pub refiner: &'a Refiner,
    /// Each object's local features (one per batch row); None when the refiner reads no crops
    /// (`Refiner::reads_crops`).
    pub locals: Option<&'a [LocalFeatures]>,
    /// The frame's normalised input [1, 3, S, S].
    pub image: &'a Tensor,
    pub memory_mask: MemoryMask,
    /// The prompt's clicks (input pixels), pinned in the guided filter's input as the image path
    /// pins them; empty on tracked frames, which have no clicks.
    pub pins: &'a [Click],
}

/// The base model a refiner file was trained on, as its metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseIdentity {
    /// The base's config name, for messages.
    pub config: String,
    /// `WeightFile::content_hash` of the base's weights.
    pub weights_hash: String,
}

/// The three modules, loaded from a refiner file.
#[derive(Debug)]
pub struct Refiner {
    pub localization_augment: LocalizationAugment,
    pub prompt_retargeting: PromptRetargeting,
    pub mask_refinement: MaskRefinement,
    /// The base the file was trained on.
    pub base: BaseIdentity,
}

impl Refiner {
    /// Reads a refiner file and builds its modules for the base `base`; a file trained on
    /// another base, or not a refiner file, is an error that says so.
    pub fn load(path: &Path, base: &BaseIdentity, dtype: DType, device: &Device) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let metadata = read_metadata(&bytes).map_err(|reason| Error::weights(path, reason))?;
        let field = |key: &str| -> Result<String> {
            metadata.get(key).cloned().ok_or_else(|| {
                Error::weights(
                    path,
                    format!("not a refiner file: its metadata has no {key:?}"),
                )
            })
        };
        let format = field("format")?;
        if format != REFINER_FORMAT {
            return Err(Error::weights(
                path,
                format!(
                    "not a refiner file of this version (format {format:?}, expected {REFINER_FORMAT:?})"
                ),
            ));
        }
        let trained_on = BaseIdentity {
            config: field("base_config")?,
            weights_hash: field("base_weights_hash")?,
        };
        if trained_on.weights_hash != base.weights_hash {
            return Err(Error::weights(
                path,
                format!(
                    "this refiner was trained for the base model {} (weights {}), not for the \
                     loaded {} (weights {}): a refiner only works with the frozen model it was \
                     trained on; train one for this model with models/refiner/train.py",
                    trained_on.config,
                    short(&trained_on.weights_hash),
                    base.config,
                    short(&base.weights_hash),
                ),
            ));
        }
        let tensors = parse_safetensors(&bytes).map_err(|reason| Error::weights(path, reason))?;
        let file = WeightFile {
            path: path.to_owned(),
            tensors,
        };
        build_strict(file, dtype, device, |vb| Self::new(vb, trained_on.clone()))
    }

    /// Reads a refiner file for the base model built from `weights` (the config named `config`
    /// in messages): the weights are hashed to check the file was trained on them.
    pub fn load_for_base(
        path: &Path,
        config: &str,
        weights: &WeightFile,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let base = BaseIdentity {
            config: config.to_owned(),
            weights_hash: weights.content_hash()?,
        };
        Self::load(path, &base, dtype, device)
    }

    /// Weights for benchmarks, which cost what trained ones cost: with `every_module`, every
    /// parameter a small constant, so every module runs; without, zeros but the guided filter's
    /// gate at 1, so only the filter runs (the crops are not encoded).
    pub fn for_benchmarks(
        base: BaseIdentity,
        every_module: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let vb = if every_module {
            VarBuilder::from_backend(Box::new(Constant(1e-2)), dtype, device.clone())
        } else {
            VarBuilder::zeros(dtype, device)
        };
        let mut refiner = Self::new(vb, base)?;
        refiner.mask_refinement.guided_gate = 1.0;
        Ok(refiner)
    }

    /// Whether the crops' features are read: localization augment or the cascade of mask
    /// refinement is live (a refiner whose only open gate is the guided filter's needs no crops,
    /// and skips their encoder passes).
    pub fn reads_crops(&self) -> bool {
        !self.localization_augment.is_silent() || !self.mask_refinement.cascade_is_silent()
    }

    fn new(vb: VarBuilder, base: BaseIdentity) -> candle_core::Result<Self> {
        Ok(Self {
            localization_augment: LocalizationAugment::new(vb.pp("localization_augment"))?,
            prompt_retargeting: PromptRetargeting::new(256, vb.pp("prompt_retargeting"))?,
            mask_refinement: MaskRefinement::new(vb.pp("mask_refinement"))?,
            base,
        })
    }
}

/// Whether every element of `t` is zero: a gate or output layer that silences its module.
pub(crate) fn all_zero(t: &Tensor) -> candle_core::Result<bool> {
    t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()
        .map(|m| m == 0.0)
}

/// A weight source where every parameter is one constant: `Refiner::for_benchmarks`.
struct Constant(f64);

impl candle_nn::var_builder::SimpleBackend for Constant {
    fn get(
        &self,
        shape: candle_core::Shape,
        _: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::full(self.0, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("constant weights need a shape ({name})")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// The `__metadata__` of a safetensors file.
fn read_metadata(bytes: &[u8]) -> std::result::Result<HashMap<String, String>, String> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    Ok(metadata.metadata().clone().unwrap_or_default())
}
