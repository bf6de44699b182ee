//! The tracker's calls into the model: one plain tracking step for a batch of objects, one
//! prompted step for an object, and what is kept of each (the official `compact_current_out`).

use candle_core::{DType, Tensor};

use super::frames::HeldFrame;
use super::memory_bank::StoredOutput;
use super::options::{FrameResize, TrackerOptions};
use super::{FrameOutput, ObjectId, ObjectOutput};
use crate::error::{Error, Result};
use crate::image::{RgbImage, resize_bicubic};
use crate::model::fill_holes::fill_holes;
use crate::model::refiner::{Click, MemoryMask, RefineStep};
use crate::model::resample::{Filter, resample};
use crate::model::sam2_base::{SamHeadsOutput, apply_non_overlapping_constraints};
use crate::model::transforms::{image_to_input, normalize, upsample_logits};
use crate::model::{FrameFeatures, ObjectMemory, PointInputs, Sam2Base, TrackStepInput};
use crate::prompt::Prompt;

/// A frame as the model's input [1, 3, S, S], on the model's device.
pub(crate) fn frame_input(
    model: &Sam2Base,
    image: &RgbImage,
    resize: FrameResize,
) -> Result<Tensor> {
    let _span = tracing::trace_span!("frame_input").entered();
    let s = model.config.image_size;
    let device = model.device();
    match resize {
        FrameResize::Pil => {
            // `_load_img_as_tensor`: PIL's resize, then /255 in float64, stored as float32.
            let resized = if (image.width, image.height) == (s, s) {
                image.clone()
            } else {
                resize_bicubic(image, s, s)
            };
            let lut: Vec<f32> = (0..256).map(|v| (v as f64 / 255.0) as f32).collect();
            let mut planar = vec![0f32; 3 * s * s];
            for (i, px) in resized.pixels.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    planar[c * s * s + i] = lut[px[c] as usize];
                }
            }
            let x = Tensor::from_vec(planar, (3, s, s), device)?;
            Ok(normalize(&x)?.to_dtype(model.dtype())?.unsqueeze(0)?)
        }
        FrameResize::Bilinear => Ok(image_to_input(&image.to_tensor(device)?, s, model.dtype())?),
    }
}

/// What is kept of a step's result for one object (batch row `row`).
fn keep(
    options: &TrackerOptions,
    heads: &SamHeadsOutput,
    row: usize,
    memory: Option<&Tensor>,
) -> Result<StoredOutput> {
    let pick = |t: &Tensor| t.narrow(0, row, 1);
    let mut low_res = pick(&heads.low_res_masks)?.to_dtype(DType::F32)?;
    if options.fill_hole_area > 0 {
        low_res = fill_holes_tensor(&low_res, options.fill_hole_area)?;
    }
    Ok(StoredOutput {
        low_res,
        obj_ptr: pick(&heads.obj_ptr)?,
        object_score: pick(&heads.object_score_logits)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?[0],
        iou: pick(&heads.iou)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?[0],
        memory: match memory {
            Some(m) => Some(m.narrow(0, row, 1)?.to_dtype(options.memory_dtype)?),
            None => None,
        },
        refined: match &heads.refined_masks {
            Some(r) => {
                let r = r.row(row)?;
                let logits = r.logits.to_dtype(DType::F32)?;
                Some(r.with_logits(logits))
            }
            None => None,
        },
    })
}

/// `fill_holes_in_mask_scores` on a [1, 1, h, w] tensor.
fn fill_holes_tensor(t: &Tensor, area: usize) -> Result<Tensor> {
    let (_, _, h, w) = t.dims4()?;
    let mut v = t.flatten_all()?.to_vec1::<f32>()?;
    fill_holes(&mut v, (h, w), area);
    Ok(Tensor::from_vec(v, (1, 1, h, w), t.device())?)
}

/// Plain tracking of a batch of objects (equal bank sizes) on one frame.
pub(crate) fn track(
    model: &Sam2Base,
    options: &TrackerOptions,
    features: &FrameFeatures,
    objects: &[ObjectMemory],
    refine: Option<RefineStep>,
) -> Result<Vec<StoredOutput>> {
    let out = model.track_step(&TrackStepInput {
        features,
        is_init_cond_frame: false,
        objects,
        max_pointer_distance: model.config.max_obj_ptrs_in_encoder.saturating_sub(1),
        points: None,
        mask_input: None,
        prev_mask_logits: None,
        run_mem_encoder: true,
        batch: objects.len(),
        refine,
    })?;
    let memory = out.memory.as_ref().map(|(m, _)| m);
    (0..objects.len())
        .map(|row| keep(options, &out.heads, row, memory))
        .collect()
}

