//! Image and mask resampling as PyTorch does it, expressed as separable weight matrices.
//!
//! Every interpolation SAM 2 uses (bilinear with or without antialiasing, bicubic) is linear and
//! separable: `out = Wy · in · Wxᵀ` per channel, with `Wy` [out_h, in_h] and `Wx` [out_w, in_w]
//! computed once on the host from PyTorch's formulas. On a GPU, applying them is two matrix
//! products, which keep frames on the device. On the CPU the same weights are applied as taps
//! (`LineTaps`): each output sample reads only the inputs its filter covers, where the dense
//! matrices are almost all zeros (a 1080p frame to 256² was 3.2 GFLOP as products).

use candle_core::{DType, Device, Result, Tensor, bail};

use super::kernels::SeparableResample;

/// How to compute the weights of one output sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`.
    Bilinear,
    /// `F.interpolate(mode="bilinear", align_corners=False, antialias=True)`: a triangle filter
    /// widened by the scale when downsampling (torchvision's `Resize` on tensors).
    BilinearAntialias,
    /// `F.interpolate(mode="bicubic", align_corners=False)`: Keys cubic, A = -0.75, edge clamp.
    Bicubic,
}

/// Output sample `i` of a bilinear (align_corners=False) line resampling with `scale` = in / out
/// and last input index `last`: its two input samples and the second one's weight.
fn bilinear_tap(scale: f32, last: i64, i: usize) -> (usize, usize, f32) {
    // area_pixel_compute_source_index: double arithmetic, returned as float.
    let src = (scale as f64 * (i as f64 + 0.5) - 0.5) as f32;
    let src = src.max(0.0);
    let i0 = (src.floor() as i64).min(last);
    let lambda1 = (src - i0 as f32).clamp(0.0, 1.0);
    let i1 = if i0 < last { i0 + 1 } else { i0 };
    (i0 as usize, i1 as usize, lambda1)
}

/// The two taps of every output sample of a bilinear (align_corners=False) resampling of a line
/// of `input` samples to `output`: (first input, second input, second's weight), as the
/// weight matrix of `Filter::Bilinear` holds them.
pub fn bilinear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| bilinear_tap(scale, input as i64 - 1, i))
        .collect()
}

