//! SAM 2 configuration, read from the official Hydra YAML files.
//!
//! The structs nest like the YAML's `model:` subtree (which nests like the official module tree),
//! and each field is a constructor argument of the official class, with the official default where
//! a YAML may omit it. Every field is honoured: an unknown field, a `_target_` naming a class we do
//! not implement, or a value we do not support is an error that names it; nothing is silently
//! ignored. The eight official configs and our nano are built in as presets.
//!
//! Here the structs and what derives from them; `presets` holds the built-in configs, `yaml` what
//! reading the official files needs beyond serde, `defaults` the official defaults and `validate`
//! the official constructors' asserts.

mod defaults;
mod presets;
mod validate;
mod yaml;

use std::path::Path;

use serde::Deserialize;
use serde_norway::Value;

use crate::error::{Error, Result};
use defaults as d;
use presets::find_preset;
pub use presets::{is_preset, preset_names};
use yaml::{float_or_string, resolve_interpolations};

/// `SAM2Base` (and `SAM2VideoPredictor`) constructor arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sam2Config {
    #[serde(rename = "_target_", default = "d::sam2_base")]
    pub target: String,
    pub image_encoder: ImageEncoderConfig,
    pub memory_attention: MemoryAttentionConfig,
    pub memory_encoder: MemoryEncoderConfig,
    #[serde(default = "d::num_maskmem")]
    pub num_maskmem: usize,
    #[serde(default = "d::image_size")]
    pub image_size: usize,
    #[serde(default = "d::backbone_stride")]
    pub backbone_stride: usize,
    #[serde(default = "d::one")]
    pub sigmoid_scale_for_mem_enc: f64,
    #[serde(default)]
    pub sigmoid_bias_for_mem_enc: f64,
    #[serde(default)]
    pub binarize_mask_from_pts_for_mem_enc: bool,
    #[serde(default)]
    pub use_mask_input_as_output_without_sam: bool,
    #[serde(default = "d::minus_one")]
    pub max_cond_frames_in_attn: i64,
    #[serde(default)]
    pub directly_add_no_mem_embed: bool,
    #[serde(default)]
    pub use_high_res_features_in_sam: bool,
    #[serde(default)]
    pub multimask_output_in_sam: bool,
    #[serde(default = "d::one_usize")]
    pub multimask_min_pt_num: usize,
    #[serde(default = "d::one_usize")]
    pub multimask_max_pt_num: usize,
    #[serde(default)]
    pub multimask_output_for_tracking: bool,
    #[serde(default)]
    pub use_multimask_token_for_obj_ptr: bool,
    #[serde(default)]
    pub iou_prediction_use_sigmoid: bool,
    #[serde(default = "d::one_usize")]
    pub memory_temporal_stride_for_eval: usize,
    #[serde(default)]
    pub non_overlap_masks_for_mem_enc: bool,
    #[serde(default)]
    pub use_obj_ptrs_in_encoder: bool,
    #[serde(default = "d::max_obj_ptrs")]
    pub max_obj_ptrs_in_encoder: usize,
    #[serde(default = "d::yes")]
    pub add_tpos_enc_to_obj_ptrs: bool,
    #[serde(default)]
    pub proj_tpos_enc_in_obj_ptrs: bool,
    #[serde(default)]
    pub use_signed_tpos_enc_to_obj_ptrs: bool,
    #[serde(default)]
    pub only_obj_ptrs_in_the_past_for_eval: bool,
    #[serde(default)]
    pub pred_obj_scores: bool,
    #[serde(default)]
    pub pred_obj_scores_mlp: bool,
    #[serde(default)]
    pub fixed_no_obj_ptr: bool,
    #[serde(default)]
    pub soft_no_obj_ptr: bool,
    #[serde(default)]
    pub use_mlp_for_obj_ptr_proj: bool,
    #[serde(default)]
    pub no_obj_embed_spatial: bool,
    #[serde(default)]
    pub sam_mask_decoder_extra_args: Option<MaskDecoderExtraArgs>,
    /// Accepted for compatibility; a torch.compile switch with no meaning here.
    #[serde(default)]
    pub compile_image_encoder: bool,
    // `SAM2VideoPredictor` arguments (the video predictor's config is `SAM2Base`'s plus these).
    // They are `None` when the YAML does not set them, so the tracker's own defaults apply.
    /// Fill holes of up to this many pixels in the low-res masks of tracked frames (0: off).
    #[serde(default)]
    pub fill_hole_area: Option<usize>,
    /// Keep only the highest-scoring object at each pixel of the output masks.
    #[serde(default)]
    pub non_overlap_masks: Option<bool>,
    /// Forget the plain-tracking memories around a prompted frame.
    #[serde(default)]
    pub clear_non_cond_mem_around_input: Option<bool>,
    /// Make every corrected frame a conditioning frame.
    #[serde(default)]
    pub add_all_frames_to_correct_as_cond: Option<bool>,
}

