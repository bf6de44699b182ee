//! Dense 2-D convolutions as matrix products, which candle's CPU `conv2d` runs several times
//! slower: stride 1 (the few-channel 3×3 convolutions of mask refinement) by kernel taps, and
//! strided ones (Hiera's patch embedding, the memory encoder's mask downsampler) by unfolding.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::contiguous_f32;
use super::matmul::{MatRef, matmul};

/// Output columns (on the padded row width) per task: enough to amortise a product's set-up,
/// few enough to keep a task's slice of the input in cache and both cores busy.
const COLUMNS_PER_TASK: usize = 4096;

/// A dense convolution's operands: the input [B, C, H, W] and weight [O, C, kh, kw] as contiguous
/// f32 slices, with their shapes, once the channels are checked to agree.
struct DenseOperands<'a> {
    x: &'a [f32],
    w: &'a [f32],
    input: (usize, usize, usize, usize),
    weight: (usize, usize, usize),
}

impl<'a> DenseOperands<'a> {
    fn read(s1: &'a CpuStorage, l1: &Layout, s2: &'a CpuStorage, l2: &Layout) -> Result<Self> {
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let (b, c, h, wd) = l1.shape().dims4()?;
        let (o, wc, kh, kw) = l2.shape().dims4()?;
        if wc != c {
            bail!("conv2d: weight {:?} for input {:?}", l2.dims(), l1.dims());
        }
        Ok(Self {
            x,
            w,
            input: (b, c, h, wd),
            weight: (o, kh, kw),
        })
    }
}

/// `nn.Conv2d(groups=1, stride=1, padding=p)` without its bias, NCHW.
///
/// Each kernel tap (ky, kx) contributes `W[:, :, ky, kx]` [C_out, C_in] times the input shifted
/// by the tap. On the zero-padded input, a band of output rows computed over the padded width
/// reads, for every tap, one contiguous run per input channel: so the band is one matrix product
/// per tap with no im2col copy, and the `padding × 2` extra columns per row are dropped after.
pub(crate) struct Conv2dTaps {
    pub padding: usize,
}

impl CustomOp2 for Conv2dTaps {
    fn name(&self) -> &'static str {
        "conv2d-taps"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let DenseOperands {
            x,
            w,
            input: (b, c, h, wd),
            weight: (o, kh, kw),
        } = DenseOperands::read(s1, l1, s2, l2)?;
        let p = self.padding;
        let (hp, wp) = (h + 2 * p, wd + 2 * p);
        if kh == 0 || kw == 0 || kh > hp || kw > wp {
            bail!("conv2d: kernel {kh}x{kw} for a padded input of {hp}x{wp}");
        }
        let (oh, ow) = (hp - kh + 1, wp - kw + 1);

        let mut padded = vec![0f32; b * c * hp * wp];
        padded
            .par_chunks_mut(hp * wp)
            .zip(x.par_chunks(h * wd))
            .for_each(|(dst, src)| {
                for (y, row) in src.chunks(wd).enumerate() {
                    dst[(y + p) * wp + p..(y + p) * wp + p + wd].copy_from_slice(row);
                }
            });
        // Per tap, its [C_out, C_in] matrix, row-major.
        let mut taps = vec![0f32; kh * kw * o * c];
        for (i, value) in w.iter().enumerate() {
            // w[out][in][ky][kx] -> taps[ky * kw + kx][out][in]
            let (out_in, tap) = (i / (kh * kw), i % (kh * kw));
            taps[tap * o * c + out_in] = *value;
        }

        let rows = (COLUMNS_PER_TASK / wp).clamp(1, oh);
        let bands: Vec<(usize, usize)> = (0..b)
            .flat_map(|bi| (0..oh).step_by(rows).map(move |y0| (bi, y0)))
            .collect();
        let results: Vec<Vec<f32>> = bands
            .par_iter()
            .map(|&(bi, y0)| {
                let n_rows = rows.min(oh - y0);
                // Output pixel (r, j) of the band at column r * wp + j; the last row needs only ow.
                let n = (n_rows - 1) * wp + ow;
                let mut band = vec![0f32; o * n_rows * wp];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let tap = ky * kw + kx;
                        let start = bi * c * hp * wp + (y0 + ky) * wp + kx;
                        matmul(
                            &mut band,
                            n_rows * wp,
                            MatRef::rows(&taps[tap * o * c..(tap + 1) * o * c], o, c, c),
                            MatRef::rows(&padded[start..], c, n, hp * wp),
                            1.0,
                            tap > 0,
                            false,
                        );
                    }
                }
                band
            })
            .collect();

        let mut out = vec![0f32; b * o * oh * ow];
        for (&(bi, y0), band) in bands.iter().zip(&results) {
            let n_rows = rows.min(oh - y0);
            for oc in 0..o {
                for r in 0..n_rows {
                    let dst = ((bi * o + oc) * oh + y0 + r) * ow;
                    let src = (oc * n_rows + r) * wp;
                    out[dst..dst + ow].copy_from_slice(&band[src..src + ow]);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, o, oh, ow))))
    }
}

