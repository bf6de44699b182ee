//! The image path (`sam2/sam2_image_predictor.py`): one image, embedded once, then masks for
//! any number of prompts; with a refiner, its modules in between (as
//! `models/refiner/image_path.py`).
//!
//! With a refiner, two rules for clicks (both on by default, each a field to turn off): the
//! guided filter's input holds each click's label around it (`pin_clicks`), and a correction is
//! refused when it honours fewer of the clicks than the mask it corrects (`click_guard`). A
//! correction is clicks with a mask prompt, as the interactive loop sends them: the previous
//! prediction's `low_res`, for the same clicks but the newest (the last). Refined with those
//! clicks' pins, the mask prompt is the previous output (up to its clamp at ±32); the decoder's
//! mask refined with every pin is the new one; each is read at every click's pixel of its
//! refined logits at S. When the new honours fewer, the previous output and mask prompt come
//! back unchanged. Together the rules keep the click curve from falling where a later click
//! would undo earlier ones (the refiner's model card, "The click curve").

use candle_core::{DType, Result, Tensor, bail};

use super::fill_holes::replace_small_regions;
use super::refiner::clicks::{self, Click};
use super::refiner::crops::{self, CELL, LocalFeatures};
use super::refiner::{RefineMode, Refiner};
use super::sam::prompt_encoder::PointInputs;
use super::sam2_base::Sam2Base;
use super::transforms::{image_to_input, rgb_to_unit, upsample_logits};

/// A prompt for one object, in pixels of the original image.
#[derive(Debug, Clone, Default)]
pub struct ImagePrompt {
    /// (x, y) clicks.
    pub points: Vec<[f32; 2]>,
    /// 1 positive, 0 negative, one per point.
    pub labels: Vec<i32>,
    /// (x0, y0, x1, y1).
    pub bbox: Option<[f32; 4]>,
    /// Low-resolution mask logits [1, 1, 4h, 4w], e.g. a previous prediction's `low_res`.
    pub mask_input: Option<Tensor>,
}

impl ImagePrompt {
    /// Clicks and/or a box, without a mask input.
    pub fn clicks_and_box(points: &[[f32; 2]], labels: &[i32], bbox: Option<[f32; 4]>) -> Self {
        Self {
            points: points.to_vec(),
            labels: labels.to_vec(),
            bbox,
            mask_input: None,
        }
    }

    /// One click and no box is ambiguous: the official predictor is asked for three candidates
    /// (`multimask_output=True`), of which the best by predicted IoU is kept.
    pub fn is_ambiguous(&self) -> bool {
        self.points.len() == 1 && self.bbox.is_none() && self.mask_input.is_none()
    }
}

/// The predicted masks for one prompt.
#[derive(Debug, Clone)]
pub struct ImagePrediction {
    /// Mask logits at the original image size, [K, H, W] (K = 3 with multimask, else 1).
    pub masks: Tensor,
    /// Predicted IoU, `[K]`.
    pub iou: Tensor,
    /// Low-resolution logits clamped to ±32, [K, 4h, 4w]: a mask prompt for a next prediction
    /// (SAM 2's own, refined or not).
    pub low_res: Tensor,
    /// Whether the refiner refined `masks`.
    pub refined: bool,
    /// Per mask, whether the click guard refused the correction and returned the previous
    /// output (then `masks` and `low_res` are the mask prompt's, `iou` still the decoder's).
    pub kept_mask_prompt: Vec<bool>,
}

impl ImagePrediction {
    /// The index of the mask with the highest predicted IoU.
    pub fn best_index(&self) -> Result<usize> {
        Ok(self.iou.argmax(0)?.to_scalar::<u32>()? as usize)
    }

    /// The click guard's refusal: each mask marked in `kept_mask_prompt` replaced by the previous
    /// output `masks` [1, H, W], and its `low_res` by the mask prompt [1, 4h, 4w].
    fn keep_previous(&mut self, masks: &Tensor, mask_prompt: &Tensor) -> Result<()> {
        let pick =
            |kept: bool, new: Tensor, previous: &Tensor| if kept { previous.clone() } else { new };
        let mut out_masks = Vec::new();
        let mut out_low = Vec::new();
        for (i, &kept) in self.kept_mask_prompt.iter().enumerate() {
            out_masks.push(pick(kept, self.masks.narrow(0, i, 1)?, masks));
            out_low.push(pick(kept, self.low_res.narrow(0, i, 1)?, mask_prompt));
        }
        self.masks = Tensor::cat(&out_masks, 0)?;
        self.low_res = Tensor::cat(&out_low, 0)?;
        Ok(())
    }
}

