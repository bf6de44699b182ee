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
    let text = include_str!("../configs/sam2.1_hiera_t.yaml");
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
    let text = include_str!("../configs/sam2.1_hiera_t.yaml").replacen(
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
