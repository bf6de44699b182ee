//! SAM 2 configuration, read from the official Hydra YAML files.
//!
//! The structs nest like the YAML's `model:` subtree (which nests like the official module tree),
//! and each field is a constructor argument of the official class, with the official default where
//! a YAML may omit it. Every field is honoured: an unknown field, a `_target_` naming a class we do
//! not implement, or a value we do not support is an error that names it; nothing is silently
//! ignored. The eight official configs are built in as presets.

use std::path::Path;

use serde::Deserialize;
use serde_norway::Value;

use crate::error::{Error, Result};

/// The official configs, verbatim from the `sam2` 1.1.0 package (Apache 2.0), and our nano.
const PRESETS: &[(&str, &str)] = &[
    (
        "sam2.1_hiera_t",
        include_str!("configs/sam2.1_hiera_t.yaml"),
    ),
    (
        "sam2.1_hiera_s",
        include_str!("configs/sam2.1_hiera_s.yaml"),
    ),
    (
        "sam2.1_hiera_b+",
        include_str!("configs/sam2.1_hiera_b+.yaml"),
    ),
    (
        "sam2.1_hiera_l",
        include_str!("configs/sam2.1_hiera_l.yaml"),
    ),
    ("sam2_hiera_t", include_str!("configs/sam2_hiera_t.yaml")),
    ("sam2_hiera_s", include_str!("configs/sam2_hiera_s.yaml")),
    ("sam2_hiera_b+", include_str!("configs/sam2_hiera_b+.yaml")),
    ("sam2_hiera_l", include_str!("configs/sam2_hiera_l.yaml")),
    // Ours: trained in `models/nano`, with its weights built in (see `model::nano`).
    (
        crate::model::nano::PRESET,
        include_str!("../../models/nano/config.yaml"),
    ),
];

/// Other spellings of the presets: the official checkpoint file stems and the Hugging Face ids.
const PRESET_ALIASES: &[(&str, &str)] = &[
    ("tiny", "t"),
    ("small", "s"),
    ("base_plus", "b+"),
    ("base-plus", "b+"),
    ("large", "l"),
];

/// The names `Sam2Config::preset` accepts (aliases aside).
pub fn preset_names() -> impl Iterator<Item = &'static str> {
    PRESETS.iter().map(|(name, _)| *name)
}

/// Whether `name` (as a user spells it) is the preset `preset`.
pub fn is_preset(name: &str, preset: &str) -> bool {
    !Path::new(name).is_file()
        && find_preset(name).is_some_and(|(canonical, _)| canonical == preset)
}