/// Features of the image set last.
#[derive(Debug, Clone)]
struct ImageFeatures {
    image_embed: Tensor,
    high_res: Option<(Tensor, Tensor)>,
    orig_hw: (usize, usize),
    /// What the refiner needs beyond SAM 2's features (with a refiner and an RGB image).
    refine: Option<RefineInputs>,
}

#[derive(Debug, Clone)]
struct RefineInputs {
    /// The image, u8 [H, W, 3] on the model's device: crops are cut from it.
    rgb: Tensor,
    /// The normalised model input [1, 3, S, S].
    input: Tensor,
    /// In quadrant mode, the quadrants' features (shared by every prompt).
    quadrants: Option<LocalFeatures>,
}

#[derive(Debug)]
pub struct ImagePredictor<'a> {
    model: &'a Sam2Base,
    refiner: Option<(&'a Refiner, RefineMode)>,
    features: Option<ImageFeatures>,
    /// Fill background holes of up to this many low-res pixels (0: off, the official default).
    pub max_hole_area: usize,
    /// Remove foreground specks of up to this many low-res pixels (0: off, the official default).
    pub max_sprinkle_area: usize,
    /// Refining, pin each click's label in the guided filter's input around it.
    pub pin_clicks: bool,
    /// Refining, refuse a correction that honours fewer clicks than the mask prompt's mask.
    pub click_guard: bool,
}

impl<'a> ImagePredictor<'a> {
    pub fn new(model: &'a Sam2Base) -> Self {
        Self {
            model,
            refiner: None,
            features: None,
            max_hole_area: 0,
            max_sprinkle_area: 0,
            pin_clicks: true,
            click_guard: true,
        }
    }

    /// A predictor whose masks the refiner refines in `mode` (`Off`: plain SAM 2, bit for bit).
    /// Refinement needs the image itself: set it with `set_image`.
    pub fn with_refiner(model: &'a Sam2Base, refiner: &'a Refiner, mode: RefineMode) -> Self {
        Self {
            refiner: Some((refiner, mode)),
            ..Self::new(model)
        }
    }

    fn refine_mode(&self) -> RefineMode {
        self.refiner.map_or(RefineMode::Off, |(_, mode)| mode)
    }

    /// `set_image`: an RGB u8 image [H, W, 3].
    pub fn set_image(&mut self, rgb: &Tensor) -> Result<()> {
        let (h, w, channels) = rgb.dims3()?;
        if channels != 3 {
            bail!("expected an RGB image [H, W, 3], got {:?}", rgb.dims());
        }
        let rgb = rgb.to_device(self.model.device())?;
        let input = image_to_input(&rgb, self.model.config.image_size, self.model.dtype())?;
        self.set_input(&input, (h, w))?;
        let mode = self.refine_mode();
        if mode != RefineMode::Off {
            let s = self.model.config.image_size;
            let reads_crops = self.refiner.is_some_and(|(r, _)| r.reads_crops());
            let quadrants = match mode {
                RefineMode::Quadrants if reads_crops => Some(crops::local_features(
                    self.model,
                    &rgb,
                    &crops::quadrant_origins(s),
                )?),
                _ => None,
            };
            if let Some(features) = self.features.as_mut() {
                features.refine = Some(RefineInputs {
                    rgb,
                    input,
                    quadrants,
                });
            }
        }
        Ok(())
    }

    /// Embeds an already transformed input [1, 3, S, S] of an image of size `orig_hw`.
    pub fn set_input(&mut self, input: &Tensor, orig_hw: (usize, usize)) -> Result<()> {
        let features = self.model.forward_image(input)?;
        let mut image_embed = features.vision_features().clone();
        if self.model.config.directly_add_no_mem_embed {
            let c = image_embed.dim(1)?;
            image_embed =
                image_embed.broadcast_add(&self.model.no_mem_embed().reshape((1, c, 1, 1))?)?;
        }
        let high_res = features
            .high_res(self.model.config.num_feature_levels())
            .map(|(a, b)| (a.clone(), b.clone()));
        self.features = Some(ImageFeatures {
            image_embed,
            high_res,
            orig_hw,
            refine: None,
        });
        Ok(())
    }

    /// `predict(..., return_logits=True)`.
    pub fn predict(&self, prompt: &ImagePrompt, multimask_output: bool) -> Result<ImagePrediction> {
        self.predict_with(prompt, multimask_output, true)
    }

