//! The refiner's image path against its PyTorch reference (`models/refiner/make_fixture.py`):
//! the built-in nano model with a refiner of active random weights, in quadrant and ROI mode,
//! on clicks, a box, clicks with a box, and a click with a mask prompt. With the refiner off,
//! the output is plain SAM 2 bit for bit; a refiner for another base refuses to load. The
//! streaming tracker with the refiner against the official video predictor with it
//! (`models/refiner/video_path.py`), in each mode and with either mask fed to the memory, and
//! with two clicks pinned on the prompted frame. Each module's path and the tracker's pins are
//! shown to matter: silenced, the comparison fails.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::{assert_logits_match, fixture_dir, logits_match};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::refiner::{BaseIdentity, MemoryMask, RefineMode, Refiner};
use gstsam2refiner::model::weights::{WeightFile, build_model};
use gstsam2refiner::model::{
    BuildMode, ImagePrediction, ImagePredictor, ImagePrompt, Sam2Base, Sam2Config, nano,
};
use gstsam2refiner::prompt::Prompt;
use gstsam2refiner::tracker::{FrameResize, Tracker, TrackerOptions};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    mode: String,
    #[serde(default)]
    points: Vec<[f32; 2]>,
    #[serde(default)]
    labels: Vec<i32>,
    #[serde(rename = "box")]
    bbox: Option<[f32; 4]>,
    mask_from: Option<String>,
    /// A mask prompt of this logit everywhere.
    mask_fill: Option<f32>,
    multimask: bool,
}

#[derive(Debug, Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture_dir("refiner").join("cases.json")).unwrap();
    serde_json::from_str::<Cases>(&text).unwrap().cases
}

fn refiner_path() -> PathBuf {
    fixture_dir("refiner").join("refiner.safetensors")
}

fn nano_model() -> (Sam2Base, BaseIdentity) {
    let mut config = Sam2Config::load(nano::PRESET).unwrap();
    config.apply_build_overrides(BuildMode::Image);
    let weights = nano::weights().unwrap();
    let base = BaseIdentity {
        config: nano::PRESET.into(),
        weights_hash: weights.content_hash().unwrap(),
    };
    let model = build_model(&config, weights, DType::F32, &Device::Cpu).unwrap();
    (model, base)
}

/// The fixture's refiner, with `scale` applied to the tensors whose key contains `defect.0`.
fn refiner(base: &BaseIdentity, defect: Option<(&str, f64)>) -> Refiner {
    match defect {
        None => Refiner::load(&refiner_path(), base, DType::F32, &Device::Cpu).unwrap(),
        Some(defect) => refiner_with(base, &[defect]),
    }
}

/// The parts of the refiner that read the crops' features: localization augment's gates and
/// the output layers of mask refinement's cascade.
const CROP_READERS: [&str; 4] = [
    "localization_augment.levels.0.gate",
    "localization_augment.levels.1.gate",
    "localization_augment.levels.2.gate",
    "mask_refinement.delta_s",
];

/// The fixture's refiner with every crop reader zeroed: prompt retargeting and the guided
/// filter stay live (`make_fixture.py`'s `crops_silenced`).
fn filter_only(base: &BaseIdentity) -> Refiner {
    let defects: Vec<(&str, f64)> = CROP_READERS.iter().map(|p| (*p, 0.0)).collect();
    refiner_with(base, &defects)
}