/// `nn.Conv2d(groups=1, stride=s, padding=p)` without its bias, NCHW, for strides above 1.
///
/// Each image's receptive fields are unfolded into a [C_in·kh·kw, oh·ow] matrix (zeros where a
/// tap falls in the padding), which one product with the [C_out, C_in·kh·kw] weight turns into the
/// output planes. A strided convolution reads each input pixel about (k/s)² times, so the unfolded
/// matrix stays small (for Hiera's 7×7 stride-4 patch embedding, three times the input).
pub(crate) struct Conv2dUnfold {
    pub stride: usize,
    pub padding: usize,
}

impl CustomOp2 for Conv2dUnfold {
    fn name(&self) -> &'static str {
        "conv2d-unfold"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let DenseOperands {
            x,
            w,
            input: (b, c, h, wd),
            weight: (o, kh, kw),
        } = DenseOperands::read(s1, l1, s2, l2)?;
        let (s, p) = (self.stride, self.padding);
        if s == 0 || kh == 0 || kw == 0 || kh > h + 2 * p || kw > wd + 2 * p {
            bail!("conv2d: kernel {kh}x{kw}, stride {s} for an input of {h}x{wd} padded by {p}");
        }
        let (oh, ow) = ((h + 2 * p - kh) / s + 1, (wd + 2 * p - kw) / s + 1);
        let (k, n) = (c * kh * kw, oh * ow);

        let mut out = vec![0f32; b * o * n];
        let mut unfolded = vec![0f32; k * n];
        for (image, dst) in x.chunks_exact(c * h * wd).zip(out.chunks_exact_mut(o * n)) {
            // Row (ci, ky, kx) of the unfolded matrix: input row oy·s + ky − p, columns ox·s + kx − p.
            unfolded
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(row, cols)| {
                    let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
                    let plane = &image[ci * h * wd..(ci + 1) * h * wd];
                    for (oy, col_row) in cols.chunks_exact_mut(ow).enumerate() {
                        let iy = (oy * s + ky).wrapping_sub(p);
                        if iy >= h {
                            col_row.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy * wd..(iy + 1) * wd];
                        for (ox, v) in col_row.iter_mut().enumerate() {
                            let ix = (ox * s + kx).wrapping_sub(p);
                            *v = if ix < wd { src[ix] } else { 0.0 };
                        }
                    }
                });
            matmul(
                dst,
                n,
                MatRef::rows(w, o, k, k),
                MatRef::rows(&unfolded, k, n, n),
                1.0,
                false,
                true,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((b, o, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::assert_matches_reference;
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candles_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        // (batch, in, out, height, width, kernel, padding): MR's shapes, odd sizes, a 1×1, no padding.
        for (b, c, o, h, w, k, p) in [
            (2, 49, 16, 20, 24, 3, 1),
            (1, 3, 8, 33, 17, 3, 1),
            (3, 5, 4, 9, 300, 3, 1),
            (1, 6, 2, 7, 7, 1, 0),
            (1, 4, 3, 12, 10, 5, 2),
            (2, 2, 3, 6, 8, 3, 0),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev)?;
            let weight = Tensor::randn(0f32, 1.0, (o, c, k, k), &dev)?;
            let ours = x.apply_op2_no_bwd(&weight, &Conv2dTaps { padding: p })?;
            let candle = x.conv2d(&weight, p, 1, 1, 1)?;
            assert_matches_reference(&ours, &candle, (b, c, o, h, w, k, p))?;
        }
        Ok(())
    }

    #[test]
    fn strided_matches_candles_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        // (batch, in, out, height, width, kernel, stride, padding): Hiera's patch embedding, the
        // mask downsampler's layers, odd sizes whose last window is cut short, no padding.
        for (b, c, o, h, w, k, s, p) in [
            (1, 3, 8, 32, 32, 7, 4, 3),
            (2, 1, 4, 16, 16, 3, 2, 1),
            (1, 16, 64, 8, 8, 3, 2, 1),
            (1, 5, 3, 11, 13, 3, 2, 1),
            (2, 4, 6, 9, 10, 4, 3, 0),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev)?;
            let weight = Tensor::randn(0f32, 1.0, (o, c, k, k), &dev)?;
            let ours = x.apply_op2_no_bwd(
                &weight,
                &Conv2dUnfold {
                    stride: s,
                    padding: p,
                },
            )?;
            let candle = x.conv2d(&weight, p, s, 1, 1)?;
            assert_matches_reference(&ours, &candle, (b, c, o, h, w, k, s, p))?;
        }
        Ok(())
    }

    #[test]
    fn refuses_mismatched_channels() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &dev).unwrap();
        let weight = Tensor::zeros((4, 2, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let err = x
            .apply_op2_no_bwd(&weight, &Conv2dTaps { padding: 1 })
            .unwrap_err();
        assert!(err.to_string().contains("conv2d: weight"), "{err}");
    }
}