/// The mask decoder arguments `build_sam2` passes through `sam_mask_decoder_extra_args`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskDecoderExtraArgs {
    #[serde(default)]
    pub dynamic_multimask_via_stability: bool,
    #[serde(default = "d::stability_delta")]
    pub dynamic_multimask_stability_delta: f64,
    #[serde(default = "d::stability_thresh")]
    pub dynamic_multimask_stability_thresh: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEncoderConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub trunk: HieraConfig,
    pub neck: FpnNeckConfig,
    #[serde(default)]
    pub scalp: usize,
}

/// `Hiera` (hieradet) arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HieraConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    #[serde(default = "d::embed_dim")]
    pub embed_dim: usize,
    #[serde(default = "d::one_usize")]
    pub num_heads: usize,
    /// Stochastic depth: training only.
    #[serde(default)]
    pub drop_path_rate: f64,
    #[serde(default = "d::q_pool")]
    pub q_pool: usize,
    #[serde(default = "d::q_stride")]
    pub q_stride: [usize; 2],
    #[serde(default = "d::stages")]
    pub stages: Vec<usize>,
    #[serde(default = "d::two")]
    pub dim_mul: f64,
    #[serde(default = "d::two")]
    pub head_mul: f64,
    #[serde(default = "d::bkg_size")]
    pub window_pos_embed_bkg_spatial_size: [usize; 2],
    #[serde(default = "d::window_spec")]
    pub window_spec: Vec<usize>,
    #[serde(default = "d::global_att_blocks")]
    pub global_att_blocks: Option<Vec<usize>>,
    /// A separate Hiera checkpoint; only `null` is supported (the SAM 2 checkpoint holds the trunk).
    #[serde(default)]
    pub weights_path: Option<String>,
    #[serde(default = "d::yes")]
    pub return_interm_layers: bool,
}

/// `FpnNeck` arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FpnNeckConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub position_encoding: PositionEmbeddingSineConfig,
    pub d_model: usize,
    pub backbone_channel_list: Vec<usize>,
    #[serde(default = "d::one_usize")]
    pub kernel_size: usize,
    #[serde(default = "d::one_usize")]
    pub stride: usize,
    #[serde(default)]
    pub padding: usize,
    #[serde(default = "d::bilinear")]
    pub fpn_interp_model: String,
    #[serde(default = "d::sum")]
    pub fuse_type: String,
    #[serde(default)]
    pub fpn_top_down_levels: Option<Vec<usize>>,
}

/// `PositionEmbeddingSine` arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionEmbeddingSineConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub num_pos_feats: usize,
    #[serde(default = "d::temperature")]
    pub temperature: f64,
    #[serde(default = "d::yes")]
    pub normalize: bool,
    #[serde(default)]
    pub scale: Option<f64>,
    /// Cache warm-up switches of the official class; they change no value.
    #[serde(default = "d::yes")]
    pub warmup_cache: bool,
    #[serde(default = "d::image_size_1024")]
    pub image_size: usize,
    #[serde(default = "d::strides")]
    pub strides: Vec<usize>,
}

/// `MemoryAttention` arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryAttentionConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub d_model: usize,
    pub pos_enc_at_input: bool,
    pub layer: MemoryAttentionLayerConfig,
    pub num_layers: usize,
    #[serde(default = "d::yes")]
    pub batch_first: bool,
}