/// The [out, in] weight matrix resampling a line of `input` samples to `output` samples.
///
/// The arithmetic follows ATen's CPU kernels for f32 tensors (`UpSampleKernel.cpp`), including
/// where they round to f32 and where C++ promotes to double: downsampling weights computed in
/// f64 differ from PyTorch's by up to 1e-5, which shows in the logits.
pub fn weight_matrix(filter: Filter, input: usize, output: usize) -> Vec<f32> {
    let mut w = vec![0f32; output * input];
    // area_pixel_compute_scale<float> with align_corners=False and no scale factor.
    let scale = input as f32 / output as f32;
    let last = input as i64 - 1;
    for i in 0..output {
        let row = &mut w[i * input..(i + 1) * input];
        match filter {
            Filter::Bilinear => {
                let (i0, i1, lambda1) = bilinear_tap(scale, last, i);
                row[i0] += 1.0 - lambda1;
                row[i1] += lambda1;
            }
            Filter::BilinearAntialias => {
                // _compute_indices_min_size_weights_aa, interp_size 2.
                let support = if scale >= 1.0 { scale } else { 1.0 };
                let invscale = if scale >= 1.0 {
                    (1.0 / scale as f64) as f32
                } else {
                    1.0
                };
                let center = (scale as f64 * (i as f64 + 0.5)) as f32;
                let max_taps = (support.ceil() as i64) * 2 + 1;
                let xmin = (((center - support) as f64 + 0.5) as i64).max(0);
                let xsize = ((((center + support) as f64 + 0.5) as i64).min(input as i64) - xmin)
                    .clamp(0, max_taps);
                let taps: Vec<f32> = (0..xsize)
                    .map(|j| {
                        let x =
                            ((((j + xmin) as f32 - center) as f64 + 0.5) * invscale as f64) as f32;
                        let x = x.abs();
                        if x < 1.0 {
                            (1.0 - x as f64) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let total: f32 = taps.iter().sum();
                if total != 0.0 {
                    for (j, t) in taps.iter().enumerate() {
                        row[(xmin + j as i64) as usize] = t / total;
                    }
                }
            }
            Filter::Bicubic => {
                const A: f32 = -0.75;
                let cc1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
                let cc2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
                let real = (scale as f64 * (i as f64 + 0.5) - 0.5) as f32;
                // guard_index_and_lambda
                let base = (real.floor() as i64).min(last);
                let t = (real - base as f32).clamp(0.0, 1.0);
                let coeffs = [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2((1.0 - t) + 1.0)];
                for (k, c) in coeffs.iter().enumerate() {
                    let j = (base + k as i64 - 1).clamp(0, last) as usize;
                    row[j] += *c;
                }
            }
        }
    }
    w
}

/// The taps of an [out, in] weight matrix: for each output sample, a window of `width` inputs
/// from `start`, wide enough for the widest row's nonzero span (narrower rows carry zeros, as
/// the matrix does, so the sums are the matrix product's).
#[derive(Debug, Clone)]
pub struct LineTaps {
    input: usize,
    width: usize,
    starts: Vec<usize>,
    /// [out, width]
    weights: Vec<f32>,
}

impl LineTaps {
    pub fn from_matrix(matrix: &[f32], input: usize) -> Self {
        let input = input.max(1);
        let spans: Vec<(usize, usize)> = matrix
            .chunks(input)
            .map(|row| {
                let first = row.iter().position(|w| *w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|w| *w != 0.0).unwrap_or(0);
                (first, last.max(first))
            })
            .collect();
        let width = spans.iter().map(|(f, l)| l - f + 1).max().unwrap_or(1);
        let starts: Vec<usize> = spans.iter().map(|&(f, _)| f.min(input - width)).collect();
        let weights = matrix
            .chunks(input)
            .zip(&starts)
            .flat_map(|(row, &start)| row[start..start + width].iter().copied())
            .collect();
        Self {
            input,
            width,
            starts,
            weights,
        }
    }

    pub fn input(&self) -> usize {
        self.input
    }

    pub fn output(&self) -> usize {
        self.starts.len()
    }

    /// The number of inputs each output sample reads.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The first input of each output sample.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// The weights, [output, width].
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }
}

/// A resampler from one 2-D size to another, ready to apply on a device.
#[derive(Debug, Clone)]
pub struct Resampler {
    rows: LineTaps,
    cols: LineTaps,
    /// `Wy` [out_h, in_h] and `Wxᵀ` [in_w, out_w] on the device, for devices other than the CPU.
    matrices: Option<(Tensor, Tensor)>,
}

impl Resampler {
    pub fn new(
        filter: Filter,
        (in_h, in_w): (usize, usize),
        (out_h, out_w): (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let wy = weight_matrix(filter, in_h, out_h);
        let wx = weight_matrix(filter, in_w, out_w);
        let (rows, cols) = (
            LineTaps::from_matrix(&wy, in_h),
            LineTaps::from_matrix(&wx, in_w),
        );
        let matrices = if device.is_cpu() {
            None
        } else {
            let wy = Tensor::from_vec(wy, (out_h, in_h), device)?;
            let wx = Tensor::from_vec(wx, (out_w, in_w), device)?;
            Some((wy, wx.t()?.contiguous()?))
        };
        Ok(Self {
            rows,
            cols,
            matrices,
        })
    }

    /// Resamples the last two dimensions of `x` (any leading dimensions).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            // In f32 whatever `x`'s dtype (the weights are f32), returned in `x`'s dtype.
            let op = SeparableResample {
                rows: &self.rows,
                cols: &self.cols,
            };
            let dtype = x.dtype();
            return x
                .to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1_no_bwd(&op)?
                .to_dtype(dtype);
        }
        let Some((wy, wx_t)) = &self.matrices else {
            bail!("resampler built for the CPU, applied on {:?}", x.device());
        };
        let dtype = x.dtype();
        let wy = wy.to_dtype(dtype)?;
        let wx_t = wx_t.to_dtype(dtype)?;
        let rank = x.rank();
        let (in_h, in_w) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
        let (out_h, out_w) = (wy.dim(0)?, wx_t.dim(1)?);
        let lead: Vec<usize> = x.dims()[..rank - 2].to_vec();
        let n: usize = lead.iter().product();
        // Columns first: [n*in_h, in_w] @ [in_w, out_w]; then rows: [out_h, in_h] @ each
        // [in_h, out_w], with `wy` broadcast over the batch (stride 0, no copy).
        let cols = x
            .reshape((n * in_h, in_w))?
            .matmul(&wx_t)?
            .reshape((n, in_h, out_w))?;
        let out = wy
            .unsqueeze(0)?
            .broadcast_as((n, out_h, in_h))?
            .matmul(&cols)?;
        let mut dims = lead;
        dims.extend([out_h, out_w]);
        out.reshape(dims)
    }
}

/// One-off resampling of the last two dimensions.
pub fn resample(x: &Tensor, filter: Filter, out_h: usize, out_w: usize) -> Result<Tensor> {
    let rank = x.rank();
    let size = (x.dim(rank - 2)?, x.dim(rank - 1)?);
    if size == (out_h, out_w) {
        return Ok(x.clone());
    }
    Resampler::new(filter, size, (out_h, out_w), x.device())?.apply(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_sum_to_one(filter: Filter, input: usize, output: usize) {
        let w = weight_matrix(filter, input, output);
        for (i, row) in w.chunks(input).enumerate() {
            let s: f32 = row.iter().sum();
            assert!(
                (s - 1.0).abs() < 1e-5,
                "{filter:?} {input}->{output} row {i}: {s}"
            );
        }
    }

    #[test]
    fn weights_are_partitions_of_unity() {
        for filter in [Filter::Bilinear, Filter::BilinearAntialias, Filter::Bicubic] {
            for (i, o) in [(7, 64), (256, 1024), (300, 192), (1024, 256), (5, 5)] {
                rows_sum_to_one(filter, i, o);
            }
        }
    }

    #[test]
    fn bilinear_upsampling_matches_hand_computed_values() {
        // PyTorch: F.interpolate(tensor([[[[0., 1.]]]]), size=(1, 4), mode="bilinear")
        // -> [0.0, 0.25, 0.75, 1.0]
        let x = Tensor::new(&[[[[0f32, 1.0]]]], &Device::Cpu).unwrap();
        let y = resample(&x, Filter::Bilinear, 1, 4).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn antialias_downsampling_averages() {
        // Halving with the antialias triangle filter: weights 1/8, 3/8, 3/8, 1/8 inside the image.
        let w = weight_matrix(Filter::BilinearAntialias, 8, 4);
        assert_eq!(&w[8..16], &[0.0, 0.125, 0.375, 0.375, 0.125, 0.0, 0.0, 0.0]);
        // At the border the taps outside the image are dropped and the rest renormalised.
        let s = 0.375 + 0.375 + 0.125;
        assert_eq!(&w[0..3], &[0.375 / s, 0.375 / s, 0.125 / s]);
    }

    #[test]
    fn taps_give_what_the_weight_matrices_give() {
        let device = Device::Cpu;
        let sizes = [
            ((7, 5), (64, 33)),
            ((300, 192), (120, 256)),
            ((64, 64), (64, 80)),
            ((270, 480), (256, 256)),
            ((5, 9), (5, 9)),
        ];
        for filter in [Filter::Bilinear, Filter::BilinearAntialias, Filter::Bicubic] {
            for ((ih, iw), (oh, ow)) in sizes {
                let x = Tensor::rand(-3f32, 3.0, (2, 3, ih, iw), &device).unwrap();
                let got = Resampler::new(filter, (ih, iw), (oh, ow), &device)
                    .unwrap()
                    .apply(&x)
                    .unwrap();
                let wy = Tensor::from_vec(weight_matrix(filter, ih, oh), (oh, ih), &device);
                let wx = Tensor::from_vec(weight_matrix(filter, iw, ow), (ow, iw), &device);
                let want = wy
                    .unwrap()
                    .broadcast_matmul(&x.broadcast_matmul(&wx.unwrap().t().unwrap()).unwrap())
                    .unwrap();
                assert_eq!(got.dims(), want.dims());
                let err: f32 = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(err < 1e-5, "{filter:?} {ih}x{iw} -> {oh}x{ow}: {err}");
            }
        }
    }

    #[test]
    fn bicubic_identity_at_same_size() {
        let w = weight_matrix(Filter::Bicubic, 6, 6);
        for i in 0..6 {
            for j in 0..6 {
                assert!((w[i * 6 + j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6);
            }
        }
    }
}
