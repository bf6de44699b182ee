//! Fused scaled-dot-product attention on the CPU (f32), flash-attention style.
//!
//! Queries are processed in blocks, keys in blocks: scores of one block pair are a small GEMM,
//! the softmax is kept online (running max and sum per query), and the weighted values are
//! accumulated by a second GEMM. Nothing larger than a block of scores is ever written, which
//! matters for memory attention (4096 queries × 28,736 keys at 1024: a 470 MB score matrix per
//! layer otherwise). Blocks of queries run in parallel; each GEMM runs on one thread.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::matmul::{MatRef, matmul};
use super::{contiguous_f32, rows_per_thread, simd};

const QUERY_BLOCK: usize = 512;
const KEY_BLOCK: usize = 512;

/// q [B, N, D], k [B, M, D], v [B, M, Dv] (contiguous f32) -> softmax(q kᵀ · scale) v [B, N, Dv].
pub(crate) struct FusedAttention {
    pub scale: f32,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous_f32(qs, ql, "attention q")?,
            contiguous_f32(ks, kl, "attention k")?,
            contiguous_f32(vs, vl, "attention v")?,
        );
        let (b, n, d) = ql.shape().dims3()?;
        let (kb, m, kd) = kl.shape().dims3()?;
        let (vb, vm, dv) = vl.shape().dims3()?;
        if kb != b || vb != b || kd != d || vm != m || m == 0 {
            bail!(
                "fused attention: q {:?}, k {:?}, v {:?}",
                ql.dims(),
                kl.dims(),
                vl.dims()
            );
        }
        let mut out = vec![0f32; b * n * dv];
        let scale = self.scale;
        // At least one block of queries per thread.
        let query_block = rows_per_thread(n).min(QUERY_BLOCK);
        out.par_chunks_mut(n * dv)
            .enumerate()
            .for_each(|(batch, out_b)| {
                let (q, k, v) = (
                    &q[batch * n * d..],
                    &k[batch * m * d..(batch + 1) * m * d],
                    &v[batch * m * dv..(batch + 1) * m * dv],
                );
                out_b
                    .par_chunks_mut(query_block * dv)
                    .enumerate()
                    .for_each(|(block, dst)| {
                        let q0 = block * query_block;
                        let rows = dst.len() / dv;
                        attend_block(
                            &q[q0 * d..(q0 + rows) * d],
                            k,
                            v,
                            dst,
                            (rows, m, d, dv),
                            scale,
                        );
                    });
            });
        Ok((CpuStorage::F32(out), Shape::from((b, n, dv))))
    }
}

/// One block of `rows` queries against all `m` keys, written to `out` [rows, dv].
fn attend_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    (rows, m, d, dv): (usize, usize, usize, usize),
    scale: f32,
) {
    let kb_max = KEY_BLOCK.min(m);
    let mut scores = vec![0f32; rows * kb_max];
    let mut row_max = vec![f32::NEG_INFINITY; rows];
    let mut row_sum = vec![0f32; rows];
    for k0 in (0..m).step_by(KEY_BLOCK) {
        let kn = KEY_BLOCK.min(m - k0);
        // scores[rows, kn] = scale · q[rows, d] · k[k0.., d]ᵀ
        let keys = MatRef::rows(&k[k0 * d..(k0 + kn) * d], kn, d, d);
        matmul(
            &mut scores,
            kn,
            MatRef::rows(q, rows, d, d),
            keys.t(),
            scale,
            false,
            false,
        );
        for r in 0..rows {
            let s = &mut scores[r * kn..(r + 1) * kn];
            let block_max = simd::max(s);
            let new_max = block_max.max(row_max[r]);
            let sum = simd::exp_shifted_sum(s, new_max);
            if row_max[r] != f32::NEG_INFINITY && row_max[r] != new_max {
                // Earlier blocks were weighted against a smaller maximum: rescale them.
                let alpha = (row_max[r] - new_max).exp();
                row_sum[r] *= alpha;
                simd::scale(&mut out[r * dv..(r + 1) * dv], alpha);
            }
            row_sum[r] += sum;
            row_max[r] = new_max;
        }
        // out[rows, dv] += scores[rows, kn] · v[k0.., dv]
        let values = MatRef::rows(&v[k0 * dv..(k0 + kn) * dv], kn, dv, dv);
        matmul(
            out,
            dv,
            MatRef::rows(&scores, rows, kn, kn),
            values,
            1.0,
            true,
            false,
        );
    }
    for r in 0..rows {
        simd::scale(&mut out[r * dv..(r + 1) * dv], 1.0 / row_sum[r]);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// softmax(q kᵀ s) v in f64, the plain way.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (b, n, m, d, dv): (usize, usize, usize, usize, usize),
        s: f64,
    ) -> Vec<f64> {
        let mut out = vec![0f64; b * n * dv];
        for bi in 0..b {
            for i in 0..n {
                let scores: Vec<f64> = (0..m)
                    .map(|j| {
                        (0..d)
                            .map(|c| {
                                q[(bi * n + i) * d + c] as f64 * k[(bi * m + j) * d + c] as f64
                            })
                            .sum::<f64>()
                            * s
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..dv {
                    out[(bi * n + i) * dv + c] = (0..m)
                        .map(|j| e[j] * v[(bi * m + j) * dv + c] as f64)
                        .sum::<f64>()
                        / z;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_attention_across_key_and_query_blocks() {
        // Several batches, queries not a multiple of the block, keys spanning three key blocks
        // with the largest scores in the last one (so earlier blocks must be rescaled).
        let (b, n, m, d, dv) = (3, 70, 2 * KEY_BLOCK + 37, 16, 8);
        let val = |i: usize, salt: usize| {
            (((i * 2654435761 + salt * 40503) % 1000) as f32 / 1000.0 - 0.5) * 2.0
        };
        let q: Vec<f32> = (0..b * n * d).map(|i| val(i, 1)).collect();
        let mut k: Vec<f32> = (0..b * m * d).map(|i| val(i, 2)).collect();
        for x in &mut k[(b * m - 40) * d..] {
            *x *= 4.0;
        }
        let v: Vec<f32> = (0..b * m * dv).map(|i| val(i, 3)).collect();
        let dev = Device::Cpu;
        let qt = Tensor::from_vec(q.clone(), (b, n, d), &dev).unwrap();
        let kt = Tensor::from_vec(k.clone(), (b, m, d), &dev).unwrap();
        let vt = Tensor::from_vec(v.clone(), (b, m, dv), &dev).unwrap();
        let out = qt
            .apply_op3_no_bwd(&kt, &vt, &FusedAttention { scale: 0.7 })
            .unwrap();
        let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        let want = naive(&q, &k, &v, (b, n, m, d, dv), 0.7);
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0f64, f64::max);
        assert!(err < 1e-5, "max abs error {err:e}");
    }
}