/// `MemoryAttentionLayer` arguments (all required by the official signature).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryAttentionLayerConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub activation: String,
    pub cross_attention: RoPEAttentionConfig,
    pub d_model: usize,
    pub dim_feedforward: usize,
    /// Training only.
    pub dropout: f64,
    pub pos_enc_at_attn: bool,
    pub pos_enc_at_cross_attn_keys: bool,
    pub pos_enc_at_cross_attn_queries: bool,
    pub self_attention: RoPEAttentionConfig,
}

/// `RoPEAttention` arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoPEAttentionConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub embedding_dim: usize,
    pub num_heads: usize,
    #[serde(default = "d::one_usize")]
    pub downsample_rate: usize,
    /// Training only.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub kv_in_dim: Option<usize>,
    #[serde(default = "d::rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_k_repeat: bool,
    #[serde(default = "d::feat_sizes")]
    pub feat_sizes: [usize; 2],
}

/// `MemoryEncoder` arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryEncoderConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub out_dim: usize,
    pub mask_downsampler: MaskDownSamplerConfig,
    pub fuser: FuserConfig,
    pub position_encoding: PositionEmbeddingSineConfig,
    #[serde(default = "d::dim_256")]
    pub in_dim: usize,
}

/// `MaskDownSampler` arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskDownSamplerConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    #[serde(default = "d::dim_256")]
    pub embed_dim: usize,
    #[serde(default = "d::four")]
    pub kernel_size: usize,
    #[serde(default = "d::four")]
    pub stride: usize,
    #[serde(default)]
    pub padding: usize,
    #[serde(default = "d::sixteen")]
    pub total_stride: usize,
}

/// `Fuser` arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuserConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub layer: CxBlockConfig,
    pub num_layers: usize,
    #[serde(default)]
    pub dim: Option<usize>,
    #[serde(default)]
    pub input_projection: bool,
}

/// `CXBlock` arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CxBlockConfig {
    #[serde(rename = "_target_")]
    pub target: Option<String>,
    pub dim: usize,
    #[serde(default = "d::seven")]
    pub kernel_size: usize,
    #[serde(default = "d::three")]
    pub padding: usize,
    /// Training only.
    #[serde(default)]
    pub drop_path: f64,
    /// Only its sign matters here: > 0 means the block has a `gamma` parameter.
    #[serde(default = "d::layer_scale", deserialize_with = "float_or_string")]
    pub layer_scale_init_value: f64,
    #[serde(default = "d::yes")]
    pub use_dwconv: bool,
}

/// Which official builder's overrides to apply on top of a YAML (`build_sam.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    /// `build_sam2(apply_postprocessing=True)`: dynamic multimask via stability.
    Image,
    /// `build_sam2_video_predictor(apply_postprocessing=True)`: the above, plus masks from clicks
    /// binarised for the memory encoder and holes of up to 8 pixels filled (unless the YAML sets
    /// `fill_hole_area` itself).
    Video,
}