    /// `predict`, refined when `refine` and the predictor has a refiner in a mode other than off.
    fn predict_with(
        &self,
        prompt: &ImagePrompt,
        multimask_output: bool,
        refine: bool,
    ) -> Result<ImagePrediction> {
        let Some(features) = &self.features else {
            bail!("an image must be set before prediction");
        };
        let model = self.model;
        let device = model.device();
        let dtype = model.dtype();
        let s = model.config.image_size as f32;
        let (h, w) = features.orig_hw;
        if prompt.points.len() != prompt.labels.len() {
            bail!(
                "{} points but {} labels",
                prompt.points.len(),
                prompt.labels.len()
            );
        }
        // Pixels of the image -> pixels of the S×S model input: (x / w) * S, (y / h) * S.
        let to_input = |[x, y]: [f32; 2]| [x / w as f32 * s, y / h as f32 * s];
        let mut coords: Vec<[f32; 2]> = Vec::new();
        let mut labels: Vec<f32> = Vec::new();
        if let Some([x0, y0, x1, y1]) = prompt.bbox {
            // Boxes go first, as two corner points labelled 2 and 3.
            coords.extend([to_input([x0, y0]), to_input([x1, y1])]);
            labels.extend([2.0, 3.0]);
        }
        coords.extend(prompt.points.iter().map(|&p| to_input(p)));
        labels.extend(prompt.labels.iter().map(|&l| l as f32));
        let clicks = Click::from_points(&coords, &labels);
        let points = if coords.is_empty() {
            None
        } else {
            let n = coords.len();
            Some(PointInputs {
                coords: Tensor::from_vec(coords.concat(), (1, n, 2), device)?.to_dtype(dtype)?,
                labels: Tensor::from_vec(labels, (1, n), device)?,
            })
        };
        let mask_input = match &prompt.mask_input {
            Some(m) => Some(m.to_device(device)?.to_dtype(dtype)?),
            None => None,
        };
        let (sparse, dense) = model
            .sam_prompt_encoder
            .forward(points.as_ref(), mask_input.as_ref())?;
        let refine = match (self.refiner, &features.refine) {
            (Some((refiner, mode)), Some(inputs)) if refine && mode != RefineMode::Off => Some((
                refiner,
                inputs,
                if refiner.reads_crops() {
                    Some(self.local_for(prompt, inputs, multimask_output)?)
                } else {
                    None
                },
            )),
            _ => None,
        };
        // SAM 2's decoder inputs, enhanced by localization augment and prompt retargeting when
        // refining.
        let (image_embed, high_res, sparse, dense) = match &refine {
            None => (
                features.image_embed.clone(),
                features.high_res.clone(),
                sparse,
                dense,
            ),
            Some((refiner, _, local)) => {
                let Some((feat_s0, feat_s1)) = &features.high_res else {
                    bail!(
                        "the refiner needs a model with high-resolution features (use_high_res_features_in_sam)"
                    );
                };
                let global = [
                    feat_s0.clone(),
                    feat_s1.clone(),
                    features.image_embed.clone(),
                ];
                let [feat_s0, feat_s1, image_embed] = match local {
                    Some(local) => refiner.localization_augment.forward(&global, local)?,
                    None => global,
                };
                let (sparse, dense) = refiner.prompt_retargeting.forward(
                    &sparse,
                    &dense,
                    points.as_ref(),
                    &image_embed,
                    mask_input.as_ref(),
                    CELL as f32,
                )?;
                (image_embed, Some((feat_s0, feat_s1)), sparse, dense)
            }
        };
        let decoded = model.sam_mask_decoder.forward(
            &image_embed,
            model.sam_prompt_encoder.dense_pe(),
            &sparse,
            &dense,
            multimask_output,
            false,
            high_res.as_ref().map(|(a, b)| (a, b)),
        )?;
        let low_res = decoded.masks.to_dtype(DType::F32)?.squeeze(0)?; // [K, 4h, 4w]
        let k = low_res.dim(0)?;
        let cleaned = self.clean_small_regions(&low_res)?;
        let iou = decoded.iou.to_dtype(DType::F32)?.squeeze(0)?;
        let low_res = low_res.clamp(-32f32, 32f32)?;
        let Some((refiner, inputs, local)) = &refine else {
            return Ok(ImagePrediction {
                masks: upsample_logits(&cleaned, (h, w))?,
                iou,
                low_res,
                refined: false,
                kept_mask_prompt: vec![false; k],
            });
        };
        let local = match local {
            Some(l) => Some(crops::stride2_local(l, model.config.image_size)?),
            None => None,
        };
        // The crops' features on the stride-2 grid and their coverage, shared by both refinements.
        let local = local.as_ref().map(|(l, c)| (l, c));
        let pins: &[Click] = if self.pin_clicks { &clicks } else { &[] };
        let refined = refiner.mask_refinement.forward(
            &cleaned.unsqueeze(0)?.to_dtype(dtype)?,
            &decoded.upscaled,
            &inputs.input,
            local,
            pins,
        )?;
        let frame = rgb_to_unit(&inputs.rgb)?;
        let mut prediction = ImagePrediction {
            masks: refined.at_frame(&frame)?.squeeze(0)?,
            iou,
            low_res,
            refined: true,
            kept_mask_prompt: vec![false; k],
        };
        if let (true, Some(mask), Some((_, before))) =
            (self.click_guard, &mask_input, clicks.split_last())
        {
            let previous = refiner.mask_refinement.forward(
                mask,
                &decoded.upscaled,
                &inputs.input,
                local,
                if self.pin_clicks { before } else { &[] },
            )?;
            let new = clicks::honoured(&refined.logits.squeeze(0)?, &clicks)?;
            let old = clicks::honoured(&previous.logits.squeeze(0)?, &clicks)?[0];
            prediction.kept_mask_prompt = new.iter().map(|&n| n < old).collect();
            if prediction.kept_mask_prompt.contains(&true) {
                let previous_masks = previous.at_frame(&frame)?.squeeze(0)?;
                let mask = mask
                    .squeeze(0)?
                    .to_dtype(DType::F32)?
                    .clamp(-32f32, 32f32)?;
                prediction.keep_previous(&previous_masks, &mask)?;
            }
        }
        Ok(prediction)
    }

