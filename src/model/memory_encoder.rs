//! `MemoryEncoder`, `MaskDownSampler`, `Fuser` and `CXBlock` (`sam2/modeling/memory_encoder.py`):
//! a frame's features fused with its predicted mask into a memory.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::config::{
    CxBlockConfig, FuserConfig, MaskDownSamplerConfig, MemoryEncoderConfig,
};
use crate::model::nn::{Activation, Conv2d, LayerNorm2d, Linear, gelu, mlp2};
use crate::model::position_encoding::PositionEmbeddingSine;

/// `MaskDownSampler`: (conv, LayerNorm2d, GELU) × log_stride(total_stride), then a 1×1 conv.
#[derive(Debug)]
struct MaskDownSampler {
    stages: Vec<(Conv2d, LayerNorm2d)>,
    out: Conv2d,
    span: tracing::Span,
}

impl MaskDownSampler {
    fn new(config: &MaskDownSamplerConfig, vb: VarBuilder) -> Result<Self> {
        let num_layers = config.num_layers().unwrap_or(0);
        let vb = vb.pp("encoder");
        let (mut in_chans, mut stages) = (1, Vec::new());
        for i in 0..num_layers {
            let out_chans = in_chans * config.stride * config.stride;
            stages.push((
                Conv2d::new(
                    in_chans,
                    out_chans,
                    config.kernel_size,
                    config.stride,
                    config.padding,
                    1,
                    vb.pp(3 * i),
                )?,
                LayerNorm2d::new(out_chans, vb.pp(3 * i + 1))?,
            ));
            in_chans = out_chans;
        }
        let out = Conv2d::new(
            in_chans,
            config.embed_dim,
            1,
            1,
            0,
            1,
            vb.pp(3 * num_layers),
        )?;
        Ok(Self {
            stages,
            out,
            span: tracing::span!(tracing::Level::TRACE, "mask_downsampler"),
        })
    }
}

impl Module for MaskDownSampler {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut x = x.clone();
        for (conv, norm) in &self.stages {
            x = gelu(&norm.forward(&conv.forward(&x)?)?)?;
        }
        self.out.forward(&x)
    }
}

/// `CXBlock`: a ConvNeXt block (depthwise conv, LayerNorm, pointwise MLP, layer scale).
#[derive(Debug)]
struct CxBlock {
    dwconv: Conv2d,
    norm: LayerNorm2d,
    pwconv1: Linear,
    pwconv2: Linear,
    gamma: Option<Tensor>,
    span: tracing::Span,
}

impl CxBlock {
    fn new(config: &CxBlockConfig, vb: VarBuilder) -> Result<Self> {
        let dim = config.dim;
        let groups = if config.use_dwconv { dim } else { 1 };
        Ok(Self {
            dwconv: Conv2d::new(
                dim,
                dim,
                config.kernel_size,
                1,
                config.padding,
                groups,
                vb.pp("dwconv"),
            )?,
            norm: LayerNorm2d::new(dim, vb.pp("norm"))?,
            pwconv1: Linear::new(dim, 4 * dim, vb.pp("pwconv1"))?,
            pwconv2: Linear::new(4 * dim, dim, vb.pp("pwconv2"))?,
            gamma: if config.layer_scale_init_value > 0.0 {
                Some(vb.get(dim, "gamma")?)
            } else {
                None
            },
            span: tracing::span!(tracing::Level::TRACE, "cx_block"),
        })
    }
}

impl Module for CxBlock {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let x = self.norm.forward(&self.dwconv.forward(input)?)?;
        let x = x.permute((0, 2, 3, 1))?;
        let x = mlp2(&x, &self.pwconv1, &self.pwconv2, Activation::Gelu)?;
        let x = match &self.gamma {
            Some(g) => x.broadcast_mul(g)?,
            None => x,
        };
        input + x.permute((0, 3, 1, 2))?
    }
}

/// `Fuser`: an optional 1×1 input projection, then CXBlocks.
#[derive(Debug)]
struct Fuser {
    proj: Option<Conv2d>,
    layers: Vec<CxBlock>,
}

impl Fuser {
    fn new(config: &FuserConfig, vb: VarBuilder) -> Result<Self> {
        let proj = match (config.input_projection, config.dim) {
            (true, Some(dim)) => Some(Conv2d::new(dim, dim, 1, 1, 0, 1, vb.pp("proj"))?),
            _ => None,
        };
        let layers = (0..config.num_layers)
            .map(|i| CxBlock::new(&config.layer, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { proj, layers })
    }
}

impl Module for Fuser {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = match &self.proj {
            Some(p) => p.forward(x)?,
            None => x.clone(),
        };
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}

#[derive(Debug)]
pub struct MemoryEncoder {
    mask_downsampler: MaskDownSampler,
    pix_feat_proj: Conv2d,
    fuser: Fuser,
    out_proj: Option<Conv2d>,
    /// The memory's sine position encoding, [1, Cm, h, w]: it depends only on the size.
    pos_enc: Tensor,
    span: tracing::Span,
}

impl MemoryEncoder {
    pub fn new(
        config: &MemoryEncoderConfig,
        embedding_side: usize,
        dtype: DType,
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_proj = if config.out_dim != config.in_dim {
            Some(Conv2d::new(
                config.in_dim,
                config.out_dim,
                1,
                1,
                0,
                1,
                vb.pp("out_proj"),
            )?)
        } else {
            None
        };
        let pos_enc = PositionEmbeddingSine::new(&config.position_encoding).encode(
            embedding_side,
            embedding_side,
            dtype,
            vb.device(),
        )?;
        Ok(Self {
            mask_downsampler: MaskDownSampler::new(
                &config.mask_downsampler,
                vb.pp("mask_downsampler"),
            )?,
            pix_feat_proj: Conv2d::new(
                config.in_dim,
                config.in_dim,
                1,
                1,
                0,
                1,
                vb.pp("pix_feat_proj"),
            )?,
            fuser: Fuser::new(&config.fuser, vb.pp("fuser"))?,
            out_proj,
            pos_enc,
            span: tracing::span!(tracing::Level::TRACE, "memory_encoder"),
        })
    }

    /// The memory position encoding, [1, Cm, h, w].
    pub fn pos_enc(&self) -> &Tensor {
        &self.pos_enc
    }

    /// pix_feat [B, C, h, w] and masks [B, 1, 16h, 16w] (already through the scaled sigmoid
    /// unless `skip_mask_sigmoid` is false) -> memory features [B, Cm, h, w].
    pub fn forward(
        &self,
        pix_feat: &Tensor,
        masks: &Tensor,
        skip_mask_sigmoid: bool,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let masks = if skip_mask_sigmoid {
            masks.clone()
        } else {
            candle_nn::ops::sigmoid(masks)?
        };
        let masks = self.mask_downsampler.forward(&masks)?;
        let x = (self.pix_feat_proj.forward(pix_feat)? + masks)?;
        let x = self.fuser.forward(&x)?;
        match &self.out_proj {
            Some(p) => p.forward(&x),
            None => Ok(x),
        }
    }
}