fn find_preset(name: &str) -> Option<(&'static str, &'static str)> {
    // Accept "configs/sam2.1/sam2.1_hiera_t.yaml" (the official Hydra name), "sam2.1_hiera_t.yaml",
    // "sam2.1_hiera_tiny" (the checkpoint stem) and "facebook/sam2.1-hiera-tiny" (the HF id).
    let stem = name.rsplit('/').next().unwrap_or(name);
    let stem = stem.strip_suffix(".yaml").unwrap_or(stem);
    let stem = stem.strip_suffix(".pt").unwrap_or(stem);
    let stem = stem.replace("-hiera-", "_hiera_");
    if stem == "nano" {
        return find_preset(crate::model::nano::PRESET);
    }
    let canonical = PRESET_ALIASES
        .iter()
        .find_map(|(alias, short)| {
            stem.strip_suffix(alias)
                .filter(|head| head.ends_with("_hiera_"))
                .map(|head| format!("{head}{short}"))
        })
        .unwrap_or(stem);
    PRESETS
        .iter()
        .find(|(preset, _)| *preset == canonical)
        .copied()
}

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

    /// The official constructors' asserts, and what this engine supports, checked up front so
    /// that a bad config fails with its field named instead of a shape error deep in a forward.
    fn validate(&self, origin: &str) -> Result<()> {
        let fail =
            |field: &str, reason: String| Err(Error::config(origin, format!("{field}: {reason}")));
        check_target(
            origin,
            "model",
            &self.target,
            &[
                "sam2.modeling.sam2_base.SAM2Base",
                "sam2.sam2_video_predictor.SAM2VideoPredictor",
                "sam2.sam2_video_predictor.SAM2VideoPredictorVOS",
            ],
        )?;
        let enc = &self.image_encoder;
        check_opt_target(
            origin,
            "model.image_encoder",
            &enc.target,
            "sam2.modeling.backbones.image_encoder.ImageEncoder",
        )?;
        let trunk = &enc.trunk;
        check_opt_target(
            origin,
            "model.image_encoder.trunk",
            &trunk.target,
            "sam2.modeling.backbones.hieradet.Hiera",
        )?;
        let neck = &enc.neck;
        check_opt_target(
            origin,
            "model.image_encoder.neck",
            &neck.target,
            "sam2.modeling.backbones.image_encoder.FpnNeck",
        )?;
        check_sine(
            origin,
            "model.image_encoder.neck.position_encoding",
            &neck.position_encoding,
        )?;
        let mem_att = &self.memory_attention;
        check_opt_target(
            origin,
            "model.memory_attention",
            &mem_att.target,
            "sam2.modeling.memory_attention.MemoryAttention",
        )?;
        check_opt_target(
            origin,
            "model.memory_attention.layer",
            &mem_att.layer.target,
            "sam2.modeling.memory_attention.MemoryAttentionLayer",
        )?;
        for (name, att) in [
            ("self_attention", &mem_att.layer.self_attention),
            ("cross_attention", &mem_att.layer.cross_attention),
        ] {
            let field = format!("model.memory_attention.layer.{name}");
            check_opt_target(
                origin,
                &field,
                &att.target,
                "sam2.modeling.sam.transformer.RoPEAttention",
            )?;
            let internal = att.embedding_dim / att.downsample_rate.max(1);
            if att.downsample_rate == 0
                || internal % att.num_heads.max(1) != 0
                || att.num_heads == 0
            {
                return fail(
                    &field,
                    format!(
                        "num_heads {} must divide embedding_dim / downsample_rate = {internal}",
                        att.num_heads
                    ),
                );
            }
            if (internal / att.num_heads) % 4 != 0 {
                return fail(
                    &field,
                    format!(
                        "the head width {} must be a multiple of 4 for the axial RoPE",
                        internal / att.num_heads
                    ),
                );
            }
            if att.embedding_dim != mem_att.layer.d_model {
                return fail(
                    &format!("{field}.embedding_dim"),
                    format!(
                        "{} differs from the layer's d_model {}",
                        att.embedding_dim, mem_att.layer.d_model
                    ),
                );
            }
        }
        let mem_enc = &self.memory_encoder;
        check_opt_target(
            origin,
            "model.memory_encoder",
            &mem_enc.target,
            "sam2.modeling.memory_encoder.MemoryEncoder",
        )?;
        check_opt_target(
            origin,
            "model.memory_encoder.mask_downsampler",
            &mem_enc.mask_downsampler.target,
            "sam2.modeling.memory_encoder.MaskDownSampler",
        )?;
        check_opt_target(
            origin,
            "model.memory_encoder.fuser",
            &mem_enc.fuser.target,
            "sam2.modeling.memory_encoder.Fuser",
        )?;
        check_opt_target(
            origin,
            "model.memory_encoder.fuser.layer",
            &mem_enc.fuser.layer.target,
            "sam2.modeling.memory_encoder.CXBlock",
        )?;
        check_sine(
            origin,
            "model.memory_encoder.position_encoding",
            &mem_enc.position_encoding,
        )?;

        // Hiera.
        if trunk.weights_path.is_some() {
            return fail("model.image_encoder.trunk.weights_path", "a separate trunk checkpoint is not supported (the SAM 2 checkpoint holds the trunk); set it to null".into());
        }
        let num_stages = trunk.stages.len();
        if num_stages == 0 || trunk.stages.contains(&0) {
            return fail(
                "model.image_encoder.trunk.stages",
                format!("{:?}: every stage needs a block", trunk.stages),
            );
        }
        if trunk.window_spec.len() != num_stages {
            return fail(
                "model.image_encoder.trunk.window_spec",
                format!(
                    "{} entries for {num_stages} stages",
                    trunk.window_spec.len()
                ),
            );
        }
        if trunk.q_pool > num_stages - 1 {
            return fail(
                "model.image_encoder.trunk.q_pool",
                format!(
                    "{} exceeds the {} stage transitions",
                    trunk.q_pool,
                    num_stages - 1
                ),
            );
        }
        if trunk.q_stride[0] != trunk.q_stride[1] || trunk.q_stride[0] == 0 {
            return fail(
                "model.image_encoder.trunk.q_stride",
                format!("{:?}: only square strides are supported", trunk.q_stride),
            );
        }
        if trunk.embed_dim == 0 || trunk.num_heads == 0 {
            return fail(
                "model.image_encoder.trunk",
                "embed_dim and num_heads must be positive".into(),
            );
        }
        let depth: usize = trunk.stages.iter().sum();
        if let Some(global) = &trunk.global_att_blocks
            && let Some(bad) = global.iter().find(|&&b| b >= depth)
        {
            return fail(
                "model.image_encoder.trunk.global_att_blocks",
                format!("block {bad} does not exist (the trunk has {depth} blocks)"),
            );
        }
        let (stage_dims, stage_heads) = trunk.stage_dims_and_heads();
        for (i, (dim, heads)) in stage_dims.iter().zip(&stage_heads).enumerate() {
            if *heads == 0 || dim % heads != 0 {
                return fail(
                    "model.image_encoder.trunk",
                    format!(
                        "stage {} has width {dim} not divisible by its {heads} heads",
                        i + 1
                    ),
                );
            }
        }
        let channel_list = trunk.channel_list();
        if channel_list != neck.backbone_channel_list {
            return fail(
                "model.image_encoder.neck.backbone_channel_list",
                format!(
                    "{:?} does not match the trunk's outputs {channel_list:?}",
                    neck.backbone_channel_list
                ),
            );
        }

        // Sizes: the stride-4 map tiles the 8x8 (window_spec[0]) window position embedding, and
        // every q-pool halves the map exactly so the FPN levels line up.
        let s = self.image_size;
        let pools = trunk.q_pool as u32;
        let q = trunk.q_stride[0];
        let divisor = 4 * q.pow(pools);
        if s == 0 || !s.is_multiple_of(divisor) {
            return fail(
                "model.image_size",
                format!(
                    "{s} must be a multiple of {divisor} (patch stride 4 times the q-pool strides)"
                ),
            );
        }
        if !(s / 4).is_multiple_of(trunk.window_spec[0]) {
            return fail(
                "model.image_size",
                format!(
                    "{s}: image_size / 4 must be a multiple of window_spec[0] = {} (Hiera tiles its window position embedding)",
                    trunk.window_spec[0]
                ),
            );
        }
        let level_strides = trunk.output_strides();
        if enc.scalp >= level_strides.len() {
            return fail(
                "model.image_encoder.scalp",
                format!(
                    "{} removes all {} feature levels",
                    enc.scalp,
                    level_strides.len()
                ),
            );
        }
        let kept = &level_strides[..level_strides.len() - enc.scalp];
        if *kept.last().unwrap() != self.backbone_stride {
            return fail(
                "model.backbone_stride",
                format!(
                    "{} but the image embedding has stride {}",
                    self.backbone_stride,
                    kept.last().unwrap()
                ),
            );
        }
        if neck.kernel_size.is_multiple_of(2)
            || neck.stride != 1
            || neck.padding != neck.kernel_size / 2
        {
            return fail(
                "model.image_encoder.neck",
                format!(
                    "kernel_size {}, stride {}, padding {}: only size-preserving lateral convs are supported",
                    neck.kernel_size, neck.stride, neck.padding
                ),
            );
        }
        if !["nearest", "bilinear"].contains(&neck.fpn_interp_model.as_str()) {
            return fail(
                "model.image_encoder.neck.fpn_interp_model",
                format!(
                    "{:?} is not supported (nearest, bilinear)",
                    neck.fpn_interp_model
                ),
            );
        }
        if !["sum", "avg"].contains(&neck.fuse_type.as_str()) {
            return fail(
                "model.image_encoder.neck.fuse_type",
                format!("{:?} is not one of sum, avg", neck.fuse_type),
            );
        }
        for level in neck.top_down_levels() {
            if level >= level_strides.len() {
                return fail(
                    "model.image_encoder.neck.fpn_top_down_levels",
                    format!("level {level} does not exist"),
                );
            }
            if level + 1 < level_strides.len()
                && level_strides[level + 1] != 2 * level_strides[level]
            {
                return fail(
                    "model.image_encoder.neck.fpn_top_down_levels",
                    format!(
                        "level {level} has stride {} but the level above has {}: the top-down path upsamples by 2",
                        level_strides[level],
                        level_strides[level + 1]
                    ),
                );
            }
        }
        if neck.position_encoding.num_pos_feats != neck.d_model {
            return fail(
                "model.image_encoder.neck.position_encoding.num_pos_feats",
                format!(
                    "{} differs from d_model {}",
                    neck.position_encoding.num_pos_feats, neck.d_model
                ),
            );
        }
        if self.use_high_res_features_in_sam && kept.len() < 3 {
            return fail(
                "model.use_high_res_features_in_sam",
                format!("needs 3 feature levels, the encoder keeps {}", kept.len()),
            );
        }
        if self.use_high_res_features_in_sam
            && (kept[kept.len() - 3] * 4 != self.backbone_stride
                || kept[kept.len() - 2] * 2 != self.backbone_stride)
        {
            return fail(
                "model.use_high_res_features_in_sam",
                format!(
                    "needs feature levels of strides {} and {}, the encoder has {kept:?}",
                    self.backbone_stride / 4,
                    self.backbone_stride / 2
                ),
            );
        }

        // Widths that must agree for the modules to connect.
        let c = self.hidden_dim();
        if !c.is_multiple_of(16) {
            return fail(
                "model.image_encoder.neck.d_model",
                format!("{c}: the mask decoder's 8 heads at half width need a multiple of 16"),
            );
        }
        if mem_att.d_model != c || mem_att.layer.d_model != c {
            return fail(
                "model.memory_attention.d_model",
                format!(
                    "{} (layer {}) must equal the image feature width {c}",
                    mem_att.d_model, mem_att.layer.d_model
                ),
            );
        }
        if !mem_att.batch_first {
            return fail(
                "model.memory_attention.batch_first",
                "only true is supported".into(),
            );
        }
        if !["relu", "gelu"].contains(&mem_att.layer.activation.as_str()) {
            return fail(
                "model.memory_attention.layer.activation",
                format!(
                    "{:?} is not supported (relu, gelu)",
                    mem_att.layer.activation
                ),
            );
        }
        let m = self.mem_dim();
        if mem_enc.in_dim != c {
            return fail(
                "model.memory_encoder.in_dim",
                format!("{} must equal the image feature width {c}", mem_enc.in_dim),
            );
        }
        let kv = mem_att
            .layer
            .cross_attention
            .kv_in_dim
            .unwrap_or(mem_att.layer.cross_attention.embedding_dim);
        if kv != m {
            return fail(
                "model.memory_attention.layer.cross_attention.kv_in_dim",
                format!("{kv} must equal the memory width {m}"),
            );
        }
        if mem_enc.position_encoding.num_pos_feats != m {
            return fail(
                "model.memory_encoder.position_encoding.num_pos_feats",
                format!(
                    "{} must equal the memory width {m}",
                    mem_enc.position_encoding.num_pos_feats
                ),
            );
        }
        let ds = &mem_enc.mask_downsampler;
        if ds.embed_dim != mem_enc.in_dim {
            return fail(
                "model.memory_encoder.mask_downsampler.embed_dim",
                format!("{} must equal in_dim {}", ds.embed_dim, mem_enc.in_dim),
            );
        }
        if ds.stride < 2 || ds.num_layers().is_none() {
            return fail(
                "model.memory_encoder.mask_downsampler",
                format!(
                    "total_stride {} must be a power of stride {}",
                    ds.total_stride, ds.stride
                ),
            );
        }
        if ds.total_stride != self.backbone_stride {
            return fail(
                "model.memory_encoder.mask_downsampler.total_stride",
                format!(
                    "{} must equal backbone_stride {}",
                    ds.total_stride, self.backbone_stride
                ),
            );
        }
        let fuser = &mem_enc.fuser;
        if fuser.layer.dim != mem_enc.in_dim {
            return fail(
                "model.memory_encoder.fuser.layer.dim",
                format!("{} must equal in_dim {}", fuser.layer.dim, mem_enc.in_dim),
            );
        }
        if fuser.input_projection && fuser.dim != Some(mem_enc.in_dim) {
            return fail(
                "model.memory_encoder.fuser.dim",
                format!(
                    "{:?} must equal in_dim {} with input_projection",
                    fuser.dim, mem_enc.in_dim
                ),
            );
        }
        if fuser.layer.kernel_size.is_multiple_of(2)
            || fuser.layer.padding != fuser.layer.kernel_size / 2
        {
            return fail(
                "model.memory_encoder.fuser.layer",
                format!(
                    "kernel_size {} with padding {}: only size-preserving convs are supported",
                    fuser.layer.kernel_size, fuser.layer.padding
                ),
            );
        }
        if m < c && !c.is_multiple_of(m) && self.use_obj_ptrs_in_encoder {
            return fail(
                "model.memory_encoder.out_dim",
                format!(
                    "{m} must divide the pointer width {c} (pointers are split into memory tokens)"
                ),
            );
        }
        if m > c && self.use_obj_ptrs_in_encoder {
            return fail(
                "model.memory_encoder.out_dim",
                format!("{m} wider than the pointer width {c} is not supported"),
            );
        }

        // Flag combinations the official constructor asserts.
        if self.fixed_no_obj_ptr && !(self.pred_obj_scores && self.use_obj_ptrs_in_encoder) {
            return fail(
                "model.fixed_no_obj_ptr",
                "needs pred_obj_scores and use_obj_ptrs_in_encoder".into(),
            );
        }
        if self.pred_obj_scores && !self.use_obj_ptrs_in_encoder {
            // The official `_forward_sam_heads` then reads a `no_obj_ptr` that was never created.
            return fail(
                "model.pred_obj_scores",
                "needs use_obj_ptrs_in_encoder (the official model fails without it)".into(),
            );
        }
        if !self.directly_add_no_mem_embed
            && self.num_maskmem > 0
            && self.mem_dim() != self.hidden_dim()
        {
            // Initial frames then attend to `no_mem_embed` as a memory token of width mem_dim.
            return fail(
                "model.directly_add_no_mem_embed",
                format!(
                    "false needs the memory width {} to equal the feature width {}",
                    self.mem_dim(),
                    self.hidden_dim()
                ),
            );
        }
        if self.proj_tpos_enc_in_obj_ptrs && !self.add_tpos_enc_to_obj_ptrs {
            return fail(
                "model.proj_tpos_enc_in_obj_ptrs",
                "needs add_tpos_enc_to_obj_ptrs".into(),
            );
        }
        if self.max_cond_frames_in_attn != -1 && self.max_cond_frames_in_attn < 2 {
            return fail(
                "model.max_cond_frames_in_attn",
                format!("{}: -1 (all) or at least 2", self.max_cond_frames_in_attn),
            );
        }
        if self.memory_temporal_stride_for_eval == 0 {
            return fail(
                "model.memory_temporal_stride_for_eval",
                "must be at least 1".into(),
            );
        }
        if self.use_obj_ptrs_in_encoder && self.max_obj_ptrs_in_encoder == 0 {
            return fail("model.max_obj_ptrs_in_encoder", "must be at least 1".into());
        }
        Ok(())
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

fn check_target(origin: &str, field: &str, target: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&target) {
        Ok(())
    } else {
        Err(Error::config(
            origin,
            format!(
                "{field}._target_: {target} is not supported (expected {})",
                allowed.join(" or ")
            ),
        ))
    }
}

