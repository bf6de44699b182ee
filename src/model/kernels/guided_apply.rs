//! Bringing a refined mask to the frame: the bilinear upsampling of its S×S planes and the
//! guided filter applied with the frame, fused into one pass over the frame's pixels (the tensor
//! path upsamples each plane through dense interpolation matrices).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::contiguous_f32;
use crate::model::resample::bilinear_taps;

/// planes [N, 5, s, s'] (the base logits, the filter's a for the three colours, its b) and the
/// frame [3, H, W] in [0, 1] -> [N, 1, H, W]: base + gate × logit(clamp(Σ a·frame + b)), every
/// plane upsampled bilinearly (align_corners=False) to H × W.
pub(crate) struct GuidedApply {
    pub gate: f32,
    pub clamp: f32,
}

impl CustomOp2 for GuidedApply {
    fn name(&self) -> &'static str {
        "guided-apply"
    }

    fn cpu_fwd(
        &self,
        planes_storage: &CpuStorage,
        planes_layout: &Layout,
        frame_storage: &CpuStorage,
        frame_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let planes = contiguous_f32(planes_storage, planes_layout, "guided apply planes")?;
        let frame = contiguous_f32(frame_storage, frame_layout, "guided apply frame")?;
        let (n, c, sh, sw) = planes_layout.shape().dims4()?;
        let (fc, h, w) = frame_layout.shape().dims3()?;
        if c != 5 || fc != 3 {
            bail!("guided apply: [N, 5, s, s] planes and a [3, H, W] frame expected");
        }
        let (rows, cols) = (bilinear_taps(sh, h), bilinear_taps(sw, w));
        let plane = sh * sw;
        let (gate, low, high) = (self.gate, self.clamp, 1.0 - self.clamp);
        let mut out = vec![0f32; n * h * w];
        out.par_chunks_mut(w).enumerate().for_each(|(row, dst)| {
            let (m, y) = (row / h, row % h);
            let (y0, y1, ly) = rows[y];
            let at = |k: usize, x0: usize, x1: usize, lx: f32| {
                let p = &planes[(m * 5 + k) * plane..];
                // Along the row first, then between rows: the order of the matrix path.
                let top = p[y0 * sw + x0] * (1.0 - lx) + p[y0 * sw + x1] * lx;
                let bottom = p[y1 * sw + x0] * (1.0 - lx) + p[y1 * sw + x1] * lx;
                top * (1.0 - ly) + bottom * ly
            };
            for (x, out) in dst.iter_mut().enumerate() {
                let (x0, x1, lx) = cols[x];
                let pixel = y * w + x;
                let colour = |k: usize| at(1 + k, x0, x1, lx) * frame[k * h * w + pixel];
                let q = (colour(0) + colour(1) + colour(2) + at(4, x0, x1, lx)).clamp(low, high);
                *out = at(0, x0, x1, lx) + gate * (q / (1.0 - q)).ln();
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, 1, h, w))))
    }
}
