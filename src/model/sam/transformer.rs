//! `TwoWayTransformer`, `Attention` and `RoPEAttention` (`sam2/modeling/sam/transformer.py`).
//!
//! Token tensors are batch-first, [B, N, C].

use std::sync::Mutex;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::config::RoPEAttentionConfig;
use crate::model::nn::{Activation, LayerNorm, Linear, Mlp, scaled_dot_product_attention};
use crate::model::position_encoding::axial_rope_tables;

/// `Attention`: multi-head attention whose projections may narrow the width
/// (`downsample_rate`) and whose keys/values may have another width (`kv_in_dim`).
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    span: tracing::Span,
}

impl Attention {
    pub fn new(
        embedding_dim: usize,
        num_heads: usize,
        downsample_rate: usize,
        kv_in_dim: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let internal = embedding_dim / downsample_rate;
        let kv_in = kv_in_dim.unwrap_or(embedding_dim);
        Ok(Self {
            q_proj: Linear::new(embedding_dim, internal, vb.pp("q_proj"))?,
            k_proj: Linear::new(kv_in, internal, vb.pp("k_proj"))?,
            v_proj: Linear::new(kv_in, internal, vb.pp("v_proj"))?,
            out_proj: Linear::new(internal, embedding_dim, vb.pp("out_proj"))?,
            num_heads,
            span: tracing::span!(tracing::Level::TRACE, "attention"),
        })
    }

    /// [B, N, C] -> [B, heads, N, C/heads]
    fn separate_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        x.reshape((b, n, self.num_heads, c / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn recombine_heads(x: &Tensor) -> Result<Tensor> {
        let (b, h, n, c) = x.dims4()?;
        x.transpose(1, 2)?.reshape((b, n, h * c))
    }

    fn project_qk(&self, q: &Tensor, k: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.separate_heads(&self.q_proj.forward(q)?)?,
            self.separate_heads(&self.k_proj.forward(k)?)?,
        ))
    }

    /// The attention output for projected, head-split `q` and `k` and the unprojected values
    /// [B, M, kv_in]. When the values are narrower than a head (memory attention: 64-wide
    /// memories, 256-wide heads), the value projection comes after the weighted sum: softmax
    /// rows sum to one, so P·(X·Wᵀ + b) = (P·X)·Wᵀ + b, with 4× fewer multiply-adds in the
    /// largest product of the whole tracking step.
    fn attend(&self, q: &Tensor, k: &Tensor, v_in: &Tensor) -> Result<Tensor> {
        let (b, m, kv_in) = v_in.dims3()?;
        let heads = self.num_heads;
        let head_dim = q.dim(3)?;
        let out = if kv_in < head_dim {
            let x = v_in.unsqueeze(1)?.broadcast_as((b, heads, m, kv_in))?;
            let px = scaled_dot_product_attention(q, k, &x)?; // [B, heads, N, kv_in]
            let w = self
                .v_proj
                .weight()
                .reshape((1, heads, head_dim, kv_in))?
                .transpose(2, 3)?;
            let bias = self.v_proj.bias().reshape((1, heads, 1, head_dim))?;
            px.broadcast_matmul(&w)?.broadcast_add(&bias)?
        } else {
            let v = self.separate_heads(&self.v_proj.forward(v_in)?)?;
            scaled_dot_product_attention(q, k, &v)?
        };
        self.out_proj.forward(&Self::recombine_heads(&out)?)
    }

    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (q, k) = self.project_qk(q, k)?;
        self.attend(&q, &k, v)
    }
}

/// RoPE tables (cos, sin) with the shape they were built for.
type CachedTables<Shape> = Mutex<Option<(Shape, Tensor, Tensor)>>;

