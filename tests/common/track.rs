//! Replaying a recorded tracking schedule (`track.json`) with our engine.
//!
//! Each step reads the memories and pointers that *our* earlier steps produced, as the tracker
//! will, so errors would compound across the clip rather than be reset by official inputs.

use std::collections::HashMap;

use super::*;
use candle_core::{Device, Tensor};
use gstsam2refiner::model::{
    FrameFeatures, MemoryRef, ObjectMemory, PointInputs, PointerRef, Sam2Base, TrackStepInput,
    TrackStepOutput,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Schedule {
    pub clip_frames: usize,
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
pub struct Step {
    pub step: usize,
    pub object: u32,
    pub frame: usize,
    pub is_init_cond_frame: bool,
    pub t_diff_max: usize,
    pub run_mem_encoder: bool,
    pub stored_as: String,
    pub points: Option<Vec<[f32; 2]>>,
    pub labels: Option<Vec<i32>>,
    pub mask_input: bool,
    pub prev_logits: bool,
    pub memories: Vec<MemorySlot>,
    pub pointers: Vec<PointerSlot>,
    pub num_obj_ptr_tokens: usize,
}

#[derive(Debug, Deserialize)]
pub struct MemorySlot {
    pub step: usize,
    pub t_pos: usize,
}

#[derive(Debug, Deserialize)]
pub struct PointerSlot {
    pub step: usize,
    pub distance: i64,
}

pub fn schedule(case: &str) -> Schedule {
    let text = std::fs::read_to_string(fixture_dir(case).join("track.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// How a replay may deviate from the official schedule, to prove the fixture can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Defect {
    #[default]
    None,
    /// Pointers handed over zeroed.
    ZeroPointers,
    /// Every memory read as a conditioning frame (temporal slot 0).
    FlattenTemporalSlots,
    /// Pointer distances all reported as 0.
    ZeroPointerDistances,
    /// The memory encoder fed an empty mask instead of the prediction.
    MaskIgnoredInMemory,
    /// The memory encoder fed the inverted prediction.
    MaskInvertedInMemory,
}

pub fn points_of(step: &Step, device: &Device) -> Option<PointInputs> {
    let points = step.points.as_ref()?;
    let labels = step.labels.as_ref().unwrap();
    let n = points.len();
    Some(PointInputs {
        coords: Tensor::from_vec(points.concat(), (1, n, 2), device).unwrap(),
        labels: Tensor::from_vec(
            labels.iter().map(|&l| l as f32).collect::<Vec<_>>(),
            (1, n),
            device,
        )
        .unwrap(),
    })
}

/// Replays a case's schedule with our engine; returns each step's output.
pub fn replay(
    case: &str,
    model: &Sam2Base,
    expected: &Expected,
    defect: Defect,
) -> Vec<TrackStepOutput> {
    let dev = device();
    let sched = schedule(case);
    let features: Vec<FrameFeatures> = (0..sched.clip_frames)
        .map(|t| model.forward_image(&frame_input(case, t, &dev)).unwrap())
        .collect();
    let mut outputs: Vec<TrackStepOutput> = Vec::new();
    let mut by_frame: HashMap<(u32, usize), usize> = HashMap::new();
    for step in &sched.steps {
        assert_eq!(step.step, outputs.len());
        let zeroed: Vec<Tensor> = step
            .pointers
            .iter()
            .map(|p| outputs[p.step].heads.obj_ptr.zeros_like().unwrap())
            .collect();
        let memories: Vec<MemoryRef> = step
            .memories
            .iter()
            .map(|m| {
                let (features, pos_enc) = outputs[m.step].memory.as_ref().expect("a stored memory");
                let t_pos = if defect == Defect::FlattenTemporalSlots {
                    0
                } else {
                    m.t_pos
                };
                MemoryRef {
                    features,
                    pos_enc,
                    t_pos,
                }
            })
            .collect();
        let pointers: Vec<PointerRef> = step
            .pointers
            .iter()
            .enumerate()
            .map(|(i, p)| PointerRef {
                pointer: if defect == Defect::ZeroPointers {
                    &zeroed[i]
                } else {
                    &outputs[p.step].heads.obj_ptr
                },
                distance: if defect == Defect::ZeroPointerDistances {
                    0
                } else {
                    p.distance
                },
            })
            .collect();
        let points = points_of(step, &dev);
        let mask_input = step
            .mask_input
            .then(|| expected.on(&format!("track/step{}/mask_input", step.step), &dev));
        // A correction's previous logits are our own plain-tracking output of that frame.
        let prev_logits = step.prev_logits.then(|| {
            outputs[by_frame[&(step.object, step.frame)]]
                .heads
                .low_res_masks
                .clone()
        });
        let objects = [ObjectMemory { memories, pointers }];
        let input = TrackStepInput {
            features: &features[step.frame],
            is_init_cond_frame: step.is_init_cond_frame,
            objects: &objects,
            max_pointer_distance: step.t_diff_max,
            points: points.as_ref(),
            mask_input: mask_input.as_ref(),
            prev_mask_logits: prev_logits.as_ref(),
            run_mem_encoder: step.run_mem_encoder,
            batch: 1,
            refine: None,
        };
        let mask_defect = matches!(
            defect,
            Defect::MaskIgnoredInMemory | Defect::MaskInvertedInMemory
        );
        let mut out = model
            .track_step(&TrackStepInput {
                run_mem_encoder: step.run_mem_encoder && !mask_defect,
                ..input
            })
            .unwrap();
        if mask_defect {
            let masks = &out.heads.high_res_masks;
            let altered = if defect == Defect::MaskIgnoredInMemory {
                (masks.zeros_like().unwrap() - 20.0).unwrap()
            } else {
                masks.neg().unwrap()
            };
            out.memory = Some(
                model
                    .encode_new_memory(
                        &features[step.frame],
                        &altered,
                        &out.heads.object_score_logits,
                        points.is_some(),
                    )
                    .unwrap(),
            );
        }
        by_frame.insert((step.object, step.frame), outputs.len());
        outputs.push(out);
    }
    outputs
}

/// Whether every step's mask logits meet the contract: what a user sees. The defect tests use
/// this alone, to show that a wrong memory or pointer shows in the masks of later frames.
pub fn all_logits_match(outputs: &[TrackStepOutput], expected: &Expected) -> bool {
    outputs.iter().enumerate().all(|(s, out)| {
        logits_match(
            &out.heads.low_res_masks,
            &expected.get(&format!("track/step{s}/pred_masks")),
        )
    })
}

/// Whether every step's outputs meet the contract.
pub fn all_steps_match(outputs: &[TrackStepOutput], expected: &Expected) -> bool {
    outputs.iter().enumerate().all(|(s, out)| {
        logits_match(
            &out.heads.low_res_masks,
            &expected.get(&format!("track/step{s}/pred_masks")),
        ) && rel_l2(
            &out.heads.obj_ptr,
            &expected.get(&format!("track/step{s}/obj_ptr")),
        ) <= 1e-4
            && match &out.memory {
                Some((features, _)) => {
                    rel_l2(
                        features,
                        &expected.get(&format!("track/step{s}/maskmem_features")),
                    ) <= 1e-4
                }
                None => true,
            }
    })
}
