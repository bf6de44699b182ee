//! Hiera's windowed attention on the CPU (f32), straight from the projected token map.
//!
//! The generic path partitions the map into windows, splits q, k and v, moves heads to the front
//! and makes each contiguous: five copies of every token per block. Here each window's q, k and
//! v rows are gathered into small per-task buffers (which stay in cache), q max-pooled inside the
//! window at a stage's first block, and the window attended head by head; the output is written
//! window-major ([B·nW, ws', ws', C]), the layout `window_unpartition` takes.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::matmul::{MatRef, matmul};
use super::{contiguous_f32, simd};

/// qkv [B, Hp, Wp, 3·C] (token layout [3, heads, head_dim], Hp and Wp multiples of the window)
/// -> attention output [B·nW, ws/s, ws/s, C], q pooled by `q_stride` s (1: no pooling).
pub(crate) struct WindowAttention {
    pub window: usize,
    pub heads: usize,
    pub q_stride: usize,
}

impl CustomOp1 for WindowAttention {
    fn name(&self) -> &'static str {
        "hiera-window-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, "window attention")?;
        let (b, hp, wp, c3) = layout.shape().dims4()?;
        let (ws, s, heads) = (self.window, self.q_stride.max(1), self.heads);
        if ws == 0 || hp % ws != 0 || wp % ws != 0 || c3 % (3 * heads) != 0 {
            bail!(
                "window attention: map {:?}, window {ws}, stride {s}, {heads} heads",
                layout.dims()
            );
        }
        let c = c3 / 3;
        let hd = c / heads;
        let (nwy, nwx) = (hp / ws, wp / ws);
        // A window that does not divide by the stride pools its first ws/s·s rows and columns,
        // as MaxPool2d(ceil_mode=False) does.
        let wq = ws / s;
        let (nq, nk) = (wq * wq, ws * ws);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; b * nwy * nwx * nq * c];
        out.par_chunks_mut(nq * c).enumerate().for_each_init(
            || {
                (
                    vec![0f32; nk * hd],
                    vec![0f32; nk * hd],
                    vec![0f32; nk * hd],
                    vec![0f32; nq * nk],
                )
            },
            |(qb, kb, vb, scores), (window, dst)| {
                let (bi, wy, wx) = (window / (nwy * nwx), (window / nwx) % nwy, window % nwx);
                let token =
                    |ty: usize, tx: usize| ((bi * hp + wy * ws + ty) * wp + wx * ws + tx) * c3;
                for h in 0..heads {
                    let (q_off, k_off, v_off) = (h * hd, c + h * hd, 2 * c + h * hd);
                    for ty in 0..ws {
                        for tx in 0..ws {
                            let t = token(ty, tx);
                            let row = (ty * ws + tx) * hd;
                            kb[row..row + hd].copy_from_slice(&qkv[t + k_off..t + k_off + hd]);
                            vb[row..row + hd].copy_from_slice(&qkv[t + v_off..t + v_off + hd]);
                        }
                    }
                    // q, max-pooled over s×s cells of the window when the stage starts.
                    for py in 0..wq {
                        for px in 0..wq {
                            let row = &mut qb[(py * wq + px) * hd..(py * wq + px + 1) * hd];
                            row.fill(f32::NEG_INFINITY);
                            for dy in 0..s {
                                for dx in 0..s {
                                    let t = token(py * s + dy, px * s + dx);
                                    for (r, v) in
                                        row.iter_mut().zip(&qkv[t + q_off..t + q_off + hd])
                                    {
                                        *r = if *v > *r { *v } else { *r };
                                    }
                                }
                            }
                        }
                    }
                    let keys = MatRef::rows(kb, nk, hd, hd);
                    matmul(
                        scores,
                        nk,
                        MatRef::rows(qb, nq, hd, hd),
                        keys.t(),
                        scale,
                        false,
                        false,
                    );
                    for row in scores.chunks_mut(nk) {
                        let m = simd::max(row);
                        let sum = simd::exp_shifted_sum(row, m);
                        simd::scale(row, 1.0 / sum);
                    }
                    // This head's output columns of the window's rows (C apart).
                    let values = MatRef::rows(vb, nk, hd, hd);
                    matmul(
                        &mut dst[h * hd..],
                        c,
                        MatRef::rows(scores, nq, nk, nk),
                        values,
                        1.0,
                        false,
                        false,
                    );
                }
            },
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((b * nwy * nwx, wq, wq, c)),
        ))
    }
}