/// The tables in `cache` when they were built for `shape` in `like`'s dtype and on its device;
/// else the tables `build` makes, which then replace them.
fn cached_tables<Shape: PartialEq>(
    cache: &CachedTables<Shape>,
    shape: Shape,
    like: &Tensor,
    build: impl FnOnce() -> Result<(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor)> {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((cached, cos, sin)) = cache.as_ref()
        && *cached == shape
        && cos.dtype() == like.dtype()
        && cos.device().same_device(like.device())
    {
        return Ok((cos.clone(), sin.clone()));
    }
    let (cos, sin) = build()?;
    *cache = Some((shape, cos.clone(), sin.clone()));
    Ok((cos, sin))
}

/// `RoPEAttention`: `Attention` with 2-D axial rotary position encoding of queries and keys.
#[derive(Debug)]
pub struct RoPEAttention {
    attention: Attention,
    head_dim: usize,
    theta: f64,
    feat_sizes: [usize; 2],
    rope_k_repeat: bool,
    /// (tokens, cos, sin): the tables of the last query size, rebuilt when it changes.
    tables: CachedTables<usize>,
    /// ((queries, keys, keys with RoPE), cos, sin): the keys' tables of the last bank's shape.
    key_tables: CachedTables<(usize, usize, usize)>,
    span: tracing::Span,
}

impl RoPEAttention {
    pub fn new(config: &RoPEAttentionConfig, vb: VarBuilder) -> Result<Self> {
        let attention = Attention::new(
            config.embedding_dim,
            config.num_heads,
            config.downsample_rate,
            config.kv_in_dim,
            vb,
        )?;
        Ok(Self {
            attention,
            head_dim: config.embedding_dim / config.downsample_rate / config.num_heads,
            theta: config.rope_theta,
            feat_sizes: config.feat_sizes,
            rope_k_repeat: config.rope_k_repeat,
            tables: Mutex::new(None),
            key_tables: Mutex::new(None),
            span: tracing::span!(tracing::Level::TRACE, "rope_attention"),
        })
    }

    /// The RoPE tables for `n` query tokens: the configured `feat_sizes` grid when it has `n`
    /// cells, else a square grid of side sqrt(n), as the official module recomputes them.
    fn tables(&self, n: usize, like: &Tensor) -> Result<(Tensor, Tensor)> {
        cached_tables(&self.tables, n, like, || {
            let [fx, fy] = self.feat_sizes;
            let (end_x, end_y) = if fx * fy == n {
                (fx, fy)
            } else {
                let side = (n as f64).sqrt() as usize;
                if side * side != n {
                    candle_core::bail!("RoPE attention needs a square token grid, got {n} tokens");
                }
                (side, side)
            };
            axial_rope_tables(
                self.head_dim,
                end_x,
                end_y,
                self.theta,
                like.dtype(),
                like.device(),
            )
        })
    }

    /// The RoPE tables for `m` keys of which the first `num_rope` are memory tokens, given the
    /// query tables `cos`, `sin`: the query tables once per memory frame (tiled, not interleaved,
    /// as `rope_k_repeat` does), then rows of cos 1 and sin 0 for the object pointers, which get
    /// no RoPE. One rotation then covers every key, where rotating a slice and concatenating the
    /// pointers back copied the whole key tensor twice; cos 1 and sin 0 leave the pointers'
    /// values as they are. Keys that are one frame's tokens and nothing else (self-attention)
    /// take the query tables themselves.
    fn key_tables(
        &self,
        m: usize,
        num_rope: usize,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = cos.dim(0)?;
        if num_rope == n && m == n {
            return Ok((cos.clone(), sin.clone()));
        }
        if num_rope != n && (!self.rope_k_repeat || !num_rope.is_multiple_of(n)) {
            candle_core::bail!(
                "RoPE keys: {num_rope} keys for {n} queries need rope_k_repeat and a whole multiple"
            );
        }
        cached_tables(&self.key_tables, (n, m, num_rope), cos, || {
            let repeats = num_rope / n;
            let pointers = (m - num_rope, cos.dim(1)?);
            let cos_k = Tensor::cat(
                &[
                    cos.repeat((repeats, 1))?,
                    Tensor::ones(pointers, cos.dtype(), cos.device())?,
                ],
                0,
            )?;
            let sin_k = Tensor::cat(
                &[
                    sin.repeat((repeats, 1))?,
                    Tensor::zeros(pointers, sin.dtype(), sin.device())?,
                ],
                0,
            )?;
            Ok((cos_k, sin_k))
        })
    }

    /// `num_k_exclude_rope`: the last keys (object pointers) carry no position and get no RoPE.
    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        num_k_exclude_rope: usize,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (q, k) = self.attention.project_qk(q, k)?;
        let n = q.dim(2)?;
        let (cos, sin) = self.tables(n, &q)?;
        let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
        let m = k.dim(2)?;
        let num_rope = m - num_k_exclude_rope;
        let k = if num_rope == 0 {
            k
        } else {
            let (cos_k, sin_k) = self.key_tables(m, num_rope, &cos, &sin)?;
            candle_nn::rotary_emb::rope_i(&k, &cos_k, &sin_k)?
        };
        self.attention.attend(&q, &k, v)
    }
}

