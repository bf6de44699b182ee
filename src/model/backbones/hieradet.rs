//! The Hiera trunk (`sam2/modeling/backbones/hieradet.py` and `backbones/utils.py`).
//!
//! Tokens are kept channels-last, [B, H, W, C], as in the official code; the stage outputs are
//! returned NCHW. The position embedding depends only on the image size, so it is computed once.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::config::HieraConfig;
use crate::model::kernels::WindowAttention;
use crate::model::nn::{Activation, Conv2d, LayerNorm, Linear, Mlp, scaled_dot_product_attention};
use crate::model::resample::{Filter, resample};

/// `MaxPool2d(kernel=stride, ceil_mode=False)` on a channels-last map.
fn max_pool_nhwc(x: &Tensor, stride: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (oh, ow) = (h / stride, w / stride);
    let x = if h % stride != 0 || w % stride != 0 {
        x.narrow(1, 0, oh * stride)?.narrow(2, 0, ow * stride)?
    } else {
        x.clone()
    };
    x.reshape((b, oh, stride, ow, stride, c))?.max(4)?.max(2)
}

/// Pads [B, H, W, C] with zeros at the bottom and right to multiples of `ws`.
fn pad_to_windows(x: &Tensor, ws: usize) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    let pad_h = (ws - h % ws) % ws;
    let pad_w = (ws - w % ws) % ws;
    if pad_h > 0 || pad_w > 0 {
        x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)
    } else {
        Ok(x.clone())
    }
}

/// Splits [B, H, W, C] into zero-padded windows [B*nW, ws, ws, C]; returns the padded size.
fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let x = pad_to_windows(x, ws)?;
    let (b, hp, wp, c) = x.dims4()?;
    let windows = x
        .reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))?;
    Ok((windows, (hp, wp)))
}

/// Inverse of `window_partition`, dropping the padding.
fn window_unpartition(
    windows: &Tensor,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let c = windows.dim(D::Minus1)?;
    let b = windows.dim(0)? / ((hp / ws) * (wp / ws));
    let x = windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b, hp, wp, c))?;
    if hp > h || wp > w {
        x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()
    } else {
        Ok(x)
    }
}

/// `MultiScaleAttention`: attention over the tokens of a window (or the whole map), with the
/// queries max-pooled at the first block of a stage.
#[derive(Debug)]
struct MultiScaleAttention {
    dim_out: usize,
    num_heads: usize,
    q_stride: Option<usize>,
    qkv: Linear,
    proj: Linear,
    span: tracing::Span,
}

impl MultiScaleAttention {
    fn new(
        dim: usize,
        dim_out: usize,
        num_heads: usize,
        q_stride: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            dim_out,
            num_heads,
            q_stride,
            qkv: Linear::new(dim, dim_out * 3, vb.pp("qkv"))?,
            proj: Linear::new(dim_out, dim_out, vb.pp("proj"))?,
            span: tracing::span!(tracing::Level::TRACE, "hiera_attention"),
        })
    }

    /// Attention within windows of `ws` of a map already padded to whole windows
    /// [B, Hp, Wp, C]; the output is window-major [B·nW, ws', ws', C_out] (ws' = ws / q_stride).
    fn forward_windows(&self, padded: &Tensor, ws: usize) -> Result<Tensor> {
        if padded.device().is_cpu() && padded.dtype() == DType::F32 {
            let _enter = self.span.enter();
            let op = WindowAttention {
                window: ws,
                heads: self.num_heads,
                q_stride: self.q_stride.unwrap_or(1),
            };
            let out = self.qkv.forward(padded)?.apply_op1_no_bwd(&op)?;
            return self.proj.forward(&out);
        }
        let (windows, _) = window_partition(padded, ws)?;
        self.forward(&windows)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, h, w, _) = x.dims4()?;
        let head_dim = self.dim_out / self.num_heads;
        // qkv: [B, H*W, 3, heads, head_dim]
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, h * w, 3, self.num_heads, head_dim))?;
        let mut q = qkv.narrow(2, 0, 1)?.squeeze(2)?;
        let k = qkv.narrow(2, 1, 1)?.squeeze(2)?;
        let v = qkv.narrow(2, 2, 1)?.squeeze(2)?;
        let (mut h, mut w) = (h, w);
        if let Some(stride) = self.q_stride {
            let pooled = max_pool_nhwc(&q.reshape((b, h, w, self.dim_out))?, stride)?;
            (h, w) = (pooled.dim(1)?, pooled.dim(2)?);
            q = pooled.reshape((b, h * w, self.num_heads, head_dim))?;
        }
        let out = scaled_dot_product_attention(
            &q.transpose(1, 2)?,
            &k.transpose(1, 2)?,
            &v.transpose(1, 2)?,
        )?;
        let out = out.transpose(1, 2)?.reshape((b, h, w, self.dim_out))?;
        self.proj.forward(&out)
    }
}

