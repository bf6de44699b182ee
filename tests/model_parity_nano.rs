//! The model we ship against the official SAM 2 running the same weights
//! (`models/nano/make_fixture.py`): the built-in `sam2.1_nano` on a held-out scene, through the
//! image path (a click, a box) and the streaming tracker (a click followed over the clip).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, assert_logits_match, fixture_dir, logits_match};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::weights::build_model;
use gstsam2refiner::model::{BuildMode, ImagePredictor, ImagePrompt, Sam2Base, Sam2Config, nano};
use gstsam2refiner::prompt::{Prompt, read_prompt_file};
use gstsam2refiner::tracker::{Tracker, TrackerOptions};

/// The built-in weights, with `scale` applied to the tensor `key` when given (a deliberate defect).
fn nano_model(mode: BuildMode, defect: Option<(&str, f64)>) -> (Sam2Config, Sam2Base) {
    let mut config = Sam2Config::load(nano::PRESET).unwrap();
    config.apply_build_overrides(mode);
    let mut weights = nano::weights().unwrap();
    if let Some((key, scale)) = defect {
        let t = weights.tensors.get_mut(key).expect("a tensor of the model");
        *t = t.affine(scale, 0.0).unwrap();
    }
    let model = build_model(&config, weights, DType::F32, &Device::Cpu).unwrap();
    (config, model)
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir("nano").join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn prompts() -> Vec<Prompt> {
    read_prompt_file(&fixture_dir("nano").join("prompts.json")).unwrap()
}

/// The image path's outputs (click and box): (key, masks, iou).
fn image_outputs(defect: Option<(&str, f64)>) -> Vec<(String, Tensor, Tensor)> {
    let (_, model) = nano_model(BuildMode::Image, defect);
    let image = RgbImage::read_png(&fixture_dir("nano").join("image.png")).unwrap();
    let mut predictor = ImagePredictor::new(&model);
    predictor
        .set_image(&image.to_tensor(&Device::Cpu).unwrap())
        .unwrap();
    prompts()
        .iter()
        .map(|p| {
            let prompt = ImagePrompt::clicks_and_box(&p.points, &p.labels, p.bbox);
            let multimask = prompt.is_ambiguous();
            let out = predictor.predict(&prompt, multimask).unwrap();
            (format!("image/obj{}", p.object), out.masks, out.iou)
        })
        .collect()
}

/// Object 1's logits on every frame of the clip, tracked from its click on frame 0: (key, logits).
fn tracked_outputs(defect: Option<(&str, f64)>) -> Vec<(String, Tensor)> {
    let (config, model) = nano_model(BuildMode::Video, defect);
    let mut options = TrackerOptions::for_config(&config);
    // The official CPU predictor cannot fill holes (no CUDA extension): off on both sides.
    options.fill_hole_area = 0;
    let mut tracker = Tracker::new(model, options);
    let click = prompts().into_iter().find(|p| p.object == 1).unwrap();
    let mut frames: Vec<_> = std::fs::read_dir(fixture_dir("nano").join("frames"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    frames.sort();
    // A clip shorter than the pointer window would change the official pointer encoding (see
    // `make_fixture.py`).
    assert!(frames.len() >= config.max_obj_ptrs_in_encoder);
    let mut outputs = Vec::new();
    for (t, path) in frames.iter().enumerate() {
        tracker
            .push_frame(t as u64, &RgbImage::read_png(path).unwrap())
            .unwrap();
        if t == 0 {
            tracker.add_prompt(&click).unwrap();
        }
        let output = tracker.output(t as u64).unwrap();
        let (_, logits) = tracker
            .frame_logits(&output)
            .unwrap()
            .into_iter()
            .find(|(object, _)| *object == 1)
            .unwrap();
        outputs.push((format!("frame{t}/obj1"), logits));
    }
    outputs
}

#[test]
fn image_path_matches_the_official_predictor() {
    let expected = expected();
    for (key, masks, iou) in image_outputs(None) {
        assert_logits_match(&key, &masks, &expected[&format!("{key}/masks")]);
        assert_close(&key, &iou, &expected[&format!("{key}/iou")], 1e-4);
    }
}

#[test]
fn tracking_matches_the_official_video_predictor() {
    let expected = expected();
    for (key, logits) in tracked_outputs(None) {
        assert_logits_match(&key, &logits, &expected[&key]);
    }
}

// The fixture can fail: a 1 % error in one weight of the decoder must be caught, and so must a
// 1 % error in a weight of the memory path (which only the tracked frames use).

#[test]
fn a_defect_in_the_decoder_is_caught() {
    let expected = expected();
    let outputs = image_outputs(Some(("sam_mask_decoder.output_upscaling.0.weight", 1.01)));
    assert!(
        outputs
            .iter()
            .any(|(key, masks, _)| !logits_match(masks, &expected[&format!("{key}/masks")])),
        "the image path replayed with a defect still matches"
    );
}

#[test]
fn a_defect_in_the_memory_path_is_caught() {
    let expected = expected();
    let outputs = tracked_outputs(Some(("memory_encoder.out_proj.weight", 1.01)));
    let (first, tracked) = outputs.split_first().unwrap();
    assert!(
        logits_match(&first.1, &expected[&first.0]),
        "frame 0 does not use the memory"
    );
    assert!(
        tracked
            .iter()
            .any(|(key, logits)| !logits_match(logits, &expected[key])),
        "the tracked frames replayed with a defect in the memory encoder still match"
    );
}
