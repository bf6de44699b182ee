//! A two-layer MLP (`fc2(act(fc1(x)))`) on the CPU (f32), a block of rows at a time, so that
//! the hidden activations (4× the width: 100 MB in Hiera's first stage at 1024×1024) live in a
//! small per-thread buffer that stays in cache, instead of a fresh full-size tensor that is
//! faulted in, written, read back and freed for every block.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::linear::Epilogue;
use super::matmul::{MatRef, matmul};
use super::{contiguous_f32, rows_per_thread};

/// About this many hidden values per block (4 MiB of f32), and at least `MIN_BLOCK_ROWS` rows,
/// so the weights are not packed again for too few rows.
const BLOCK_HIDDEN_VALUES: usize = 1 << 20;
const MIN_BLOCK_ROWS: usize = 512;

/// x [rows, in] -> fc2(act(fc1(x))): fc1 weight [hidden, in] and bias [hidden], fc2 weight
/// [out, hidden] and bias [out].
pub(crate) struct FusedMlp<'a> {
    pub fc1: (&'a Tensor, &'a Tensor),
    pub fc2: (&'a Tensor, &'a Tensor),
    pub activation: Epilogue,
}

/// The contiguous f32 data of a CPU tensor's storage.
fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        bail!("{what}: a CPU tensor expected");
    };
    contiguous_f32(cpu, layout, what)
}

impl CustomOp1 for FusedMlp<'_> {
    fn name(&self) -> &'static str {
        "fused-mlp"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "mlp input")?;
        let (rows, in_dim) = layout.shape().dims2()?;
        let (hidden, w1_in) = self.fc1.0.dims2()?;
        let (out_dim, w2_in) = self.fc2.0.dims2()?;
        if w1_in != in_dim
            || w2_in != hidden
            || self.fc1.1.dims1()? != hidden
            || self.fc2.1.dims1()? != out_dim
        {
            bail!(
                "mlp: input {:?}, fc1 {:?}, fc2 {:?}",
                layout.dims(),
                self.fc1.0.dims(),
                self.fc2.0.dims()
            );
        }
        // But at least one block per thread (`rows_per_thread`).
        let block = (BLOCK_HIDDEN_VALUES / hidden)
            .max(MIN_BLOCK_ROWS)
            .min(rows_per_thread(rows))
            .min(rows.max(1));
        let (w1, w1_layout) = self.fc1.0.storage_and_layout();
        let (b1, b1_layout) = self.fc1.1.storage_and_layout();
        let (w2, w2_layout) = self.fc2.0.storage_and_layout();
        let (b2, b2_layout) = self.fc2.1.storage_and_layout();
        let w1 = MatRef::rows(
            cpu_f32(&w1, w1_layout, "fc1 weight")?,
            hidden,
            in_dim,
            in_dim,
        )
        .t();
        let b1 = cpu_f32(&b1, b1_layout, "fc1 bias")?;
        let w2 = MatRef::rows(
            cpu_f32(&w2, w2_layout, "fc2 weight")?,
            out_dim,
            hidden,
            hidden,
        )
        .t();
        let b2 = cpu_f32(&b2, b2_layout, "fc2 bias")?;
        let mut out = vec![0f32; rows * out_dim];
        out.par_chunks_mut(block * out_dim)
            .enumerate()
            .for_each_init(
                || vec![0f32; block * hidden],
                |h, (i, dst)| {
                    let n = dst.len() / out_dim;
                    let src = &x[i * block * in_dim..(i * block + n) * in_dim];
                    let h = &mut h[..n * hidden];
                    for row in h.chunks_mut(hidden) {
                        row.copy_from_slice(b1);
                    }
                    matmul(
                        h,
                        hidden,
                        MatRef::rows(src, n, in_dim, in_dim),
                        w1,
                        1.0,
                        true,
                        false,
                    );
                    self.activation.apply(h);
                    for row in dst.chunks_mut(out_dim) {
                        row.copy_from_slice(b2);
                    }
                    matmul(
                        dst,
                        out_dim,
                        MatRef::rows(h, n, hidden, hidden),
                        w2,
                        1.0,
                        true,
                        false,
                    );
                },
            );
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn blocks_of_rows_give_the_layer_by_layer_result() {
        let dev = Device::Cpu;
        let (rows, d_in, hidden, d_out) = (1300, 24, 1024, 40); // 1024-row blocks: two, one partial
        let rand = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let (x, w1, b1, w2, b2) = (
            rand(&[rows, d_in]),
            rand(&[hidden, d_in]),
            rand(&[hidden]),
            rand(&[d_out, hidden]),
            rand(&[d_out]),
        );
        for activation in [Epilogue::Gelu, Epilogue::Relu] {
            let fused = x
                .apply_op1_no_bwd(&FusedMlp {
                    fc1: (&w1, &b1),
                    fc2: (&w2, &b2),
                    activation,
                })
                .unwrap();
            let h = x
                .matmul(&w1.t().unwrap())
                .unwrap()
                .broadcast_add(&b1)
                .unwrap();
            let h = match activation {
                Epilogue::Gelu => h.gelu_erf().unwrap(),
                Epilogue::Relu => h.relu().unwrap(),
                Epilogue::None => h,
            };
            let expected = h
                .matmul(&w2.t().unwrap())
                .unwrap()
                .broadcast_add(&b2)
                .unwrap();
            // A 1024-wide hidden layer sums in another order than candle's products: 1e-4.
            super::super::assert_within(&fused, &expected, 1e-4, activation).unwrap();
        }
    }
}
