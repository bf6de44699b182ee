//! `ImageEncoder` and `FpnNeck` (`sam2/modeling/backbones/image_encoder.py`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::hieradet::Hiera;
use crate::model::config::{FpnNeckConfig, ImageEncoderConfig};
use crate::model::nn::Conv2d;
use crate::model::position_encoding::PositionEmbeddingSine;
use crate::model::resample::{Filter, resample};

/// The encoder's output: FPN levels (highest resolution first, after `scalp`) and their
/// position encodings (batch 1, shared by every image of that size).
#[derive(Debug, Clone)]
pub struct BackboneOutput {
    pub backbone_fpn: Vec<Tensor>,
    pub vision_pos_enc: Vec<Tensor>,
}

/// `FpnNeck`: lateral convs to `d_model`, a top-down path into the chosen levels.
#[derive(Debug)]
pub struct FpnNeck {
    /// `convs[i]` takes the trunk output of level `n - i` (lowest resolution first).
    convs: Vec<Conv2d>,
    top_down_levels: Vec<usize>,
    bilinear: bool,
    average: bool,
    /// Position encodings of each level for the configured image size.
    pos_enc: Vec<Tensor>,
    span: tracing::Span,
}

impl FpnNeck {
    pub fn new(
        config: &FpnNeckConfig,
        level_sides: &[usize],
        dtype: DType,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb_convs = vb.pp("convs");
        let convs = config
            .backbone_channel_list
            .iter()
            .enumerate()
            .map(|(i, &dim)| {
                Conv2d::new(
                    dim,
                    config.d_model,
                    config.kernel_size,
                    config.stride,
                    config.padding,
                    1,
                    vb_convs.pp(i).pp("conv"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let pe = PositionEmbeddingSine::new(&config.position_encoding);
        let pos_enc = level_sides
            .iter()
            .map(|&side| pe.encode(side, side, dtype, vb.device()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            convs,
            top_down_levels: config.top_down_levels(),
            bilinear: config.fpn_interp_model == "bilinear",
            average: config.fuse_type == "avg",
            pos_enc,
            span: tracing::span!(tracing::Level::TRACE, "fpn_neck"),
        })
    }

    /// Trunk outputs (highest resolution first) -> FPN features and position encodings.
    pub fn forward(&self, xs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let _enter = self.span.enter();
        let n = self.convs.len() - 1;
        let mut out: Vec<Option<Tensor>> = vec![None; n + 1];
        let mut prev: Option<Tensor> = None;
        for i in (0..=n).rev() {
            let lateral = self.convs[n - i].forward(&xs[i])?;
            let fused = match (&prev, self.top_down_levels.contains(&i)) {
                (Some(prev), true) => {
                    let (_, _, h, w) = prev.dims4()?;
                    let top_down = if self.bilinear {
                        resample(prev, Filter::Bilinear, 2 * h, 2 * w)?
                    } else {
                        prev.upsample_nearest2d(2 * h, 2 * w)?
                    };
                    let sum = (lateral + top_down)?;
                    if self.average { (sum / 2.0)? } else { sum }
                }
                _ => lateral,
            };
            out[i] = Some(fused.clone());
            prev = Some(fused);
        }
        let features = out
            .into_iter()
            .map(|t| t.expect("every level is set"))
            .collect();
        Ok((features, self.pos_enc.clone()))
    }
}

/// `ImageEncoder`: trunk, neck, and `scalp` (the lowest-resolution levels dropped).
#[derive(Debug)]
pub struct ImageEncoder {
    pub trunk: Hiera,
    pub neck: FpnNeck,
    scalp: usize,
    span: tracing::Span,
}

impl ImageEncoder {
    pub fn new(
        config: &ImageEncoderConfig,
        image_size: usize,
        dtype: DType,
        vb: VarBuilder,
    ) -> Result<Self> {
        let trunk = Hiera::new(&config.trunk, image_size, vb.pp("trunk"))?;
        let sides: Vec<usize> = config
            .trunk
            .output_strides()
            .iter()
            .map(|s| image_size / s)
            .collect();
        let neck = FpnNeck::new(&config.neck, &sides, dtype, vb.pp("neck"))?;
        Ok(Self {
            trunk,
            neck,
            scalp: config.scalp,
            span: tracing::span!(tracing::Level::TRACE, "image_encoder"),
        })
    }

    pub fn forward(&self, image: &Tensor) -> Result<BackboneOutput> {
        let _enter = self.span.enter();
        let (mut features, mut pos) = self.neck.forward(&self.trunk.forward(image)?)?;
        let keep = features.len() - self.scalp;
        features.truncate(keep);
        pos.truncate(keep);
        Ok(BackboneOutput {
            backbone_fpn: features,
            vision_pos_enc: pos,
        })
    }
}
