//! CPU kernels for the operations where candle's generic path is slow or imprecise: fused
//! attention (and Hiera's windowed attention), linear layers and two-layer MLPs, LayerNorm, GELU
//! and convolutions (depthwise, and dense), on contiguous f32 tensors; and the
//! guided filter's window means on f64 planes and its application at the frame's resolution;
//! separable resampling by taps.
//!
//! The callers (`nn.rs` and the model's modules) use them on the CPU and fall back to plain
//! tensor arithmetic on other devices, so these are fast paths, never the only path. Most take
//! f32 only and fall back for other dtypes too; resampling computes any dtype in f32 on the CPU.

mod attention;
mod box_filter;
mod conv;
mod guided_apply;
mod linear;
mod matmul;
mod mlp;
mod ops;
mod resample;
mod simd;
mod window_attention;

pub(crate) use attention::FusedAttention;
pub(crate) use box_filter::BoxMean;
pub(crate) use conv::{Conv2dTaps, Conv2dUnfold};
pub(crate) use guided_apply::GuidedApply;
pub(crate) use linear::{Epilogue, FusedLinear};
pub(crate) use mlp::FusedMlp;
pub(crate) use ops::{
    DepthwiseConv2d, GeluErf, LayerNormChannels, LayerNormLastDim, PixelShuffle2x2, PlanarScaled,
    SoftMatte,
};
pub(crate) use resample::SeparableResample;
pub(crate) use window_attention::WindowAttention;

use candle_core::{CpuStorage, Layout, Result, bail};

/// The fewest rows (queries, tokens) worth a task of their own.
const MIN_TASK_ROWS: usize = 32;

/// Rows per task so that each thread gets one, but no fewer than `MIN_TASK_ROWS`: the nano
/// model's 256 queries and tokens, cut in blocks of 512, had left the second core idle.
fn rows_per_thread(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads())
        .max(MIN_TASK_ROWS)
}

/// The f32 slice a contiguous CPU tensor covers; `what` names it in the error.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{what}: f32 expected");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: contiguous input expected"),
    }
}

/// Asserts that a fast path's output has the reference's shape and lies within 1e-5 of its
/// largest magnitude everywhere; `case` names the shapes in the failure message.
#[cfg(test)]
pub(crate) fn assert_matches_reference(
    ours: &candle_core::Tensor,
    reference: &candle_core::Tensor,
    case: impl std::fmt::Debug,
) -> Result<()> {
    assert_within(ours, reference, 1e-5, case)
}

/// `assert_matches_reference` with another tolerance, relative to the reference's largest magnitude.
#[cfg(test)]
pub(crate) fn assert_within(
    ours: &candle_core::Tensor,
    reference: &candle_core::Tensor,
    tolerance: f32,
    case: impl std::fmt::Debug,
) -> Result<()> {
    assert_eq!(ours.dims(), reference.dims(), "{case:?}");
    let err = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(
        err <= tolerance * scale,
        "{case:?}: max error {err} of {scale}"
    );
    Ok(())
}
