//! `MemoryAttention` and `MemoryAttentionLayer` (`sam2/modeling/memory_attention.py`):
//! the current frame's features attend to the memory bank.
//!
//! Batch-first throughout ([B, N, C]); the official module transposes to this layout too.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::config::{MemoryAttentionConfig, MemoryAttentionLayerConfig};
use crate::model::nn::{Activation, LayerNorm, Linear, mlp2};
use crate::model::sam::transformer::RoPEAttention;

#[derive(Debug)]
struct MemoryAttentionLayer {
    self_attn: RoPEAttention,
    cross_attn_image: RoPEAttention,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
    activation: Activation,
    pos_enc_at_attn: bool,
    pos_enc_at_cross_attn_queries: bool,
    pos_enc_at_cross_attn_keys: bool,
    span: tracing::Span,
}

impl MemoryAttentionLayer {
    fn new(config: &MemoryAttentionLayerConfig, vb: VarBuilder) -> Result<Self> {
        let d = config.d_model;
        Ok(Self {
            self_attn: RoPEAttention::new(&config.self_attention, vb.pp("self_attn"))?,
            cross_attn_image: RoPEAttention::new(
                &config.cross_attention,
                vb.pp("cross_attn_image"),
            )?,
            linear1: Linear::new(d, config.dim_feedforward, vb.pp("linear1"))?,
            linear2: Linear::new(config.dim_feedforward, d, vb.pp("linear2"))?,
            norm1: LayerNorm::new(d, 1e-5, vb.pp("norm1"))?,
            norm2: LayerNorm::new(d, 1e-5, vb.pp("norm2"))?,
            norm3: LayerNorm::new(d, 1e-5, vb.pp("norm3"))?,
            activation: Activation::from_name(&config.activation)?,
            pos_enc_at_attn: config.pos_enc_at_attn,
            pos_enc_at_cross_attn_queries: config.pos_enc_at_cross_attn_queries,
            pos_enc_at_cross_attn_keys: config.pos_enc_at_cross_attn_keys,
            span: tracing::span!(tracing::Level::TRACE, "memory_attention_layer"),
        })
    }

    fn forward(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        pos: &Tensor,
        query_pos: &Tensor,
        num_k_exclude_rope: usize,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        // Self-attention.
        let tgt2 = self.norm1.forward(tgt)?;
        let qk = if self.pos_enc_at_attn {
            (&tgt2 + query_pos)?
        } else {
            tgt2.clone()
        };
        let tgt = (tgt + self.self_attn.forward(&qk, &qk, &tgt2, 0)?)?;
        // Cross-attention to the memory.
        let tgt2 = self.norm2.forward(&tgt)?;
        let q = if self.pos_enc_at_cross_attn_queries {
            (&tgt2 + query_pos)?
        } else {
            tgt2
        };
        let k = if self.pos_enc_at_cross_attn_keys {
            (memory + pos)?
        } else {
            memory.clone()
        };
        let tgt = (&tgt
            + self
                .cross_attn_image
                .forward(&q, &k, memory, num_k_exclude_rope)?)?;
        // Feed-forward, fused (its hidden layer is 4× wide).
        let tgt2 = self.norm3.forward(&tgt)?;
        let tgt2 = mlp2(&tgt2, &self.linear1, &self.linear2, self.activation)?;
        tgt + tgt2
    }
}

#[derive(Debug)]
pub struct MemoryAttention {
    layers: Vec<MemoryAttentionLayer>,
    norm: LayerNorm,
    pos_enc_at_input: bool,
    span: tracing::Span,
}

impl MemoryAttention {
    pub fn new(config: &MemoryAttentionConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..config.num_layers)
            .map(|i| MemoryAttentionLayer::new(&config.layer, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            norm: LayerNorm::new(config.d_model, 1e-5, vb.pp("norm"))?,
            pos_enc_at_input: config.pos_enc_at_input,
            span: tracing::span!(tracing::Level::TRACE, "memory_attention"),
        })
    }

    /// curr [B, N, C] with curr_pos [B, N, C]; memory [B, M, Cm] with memory_pos [B, M, Cm], whose
    /// last `num_obj_ptr_tokens` tokens are object pointers (no RoPE). Returns [B, N, C].
    pub fn forward(
        &self,
        curr: &Tensor,
        memory: &Tensor,
        curr_pos: &Tensor,
        memory_pos: &Tensor,
        num_obj_ptr_tokens: usize,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut output = if self.pos_enc_at_input {
            (curr + (curr_pos * 0.1)?)?
        } else {
            curr.clone()
        };
        for layer in &self.layers {
            output = layer.forward(&output, memory, memory_pos, curr_pos, num_obj_ptr_tokens)?;
        }
        self.norm.forward(&output)
    }
}