fn check_opt_target(
    origin: &str,
    field: &str,
    target: &Option<String>,
    expected: &str,
) -> Result<()> {
    match target {
        Some(t) => check_target(origin, field, t, &[expected]),
        None => Ok(()),
    }
}

fn check_sine(origin: &str, field: &str, pe: &PositionEmbeddingSineConfig) -> Result<()> {
    check_opt_target(
        origin,
        field,
        &pe.target,
        "sam2.modeling.position_encoding.PositionEmbeddingSine",
    )?;
    if !pe.num_pos_feats.is_multiple_of(4) || pe.num_pos_feats == 0 {
        return Err(Error::config(
            origin,
            format!(
                "{field}.num_pos_feats: {} must be a positive multiple of 4",
                pe.num_pos_feats
            ),
        ));
    }
    if pe.scale.is_some() && !pe.normalize {
        return Err(Error::config(
            origin,
            format!("{field}.scale: normalize must be true if scale is passed"),
        ));
    }
    Ok(())
}

/// Resolves OmegaConf interpolations of the form `${a.b.c}` (absolute paths in the document) in
/// place. Resolver calls (`${times:...}`) are rejected where they appear in the model.
fn resolve_interpolations(root: &mut Value, origin: &str) -> Result<()> {
    fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(root, |node, key| node.get(key))
    }
    fn walk(node: &mut Value, root: &Value, origin: &str, depth: usize) -> Result<()> {
        match node {
            Value::String(s) if s.starts_with("${") && s.ends_with('}') => {
                let path = &s[2..s.len() - 1];
                if path.contains(':') || path.contains("${") || depth > 16 {
                    return Err(Error::config(
                        origin,
                        format!(
                            "interpolation {s:?} is not supported (only ${{a.b.c}} references)"
                        ),
                    ));
                }
                let mut value = lookup(root, path).cloned().ok_or_else(|| {
                    Error::config(origin, format!("interpolation {s:?} refers to nothing"))
                })?;
                walk(&mut value, root, origin, depth + 1)?;
                *node = value;
            }
            Value::Mapping(map) => {
                for (_, v) in map.iter_mut() {
                    walk(v, root, origin, depth)?;
                }
            }
            Value::Sequence(seq) => {
                for v in seq {
                    walk(v, root, origin, depth)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let snapshot = root.clone();
    if let Some(model) = root.get_mut("model") {
        walk(model, &snapshot, origin, 0)?;
    }
    Ok(())
}

/// YAML 1.1 readers (PyYAML, and OmegaConf for some spellings) read `1e-6` as a string: accept both.
fn float_or_string<'de, D: serde::Deserializer<'de>>(de: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum FloatOrString {
        F(f64),
        S(String),
    }
    match FloatOrString::deserialize(de)? {
        FloatOrString::F(f) => Ok(f),
        FloatOrString::S(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
    }
}

/// Official defaults (constructor signatures) of fields a YAML may omit.
mod d {
    pub fn sam2_base() -> String {
        "sam2.modeling.sam2_base.SAM2Base".into()
    }
    pub fn num_maskmem() -> usize {
        7
    }
    pub fn image_size() -> usize {
        512
    }
    pub fn image_size_1024() -> usize {
        1024
    }
    pub fn backbone_stride() -> usize {
        16
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn two() -> f64 {
        2.0
    }
    pub fn one_usize() -> usize {
        1
    }
    pub fn three() -> usize {
        3
    }
    pub fn four() -> usize {
        4
    }
    pub fn seven() -> usize {
        7
    }
    pub fn sixteen() -> usize {
        16
    }
    pub fn minus_one() -> i64 {
        -1
    }
    pub fn max_obj_ptrs() -> usize {
        16
    }
    pub fn yes() -> bool {
        true
    }
    pub fn stability_delta() -> f64 {
        0.05
    }
    pub fn stability_thresh() -> f64 {
        0.98
    }
    pub fn embed_dim() -> usize {
        96
    }
    pub fn q_pool() -> usize {
        3
    }
    pub fn q_stride() -> [usize; 2] {
        [2, 2]
    }
    pub fn stages() -> Vec<usize> {
        vec![2, 3, 16, 3]
    }
    pub fn bkg_size() -> [usize; 2] {
        [14, 14]
    }
    pub fn window_spec() -> Vec<usize> {
        vec![8, 4, 14, 7]
    }
    pub fn global_att_blocks() -> Option<Vec<usize>> {
        Some(vec![12, 16, 20])
    }
    pub fn bilinear() -> String {
        "bilinear".into()
    }
    pub fn sum() -> String {
        "sum".into()
    }
    pub fn temperature() -> f64 {
        10000.0
    }
    pub fn strides() -> Vec<usize> {
        vec![4, 8, 16, 32]
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
    pub fn feat_sizes() -> [usize; 2] {
        [64, 64]
    }
    pub fn dim_256() -> usize {
        256
    }
    pub fn layer_scale() -> f64 {
        1e-6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_validates() {
        for name in preset_names() {
            let config = Sam2Config::preset(name).unwrap();
            let size = if name == crate::model::nano::PRESET {
                256
            } else {
                1024
            };
            assert_eq!(config.image_size, size, "{name}");
            assert_eq!(config.hidden_dim(), 256, "{name}");
            assert_eq!(config.mem_dim(), 64, "{name}");
        }
    }

    #[test]
    fn preset_aliases() {
        let t = Sam2Config::preset("sam2.1_hiera_tiny").unwrap();
        assert_eq!(t.image_encoder.trunk.embed_dim, 96);
        let l = Sam2Config::preset("facebook/sam2.1-hiera-large").unwrap();
        assert_eq!(l.image_encoder.trunk.embed_dim, 144);
        let b = Sam2Config::preset("configs/sam2/sam2_hiera_b+.yaml").unwrap();
        assert!(!b.add_tpos_enc_to_obj_ptrs);
        assert!(Sam2Config::preset("sam3_hiera_t").is_err());
    }

    #[test]
    fn sam2_and_sam2_1_flags_differ_as_in_the_official_yaml() {
        let v20 = Sam2Config::preset("sam2_hiera_t").unwrap();
        let v21 = Sam2Config::preset("sam2.1_hiera_t").unwrap();
        assert!(!v20.no_obj_embed_spatial && v21.no_obj_embed_spatial);
        assert!(!v20.proj_tpos_enc_in_obj_ptrs && v21.proj_tpos_enc_in_obj_ptrs);
        assert!(!v20.use_signed_tpos_enc_to_obj_ptrs && v21.use_signed_tpos_enc_to_obj_ptrs);
    }

    #[test]
    fn trunk_shapes_follow_the_config() {
        let l = Sam2Config::preset("sam2.1_hiera_l").unwrap();
        let trunk = &l.image_encoder.trunk;
        assert_eq!(trunk.channel_list(), vec![1152, 576, 288, 144]);
        assert_eq!(trunk.output_strides(), vec![4, 8, 16, 32]);
        assert_eq!(trunk.stage_dims_and_heads().1, vec![2, 4, 8, 16]);
        assert_eq!(trunk.window_spec, vec![8, 4, 16, 8]);
    }

    fn tiny_with(find: &str, replace: &str) -> Result<Sam2Config> {
        let text = include_str!("configs/sam2.1_hiera_t.yaml");
        assert!(text.contains(find), "{find}");
        Sam2Config::from_yaml_str(&text.replacen(find, replace, 1), "test.yaml")
    }

    #[test]
    fn unknown_field_is_named() {
        let err = tiny_with("embed_dim: 96", "embed_dim: 96\n      dilation: 2")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.image_encoder.trunk") && err.contains("dilation"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_target_is_named() {
        let err = tiny_with(
            "sam2.modeling.backbones.hieradet.Hiera",
            "sam2.modeling.backbones.vit.ViT",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("model.image_encoder.trunk._target_") && err.contains("ViT"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_values_are_named() {
        let err = tiny_with("fpn_interp_model: nearest", "fpn_interp_model: bicubic")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fpn_interp_model") && err.contains("bicubic"),
            "{err}"
        );
        let err = tiny_with("image_size: 1024", "image_size: 1000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.image_size"), "{err}");
        let err = tiny_with(
            "backbone_channel_list: [768, 384, 192, 96]",
            "backbone_channel_list: [768, 384, 192, 95]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("backbone_channel_list"), "{err}");
        let err = tiny_with("kv_in_dim: 64", "kv_in_dim: 32")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kv_in_dim"), "{err}");
        let err = tiny_with("activation: relu", "activation: swish")
            .unwrap_err()
            .to_string();
        assert!(err.contains("activation") && err.contains("swish"), "{err}");
    }

    #[test]
    fn flag_combinations_the_official_model_cannot_run_are_named() {
        let err = tiny_with(
            "use_obj_ptrs_in_encoder: true",
            "use_obj_ptrs_in_encoder: false",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("fixed_no_obj_ptr") || err.contains("pred_obj_scores"),
            "{err}"
        );
        let err = tiny_with(
            "directly_add_no_mem_embed: true",
            "directly_add_no_mem_embed: false",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("directly_add_no_mem_embed"), "{err}");
    }

    #[test]
    fn wrong_types_are_named() {
        let err = tiny_with("num_maskmem: 7", "num_maskmem: seven")
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_maskmem"), "{err}");
    }

    #[test]
    fn interpolations_resolve() {
        let text = include_str!("configs/sam2.1_hiera_t.yaml").replacen(
            "image_size: 1024",
            "image_size: ${scratch.resolution}",
            1,
        ) + "\nscratch:\n  resolution: 512\n";
        let config = Sam2Config::from_yaml_str(&text, "test.yaml").unwrap();
        assert_eq!(config.image_size, 512);
        let bad = text.replace("resolution: 512", "other: 1");
        assert!(Sam2Config::from_yaml_str(&bad, "test.yaml").is_err());
    }

    #[test]
    fn build_overrides_match_build_sam() {
        let mut config = Sam2Config::preset("sam2.1_hiera_t").unwrap();
        assert!(config.sam_mask_decoder_extra_args.is_none());
        config.apply_build_overrides(BuildMode::Video);
        assert!(config.mask_decoder_extra().dynamic_multimask_via_stability);
        assert!(config.binarize_mask_from_pts_for_mem_enc);
        assert_eq!(config.fill_hole_area, Some(8));
    }
}
