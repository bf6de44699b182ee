//! `MaskDecoder` (`sam2/modeling/sam/mask_decoder.py`).

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::transformer::TwoWayTransformer;
use crate::model::config::MaskDecoderExtraArgs;
use crate::model::nn::{
    Activation, Conv2d, ConvTranspose2x2, LayerNorm2d, Linear, Mlp, embedding_table, gelu,
};

/// What the mask decoder predicts for a batch of prompts.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// Low-resolution mask logits [B, M, 4h, 4w] (M = 3 multimask, else 1).
    pub masks: Tensor,
    /// Predicted IoU [B, M].
    pub iou: Tensor,
    /// The output tokens behind the masks [B, M', C] (M' = 3 when multimask tokens feed the pointer).
    pub sam_tokens: Tensor,
    /// Object-score logits [B, 1] (10 when the model has no object-score head).
    pub object_score_logits: Tensor,
    /// The upscaled embedding the mask tokens read, [B, C/8, 4h, 4w]: the refiner's mask
    /// refinement starts from it.
    pub upscaled: Tensor,
}

#[derive(Debug)]
enum ObjectScoreHead {
    Linear(Linear),
    Mlp(Mlp),
}

#[derive(Debug)]
pub struct MaskDecoder {
    transformer: TwoWayTransformer,
    /// obj_score_token (when predicted), iou_token and the 4 mask tokens, in that order: [T, C].
    output_tokens: Tensor,
    has_obj_score_token: bool,
    num_mask_tokens: usize,
    upscale_conv1: ConvTranspose2x2,
    upscale_norm: LayerNorm2d,
    upscale_conv2: ConvTranspose2x2,
    pub(crate) conv_s0: Option<Conv2d>,
    pub(crate) conv_s1: Option<Conv2d>,
    output_hypernetworks_mlps: Vec<Mlp>,
    iou_prediction_head: Mlp,
    pred_obj_score_head: Option<ObjectScoreHead>,
    use_multimask_token_for_obj_ptr: bool,
    stability: MaskDecoderExtraArgs,
    span: tracing::Span,
}

/// The switches `SAM2Base._build_sam_heads` passes to the decoder.
#[derive(Debug, Clone)]
pub struct MaskDecoderOptions {
    pub use_high_res_features: bool,
    pub iou_prediction_use_sigmoid: bool,
    pub pred_obj_scores: bool,
    pub pred_obj_scores_mlp: bool,
    pub use_multimask_token_for_obj_ptr: bool,
    pub extra: MaskDecoderExtraArgs,
}