/// The fixture's refiner with each `(pattern, scale)` applied to the tensors whose key contains
/// the pattern.
fn refiner_with(base: &BaseIdentity, defects: &[(&str, f64)]) -> Refiner {
    let mut file = WeightFile::load(&refiner_path()).unwrap();
    for (pattern, scale) in defects {
        let mut hit = false;
        for (key, t) in file.tensors.iter_mut() {
            if key.contains(pattern) {
                *t = t.affine(*scale, 0.0).unwrap();
                hit = true;
            }
        }
        assert!(hit, "no refiner tensor matches {pattern}");
    }
    let out = std::env::temp_dir().join(format!(
        "sam2refiner-defect-{}-{}.safetensors",
        std::process::id(),
        defects
            .iter()
            .map(|(p, _)| p.replace('.', "_"))
            .collect::<Vec<_>>()
            .join("-")
    ));
    // Saved with the fixture's metadata, so the base check still passes.
    let metadata = safetensors_metadata(&refiner_path());
    let tensors: Vec<(String, Tensor)> = file.tensors.into_iter().collect();
    candle_core::safetensors::save(&tensors.into_iter().collect(), &out).unwrap();
    rewrite_metadata(&out, &metadata);
    let refiner = Refiner::load(&out, base, DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_file(&out).ok();
    refiner
}

fn safetensors_metadata(path: &PathBuf) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

/// Re-writes a safetensors file with `metadata` (candle's writer has none).
fn rewrite_metadata(path: &PathBuf, metadata: &std::collections::HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let out = safetensors::serialize(views, Some(metadata.clone())).unwrap();
    std::fs::write(path, out).unwrap();
}

fn expected() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir("refiner").join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// The click rules of the image path (both on by default), to show that each one matters.
#[derive(Debug, Clone, Copy)]
struct ClickRules {
    pin_clicks: bool,
    click_guard: bool,
}

const DEFAULT_RULES: ClickRules = ClickRules {
    pin_clicks: true,
    click_guard: true,
};

/// Every case's prediction by the engine, in order, handed to `visit` as (name, prediction);
/// stops early when `visit` returns false.
fn visit_cases(
    model: &Sam2Base,
    refiner: &Refiner,
    rules: ClickRules,
    mut visit: impl FnMut(&str, &ImagePrediction) -> bool,
) {
    let image = RgbImage::read_png(&fixture_dir("refiner").join("frame.png")).unwrap();
    let rgb = image.to_tensor(&Device::Cpu).unwrap();
    let mut predictors = std::collections::HashMap::new();
    let mut done: Vec<(String, ImagePrediction)> = Vec::new();
    for case in cases() {
        let mode: RefineMode = case.mode.parse().unwrap();
        let predictor = predictors.entry(case.mode.clone()).or_insert_with(|| {
            let mut p = ImagePredictor::with_refiner(model, refiner, mode);
            p.pin_clicks = rules.pin_clicks;
            p.click_guard = rules.click_guard;
            p.set_image(&rgb).unwrap();
            p
        });
        let mut prompt = ImagePrompt::clicks_and_box(&case.points, &case.labels, case.bbox);
        if let Some(from) = &case.mask_from {
            let (_, previous) = done.iter().find(|(n, _)| n == from).unwrap();
            let best = previous.best_index().unwrap();
            let low_res = previous.low_res.get(best).unwrap();
            prompt.mask_input = Some(low_res.unsqueeze(0).unwrap().unsqueeze(0).unwrap());
        } else if let Some(fill) = case.mask_fill {
            let side = model.config.image_size / 4;
            prompt.mask_input = Some(Tensor::full(fill, (1, 1, side, side), &Device::Cpu).unwrap());
        }
        assert_eq!(prompt.is_ambiguous(), case.multimask, "{}", case.name);
        let prediction = predictor.predict(&prompt, case.multimask).unwrap();
        assert_eq!(prediction.refined, mode != RefineMode::Off, "{}", case.name);
        if !visit(&case.name, &prediction) {
            return;
        }
        done.push((case.name, prediction));
    }
}

/// The click guard's decisions the reference recorded for case `name` (under `prefix`).
fn recorded_kept(expected: &std::collections::HashMap<String, Tensor>, key: &str) -> Vec<bool> {
    let kept = expected[&format!("{key}/kept_mask_prompt")].to_vec1::<u8>();
    kept.unwrap().iter().map(|&k| k != 0).collect()
}

/// Whether every case matches the fixture (stopping at the first that does not).
fn all_match(model: &Sam2Base, refiner: &Refiner, rules: ClickRules) -> bool {
    let expected = expected();
    let mut all = true;
    visit_cases(model, refiner, rules, |name, p| {
        all = logits_match(&p.masks, &expected[&format!("{name}/masks")])
            && logits_match(&p.iou, &expected[&format!("{name}/iou")])
            && p.kept_mask_prompt == recorded_kept(&expected, name);
        all
    });
    all
}

#[test]
fn the_refiner_matches_pytorch_in_every_mode() {
    let (model, base) = nano_model();
    let refiner = refiner(&base, None);
    let expected = expected();
    let mut kept = 0;
    visit_cases(&model, &refiner, DEFAULT_RULES, |name, p| {
        assert_eq!(p.kept_mask_prompt, recorded_kept(&expected, name), "{name}");
        kept += p.kept_mask_prompt.iter().filter(|&&k| k).count();
        assert_logits_match(
            &format!("{name} masks"),
            &p.masks,
            &expected[&format!("{name}/masks")],
        );
        assert_logits_match(
            &format!("{name} iou"),
            &p.iou,
            &expected[&format!("{name}/iou")],
        );
        true
    });
    // The fixture has corrections the guard refuses, and others it lets through.
    assert_eq!(kept, 2);
}

/// A refiner whose only live parts need no crops (the kind that ships) skips their encoder
/// passes and still matches its reference, in the image path and in tracking.
#[test]
fn a_refiner_that_reads_no_crops_matches_pytorch() {
    let (model, base) = nano_model();
    let refiner = filter_only(&base);
    assert!(!refiner.reads_crops());
    assert!(refiner_with(&base, &[(CROP_READERS[0], 0.0)]).reads_crops());
    let expected = expected();
    let mut compared = 0;
    visit_cases(&model, &refiner, DEFAULT_RULES, |name, p| {
        let key = format!("filter_only/{name}");
        if let Some(masks) = expected.get(&format!("{key}/masks")) {
            assert_logits_match(&format!("{name} masks"), &p.masks, masks);
            assert_eq!(p.kept_mask_prompt, recorded_kept(&expected, &key), "{name}");
            compared += 1;
        }
        true
    });
    assert_eq!(compared, 9);
    let video = video_expected();
    for (t, logits) in tracked(
        &base,
        filter_only(&base),
        RefineMode::Roi,
        MemoryMask::Refined,
    ) {
        let key = format!("filter_only/roi/refined/frame{t}");
        assert_logits_match(&key, &logits, &video[&key]);
    }
}

#[test]
fn with_the_refiner_off_the_output_is_plain_sam2_bit_for_bit() {
    let (model, base) = nano_model();
    let refiner = refiner(&base, None);
    let image = RgbImage::read_png(&fixture_dir("refiner").join("frame.png")).unwrap();
    let rgb = image.to_tensor(&Device::Cpu).unwrap();
    let mut plain = ImagePredictor::new(&model);
    plain.set_image(&rgb).unwrap();
    let mut off = ImagePredictor::with_refiner(&model, &refiner, RefineMode::Off);
    off.set_image(&rgb).unwrap();
    for case in cases() {
        let prompt = ImagePrompt::clicks_and_box(&case.points, &case.labels, case.bbox);
        let a = plain.predict(&prompt, case.multimask).unwrap();
        let b = off.predict(&prompt, case.multimask).unwrap();
        let diff = (a.masks - b.masks)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{}", case.name);
        assert!(!b.refined);
    }
}

#[test]
fn a_refiner_for_another_base_is_refused_with_the_reason() {
    let other = BaseIdentity {
        config: "sam2.1_hiera_t".into(),
        weights_hash: "0".repeat(64),
    };
    let err = Refiner::load(&refiner_path(), &other, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trained for the base model sam2.1_nano")
            && err.contains("not for the loaded sam2.1_hiera_t"),
        "{err}"
    );
}

#[test]
fn the_base_weights_hash_is_the_one_pytorch_recorded() {
    let (_, base) = nano_model();
    let recorded = safetensors_metadata(&refiner_path());
    assert_eq!(recorded["base_weights_hash"], base.weights_hash);
    assert_eq!(recorded["base_config"], nano::PRESET);
}

#[test]
fn a_file_that_is_not_a_refiner_is_refused() {
    let (_, base) = nano_model();
    let path = fixture_dir("nano").join("../../../models/nano/sam2.1_nano.safetensors");
    let err = Refiner::load(&path, &base, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a refiner file"), "{err}");
}

/// Each module's path changes the output: silenced, the fixture rejects it.
#[test]
fn every_refiner_path_is_caught_when_silenced() {
    let (model, base) = nano_model();
    for pattern in [
        "localization_augment.levels.0.gate",
        "localization_augment.levels.1.gate",
        "localization_augment.levels.2.gate",
        "localization_augment.levels.2.position_bias",
        "prompt_retargeting.gate",
        "prompt_retargeting.mask_gate",
        "mask_refinement.delta_s2",
        "mask_refinement.delta_s1",
        "mask_refinement.local_proj",
        "mask_refinement.guided_gate",
    ] {
        let refiner = refiner(&base, Some((pattern, 0.0)));
        assert!(
            !all_match(&model, &refiner, DEFAULT_RULES),
            "the fixture still matches with {pattern} zeroed"
        );
    }
}

/// Each click rule changes the output: turned off, the fixture rejects it.
#[test]
fn each_click_rule_is_caught_when_turned_off() {
    let (model, base) = nano_model();
    let refiner = refiner(&base, None);
    assert!(all_match(&model, &refiner, DEFAULT_RULES));
    for rules in [
        ClickRules {
            pin_clicks: false,
            ..DEFAULT_RULES
        },
        ClickRules {
            click_guard: false,
            ..DEFAULT_RULES
        },
    ] {
        assert!(
            !all_match(&model, &refiner, rules),
            "the fixture still matches with {rules:?}"
        );
    }
}

/// One object clicked on frame 0 of a fine-structure clip and tracked over frames 1 to 3 by the
/// streaming tracker with the refiner: (frame, logits at the frame's size).
fn tracked(
    base: &BaseIdentity,
    refiner: Refiner,
    mode: RefineMode,
    memory: MemoryMask,
) -> Vec<(usize, Tensor)> {
    tracked_with(base, refiner, mode, memory, Clicks::One, true)
}

/// The prompt on frame 0 of the fixture's clip.
#[derive(Clone, Copy)]
enum Clicks {
    /// The positive click alone.
    One,
    /// The positive click and the negative one beside it.
    PositiveAndNegative,
}

fn tracked_with(
    base: &BaseIdentity,
    refiner: Refiner,
    mode: RefineMode,
    memory: MemoryMask,
    clicks: Clicks,
    pin_clicks: bool,
) -> Vec<(usize, Tensor)> {
    let mut config = Sam2Config::load(nano::PRESET).unwrap();
    config.apply_build_overrides(BuildMode::Video);
    let model = build_model(&config, nano::weights().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let mut options = TrackerOptions::for_config(&config);
    // The reference runs the engine's streaming resize, without hole filling (no CUDA extension).
    options.frame_resize = FrameResize::Bilinear;
    options.fill_hole_area = 0;
    options.refine_mode = mode;
    options.memory_mask = memory;
    options.pin_clicks = pin_clicks;
    let mut tracker = Tracker::new(model, options);
    assert_eq!(refiner.base, *base);
    tracker.set_refiner(Some(refiner));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("refiner").join("video.json")).unwrap(),
    )
    .unwrap();
    let point = |key: &str| {
        [
            meta[key][0].as_f64().unwrap() as f32,
            meta[key][1].as_f64().unwrap() as f32,
        ]
    };
    let (points, labels) = match clicks {
        Clicks::One => (vec![point("click")], vec![1]),
        Clicks::PositiveAndNegative => (vec![point("click"), point("negative_click")], vec![1, 0]),
    };
    let frames = meta["frames"].as_u64().unwrap() as usize;
    (0..frames)
        .map(|t| {
            let path = fixture_dir("refiner").join(format!("video/{t:04}.png"));
            let mut output = tracker
                .push_frame(t as u64, &RgbImage::read_png(&path).unwrap())
                .unwrap();
            if t == 0 {
                let prompt = Prompt {
                    frame: 0,
                    object: 1,
                    points: points.clone(),
                    labels: labels.clone(),
                    bbox: None,
                    mask: None,
                };
                tracker.add_prompt(&prompt).unwrap();
                output = tracker.output(0).unwrap();
            }
            assert!(output.objects[0].refined.is_some(), "frame {t} not refined");
            let (_, logits) = tracker.frame_logits(&output).unwrap().remove(0);
            (t, logits)
        })
        .collect()
}

const VIDEO_CASES: [(RefineMode, MemoryMask); 3] = [
    (RefineMode::Quadrants, MemoryMask::Refined),
    (RefineMode::Roi, MemoryMask::Refined),
    (RefineMode::Quadrants, MemoryMask::Sam2),
];

fn video_expected() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir("refiner").join("video.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn the_refined_tracker_matches_pytorch_in_every_mode() {
    let (_, base) = nano_model();
    let expected = video_expected();
    for (mode, memory) in VIDEO_CASES {
        for (t, logits) in tracked(&base, refiner(&base, None), mode, memory) {
            let key = format!("{mode}/{memory}/frame{t}");
            assert_logits_match(&key, &logits, &expected[&key]);
        }
    }
}

/// The prompt's clicks are pinned in the guided filter's input, as in the image path: unpinned,
/// the prompted frame and, through its memory, the tracked ones no longer match.
#[test]
fn the_refined_tracker_pins_the_prompts_clicks_as_pytorch_does() {
    let (_, base) = nano_model();
    let expected = video_expected();
    let run = |pin_clicks| {
        tracked_with(
            &base,
            refiner(&base, None),
            RefineMode::Roi,
            MemoryMask::Refined,
            Clicks::PositiveAndNegative,
            pin_clicks,
        )
    };
    for (t, logits) in run(true) {
        let key = format!("two_clicks/roi/refined/frame{t}");
        assert_logits_match(&key, &logits, &expected[&key]);
    }
    for (t, logits) in run(false) {
        let key = format!("two_clicks/roi/refined/frame{t}");
        assert!(
            !logits_match(&logits, &expected[&key]),
            "{key} matches without the pins"
        );
    }
}

/// What the memory is fed matters after the prompted frame, and each module's path matters on
/// tracked frames: changed, the tracked frames no longer match.
#[test]
fn the_video_fixture_catches_the_memory_mask_and_silenced_paths() {
    let (_, base) = nano_model();
    let expected = video_expected();
    let matches = |mode: RefineMode, recorded: MemoryMask, run: MemoryMask, defect| {
        tracked(&base, refiner(&base, defect), mode, run)
            .iter()
            .all(|(t, logits)| {
                logits_match(logits, &expected[&format!("{mode}/{recorded}/frame{t}")])
            })
    };
    assert!(
        !matches(
            RefineMode::Quadrants,
            MemoryMask::Refined,
            MemoryMask::Sam2,
            None
        ),
        "the memory mask changes nothing"
    );
    for pattern in [
        "localization_augment.levels.2.gate",
        "mask_refinement.delta_s1",
        "mask_refinement.guided_gate",
    ] {
        assert!(
            !matches(
                RefineMode::Roi,
                MemoryMask::Refined,
                MemoryMask::Refined,
                Some((pattern, 0.0))
            ),
            "the video fixture still matches with {pattern} zeroed"
        );
    }
}