impl Sam2Config {
    /// A built-in official config by name (`sam2.1_hiera_t`, `sam2.1_hiera_tiny`,
    /// `configs/sam2.1/sam2.1_hiera_t.yaml`, `facebook/sam2.1-hiera-tiny`, ...).
    pub fn preset(name: &str) -> Result<Self> {
        let (canonical, text) = find_preset(name).ok_or_else(|| {
            Error::config(
                name,
                format!(
                    "no such file, and not a preset (presets: {})",
                    preset_names().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        Self::from_yaml_str(text, canonical)
    }

    /// A YAML file path if it exists, else a preset name.
    pub fn load(path_or_preset: &str) -> Result<Self> {
        let path = Path::new(path_or_preset);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            Self::from_yaml_str(&text, path_or_preset)
        } else {
            Self::preset(path_or_preset)
        }
    }

    /// Parses an official Hydra config (`model:` at the root, `${a.b}` interpolations resolved
    /// against the document) and validates it. `origin` names the source in errors.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self> {
        let mut root: Value = serde_norway::from_str(text)
            .map_err(|e| Error::config(origin, format!("invalid YAML: {e}")))?;
        resolve_interpolations(&mut root, origin)?;
        let model = root
            .get("model")
            .cloned()
            .ok_or_else(|| Error::config(origin, "no `model:` section at the root"))?;
        let config: Sam2Config = serde_path_to_error::deserialize(model).map_err(|e| {
            let path = e.path().to_string();
            Error::config(origin, format!("model.{path}: {}", e.into_inner()))
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// What the official builders add on top of any YAML (`build_sam.py`, `apply_postprocessing`).
    pub fn apply_build_overrides(&mut self, mode: BuildMode) {
        self.sam_mask_decoder_extra_args = Some(MaskDecoderExtraArgs {
            dynamic_multimask_via_stability: true,
            dynamic_multimask_stability_delta: 0.05,
            dynamic_multimask_stability_thresh: 0.98,
        });
        if mode == BuildMode::Video {
            self.binarize_mask_from_pts_for_mem_enc = true;
            // Unlike the builder's `++` override, a hole-filling area the YAML sets wins: the
            // official CPU build cannot fill holes at all, and a config may want it off.
            self.fill_hole_area.get_or_insert(8);
        }
    }

    /// The width of image features and prompt tokens (`hidden_dim` officially).
    pub fn hidden_dim(&self) -> usize {
        self.image_encoder.neck.d_model
    }

    /// The width of memory features (`mem_dim` officially): the memory encoder's output.
    pub fn mem_dim(&self) -> usize {
        self.memory_encoder.out_dim
    }

    /// Side of the square image embedding (`sam_image_embedding_size`).
    pub fn image_embedding_size(&self) -> usize {
        self.image_size / self.backbone_stride
    }

    /// Number of feature levels the SAM heads read (3 with the high-res skip features).
    pub fn num_feature_levels(&self) -> usize {
        if self.use_high_res_features_in_sam {
            3
        } else {
            1
        }
    }

    pub fn mask_decoder_extra(&self) -> MaskDecoderExtraArgs {
        self.sam_mask_decoder_extra_args
            .clone()
            .unwrap_or(MaskDecoderExtraArgs {
                dynamic_multimask_via_stability: false,
                dynamic_multimask_stability_delta: d::stability_delta(),
                dynamic_multimask_stability_thresh: d::stability_thresh(),
            })
    }
}

impl HieraConfig {
    /// Width and heads of each stage (`dim_mul`/`head_mul` applied at each stage change).
    pub fn stage_dims_and_heads(&self) -> (Vec<usize>, Vec<usize>) {
        let mut dims = vec![self.embed_dim];
        let mut heads = vec![self.num_heads];
        for _ in 1..self.stages.len() {
            dims.push((*dims.last().unwrap() as f64 * self.dim_mul) as usize);
            heads.push((*heads.last().unwrap() as f64 * self.head_mul) as usize);
        }
        (dims, heads)
    }

    /// Widths of the trunk outputs, lowest resolution first (the neck's `backbone_channel_list`).
    pub fn channel_list(&self) -> Vec<usize> {
        let (dims, _) = self.stage_dims_and_heads();
        if self.return_interm_layers {
            dims.into_iter().rev().collect()
        } else {
            vec![*dims.last().unwrap()]
        }
    }

    /// Strides of the trunk outputs, highest resolution first.
    pub fn output_strides(&self) -> Vec<usize> {
        let mut stride = 4;
        let mut strides = vec![stride];
        for stage in 1..self.stages.len() {
            if stage <= self.q_pool {
                stride *= self.q_stride[0];
            }
            strides.push(stride);
        }
        if self.return_interm_layers {
            strides
        } else {
            vec![stride]
        }
    }
}

impl FpnNeckConfig {
    pub fn top_down_levels(&self) -> Vec<usize> {
        match &self.fpn_top_down_levels {
            Some(levels) => levels.clone(),
            None => (0..self.backbone_channel_list.len()).collect(),
        }
    }
}

impl MaskDownSamplerConfig {
    /// `log(total_stride) / log(stride)`, when that is a whole number.
    pub fn num_layers(&self) -> Option<usize> {
        let mut n = 0;
        let mut s = 1;
        while s < self.total_stride {
            s *= self.stride;
            n += 1;
        }
        (s == self.total_stride).then_some(n)
    }
}

#[cfg(test)]
mod tests;