impl MaskDecoder {
    pub fn new(dim: usize, options: MaskDecoderOptions, vb: VarBuilder) -> Result<Self> {
        // Hard-coded in `_build_sam_heads`: depth 2, 8 heads, MLP 2048, 3 multimask outputs,
        // IoU head of depth 3 and width 256.
        let transformer = TwoWayTransformer::new(2, dim, 8, 2048, vb.pp("transformer"))?;
        let num_mask_tokens = 4;
        let mut tokens = Vec::new();
        if options.pred_obj_scores {
            tokens.push(embedding_table(1, dim, vb.pp("obj_score_token"))?);
        }
        tokens.push(embedding_table(1, dim, vb.pp("iou_token"))?);
        tokens.push(embedding_table(num_mask_tokens, dim, vb.pp("mask_tokens"))?);
        let up = vb.pp("output_upscaling");
        let (conv_s0, conv_s1) = if options.use_high_res_features {
            (
                Some(Conv2d::new(dim, dim / 8, 1, 1, 0, 1, vb.pp("conv_s0"))?),
                Some(Conv2d::new(dim, dim / 4, 1, 1, 0, 1, vb.pp("conv_s1"))?),
            )
        } else {
            (None, None)
        };
        let output_hypernetworks_mlps = (0..num_mask_tokens)
            .map(|i| {
                Mlp::new(
                    dim,
                    dim,
                    dim / 8,
                    3,
                    Activation::Relu,
                    false,
                    vb.pp("output_hypernetworks_mlps").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let iou_prediction_head = Mlp::new(
            dim,
            256,
            num_mask_tokens,
            3,
            Activation::Relu,
            options.iou_prediction_use_sigmoid,
            vb.pp("iou_prediction_head"),
        )?;
        let pred_obj_score_head = match (options.pred_obj_scores, options.pred_obj_scores_mlp) {
            (false, _) => None,
            (true, false) => Some(ObjectScoreHead::Linear(Linear::new(
                dim,
                1,
                vb.pp("pred_obj_score_head"),
            )?)),
            (true, true) => Some(ObjectScoreHead::Mlp(Mlp::new(
                dim,
                dim,
                1,
                3,
                Activation::Relu,
                false,
                vb.pp("pred_obj_score_head"),
            )?)),
        };
        Ok(Self {
            transformer,
            output_tokens: Tensor::cat(&tokens, 0)?,
            has_obj_score_token: options.pred_obj_scores,
            num_mask_tokens,
            upscale_conv1: ConvTranspose2x2::new(dim, dim / 4, up.pp(0))?,
            upscale_norm: LayerNorm2d::new(dim / 4, up.pp(1))?,
            upscale_conv2: ConvTranspose2x2::new(dim / 4, dim / 8, up.pp(3))?,
            conv_s0,
            conv_s1,
            output_hypernetworks_mlps,
            iou_prediction_head,
            pred_obj_score_head,
            use_multimask_token_for_obj_ptr: options.use_multimask_token_for_obj_ptr,
            stability: options.extra,
            span: tracing::span!(tracing::Level::TRACE, "mask_decoder"),
        })
    }

    /// `forward`: `image_embeddings` [B or 1, C, h, w] (repeated over the prompts when
    /// `repeat_image`), `image_pe` [1, C, h, w], sparse [B, N, C], dense [B, C, h, w],
    /// `high_res_features` (feat_s0 [.., C/8, 4h, 4w], feat_s1 [.., C/4, 2h, 2w]).
    #[allow(clippy::too_many_arguments)] // the official signature, argument for argument
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: Option<(&Tensor, &Tensor)>,
    ) -> Result<DecoderOutput> {
        let _enter = self.span.enter();
        let (masks, iou, mask_tokens_out, object_score_logits, upscaled) = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse,
            dense,
            repeat_image,
            high_res_features,
        )?;
        let (masks, iou) = if multimask_output {
            (masks.narrow(1, 1, 3)?, iou.narrow(1, 1, 3)?)
        } else if self.stability.dynamic_multimask_via_stability {
            self.dynamic_multimask_via_stability(&masks, &iou)?
        } else {
            (masks.narrow(1, 0, 1)?, iou.narrow(1, 0, 1)?)
        };
        let sam_tokens = if multimask_output && self.use_multimask_token_for_obj_ptr {
            mask_tokens_out.narrow(1, 1, 3)?
        } else {
            mask_tokens_out.narrow(1, 0, 1)?
        };
        Ok(DecoderOutput {
            masks,
            iou,
            sam_tokens,
            object_score_logits,
            upscaled,
        })
    }

    fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        repeat_image: bool,
        high_res_features: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor, Tensor)> {
        let (b, _, dim) = sparse.dims3()?;
        let output_tokens = self
            .output_tokens
            .to_dtype(sparse.dtype())?
            .unsqueeze(0)?
            .broadcast_as((b, self.output_tokens.dim(0)?, dim))?;
        let tokens = Tensor::cat(&[&output_tokens, sparse], 1)?;
        let repeat = |x: &Tensor| -> Result<Tensor> {
            if repeat_image && x.dim(0)? != b {
                x.repeat((b, 1, 1, 1))
            } else {
                Ok(x.clone())
            }
        };
        let src = repeat(image_embeddings)?.broadcast_add(dense)?;
        let pos_src = image_pe.repeat((b, 1, 1, 1))?;
        let (_, c, h, w) = src.dims4()?;

        let (hs, src) = self.transformer.forward(&src, &pos_src, &tokens)?;
        let s = usize::from(self.has_obj_score_token);
        let iou_token_out = hs.narrow(1, s, 1)?.squeeze(1)?;
        let mask_tokens_out = hs.narrow(1, s + 1, self.num_mask_tokens)?;

        let src = src.transpose(1, 2)?.reshape((b, c, h, w))?;
        let upscaled = match high_res_features {
            Some((feat_s0, feat_s1)) => {
                let x = self
                    .upscale_conv1
                    .forward(&src)?
                    .broadcast_add(&repeat(feat_s1)?)?;
                let x = gelu(&self.upscale_norm.forward(&x)?)?;
                gelu(
                    &self
                        .upscale_conv2
                        .forward(&x)?
                        .broadcast_add(&repeat(feat_s0)?)?,
                )?
            }
            None => {
                let x = self.upscale_conv1.forward(&src)?;
                let x = gelu(&self.upscale_norm.forward(&x)?)?;
                gelu(&self.upscale_conv2.forward(&x)?)?
            }
        };
        let hyper_in = self
            .output_hypernetworks_mlps
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&mask_tokens_out.narrow(1, i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper_in = Tensor::cat(&hyper_in, 1)?; // [B, 4, C/8]
        let (_, cu, hu, wu) = upscaled.dims4()?;
        let masks = hyper_in
            .matmul(&upscaled.reshape((b, cu, hu * wu))?)?
            .reshape((b, self.num_mask_tokens, hu, wu))?;
        let iou = self.iou_prediction_head.forward(&iou_token_out)?;
        let object_score_logits = match &self.pred_obj_score_head {
            Some(ObjectScoreHead::Linear(l)) => l.forward(&hs.narrow(1, 0, 1)?.squeeze(1)?)?,
            Some(ObjectScoreHead::Mlp(m)) => m.forward(&hs.narrow(1, 0, 1)?.squeeze(1)?)?,
            None => (Tensor::ones((b, 1), iou.dtype(), iou.device())? * 10.0)?,
        };
        Ok((masks, iou, mask_tokens_out, object_score_logits, upscaled))
    }

    /// When the single-mask output is unstable (its area changes with the threshold), take the
    /// multimask output with the best predicted IoU instead.
    fn dynamic_multimask_via_stability(
        &self,
        masks: &Tensor,
        iou: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let b = masks.dim(0)?;
        let delta = self.stability.dynamic_multimask_stability_delta;
        let single = masks.narrow(1, 0, 1)?.flatten_from(1)?;
        let area_i = single
            .gt(delta)?
            .to_dtype(DType::F32)?
            .sum(D::Minus1)?
            .to_vec1::<f32>()?;
        let area_u = single
            .gt(-delta)?
            .to_dtype(DType::F32)?
            .sum(D::Minus1)?
            .to_vec1::<f32>()?;
        let multi_iou = iou.narrow(1, 1, 3)?;
        let best = multi_iou.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let mut out_masks = Vec::with_capacity(b);
        let mut out_iou = Vec::with_capacity(b);
        for i in 0..b {
            let stability = if area_u[i] > 0.0 {
                area_i[i] / area_u[i]
            } else {
                1.0
            };
            // Compared in f32, as torch compares an f32 tensor with a Python float.
            let pick = if stability >= self.stability.dynamic_multimask_stability_thresh as f32 {
                0
            } else {
                1 + best[i] as usize
            };
            out_masks.push(masks.narrow(0, i, 1)?.narrow(1, pick, 1)?);
            out_iou.push(iou.narrow(0, i, 1)?.narrow(1, pick, 1)?);
        }
        Ok((Tensor::cat(&out_masks, 0)?, Tensor::cat(&out_iou, 0)?))
    }
}
