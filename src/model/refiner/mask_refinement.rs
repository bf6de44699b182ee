//! Mask refinement: a cascade from the decoder's stride-4 logits to stride 2 and stride 1
//! (S×S), each step adding a logit correction, through a 1×1 convolution that starts at zero,
//! to SAM 2's own S×S logits.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::localization_augment::LEVEL_CHANNELS;
use crate::model::nn::{Conv2d, gelu};
use crate::model::resample::{Filter, resample};

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
}

impl MaskRefinement {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let conv1 = |i, o, name: &str| Conv2d::new(i, o, 1, 1, 0, 1, vb.pp(name));
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
        })
    }

    /// Full-size logits [B, K, S, S] for the decoder's K masks per prompt.
    ///
    /// `low_res` [B, K, 4G, 4G]: the decoder's logits; `upscaled` [B, 32, 4G, 4G]: its upscaled
    /// embedding; `image` [B, 3, S, S]: the normalised input; `local_s2` [B, 32, S/2, S/2]:
    /// localization augment's stride-4 local features on the stride-2 grid (zero where no crop
    /// covers); `coverage` [B, 1, S/2, S/2]: 1 where a crop covers.
    pub fn forward(
        &self,
        low_res: &Tensor,
        upscaled: &Tensor,
        image: &Tensor,
        local_s2: &Tensor,
        coverage: &Tensor,
    ) -> Result<Tensor> {
        let (b, k, h4, w4) = low_res.dims4()?;
        let size = image.dim(3)?;
        let masks = low_res.reshape((b * k, 1, h4, w4))?;
        let per_mask = |x: &Tensor| -> Result<Tensor> {
            let mut dims = x.dims().to_vec();
            let mut expanded = vec![b, k];
            expanded.extend_from_slice(&dims[1..]);
            dims[0] = b * k;
            x.unsqueeze(1)?.broadcast_as(expanded)?.reshape(dims)
        };
        let up = |x: &Tensor, side: usize| resample(x, Filter::Bilinear, side, side);

        let sam = up(&masks, size)?; // SAM 2's own full-size logits
        // The layers read the mask as a probability: logits run to ±30 (and -1024 for an absent
        // object), a scale that would swamp every other input.
        let prob = candle_nn::ops::sigmoid(&masks)?;
        let image_s2 = gelu(&self.image_s2.forward(image)?)?;
        let local = self
            .local_proj
            .forward(&Tensor::cat(&[local_s2, coverage], 1)?)?;
        let mask = self
            .mask_proj
            .forward(&Tensor::cat(&[&per_mask(upscaled)?, &prob], 1)?)?;
        let x = Tensor::cat(
            &[
                up(&mask, 2 * h4)?,
                per_mask(&image_s2)?,
                per_mask(&local)?,
                up(&prob, 2 * h4)?,
            ],
            1,
        )?;
        let x = gelu(&self.fuse_s2[0].forward(&x)?)?;
        let x = gelu(&self.fuse_s2[1].forward(&x)?)?;
        let delta_s2 = self.delta_s2.forward(&x)?;
        let image_s1 = gelu(&self.image_s1.forward(image)?)?;
        let y = Tensor::cat(&[up(&x, size)?, per_mask(&image_s1)?], 1)?;
        let y = gelu(&self.fuse_s1.forward(&y)?)?;
        let out = ((sam + up(&delta_s2, size)?)? + self.delta_s1.forward(&y)?)?;
        out.reshape((b, k, size, size))
    }
}
