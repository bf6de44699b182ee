//! Mask refinement's colour guided filter (He, Sun and Tang 2013): in each window the mask as an
//! affine function of the image's colour, least squares with a ridge, the coefficients averaged
//! over the windows covering each pixel. Coefficients are computed at the model's input size and
//! applied with the frame itself at the frame's resolution (the "fast guided filter", He and Sun
//! 2015): the mask's edges move onto the frame's colour edges, and strands and holes that the
//! stride-4 mask never had come back where their colour sets them apart.
//!
//! Tensor operations on any device. The coefficients are computed in f64: the window
//! covariances are differences of window means, and in f32 their rounding is of the order of
//! the ridge.

use candle_core::{DType, Result, Tensor};

use crate::model::kernels::BoxMean;
use crate::model::resample::{Filter, resample};

/// The window's radius is the input size over this (32 input pixels for a 256 model).
pub const RADIUS_DIVISOR: usize = 8;
/// The ridge, for a guide in [0, 1].
pub const EPS: f64 = 1e-4;
/// The filtered mask is a probability, clamped to [c, 1 - c] before its logit (±9.2).
pub const CLAMP: f64 = 1e-4;

/// Each pixel's mean over its (2r+1)² window clipped at the border, for f64 [N, C, H, W].
fn box_mean(x: &Tensor, radius: usize) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1_no_bwd(&BoxMean { radius })
    } else {
        box_mean_by_bands(x, radius)
    }
}

/// `box_mean` as products with band matrices (ones where |i - j| <= r), which a GPU's matrix
/// units run at any radius.
fn box_mean_by_bands(x: &Tensor, radius: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let band = |size: usize| -> Result<Tensor> {
        let ones: Vec<f64> = (0..size * size)
            .map(|k| f64::from(u8::from((k / size).abs_diff(k % size) <= radius)))
            .collect();
        Tensor::from_vec(ones, (size, size), x.device())
    };
    let (rows, cols) = (band(h)?, band(w)?);
    let sums = rows
        .broadcast_matmul(&x.reshape((n * c, h, w))?)?
        .broadcast_matmul(&cols)?;
    let area = rows.sum_keepdim(1)?.matmul(&cols.sum_keepdim(0)?)?;
    sums.broadcast_div(&area)?.reshape((n, c, h, w))
}

/// The averaged coefficients (a [N, 3, H, W], b [N, 1, H, W], f32) of the guided filter of the
/// probability `p` [N, 1, H, W] guided by `guide` [N, 3, H, W] in [0, 1]: filtered p is
/// Σ a·guide + b. The 3×3 systems are solved in closed form (cofactors), pixel by pixel.
pub fn coefficients(
    guide: &Tensor,
    p: &Tensor,
    radius: usize,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let guide = guide.to_dtype(DType::F64)?;
    let p = p.to_dtype(DType::F64)?;
    let channel = |t: &Tensor, c: usize| t.narrow(1, c, 1);
    let mean_i = box_mean(&guide, radius)?;
    let mean_p = box_mean(&p, radius)?;
    let cov = (box_mean(&guide.broadcast_mul(&p)?, radius)? - mean_i.broadcast_mul(&mean_p)?)?;
    let var = |i: usize, j: usize| -> Result<Tensor> {
        let product = (channel(&guide, i)? * channel(&guide, j)?)?;
        let v = (box_mean(&product, radius)? - (channel(&mean_i, i)? * channel(&mean_i, j)?)?)?;
        if i == j { v + eps } else { Ok(v) }
    };
    let (s00, s01, s02) = (var(0, 0)?, var(0, 1)?, var(0, 2)?);
    let (s11, s12, s22) = (var(1, 1)?, var(1, 2)?, var(2, 2)?);
    let cofactor = |a: &Tensor, b: &Tensor, c: &Tensor, d: &Tensor| (a * b)? - (c * d)?;
    let c00 = cofactor(&s11, &s22, &s12, &s12)?;
    let c01 = cofactor(&s02, &s12, &s01, &s22)?;
    let c02 = cofactor(&s01, &s12, &s02, &s11)?;
    let c11 = cofactor(&s00, &s22, &s02, &s02)?;
    let c12 = cofactor(&s01, &s02, &s00, &s12)?;
    let c22 = cofactor(&s00, &s11, &s01, &s01)?;
    let det = (((&s00 * &c00)? + (&s01 * &c01)?)? + (&s02 * &c02)?)?;
    let (r, g, b) = (channel(&cov, 0)?, channel(&cov, 1)?, channel(&cov, 2)?);
    let row = |x: &Tensor, y: &Tensor, z: &Tensor| -> Result<Tensor> {
        (((x * &r)? + (y * &g)?)? + (z * &b)?)?.div(&det)
    };
    let a = Tensor::cat(
        &[
            row(&c00, &c01, &c02)?,
            row(&c01, &c11, &c12)?,
            row(&c02, &c12, &c22)?,
        ],
        1,
    )?;
    let b = (mean_p - (&a * &mean_i)?.sum_keepdim(1)?)?;
    Ok((
        box_mean(&a, radius)?.to_dtype(DType::F32)?,
        box_mean(&b, radius)?.to_dtype(DType::F32)?,
    ))
}