    /// The crops' features for this prompt: the quadrants', or in ROI mode a window on the
    /// object: on the prompt's box, or else on the plain SAM 2 mask's box (a first, unrefined
    /// decoder pass), or else on the clicks.
    fn local_for(
        &self,
        prompt: &ImagePrompt,
        inputs: &RefineInputs,
        multimask_output: bool,
    ) -> Result<LocalFeatures> {
        if let Some(quadrants) = &inputs.quadrants {
            return Ok(quadrants.clone());
        }
        let Some(features) = &self.features else {
            bail!("an image must be set before prediction");
        };
        let (h, w) = features.orig_hw;
        let frame_box = match prompt.bbox {
            Some(b) => b,
            None => {
                let plain = self.predict_with(prompt, multimask_output, false)?;
                let best = plain.masks.get(plain.best_index()?)?;
                match crops::positive_box(&best)? {
                    Some(b) => b,
                    None => {
                        crops::points_box(&prompt.points).unwrap_or([0.0, 0.0, w as f32, h as f32])
                    }
                }
            }
        };
        let s = self.model.config.image_size;
        let (sx, sy) = (s as f32 / w as f32, s as f32 / h as f32);
        let input_box = [
            frame_box[0] * sx,
            frame_box[1] * sy,
            frame_box[2] * sx,
            frame_box[3] * sy,
        ];
        let origin = crops::roi_origin(input_box, s);
        crops::local_features(self.model, &inputs.rgb, &[origin])
    }

    /// The optional hole and sprinkle removal of `postprocess_masks`, on the low-res logits.
    fn clean_small_regions(&self, low_res: &Tensor) -> Result<Tensor> {
        if self.max_hole_area == 0 && self.max_sprinkle_area == 0 {
            return Ok(low_res.clone());
        }
        let (k, h, w) = low_res.dims3()?;
        let mut data = low_res.flatten_all()?.to_vec1::<f32>()?;
        for plane in data.chunks_mut(h * w) {
            // Threshold 0: holes are regions <= 0, sprinkles regions > 0 (mask_threshold ± 10),
            // both labelled on the logits as they came out of the decoder.
            let source = plane.to_vec();
            replace_small_regions(
                &source,
                plane,
                (h, w),
                |v| v <= 0.0,
                self.max_hole_area,
                10.0,
            );
            replace_small_regions(
                &source,
                plane,
                (h, w),
                |v| v > 0.0,
                self.max_sprinkle_area,
                -10.0,
            );
        }
        Tensor::from_vec(data, (k, h, w), low_res.device())
    }
}