/// `TwoWayAttentionBlock`: tokens attend to themselves and to the image; the image attends back.
#[derive(Debug)]
struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn new(
        dim: usize,
        num_heads: usize,
        mlp_dim: usize,
        downsample: usize,
        skip_first_layer_pe: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(dim, num_heads, 1, None, vb.pp("self_attn"))?,
            norm1: LayerNorm::new(dim, 1e-5, vb.pp("norm1"))?,
            cross_attn_token_to_image: Attention::new(
                dim,
                num_heads,
                downsample,
                None,
                vb.pp("cross_attn_token_to_image"),
            )?,
            norm2: LayerNorm::new(dim, 1e-5, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, mlp_dim, dim, 2, Activation::Relu, false, vb.pp("mlp"))?,
            norm3: LayerNorm::new(dim, 1e-5, vb.pp("norm3"))?,
            norm4: LayerNorm::new(dim, 1e-5, vb.pp("norm4"))?,
            cross_attn_image_to_token: Attention::new(
                dim,
                num_heads,
                downsample,
                None,
                vb.pp("cross_attn_image_to_token"),
            )?,
            skip_first_layer_pe,
        })
    }

    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;

        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let queries = (&queries + self.cross_attn_token_to_image.forward(&q, &k, keys)?)?;
        let queries = self.norm2.forward(&queries)?;

        let queries = (&queries + self.mlp.forward(&queries)?)?;
        let queries = self.norm3.forward(&queries)?;

        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let keys = (keys + self.cross_attn_image_to_token.forward(&k, &q, &queries)?)?;
        let keys = self.norm4.forward(&keys)?;
        Ok((queries, keys))
    }
}

/// `TwoWayTransformer`, the mask decoder's transformer.
#[derive(Debug)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
    span: tracing::Span,
}

impl TwoWayTransformer {
    pub fn new(
        depth: usize,
        dim: usize,
        num_heads: usize,
        mlp_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        // attention_downsample_rate is 2 in every official build.
        let downsample = 2;
        let layers = (0..depth)
            .map(|i| {
                TwoWayAttentionBlock::new(
                    dim,
                    num_heads,
                    mlp_dim,
                    downsample,
                    i == 0,
                    vb.pp("layers").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                dim,
                num_heads,
                downsample,
                None,
                vb.pp("final_attn_token_to_image"),
            )?,
            norm_final_attn: LayerNorm::new(dim, 1e-5, vb.pp("norm_final_attn"))?,
            span: tracing::span!(tracing::Level::TRACE, "two_way_transformer"),
        })
    }

    /// image [B, C, H, W], image_pe [B, C, H, W], tokens [B, N, C] -> (tokens, image tokens [B, HW, C]).
    pub fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        point_embedding: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let _enter = self.span.enter();
        let image = image.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let image_pe = image_pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let mut queries = point_embedding.clone();
        let mut keys = image;
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, point_embedding, &image_pe)?;
        }
        let q = (&queries + point_embedding)?;
        let k = (&keys + &image_pe)?;
        let attn_out = self.final_attn_token_to_image.forward(&q, &k, &keys)?;
        let queries = self.norm_final_attn.forward(&(queries + attn_out)?)?;
        Ok((queries, keys))
    }
}
