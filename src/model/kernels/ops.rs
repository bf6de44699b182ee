//! Element-wise and small-window kernels: LayerNorm, GELU, soft mattes, depthwise convolution,
//! the transposed convolution's pixel shuffle.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::{contiguous_f32, simd};

/// LayerNorm over the last dimension, two-pass (mean, then centred variance) like PyTorch.
/// candle-nn's one-pass `sum(x²)/n - mean²` loses precision on features with a large mean.
pub(crate) struct LayerNormLastDim {
    pub eps: f32,
}

impl CustomOp3 for LayerNormLastDim {
    fn name(&self) -> &'static str {
        "layer-norm-two-pass"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer_norm input")?;
        let weight = contiguous_f32(s2, l2, "layer_norm weight")?;
        let bias = contiguous_f32(s3, l3, "layer_norm bias")?;
        let dim = weight.len();
        if dim == 0 || l1.dims().last() != Some(&dim) || bias.len() != dim {
            bail!("layer_norm: last dim {:?} vs weight {dim}", l1.dims());
        }
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .for_each(|(dst, src)| simd::layer_norm_row(src, dst, weight, bias, eps));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm over the channels of an NCHW map (`LayerNorm2d`), two-pass, vectorised across
/// pixels: no transposes to and from channels-last.
pub(crate) struct LayerNormChannels {
    pub eps: f32,
}

impl CustomOp3 for LayerNormChannels {
    fn name(&self) -> &'static str {
        "layer-norm-channels"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer_norm_2d input")?;
        let weight = contiguous_f32(s2, l2, "layer_norm_2d weight")?;
        let bias = contiguous_f32(s3, l3, "layer_norm_2d bias")?;
        let (_, c, h, w) = l1.shape().dims4()?;
        if weight.len() != c || bias.len() != c {
            bail!("layer_norm_2d: {c} channels, weight {}", weight.len());
        }
        let hw = h * w;
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        // Work in strips of pixels so that the per-pixel statistics stay in cache.
        const STRIP: usize = 1024;
        out.par_chunks_mut(c * hw)
            .zip(x.par_chunks(c * hw))
            .for_each(|(dst, src)| {
                let mut mean = vec![0f32; STRIP];
                let mut inv_std = vec![0f32; STRIP];
                for p0 in (0..hw).step_by(STRIP) {
                    let n = STRIP.min(hw - p0);
                    let (mean, inv_std) = (&mut mean[..n], &mut inv_std[..n]);
                    mean.fill(0.0);
                    for ch in 0..c {
                        simd::axpy(mean, &src[ch * hw + p0..ch * hw + p0 + n], 1.0);
                    }
                    simd::scale(mean, 1.0 / c as f32);
                    inv_std.fill(0.0);
                    for ch in 0..c {
                        simd::add_squared_diff(inv_std, &src[ch * hw + p0..ch * hw + p0 + n], mean);
                    }
                    simd::inv_std(inv_std, 1.0 / c as f32, eps);
                    for ch in 0..c {
                        let range = ch * hw + p0..ch * hw + p0 + n;
                        simd::normalize(
                            &mut dst[range.clone()],
                            &src[range],
                            mean,
                            inv_std,
                            weight[ch],
                            bias[ch],
                        );
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// An interleaved u8 image [H, W, C] (contiguous) -> planar f32 [C, H, W], each value × `scale`:
/// `ToTensor` in one pass (candle's permute, cast and scale are three, the first strided).
pub(crate) struct PlanarScaled {
    pub scale: f64,
}

impl CustomOp1 for PlanarScaled {
    fn name(&self) -> &'static str {
        "planar-scaled"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::U8(data) = s else {
            bail!("planar scaled: u8 expected");
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("planar scaled: contiguous input expected");
        };
        let (h, w, c) = l.shape().dims3()?;
        let pixels = &data[start..end];
        // The value candle's `x.to_dtype(F32) * scale` gives (`affine`: an f32 product, + 0).
        let mul = self.scale as f32;
        let lut: Vec<f32> = (0..=255u8).map(|v| v as f32 * mul + 0.0).collect();
        let mut out = vec![0f32; c * h * w];
        for (ch, plane) in out.chunks_mut(h * w).enumerate() {
            plane.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
                let src = &pixels[y * w * c..(y + 1) * w * c];
                for (d, px) in row.iter_mut().zip(src.chunks_exact(c)) {
                    *d = lut[px[ch] as usize];
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((c, h, w))))
    }
}

/// Logits (f32, contiguous) -> matte bytes `round(255 · sigmoid(logit / softness))`, or 0/255 by
/// the sign when `softness` is 0: the tensor path's seven passes (scale, sigmoid, scale, round,
/// two clamps, cast), each a full-size buffer, as one parallel pass. Each step is the tensor
/// op's own arithmetic (`affine` is an f32 product plus 0, candle's sigmoid `1 / (exp(-x) + 1)`),
/// so the bytes are the same.
pub(crate) struct SoftMatte {
    /// The matte's softness: logits are divided by it before the sigmoid.
    pub softness: f32,
}

/// The scaled logit beyond which a soft matte's byte is 0 or 255.
const SATURATED: f32 = 7.0;

impl CustomOp1 for SoftMatte {
    fn name(&self) -> &'static str {
        "soft-matte"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "soft matte logits")?;
        let inverse = (1.0 / self.softness as f64) as f32;
        let soft = self.softness > 0.0;
        let mut out = vec![0u8; x.len()];
        out.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .for_each(|(dst, src)| {
                for (d, &v) in dst.iter_mut().zip(src) {
                    let alpha = if soft {
                        let y = v * inverse + 0.0;
                        // Beyond ±7 the byte is 0 or 255 (255 · sigmoid(7) = 254.77), and most
                        // of a matte is: no exponential there.
                        if y < -SATURATED {
                            0.0
                        } else if y > SATURATED {
                            1.0
                        } else {
                            1.0 / ((-y).exp() + 1.0)
                        }
                    } else {
                        f32::from(v > 0.0)
                    };
                    *d = (alpha * 255.0 + 0.0).round().clamp(0.0, 255.0) as u8;
                }
            });
        Ok((CpuStorage::U8(out), l.shape().clone()))
    }
}

/// GELU with the exact (erf) form, as `nn.GELU()`.
pub(crate) struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "gelu input")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .for_each(|(dst, src)| {
                dst.copy_from_slice(src);
                simd::gelu_erf(dst);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Depthwise 2-D convolution (one filter per channel), stride 1, zero padding, NCHW.
/// candle runs a grouped conv as one conv per channel; this is one pass over the input.
pub(crate) struct DepthwiseConv2d {
    pub padding: usize,
}

impl CustomOp2 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "depthwise input")?;
        let w = contiguous_f32(s2, l2, "depthwise weight")?;
        let (b, c, h, wd) = l1.shape().dims4()?;
        let (wc, one, kh, kw) = l2.shape().dims4()?;
        if wc != c || one != 1 {
            bail!(
                "depthwise conv: weight {:?} for input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let p = self.padding;
        if kh > h + 2 * p || kw > wd + 2 * p {
            bail!("depthwise conv: kernel larger than the padded input");
        }
        let (oh, ow) = (h + 2 * p - kh + 1, wd + 2 * p - kw + 1);
        // Each plane zero-padded, wide enough for whole runs of lanes (see `depthwise_plane`).
        let (ph, pw) = (
            oh + kh - 1,
            ow.next_multiple_of(simd::DEPTHWISE_LANES) + kw - 1,
        );
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            || vec![0f32; ph * pw],
            |padded, (plane, dst)| {
                let ch = plane % c;
                let src = &x[plane * h * wd..(plane + 1) * h * wd];
                for (y, row) in src.chunks_exact(wd).enumerate() {
                    padded[(y + p) * pw + p..(y + p) * pw + p + wd].copy_from_slice(row);
                }
                let filt = &w[ch * kh * kw..(ch + 1) * kh * kw];
                simd::depthwise_plane(dst, padded, pw, filt, (oh, ow), (kh, kw));
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

/// The second half of `ConvTranspose2x2` on the CPU: its product [B, C·4, H·W] (rows ordered
/// channel, ky, kx) to the image [B, C, 2H, 2W] plus the bias, in one parallel pass. The tensor
/// path's six-axis permute copied it element by element on one thread and the bias add read and
/// wrote it again; the values are the same (each output is its product element plus the bias).
pub(crate) struct PixelShuffle2x2 {
    pub height: usize,
    pub width: usize,
}

impl CustomOp2 for PixelShuffle2x2 {
    fn name(&self) -> &'static str {
        "pixel-shuffle-2x2"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(ys, yl, "pixel shuffle input")?;
        let bias = contiguous_f32(bs, bl, "pixel shuffle bias")?;
        let (b, rows, pixels) = yl.shape().dims3()?;
        let (h, w, c) = (self.height, self.width, bias.len());
        if rows != 4 * c || pixels != h * w {
            bail!(
                "pixel shuffle: input {:?} for {c} channels of {h}x{w}",
                yl.dims()
            );
        }
        let plane = 4 * h * w;
        let mut out = vec![0f32; b * c * plane];
        // Output plane p (batch p / c, channel p % c) comes from the product's rows 4p..4p+4.
        out.par_chunks_mut(plane)
            .zip(y.par_chunks(plane))
            .enumerate()
            .for_each(|(p, (dst, src))| {
                let bias = bias[p % c];
                for (tap, taps) in src.chunks_exact(h * w).enumerate() {
                    let (ky, kx) = (tap / 2, tap % 2);
                    for (row, values) in taps.chunks_exact(w).enumerate() {
                        let line = &mut dst[(2 * row + ky) * 2 * w..][..2 * w];
                        for (x, v) in values.iter().enumerate() {
                            line[2 * x + kx] = v + bias;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, 2 * h, 2 * w))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::assert_matches_reference;
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn pixel_shuffle_matches_the_tensor_path_exactly() -> Result<()> {
        let dev = Device::Cpu;
        // (batch, channels, height, width): the decoder's two upscalings at 256 px, a batch of
        // objects, and a non-square map.
        for (b, c, h, w) in [(1, 64, 16, 16), (1, 32, 32, 32), (3, 5, 4, 4), (2, 3, 5, 7)] {
            let y = Tensor::randn(0f32, 1.0, (b, c * 4, h * w), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, c, &dev)?;
            let ours = y.apply_op2_no_bwd(
                &bias,
                &PixelShuffle2x2 {
                    height: h,
                    width: w,
                },
            )?;
            let tensors = crate::model::nn::pixel_shuffle_2x2(&y, &bias, h, w)?;
            assert_eq!(ours.dims(), tensors.dims());
            let diff = (ours - tensors)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{:?}", (b, c, h, w));
        }
        Ok(())
    }

    #[test]
    fn depthwise_matches_candles_grouped_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        // (batch, channels, height, width, kernel, padding): the memory encoder's 7×7 on 16×16,
        // rows longer than one run of lanes and not a multiple of it, no padding, a 1×1.
        for (b, c, h, w, k, p) in [
            (1, 8, 16, 16, 7, 3),
            (2, 3, 9, 37, 7, 3),
            (1, 4, 20, 17, 3, 1),
            (1, 2, 6, 5, 3, 0),
            (1, 5, 4, 4, 1, 0),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev)?;
            let weight = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev)?;
            let ours = x.apply_op2_no_bwd(&weight, &DepthwiseConv2d { padding: p })?;
            let candle = x.conv2d(&weight, p, 1, 1, c)?;
            assert_matches_reference(&ours, &candle, (b, c, h, w, k, p))?;
        }
        Ok(())
    }
}
