//! CPU kernels for the operations where candle's generic path is slow or imprecise: fused
//! attention, LayerNorm, GELU and depthwise convolution, on contiguous f32 tensors.
//!
//! The callers in `nn.rs` use them on the CPU for f32 and fall back to plain tensor arithmetic
//! for other dtypes and devices, so these are fast paths, never the only path.

mod attention;
mod ops;
mod simd;

pub(crate) use attention::FusedAttention;
pub(crate) use ops::{DepthwiseConv2d, GeluErf, LayerNormLastDim};