/// A prompted step: a first prompt (`correction` None) or a correction of the frame's tracked
/// output (its low-res logits and the memories the frame reads). The memory is then encoded from
/// the kept logits, binarised, as the official predictor does before tracking on
/// (`propagate_in_video_preflight`). With a refiner, the prompt's clicks are pinned in its guided
/// filter's input when `options.pin_clicks` says so.
pub(crate) fn prompt(
    model: &Sam2Base,
    options: &TrackerOptions,
    frame: &HeldFrame,
    prompt: &Prompt,
    correction: Option<(&Tensor, &ObjectMemory)>,
    refine: Option<RefineStep>,
) -> Result<StoredOutput> {
    let device = model.device();
    let s = model.config.image_size as f32;
    let (w, h) = frame.size;
    let (points, mask_input, clicks) = match &prompt.mask {
        Some(mask) => {
            let m: Vec<f32> = mask.data.iter().map(|&v| f32::from(v != 0)).collect();
            let m = Tensor::from_vec(m, (1, 1, mask.height, mask.width), device)?;
            let size = model.config.image_size;
            let m = if (mask.width, mask.height) == (size, size) {
                m
            } else {
                // `add_new_mask`: antialiased bilinear to the input size, then >= 0.5.
                resample(&m, Filter::BilinearAntialias, size, size)?
                    .ge(0.5)?
                    .to_dtype(DType::F32)?
            };
            (None, Some(m.to_dtype(model.dtype())?), Vec::new())
        }
        None => {
            // Pixels of the frame -> pixels of the S×S input; a box goes first, as two corners.
            let to_input = |[x, y]: [f32; 2]| [x / w as f32 * s, y / h as f32 * s];
            let mut coords = Vec::new();
            let mut labels = Vec::new();
            if let Some([x0, y0, x1, y1]) = prompt.bbox {
                coords.extend([to_input([x0, y0]), to_input([x1, y1])]);
                labels.extend([2f32, 3.0]);
            }
            coords.extend(prompt.points.iter().map(|&p| to_input(p)));
            labels.extend(prompt.labels.iter().map(|&l| l as f32));
            let clicks = Click::from_points(&coords, &labels);
            let n = coords.len();
            let points = PointInputs {
                coords: Tensor::from_vec(coords.concat(), (1, n, 2), device)?
                    .to_dtype(model.dtype())?,
                labels: Tensor::from_vec(labels, (1, n), device)?,
            };
            (Some(points), None, clicks)
        }
    };
    // A correction by clicks feeds the frame's previous logits (clamped) as the mask prompt.
    let prev = match (correction, &points) {
        (Some((low_res, _)), Some(_)) => {
            Some(low_res.clamp(-32f32, 32f32)?.to_dtype(model.dtype())?)
        }
        _ => None,
    };
    let objects: Vec<ObjectMemory> = correction.map(|(_, m)| m.clone()).into_iter().collect();
    let pins: &[Click] = if options.pin_clicks { &clicks } else { &[] };
    let refine = refine.map(|step| RefineStep { pins, ..step });
    let out = model.track_step(&TrackStepInput {
        features: &frame.features,
        is_init_cond_frame: correction.is_none(),
        objects: &objects,
        max_pointer_distance: model.config.max_obj_ptrs_in_encoder.saturating_sub(1),
        points: points.as_ref(),
        mask_input: mask_input.as_ref(),
        prev_mask_logits: prev.as_ref(),
        run_mem_encoder: false,
        batch: 1,
        refine,
    })?;
    let mut stored = keep(options, &out.heads, 0, None)?;
    if model.config.num_maskmem > 0 {
        let size = model.config.image_size;
        let high_res = match (&stored.refined, refine.map(|r| r.memory_mask)) {
            (Some(refined), Some(MemoryMask::Refined)) => refined.logits.to_dtype(model.dtype())?,
            _ => upsample_logits(&stored.low_res, (size, size))?.to_dtype(model.dtype())?,
        };
        let (memory, _) = model.encode_new_memory(
            &frame.features,
            &high_res,
            &out.heads.object_score_logits,
            true,
        )?;
        stored.memory = Some(memory.to_dtype(options.memory_dtype)?);
    }
    Ok(stored)
}

pub(crate) fn object_output(
    object: ObjectId,
    out: &StoredOutput,
    conditioning: bool,
) -> Result<ObjectOutput> {
    Ok(ObjectOutput {
        object,
        low_res: out.low_res.squeeze(0)?.squeeze(0)?,
        refined: out.refined.clone(),
        object_score: out.object_score,
        iou: out.iou,
        conditioning,
    })
}

/// Each object's logits at the frame's size, with the non-overlap constraint when asked.
/// `frame`: the frame itself ([1, 3, H, W] in [0, 1]) where it is still held, for the refined
/// masks' guided filter; without it a refined mask is its S×S logits upsampled.
pub(crate) fn frame_logits(
    output: &FrameOutput,
    frame: Option<&Tensor>,
    non_overlap: bool,
) -> Result<Vec<(ObjectId, Tensor)>> {
    let (w, h) = output.size;
    if output.objects.is_empty() {
        return Ok(Vec::new());
    }
    // Refined masks where the refiner ran, SAM 2's low-res logits elsewhere.
    let mut all = if output.objects.iter().any(|o| o.refined.is_some()) {
        let per_object: Vec<Tensor> = output
            .objects
            .iter()
            .map(|o| refined_at_frame(o, frame, (h, w)))
            .collect::<Result<_>>()?;
        Tensor::stack(&per_object, 0)?
    } else {
        let low: Vec<Tensor> = output
            .objects
            .iter()
            .map(|o| o.low_res.unsqueeze(0))
            .collect::<candle_core::Result<_>>()?;
        upsample_logits(&Tensor::stack(&low, 0)?, (h, w))? // [N, 1, H, W]
    };
    if non_overlap {
        all = apply_non_overlapping_constraints(&all)?;
    }
    output
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| Ok((o.object, all.get(i)?.squeeze(0)?)))
        .collect::<Result<Vec<_>>>()
        .map_err(|e: Error| e)
}

/// One object's logits [1, H, W] at the frame's size: its refined mask brought there with the
/// frame, else SAM 2's low-res logits upsampled.
fn refined_at_frame(
    object: &ObjectOutput,
    frame: Option<&Tensor>,
    size: (usize, usize),
) -> Result<Tensor> {
    let logits = match (&object.refined, frame) {
        (Some(refined), Some(frame)) if object.object_score > 0.0 => refined.at_frame(frame)?,
        // Absent (its logits are all the no-object score), or the frame is no longer held.
        (Some(refined), _) => upsample_logits(&refined.logits, size)?,
        (None, _) => upsample_logits(&object.low_res.unsqueeze(0)?.unsqueeze(0)?, size)?,
    };
    Ok(logits.squeeze(0)?)
}
