//! `PromptEncoder` (`sam2/modeling/sam/prompt_encoder.py`).
//!
//! SAM 2 always passes boxes as two points labelled 2 and 3 (box corners first), so the encoder
//! embeds points and masks only, and always appends the padding point (label -1) as the
//! official `forward(boxes=None)` does.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::nn::{Conv2d, LayerNorm2d, embedding_table, gelu};
use crate::model::position_encoding::PositionEmbeddingRandom;

/// Point prompts of a batch: coordinates [B, N, 2] as (x, y) pixels of the model input
/// (`image_size` square), labels [B, N] (1 positive, 0 negative, 2/3 box corners, -1 padding).
#[derive(Debug, Clone)]
pub struct PointInputs {
    pub coords: Tensor,
    pub labels: Tensor,
}

impl PointInputs {
    pub fn num_points(&self) -> usize {
        self.labels.dim(1).unwrap_or(0)
    }
}

#[derive(Debug)]
pub struct PromptEncoder {
    embed_dim: usize,
    input_image_size: (usize, usize),
    image_embedding_size: (usize, usize),
    pe_layer: PositionEmbeddingRandom,
    /// pos/neg point and the two box corners, [4, C].
    point_embeddings: Tensor,
    not_a_point_embed: Tensor,
    no_mask_embed: Tensor,
    mask_downscaling: [Conv2d; 3],
    mask_norms: [LayerNorm2d; 2],
    /// `get_dense_pe()`, [1, C, h, w], computed once.
    dense_pe: Tensor,
    span: tracing::Span,
}

impl PromptEncoder {
    pub fn new(
        embed_dim: usize,
        image_embedding_size: (usize, usize),
        input_image_size: (usize, usize),
        mask_in_chans: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let pe_layer = PositionEmbeddingRandom::new(embed_dim / 2, vb.pp("pe_layer"))?;
        let point_embeddings = (0..4)
            .map(|i| embedding_table(1, embed_dim, vb.pp("point_embeddings").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let point_embeddings = Tensor::cat(&point_embeddings, 0)?;
        let md = vb.pp("mask_downscaling");
        let quarter = mask_in_chans / 4;
        let mask_downscaling = [
            Conv2d::new(1, quarter, 2, 2, 0, 1, md.pp(0))?,
            Conv2d::new(quarter, mask_in_chans, 2, 2, 0, 1, md.pp(3))?,
            Conv2d::new(mask_in_chans, embed_dim, 1, 1, 0, 1, md.pp(6))?,
        ];
        let mask_norms = [
            LayerNorm2d::new(quarter, md.pp(1))?,
            LayerNorm2d::new(mask_in_chans, md.pp(4))?,
        ];
        let dense_pe = pe_layer.dense(image_embedding_size.0, image_embedding_size.1)?;
        Ok(Self {
            embed_dim,
            input_image_size,
            image_embedding_size,
            pe_layer,
            point_embeddings,
            not_a_point_embed: embedding_table(1, embed_dim, vb.pp("not_a_point_embed"))?,
            no_mask_embed: embedding_table(1, embed_dim, vb.pp("no_mask_embed"))?,
            mask_downscaling,
            mask_norms,
            dense_pe,
            span: tracing::span!(tracing::Level::TRACE, "prompt_encoder"),
        })
    }

    pub fn dense_pe(&self) -> &Tensor {
        &self.dense_pe
    }

    /// The side of the mask prompt this encoder takes (4× the image embedding).
    pub fn mask_input_size(&self) -> (usize, usize) {
        (
            4 * self.image_embedding_size.0,
            4 * self.image_embedding_size.1,
        )
    }

    /// `_embed_points(pad=True)`: [B, N+1, C].
    fn embed_points(&self, points: &PointInputs) -> Result<Tensor> {
        let coords = (&points.coords + 0.5)?;
        let (b, _, _) = coords.dims3()?;
        let dtype = coords.dtype();
        let device = coords.device().clone();
        let device = &device;
        let coords = Tensor::cat(&[coords, Tensor::zeros((b, 1, 2), dtype, device)?], 1)?;
        let labels = points.labels.to_dtype(dtype)?;
        let labels = Tensor::cat(
            &[
                labels,
                Tensor::full(-1f32, (b, 1), device)?.to_dtype(dtype)?,
            ],
            1,
        )?;
        let embedding = self.pe_layer.with_coords(&coords, self.input_image_size)?;
        let shape = embedding.shape().clone();
        let is = |value: f64| -> Result<Tensor> {
            labels
                .eq(value)?
                .unsqueeze(D::Minus1)?
                .broadcast_as(&shape)?
                .contiguous()
        };
        // Padding points get only the not-a-point embedding; the others add their label's.
        let not_a_point = self.not_a_point_embed.broadcast_as(&shape)?;
        let mut embedding = is(-1.0)?.where_cond(&not_a_point, &embedding)?;
        for label in 0..4 {
            let row = self.point_embeddings.narrow(0, label, 1)?;
            let added = embedding.broadcast_add(&row)?;
            embedding = is(label as f64)?.where_cond(&added, &embedding)?;
        }
        Ok(embedding)
    }

    fn embed_masks(&self, masks: &Tensor) -> Result<Tensor> {
        // Conv, LayerNorm2d, GELU (the official default activation), twice, then a 1x1 conv.
        let x = self.mask_downscaling[0].forward(masks)?;
        let x = gelu(&self.mask_norms[0].forward(&x)?)?;
        let x = self.mask_downscaling[1].forward(&x)?;
        let x = gelu(&self.mask_norms[1].forward(&x)?)?;
        self.mask_downscaling[2].forward(&x)
    }

    /// (sparse [B, N+1, C], dense [B, C, h, w]) embeddings of point and mask prompts. Without
    /// points (the image predictor with a mask prompt only) the sparse embedding is empty.
    pub fn forward(
        &self,
        points: Option<&PointInputs>,
        masks: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let _enter = self.span.enter();
        let (sparse, b) = match (points, masks) {
            (Some(p), _) => {
                let sparse = self.embed_points(p)?;
                let b = sparse.dim(0)?;
                (sparse, b)
            }
            (None, mask) => {
                let b = mask.map_or(Ok(1), |m| m.dim(0))?;
                let sparse = Tensor::zeros(
                    (b, 0, self.embed_dim),
                    self.no_mask_embed.dtype(),
                    self.no_mask_embed.device(),
                )?;
                (sparse, b)
            }
        };
        let dense = match masks {
            Some(m) => self.embed_masks(m)?,
            None => {
                let (h, w) = self.image_embedding_size;
                self.no_mask_embed
                    .reshape((1, self.embed_dim, 1, 1))?
                    .broadcast_as((b, self.embed_dim, h, w))?
                    .contiguous()?
            }
        };
        Ok((sparse, dense))
    }
}