/// `MultiScaleBlock`: pre-norm windowed attention and MLP, with a projected and pooled shortcut
/// where the stage (and so the width) changes.
#[derive(Debug)]
struct MultiScaleBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    attn: MultiScaleAttention,
    mlp: Mlp,
    proj: Option<Linear>,
    window_size: usize,
    q_stride: Option<usize>,
    span: tracing::Span,
}

impl MultiScaleBlock {
    fn new(
        dim: usize,
        dim_out: usize,
        num_heads: usize,
        q_stride: Option<usize>,
        window_size: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let proj = if dim != dim_out {
            Some(Linear::new(dim, dim_out, vb.pp("proj"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: LayerNorm::new(dim, 1e-6, vb.pp("norm1"))?,
            norm2: LayerNorm::new(dim_out, 1e-6, vb.pp("norm2"))?,
            attn: MultiScaleAttention::new(dim, dim_out, num_heads, q_stride, vb.pp("attn"))?,
            mlp: Mlp::new(
                dim_out,
                dim_out * 4,
                dim_out,
                2,
                Activation::Gelu,
                false,
                vb.pp("mlp"),
            )?,
            proj,
            window_size,
            q_stride,
            span: tracing::span!(tracing::Level::TRACE, "hiera_block", window_size),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut shortcut = x.clone();
        let x = self.norm1.forward(x)?;
        if let Some(proj) = &self.proj {
            shortcut = proj.forward(&x)?;
            if let Some(stride) = self.q_stride {
                shortcut = max_pool_nhwc(&shortcut, stride)?;
            }
        }
        let (h, w) = (x.dim(1)?, x.dim(2)?);
        let mut x = x;
        let mut pad_hw = (h, w);
        if self.window_size > 0 {
            let padded = pad_to_windows(&x, self.window_size)?;
            pad_hw = (padded.dim(1)?, padded.dim(2)?);
            x = self.attn.forward_windows(&padded, self.window_size)?;
        } else {
            x = self.attn.forward(&x)?;
        }
        let (mut out_hw, mut window_size) = ((h, w), self.window_size);
        if let Some(stride) = self.q_stride {
            // The pooled windows are `window_size / stride` wide and tile the pooled map.
            window_size = self.window_size / stride;
            out_hw = (shortcut.dim(1)?, shortcut.dim(2)?);
            if window_size > 0 {
                let pad_h = (window_size - out_hw.0 % window_size) % window_size;
                let pad_w = (window_size - out_hw.1 % window_size) % window_size;
                pad_hw = (out_hw.0 + pad_h, out_hw.1 + pad_w);
            }
        }
        if self.window_size > 0 {
            x = window_unpartition(&x, window_size, pad_hw, out_hw)?;
        }
        let x = (shortcut + x)?;
        let y = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x + y
    }
}

/// The Hiera trunk: patch embedding, position embedding, and the multi-scale blocks.
#[derive(Debug)]
pub struct Hiera {
    patch_embed: Conv2d,
    blocks: Vec<MultiScaleBlock>,
    stage_ends: Vec<usize>,
    return_interm_layers: bool,
    /// `_get_pos_embed` for the configured image size, [1, S/4, S/4, C], computed once.
    pos_embed: Tensor,
    span: tracing::Span,
}

impl Hiera {
    pub fn new(config: &HieraConfig, image_size: usize, vb: VarBuilder) -> Result<Self> {
        let embed_dim = config.embed_dim;
        let patch_embed = Conv2d::new(3, embed_dim, 7, 4, 3, 1, vb.pp("patch_embed").pp("proj"))?;
        let [bh, bw] = config.window_pos_embed_bkg_spatial_size;
        let pos_embed_bkg = vb.get((1, embed_dim, bh, bw), "pos_embed")?;
        let w0 = config.window_spec[0];
        let pos_embed_window = vb.get((1, embed_dim, w0, w0), "pos_embed_window")?;
        let pos_embed = Self::pos_embed_for(&pos_embed_bkg, &pos_embed_window, image_size / 4)?;

        let depth: usize = config.stages.iter().sum();
        let stage_ends: Vec<usize> = (1..=config.stages.len())
            .map(|i| config.stages[..i].iter().sum::<usize>() - 1)
            .collect();
        let q_pool_blocks: Vec<usize> = stage_ends[..stage_ends.len() - 1]
            .iter()
            .map(|e| e + 1)
            .take(config.q_pool)
            .collect();
        let global = config.global_att_blocks.clone().unwrap_or_default();
        let vb_blocks = vb.pp("blocks");
        let (mut dim, mut num_heads, mut cur_stage) = (embed_dim, config.num_heads, 1usize);
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let mut dim_out = dim;
            // The window size is read before the stage counter moves: the first block of a new
            // stage (the q-pool block) still uses the previous stage's window.
            let mut window_size = config.window_spec[cur_stage - 1];
            if global.contains(&i) {
                window_size = 0;
            }
            if i > 0 && stage_ends.contains(&(i - 1)) {
                dim_out = (dim as f64 * config.dim_mul) as usize;
                num_heads = (num_heads as f64 * config.head_mul) as usize;
                cur_stage += 1;
            }
            let q_stride = q_pool_blocks.contains(&i).then_some(config.q_stride[0]);
            blocks.push(MultiScaleBlock::new(
                dim,
                dim_out,
                num_heads,
                q_stride,
                window_size,
                vb_blocks.pp(i),
            )?);
            dim = dim_out;
        }
        Ok(Self {
            patch_embed,
            blocks,
            stage_ends,
            return_interm_layers: config.return_interm_layers,
            pos_embed,
            span: tracing::span!(tracing::Level::TRACE, "hiera"),
        })
    }

    /// Bicubic-resized background embedding plus the tiled window embedding, channels-last.
    fn pos_embed_for(bkg: &Tensor, window: &Tensor, side: usize) -> Result<Tensor> {
        let resized = resample(bkg, Filter::Bicubic, side, side)?;
        let w0 = window.dim(2)?;
        let tiled = window.repeat((1, 1, side / w0, side / w0))?;
        (resized + tiled)?.permute((0, 2, 3, 1))?.contiguous()
    }

    /// Stage outputs (NCHW), highest resolution first; only the last with `return_interm_layers` off.
    pub fn forward(&self, image: &Tensor) -> Result<Vec<Tensor>> {
        let _enter = self.span.enter();
        let x = self.patch_embed.forward(image)?.permute((0, 2, 3, 1))?;
        let mut x = x.broadcast_add(&self.pos_embed)?;
        let mut outputs = Vec::new();
        let last = *self.stage_ends.last().unwrap();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if i == last || (self.stage_ends.contains(&i) && self.return_interm_layers) {
                outputs.push(x.permute((0, 3, 1, 2))?.contiguous()?);
            }
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn window_partition_round_trips_with_padding() {
        let x = Tensor::arange(0f32, 2.0 * 5.0 * 7.0 * 3.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 5, 7, 3))
            .unwrap();
        let (windows, padded) = window_partition(&x, 4).unwrap();
        assert_eq!(padded, (8, 8));
        assert_eq!(windows.dims(), &[2 * 2 * 2, 4, 4, 3]);
        // The padding is zeros.
        let pad_sum: f32 = windows
            .narrow(0, 3, 1)
            .unwrap()
            .narrow(1, 1, 3)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(pad_sum, 0.0);
        let back = window_unpartition(&windows, 4, padded, (5, 7)).unwrap();
        let diff: f32 = (back - &x)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn max_pool_floors_odd_sizes() {
        let x = Tensor::arange(0f32, 9.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 3, 1))
            .unwrap();
        let y = max_pool_nhwc(&x, 2).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![4.0]
        );
    }
}
