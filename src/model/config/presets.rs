//! The built-in configs: the eight official ones and our nano, by name or any of their other spellings.

use std::path::Path;

/// The official configs, verbatim from the `sam2` 1.1.0 package (Apache 2.0), and our nano.
const PRESETS: &[(&str, &str)] = &[
    (
        "sam2.1_hiera_t",
        include_str!("../configs/sam2.1_hiera_t.yaml"),
    ),
    (
        "sam2.1_hiera_s",
        include_str!("../configs/sam2.1_hiera_s.yaml"),
    ),
    (
        "sam2.1_hiera_b+",
        include_str!("../configs/sam2.1_hiera_b+.yaml"),
    ),
    (
        "sam2.1_hiera_l",
        include_str!("../configs/sam2.1_hiera_l.yaml"),
    ),
    ("sam2_hiera_t", include_str!("../configs/sam2_hiera_t.yaml")),
    ("sam2_hiera_s", include_str!("../configs/sam2_hiera_s.yaml")),
    (
        "sam2_hiera_b+",
        include_str!("../configs/sam2_hiera_b+.yaml"),
    ),
    ("sam2_hiera_l", include_str!("../configs/sam2_hiera_l.yaml")),
    // Ours: trained in `models/nano`, with its weights built in (see `model::nano`).
    (
        crate::model::nano::PRESET,
        include_str!("../../../models/nano/config.yaml"),
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

pub(super) fn find_preset(name: &str) -> Option<(&'static str, &'static str)> {
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
