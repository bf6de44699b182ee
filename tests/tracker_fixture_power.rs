//! The video fixtures can fail: the tracker replayed with deliberate defects must miss them.

mod common;

use candle_core::DType;
use common::video::*;
use gstsam2refiner::tracker::FrameResize;

#[track_caller]
fn caught(
    case: &str,
    what: &str,
    prompts: Vec<gstsam2refiner::prompt::Prompt>,
    adjust: impl FnOnce(&mut gstsam2refiner::tracker::TrackerOptions),
) {
    let recorded = replay_video(case, &prompts, adjust);
    assert!(
        !video_matches(&recorded, &video_expected(case)),
        "{case}: {what} still matches"
    );
}

#[test]
fn a_correction_that_does_not_become_conditioning_is_caught() {
    for case in common::CASES {
        caught(
            case,
            "correction kept as a plain memory",
            video_prompts(case),
            |o| o.corrections_become_conditioning = false,
        );
    }
}

#[test]
fn frames_not_resized_like_the_official_loader_are_caught() {
    for case in common::CASES {
        caught(
            case,
            "bilinear instead of PIL bicubic",
            video_prompts(case),
            |o| o.frame_resize = FrameResize::Bilinear,
        );
    }
}

#[test]
fn a_prompt_applied_one_frame_late_is_caught() {
    for case in common::CASES {
        let prompts = video_prompts(case).into_iter().map(|mut p| {
            if p.frame > 0 {
                p.frame += 1;
            }
            p
        });
        caught(case, "prompts one frame late", prompts.collect(), |_| {});
    }
}

#[test]
fn memories_stored_otherwise_than_the_reference_are_caught() {
    // s192's reference stores bf16 as the official predictor: f32 memories must differ from it.
    assert_eq!(memory_dtype("s192"), DType::BF16);
    caught("s192", "f32 memories", video_prompts("s192"), |o| {
        o.memory_dtype = DType::F32
    });
    // And t256's reference keeps f32: bf16 memories differ from it.
    caught("t256", "bf16 memories", video_prompts("t256"), |o| {
        o.memory_dtype = DType::BF16
    });
}

#[test]
fn forgetting_memories_around_prompts_is_caught() {
    for case in common::CASES {
        caught(
            case,
            "memories cleared around prompts",
            video_prompts(case),
            |o| o.clear_memories_around_prompts = true,
        );
    }
}
