//! Mask refinement: a cascade from the decoder's stride-4 logits to stride 2 and stride 1
//! (S×S), each step adding a logit correction, through a 1×1 convolution that starts at zero,
//! to SAM 2's own S×S logits; and beside it the guided filter of SAM 2's mask by the image,
//! through a gate that starts at zero: SAM 2 + gate × (filtered − SAM 2) + the corrections.
//! The filter's input holds the user's clicks (`clicks::pin`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::clicks::{self, Click};
use super::guided_filter;
use super::localization_augment::LEVEL_CHANNELS;
use crate::model::kernels::GuidedApply;
use crate::model::nn::{Conv2d, gelu};
use crate::model::resample::{Filter, resample};
use crate::model::transforms::unnormalize;

/// The mask decoder's upscaled embedding (transformer_dim / 8).
const UPSCALED_CHANNELS: usize = 32;
/// Widths at stride 2 and stride 1.
const CHANNELS_S2: usize = 16;
const CHANNELS_S1: usize = 8;

#[derive(Debug)]
pub struct MaskRefinement {
    mask_proj: Conv2d,
    image_s2: Conv2d,
    local_proj: Conv2d,
    fuse_s2: [Conv2d; 2],
    delta_s2: Conv2d,
    image_s1: Conv2d,
    fuse_s1: Conv2d,
    delta_s1: Conv2d,
    /// The guided filter's share of the output (0: off, and not computed).
    pub(super) guided_gate: f64,
    /// Both output layers of the cascade are zero: it adds nothing, and is not computed.
    cascade_silent: bool,
}

/// Mask refinement's output for the decoder's K masks per prompt.
#[derive(Debug, Clone)]
pub struct RefinedMasks {
    /// [B, K, S, S]: the refined logits at the model's input size (what the memory encoder reads).
    pub logits: Tensor,
    /// [B, K, S, S]: (1 − gate) × SAM 2's logits + the cascade's corrections.
    base: Tensor,
    gate: f64,
    /// The guided filter's coefficients at S, a [B·K, 3, S, S] and b [B·K, 1, S, S] (f32), when
    /// its gate is open.
    coefficients: Option<(Tensor, Tensor)>,
}

impl RefinedMasks {
    /// The logits at a frame's resolution [B, K, H, W], for frames [B, 3, H, W] in [0, 1] (f32):
    /// the base upsampled bilinearly, plus gate × the guided filter applied with the frame.
    pub fn at_frame(&self, frame: &Tensor) -> Result<Tensor> {
        let (b, k, s, s_w) = self.base.dims4()?;
        let (frames, c, h, w) = frame.dims4()?;
        if let Some((a, coef_b)) = &self.coefficients
            && frame.device().is_cpu()
            && frame.dtype() == DType::F32
            && frames == 1
        {
            // One fused pass over the frame's pixels (the frame is shared by every mask).
            let planes = Tensor::cat(
                &[
                    &self
                        .base
                        .to_dtype(DType::F32)?
                        .reshape((b * k, 1, s, s_w))?,
                    a,
                    coef_b,
                ],
                1,
            )?;
            let op = GuidedApply {
                gate: self.gate as f32,
                clamp: guided_filter::CLAMP as f32,
            };
            return planes
                .apply_op2_no_bwd(&frame.squeeze(0)?.contiguous()?, &op)?
                .reshape((b, k, h, w));
        }
        self.at_frame_by_tensors(frame, (c, h, w))
    }

    /// `at_frame` in tensor operations, on any device.
    fn at_frame_by_tensors(
        &self,
        frame: &Tensor,
        (c, h, w): (usize, usize, usize),
    ) -> Result<Tensor> {
        let (b, k, _, _) = self.base.dims4()?;
        let out = resample(&self.base.to_dtype(DType::F32)?, Filter::Bilinear, h, w)?;
        let Some((a, coef_b)) = &self.coefficients else {
            return Ok(out);
        };
        let frames = frame
            .unsqueeze(1)?
            .broadcast_as((b, k, c, h, w))?
            .reshape((b * k, c, h, w))?;
        let guided = guided_filter::logits(a, coef_b, &frames)?.reshape((b, k, h, w))?;
        out + (guided * self.gate)?
    }

    /// Batch row `i` (one prompt or object) of every part.
    pub fn row(&self, i: usize) -> Result<Self> {
        let k = self.base.dim(1)?;
        Ok(Self {
            logits: self.logits.narrow(0, i, 1)?,
            base: self.base.narrow(0, i, 1)?,
            gate: self.gate,
            coefficients: match &self.coefficients {
                Some((a, b)) => Some((a.narrow(0, i * k, k)?, b.narrow(0, i * k, k)?)),
                None => None,
            },
        })
    }

