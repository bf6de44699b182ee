//! The official constructors' asserts, and what this engine supports, checked when a config is
//! read, so that a bad config fails with its field named instead of a shape error deep in a forward.

use super::{PositionEmbeddingSineConfig, Sam2Config};
use crate::error::{Error, Result};

/// The error for `field` of the config read from `origin`.
fn fail(origin: &str, field: &str, reason: impl Into<String>) -> Result<()> {
    Err(Error::config(origin, format!("{field}: {}", reason.into())))
}

impl Sam2Config {
    pub(super) fn validate(&self, origin: &str) -> Result<()> {
        self.check_classes(origin)?;
        self.check_trunk(origin)?;
        self.check_feature_levels(origin)?;
        self.check_widths(origin)?;
        self.check_flags(origin)
    }

    /// Every `_target_` names a class this engine implements, and the sine position encodings
    /// are ones it can compute.
    fn check_classes(&self, origin: &str) -> Result<()> {
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
            check_opt_target(
                origin,
                &format!("model.memory_attention.layer.{name}"),
                &att.target,
                "sam2.modeling.sam.transformer.RoPEAttention",
            )?;
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
        Ok(())
    }

    /// Hiera's stages, windows, pooling and heads, and the widths its outputs hand the neck.
    fn check_trunk(&self, origin: &str) -> Result<()> {
        let trunk = &self.image_encoder.trunk;
        let neck = &self.image_encoder.neck;
        if trunk.weights_path.is_some() {
            return fail(
                origin,
                "model.image_encoder.trunk.weights_path",
                "a separate trunk checkpoint is not supported (the SAM 2 checkpoint holds the trunk); set it to null",
            );
        }
        let num_stages = trunk.stages.len();
        if num_stages == 0 || trunk.stages.contains(&0) {
            return fail(
                origin,
                "model.image_encoder.trunk.stages",
                format!("{:?}: every stage needs a block", trunk.stages),
            );
        }
        if trunk.window_spec.len() != num_stages {
            return fail(
                origin,
                "model.image_encoder.trunk.window_spec",
                format!(
                    "{} entries for {num_stages} stages",
                    trunk.window_spec.len()
                ),
            );
        }
        if trunk.q_pool > num_stages - 1 {
            return fail(
                origin,
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
                origin,
                "model.image_encoder.trunk.q_stride",
                format!("{:?}: only square strides are supported", trunk.q_stride),
            );
        }
        if trunk.embed_dim == 0 || trunk.num_heads == 0 {
            return fail(
                origin,
                "model.image_encoder.trunk",
                "embed_dim and num_heads must be positive",
            );
        }
        let depth: usize = trunk.stages.iter().sum();
        if let Some(global) = &trunk.global_att_blocks
            && let Some(bad) = global.iter().find(|&&b| b >= depth)
        {
            return fail(
                origin,
                "model.image_encoder.trunk.global_att_blocks",
                format!("block {bad} does not exist (the trunk has {depth} blocks)"),
            );
        }
        let (stage_dims, stage_heads) = trunk.stage_dims_and_heads();
        for (i, (dim, heads)) in stage_dims.iter().zip(&stage_heads).enumerate() {
            if *heads == 0 || dim % heads != 0 {
                return fail(
                    origin,
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
                origin,
                "model.image_encoder.neck.backbone_channel_list",
                format!(
                    "{:?} does not match the trunk's outputs {channel_list:?}",
                    neck.backbone_channel_list
                ),
            );
        }

        Ok(())
    }

    /// The image size against the trunk's strides, the feature levels the encoder keeps, and the
    /// neck that fuses them.
    fn check_feature_levels(&self, origin: &str) -> Result<()> {
        let enc = &self.image_encoder;
        let (trunk, neck) = (&enc.trunk, &enc.neck);
        // Sizes: the stride-4 map tiles the 8x8 (window_spec[0]) window position embedding, and
        // every q-pool halves the map exactly so the FPN levels line up.
        let s = self.image_size;
        let pools = trunk.q_pool as u32;
        let q = trunk.q_stride[0];
        let divisor = 4 * q.pow(pools);
        if s == 0 || !s.is_multiple_of(divisor) {
            return fail(
                origin,
                "model.image_size",
                format!(
                    "{s} must be a multiple of {divisor} (patch stride 4 times the q-pool strides)"
                ),
            );
        }
        if !(s / 4).is_multiple_of(trunk.window_spec[0]) {
            return fail(
                origin,
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
                origin,
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
                origin,
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
                origin,
                "model.image_encoder.neck",
                format!(
                    "kernel_size {}, stride {}, padding {}: only size-preserving lateral convs are supported",
                    neck.kernel_size, neck.stride, neck.padding
                ),
            );
        }
        if !["nearest", "bilinear"].contains(&neck.fpn_interp_model.as_str()) {
            return fail(
                origin,
                "model.image_encoder.neck.fpn_interp_model",
                format!(
                    "{:?} is not supported (nearest, bilinear)",
                    neck.fpn_interp_model
                ),
            );
        }
        if !["sum", "avg"].contains(&neck.fuse_type.as_str()) {
            return fail(
                origin,
                "model.image_encoder.neck.fuse_type",
                format!("{:?} is not one of sum, avg", neck.fuse_type),
            );
        }
        for level in neck.top_down_levels() {
            if level >= level_strides.len() {
                return fail(
                    origin,
                    "model.image_encoder.neck.fpn_top_down_levels",
                    format!("level {level} does not exist"),
                );
            }
            if level + 1 < level_strides.len()
                && level_strides[level + 1] != 2 * level_strides[level]
            {
                return fail(
                    origin,
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
                origin,
                "model.image_encoder.neck.position_encoding.num_pos_feats",
                format!(
                    "{} differs from d_model {}",
                    neck.position_encoding.num_pos_feats, neck.d_model
                ),
            );
        }
        if self.use_high_res_features_in_sam && kept.len() < 3 {
            return fail(
                origin,
                "model.use_high_res_features_in_sam",
                format!("needs 3 feature levels, the encoder keeps {}", kept.len()),
            );
        }
        if self.use_high_res_features_in_sam
            && (kept[kept.len() - 3] * 4 != self.backbone_stride
                || kept[kept.len() - 2] * 2 != self.backbone_stride)
        {
            return fail(
                origin,
                "model.use_high_res_features_in_sam",
                format!(
                    "needs feature levels of strides {} and {}, the encoder has {kept:?}",
                    self.backbone_stride / 4,
                    self.backbone_stride / 2
                ),
            );
        }

        Ok(())
    }

    /// Widths that must agree for the modules to connect.
    fn check_widths(&self, origin: &str) -> Result<()> {
        let mem_att = &self.memory_attention;
        let mem_enc = &self.memory_encoder;
        let c = self.hidden_dim();
        if !c.is_multiple_of(16) {
            return fail(
                origin,
                "model.image_encoder.neck.d_model",
                format!("{c}: the mask decoder's 8 heads at half width need a multiple of 16"),
            );
        }
        if mem_att.d_model != c || mem_att.layer.d_model != c {
            return fail(
                origin,
                "model.memory_attention.d_model",
                format!(
                    "{} (layer {}) must equal the image feature width {c}",
                    mem_att.d_model, mem_att.layer.d_model
                ),
            );
        }
        if !mem_att.batch_first {
            return fail(
                origin,
                "model.memory_attention.batch_first",
                "only true is supported",
            );
        }
        if !["relu", "gelu"].contains(&mem_att.layer.activation.as_str()) {
            return fail(
                origin,
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
                origin,
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
                origin,
                "model.memory_attention.layer.cross_attention.kv_in_dim",
                format!("{kv} must equal the memory width {m}"),
            );
        }
        if mem_enc.position_encoding.num_pos_feats != m {
            return fail(
                origin,
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
                origin,
                "model.memory_encoder.mask_downsampler.embed_dim",
                format!("{} must equal in_dim {}", ds.embed_dim, mem_enc.in_dim),
            );
        }
        if ds.stride < 2 || ds.num_layers().is_none() {
            return fail(
                origin,
                "model.memory_encoder.mask_downsampler",
                format!(
                    "total_stride {} must be a power of stride {}",
                    ds.total_stride, ds.stride
                ),
            );
        }
        if ds.total_stride != self.backbone_stride {
            return fail(
                origin,
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
                origin,
                "model.memory_encoder.fuser.layer.dim",
                format!("{} must equal in_dim {}", fuser.layer.dim, mem_enc.in_dim),
            );
        }
        if fuser.input_projection && fuser.dim != Some(mem_enc.in_dim) {
            return fail(
                origin,
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
                origin,
                "model.memory_encoder.fuser.layer",
                format!(
                    "kernel_size {} with padding {}: only size-preserving convs are supported",
                    fuser.layer.kernel_size, fuser.layer.padding
                ),
            );
        }
        if m < c && !c.is_multiple_of(m) && self.use_obj_ptrs_in_encoder {
            return fail(
                origin,
                "model.memory_encoder.out_dim",
                format!(
                    "{m} must divide the pointer width {c} (pointers are split into memory tokens)"
                ),
            );
        }
        if m > c && self.use_obj_ptrs_in_encoder {
            return fail(
                origin,
                "model.memory_encoder.out_dim",
                format!("{m} wider than the pointer width {c} is not supported"),
            );
        }
        for (name, att) in [
            ("self_attention", &mem_att.layer.self_attention),
            ("cross_attention", &mem_att.layer.cross_attention),
        ] {
            // Heads and widths of each attention.
            let field = format!("model.memory_attention.layer.{name}");
            let internal = att.embedding_dim / att.downsample_rate.max(1);
            if att.downsample_rate == 0
                || internal % att.num_heads.max(1) != 0
                || att.num_heads == 0
            {
                return fail(
                    origin,
                    &field,
                    format!(
                        "num_heads {} must divide embedding_dim / downsample_rate = {internal}",
                        att.num_heads
                    ),
                );
            }
            if (internal / att.num_heads) % 4 != 0 {
                return fail(
                    origin,
                    &field,
                    format!(
                        "the head width {} must be a multiple of 4 for the axial RoPE",
                        internal / att.num_heads
                    ),
                );
            }
            if att.embedding_dim != mem_att.layer.d_model {
                return fail(
                    origin,
                    &format!("{field}.embedding_dim"),
                    format!(
                        "{} differs from the layer's d_model {}",
                        att.embedding_dim, mem_att.layer.d_model
                    ),
                );
            }
        }
        Ok(())
    }

    /// Flag combinations the official constructor asserts.
    fn check_flags(&self, origin: &str) -> Result<()> {
        if self.fixed_no_obj_ptr && !(self.pred_obj_scores && self.use_obj_ptrs_in_encoder) {
            return fail(
                origin,
                "model.fixed_no_obj_ptr",
                "needs pred_obj_scores and use_obj_ptrs_in_encoder",
            );
        }
        if self.pred_obj_scores && !self.use_obj_ptrs_in_encoder {
            // The official `_forward_sam_heads` then reads a `no_obj_ptr` that was never created.
            return fail(
                origin,
                "model.pred_obj_scores",
                "needs use_obj_ptrs_in_encoder (the official model fails without it)",
            );
        }
        if !self.directly_add_no_mem_embed
            && self.num_maskmem > 0
            && self.mem_dim() != self.hidden_dim()
        {
            // Initial frames then attend to `no_mem_embed` as a memory token of width mem_dim.
            return fail(
                origin,
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
                origin,
                "model.proj_tpos_enc_in_obj_ptrs",
                "needs add_tpos_enc_to_obj_ptrs",
            );
        }
        if self.max_cond_frames_in_attn != -1 && self.max_cond_frames_in_attn < 2 {
            return fail(
                origin,
                "model.max_cond_frames_in_attn",
                format!("{}: -1 (all) or at least 2", self.max_cond_frames_in_attn),
            );
        }
        if self.memory_temporal_stride_for_eval == 0 {
            return fail(
                origin,
                "model.memory_temporal_stride_for_eval",
                "must be at least 1",
            );
        }
        if self.use_obj_ptrs_in_encoder && self.max_obj_ptrs_in_encoder == 0 {
            return fail(
                origin,
                "model.max_obj_ptrs_in_encoder",
                "must be at least 1",
            );
        }
        Ok(())
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