/// The filtered mask Σ a·guide + b as clamped logits [N, 1, H, W], for a guide [N, 3, H, W] in
/// [0, 1] (f32); coefficients smaller than the guide are upsampled bilinearly to its size.
pub fn logits(a: &Tensor, b: &Tensor, guide: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = guide.dims4()?;
    let (a, b) = if a.dims()[2..] == [h, w] {
        (a.clone(), b.clone())
    } else {
        (
            resample(a, Filter::Bilinear, h, w)?,
            resample(b, Filter::Bilinear, h, w)?,
        )
    };
    let q = ((a * guide)?.sum_keepdim(1)? + b)?.clamp(CLAMP, 1.0 - CLAMP)?;
    (&q / (1.0 - &q)?)?.log()
}

/// The radius for a model of input size `image_size`.
pub fn radius(image_size: usize) -> usize {
    image_size / RADIUS_DIVISOR
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The CPU kernel and the band-matrix path are both the clipped window mean.
    #[test]
    fn box_mean_is_the_clipped_window_mean() -> Result<()> {
        let (h, w, r) = (7, 5, 2);
        let values: Vec<f64> = (0..2 * h * w).map(|k| ((k * 37) % 11) as f64).collect();
        let x = Tensor::from_vec(values.clone(), (1, 2, h, w), &Device::Cpu)?;
        for fast in [box_mean(&x, r)?, box_mean_by_bands(&x, r)?] {
            check_window_means(&fast.flatten_all()?.to_vec1::<f64>()?, &values, (h, w), r);
        }
        Ok(())
    }

    fn check_window_means(fast: &[f64], values: &[f64], (h, w): (usize, usize), r: usize) {
        for c in 0..2 {
            for i in 0..h {
                for j in 0..w {
                    let (mut sum, mut n) = (0.0, 0.0);
                    for y in i.saturating_sub(r)..(i + r + 1).min(h) {
                        for x in j.saturating_sub(r)..(j + r + 1).min(w) {
                            sum += values[c * h * w + y * w + x];
                            n += 1.0;
                        }
                    }
                    let got = fast[c * h * w + i * w + j];
                    assert!(
                        (got - sum / n).abs() < 1e-12,
                        "({c}, {i}, {j}): {got} vs {}",
                        sum / n
                    );
                }
            }
        }
    }

    /// A mask that is an affine function of the guide comes back unchanged (up to the ridge).
    #[test]
    fn affine_masks_pass_through() -> Result<()> {
        let (h, w) = (16, 16);
        // Independent channels (a xorshift sequence), so every window's colours span 3-D.
        let mut state = 0x2545_f491_u32;
        let guide: Vec<f32> = (0..3 * h * w)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 1000) as f32 / 1000.0
            })
            .collect();
        let guide = Tensor::from_vec(guide, (1, 3, h, w), &Device::Cpu)?;
        let p = ((guide.narrow(1, 0, 1)? * 0.5)? + 0.25)?;
        let (a, b) = coefficients(&guide, &p, 3, 1e-9)?;
        let q = ((&a * &guide)?.sum_keepdim(1)? + &b)?;
        let err = (q - &p)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "max error {err}");
        Ok(())
    }
}