    /// The same masks with `logits` replaced (e.g. absent objects set to the no-object score).
    pub fn with_logits(self, logits: Tensor) -> Self {
        Self { logits, ..self }
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> usize {
        let of = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        of(&self.logits)
            + of(&self.base)
            + self.coefficients.as_ref().map_or(0, |(a, b)| of(a) + of(b))
    }
}

impl MaskRefinement {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let conv1 = |i, o, name: &str| Conv2d::new(i, o, 1, 1, 0, 1, vb.pp(name));
        let mut cascade_silent = true;
        for (name, channels) in [("delta_s2", CHANNELS_S2), ("delta_s1", CHANNELS_S1)] {
            let layer = vb.pp(name);
            cascade_silent &= super::all_zero(&layer.get((1, channels, 1, 1), "weight")?)?
                && super::all_zero(&layer.get(1, "bias")?)?;
        }
        let conv3 = |i, o, stride, vb: VarBuilder| Conv2d::new(i, o, 3, stride, 1, 1, vb);
        Ok(Self {
            mask_proj: conv1(UPSCALED_CHANNELS + 1, CHANNELS_S2, "mask_proj")?,
            image_s2: conv3(3, CHANNELS_S2, 2, vb.pp("image_s2"))?,
            local_proj: conv1(LEVEL_CHANNELS[0] + 1, CHANNELS_S2, "local_proj")?,
            fuse_s2: [
                conv3(3 * CHANNELS_S2 + 1, CHANNELS_S2, 1, vb.pp("fuse_s2").pp(0))?,
                conv3(CHANNELS_S2, CHANNELS_S2, 1, vb.pp("fuse_s2").pp(2))?,
            ],
            delta_s2: conv1(CHANNELS_S2, 1, "delta_s2")?,
            image_s1: conv3(3, CHANNELS_S1, 1, vb.pp("image_s1"))?,
            fuse_s1: conv3(
                CHANNELS_S2 + CHANNELS_S1,
                CHANNELS_S1,
                1,
                vb.pp("fuse_s1").pp(0),
            )?,
            delta_s1: conv1(CHANNELS_S1, 1, "delta_s1")?,
            guided_gate: vb
                .get(1, "guided_gate")?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?[0],
            cascade_silent,
        })
    }

    /// Whether the cascade adds nothing (it then needs no crops' features).
    pub fn cascade_is_silent(&self) -> bool {
        self.cascade_silent
    }

    /// The refined masks for the decoder's K masks per prompt.
    ///
    /// `low_res` [B, K, 4G, 4G]: the decoder's logits; `upscaled` [B, 32, 4G, 4G]: its upscaled
    /// embedding; `image` [B, 3, S, S]: the normalised input; `local_s2` [B, 32, S/2, S/2]:
    /// localization augment's stride-4 local features on the stride-2 grid (zero where no crop
    /// covers); `coverage` [B, 1, S/2, S/2]: 1 where a crop covers. These two (`local`) are
    /// read only by a live cascade. `clicks` (input pixels) are pinned in the guided filter's
    /// input of every mask.
    pub fn forward(
        &self,
        low_res: &Tensor,
        upscaled: &Tensor,
        image: &Tensor,
        local: Option<(&Tensor, &Tensor)>,
        clicks: &[Click],
    ) -> Result<RefinedMasks> {
        let (b, k, h4, w4) = low_res.dims4()?;
        let size = image.dim(3)?;
        let masks = low_res.reshape((b * k, 1, h4, w4))?;
        let per_mask = |x: &Tensor| repeat_per_mask(x, k);

        let sam = upsample(&masks, size)?; // SAM 2's own full-size logits
        // A closed gate leaves SAM 2's logits exactly and skips the filter.
        let open = self.guided_gate != 0.0;
        let sam_share = if open {
            (&sam * (1.0 - self.guided_gate))?
        } else {
            sam.clone()
        };
        let base = if self.cascade_silent {
            sam_share
        } else {
            let Some((local_s2, coverage)) = local else {
                candle_core::bail!("mask refinement's cascade needs the crops' local features");
            };
            let (delta_s2, delta_s1) =
                self.cascade(&masks, upscaled, image, local_s2, coverage, k)?;
            ((sam_share + upsample(&delta_s2, size)?)? + delta_s1)?
        };
        let (logits, coefficients) = if open {
            let guide = per_mask(&unnormalize(image)?)?.to_dtype(DType::F32)?;
            let mut p = candle_nn::ops::sigmoid(&sam)?;
            if !clicks.is_empty() {
                p = clicks::pin(&p, clicks)?;
            }
            let (a, coef_b) = guided_filter::coefficients(
                &guide,
                &p,
                guided_filter::radius(size),
                guided_filter::EPS,
            )?;
            let filtered = guided_filter::logits(&a, &coef_b, &guide)?.to_dtype(base.dtype())?;
            ((&base + (filtered * self.guided_gate)?)?, Some((a, coef_b)))
        } else {
            (base.clone(), None)
        };
        let shape = (b, k, size, size);
        Ok(RefinedMasks {
            logits: logits.reshape(shape)?,
            base: base.reshape(shape)?,
            gate: self.guided_gate,
            coefficients,
        })
    }

