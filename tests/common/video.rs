//! Replaying a recorded video schedule (`video/` of a case) through the streaming tracker.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::{Sam2Config, load_model};
use gstsam2refiner::prompt::{Prompt, PromptMask, read_prompt_file};
use gstsam2refiner::tracker::{Tracker, TrackerOptions};

use super::*;

pub fn video_dir(case: &str) -> PathBuf {
    fixture_dir(case).join("video")
}

pub fn video_config(case: &str) -> Sam2Config {
    Sam2Config::load(video_dir(case).join("config.yaml").to_str().unwrap()).unwrap()
}

/// How the case's reference stored memories: bf16 as the official predictor, or f32 (see
/// `VideoCase.memory_dtype` in `make_video_fixtures.py`: why t256 is recorded with f32 memories).
pub fn memory_dtype(case: &str) -> DType {
    let text = std::fs::read_to_string(video_dir(case).join("options.json")).unwrap();
    match serde_json::from_str::<serde_json::Value>(&text).unwrap()["memory_dtype"].as_str() {
        Some("bf16") => DType::BF16,
        Some("f32") => DType::F32,
        other => panic!("{case}: memory_dtype {other:?}"),
    }
}

pub fn num_frames(case: &str) -> usize {
    std::fs::read_dir(video_dir(case).join("frames"))
        .unwrap()
        .count()
}

/// The object prompted by a mask (u8 [H, W]) on its frame.
pub fn mask_prompt(case: &str) -> Prompt {
    let masks =
        candle_core::safetensors::load(video_dir(case).join("masks.safetensors"), &Device::Cpu)
            .unwrap();
    let (key, mask) = masks.iter().next().unwrap();
    let frame: u64 = key.rsplit("frame").next().unwrap().parse().unwrap();
    let object: u32 = key
        .trim_start_matches("obj")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (h, w) = mask.dims2().unwrap();
    let data = mask
        .to_dtype(DType::U8)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    Prompt {
        frame,
        object,
        points: vec![],
        labels: vec![],
        bbox: None,
        mask: Some(PromptMask {
            width: w,
            height: h,
            data,
        }),
    }
}

/// Every prompt of the case, the JSON ones and the mask.
pub fn video_prompts(case: &str) -> Vec<Prompt> {
    let mut prompts = read_prompt_file(&video_dir(case).join("prompts.json")).unwrap();
    prompts.push(mask_prompt(case));
    prompts
}

pub fn video_expected(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(video_dir(case).join("expected.safetensors"), &Device::Cpu)
        .unwrap()
}

/// One object's result on one frame.
pub struct Recorded {
    pub logits: Tensor,
    pub score: f32,
}

/// Pushes the case's frames one by one, applying each frame's prompts right after it (as the
/// CLI does), with the reference's tracker options as changed by `adjust`; returns every
/// output under its fixture key `frame{T}/obj{ID}`.
pub fn replay_video(
    case: &str,
    prompts: &[Prompt],
    adjust: impl FnOnce(&mut TrackerOptions),
) -> Vec<(String, Recorded)> {
    let config = video_config(case);
    let model = load_model(&config, &weights_path(case), DType::F32, &device()).unwrap();
    let mut options = TrackerOptions::for_config(&config);
    options.memory_dtype = memory_dtype(case);
    adjust(&mut options);
    let mut tracker = Tracker::new(model, options);
    let mut recorded = Vec::new();
    for t in 0..num_frames(case) {
        let frame =
            RgbImage::read_png(&video_dir(case).join(format!("frames/{t:04}.png"))).unwrap();
        tracker.push_frame(t as u64, &frame).unwrap();
        for p in prompts.iter().filter(|p| p.frame == t as u64) {
            tracker.add_prompt(p).unwrap();
        }
        let output = tracker.output(t as u64).unwrap();
        for ((object, logits), out) in tracker
            .frame_logits(&output)
            .unwrap()
            .into_iter()
            .zip(&output.objects)
        {
            recorded.push((
                format!("frame{t}/obj{object}"),
                Recorded {
                    logits,
                    score: out.object_score,
                },
            ));
        }
    }
    recorded
}

/// Whether a replay meets the contract on every recorded output, and covers them all.
pub fn video_matches(recorded: &[(String, Recorded)], expected: &HashMap<String, Tensor>) -> bool {
    let official = expected.keys().filter(|k| !k.ends_with("/score")).count();
    recorded.len() == official
        && recorded.iter().all(|(key, r)| {
            expected
                .get(key)
                .is_some_and(|e| logits_match(&r.logits, e))
        })
}