    /// The cascade's two logit corrections for masks [B·K, 1, 4G, 4G]: at stride 2
    /// [B·K, 1, S/2, S/2] and at stride 1 [B·K, 1, S, S].
    fn cascade(
        &self,
        masks: &Tensor,
        upscaled: &Tensor,
        image: &Tensor,
        local_s2: &Tensor,
        coverage: &Tensor,
        k: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (_, _, h4, _) = masks.dims4()?;
        let size = image.dim(3)?;
        let per_mask = |x: &Tensor| repeat_per_mask(x, k);
        // The layers read the mask as a probability: logits run to ±30 (and -1024 for an absent
        // object), a scale that would swamp every other input.
        let prob = candle_nn::ops::sigmoid(masks)?;
        let image_s2 = gelu(&self.image_s2.forward(image)?)?;
        let local = self
            .local_proj
            .forward(&Tensor::cat(&[local_s2, coverage], 1)?)?;
        let mask = self
            .mask_proj
            .forward(&Tensor::cat(&[&per_mask(upscaled)?, &prob], 1)?)?;
        let x = Tensor::cat(
            &[
                upsample(&mask, 2 * h4)?,
                per_mask(&image_s2)?,
                per_mask(&local)?,
                upsample(&prob, 2 * h4)?,
            ],
            1,
        )?;
        let x = gelu(&self.fuse_s2[0].forward(&x)?)?;
        let x = gelu(&self.fuse_s2[1].forward(&x)?)?;
        let delta_s2 = self.delta_s2.forward(&x)?;
        let image_s1 = gelu(&self.image_s1.forward(image)?)?;
        let y = Tensor::cat(&[upsample(&x, size)?, per_mask(&image_s1)?], 1)?;
        let y = gelu(&self.fuse_s1.forward(&y)?)?;
        Ok((delta_s2, self.delta_s1.forward(&y)?))
    }
}

/// [B, ...] -> [B·K, ...]: each row repeated for the K masks of its prompt.
fn repeat_per_mask(x: &Tensor, k: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let mut expanded = vec![dims[0], k];
    expanded.extend_from_slice(&dims[1..]);
    dims[0] *= k;
    x.unsqueeze(1)?.broadcast_as(expanded)?.reshape(dims)
}

/// Bilinear (align_corners=False) to side × side: SAM 2's own upsampling of logits.
fn upsample(x: &Tensor, side: usize) -> Result<Tensor> {
    resample(x, Filter::Bilinear, side, side)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::assert_matches_reference;
    use candle_core::Device;

    /// Deterministic values in [lo, hi], spread like noise: `sin` of a long stride.
    fn spread(shape: (usize, usize, usize, usize), lo: f64, hi: f64) -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let t = Tensor::arange(0f32, n as f32, &Device::Cpu)?
            .affine(1.7, 0.3)?
            .sin()?;
        t.affine((hi - lo) / 2.0, (hi + lo) / 2.0)?.reshape(shape)
    }

    /// The fused CPU pass and the tensor operations bring a refined mask to the frame alike.
    /// The filtered mask stays within [0.05, 0.95] here: near the clamp (1e-4) the logit's slope
    /// is 1e4, where f32 rounding of either path shows at this tolerance. The clamp itself is
    /// covered by the parity fixtures (a changed clamp fails them).
    #[test]
    fn the_fused_frame_pass_matches_the_tensor_path() -> Result<()> {
        let (k, s, h, w) = (2, 16, 37, 53);
        let base = spread((1, k, s, s), -20.0, 12.0)?;
        let a = spread((k, 3, s, s), -0.1, 0.1)?;
        let b = spread((k, 1, s, s), 0.35, 0.65)?;
        let frame = spread((1, 3, h, w), 0.0, 1.0)?;
        let masks = RefinedMasks {
            logits: base.clone(),
            base,
            gate: 0.7,
            coefficients: Some((a, b)),
        };
        let fused = masks.at_frame(&frame)?;
        let tensors = masks.at_frame_by_tensors(&frame, (3, h, w))?;
        assert_eq!(fused.dims(), &[1, k, h, w]);
        assert_matches_reference(&fused, &tensors, (k, s, h, w))
    }
}
