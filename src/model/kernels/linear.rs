//! `nn.Linear` on the CPU (f32) as one GEMM into a destination pre-filled with the bias, with an
//! optional activation applied in the same pass: candle's matmul plus a broadcast add (plus an
//! activation) would read and write the output two or three times.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::matmul::{MatRef, matmul};
use super::{contiguous_f32, simd};

/// The fewest output values a task fills with the bias (or activates): a smaller output is done
/// on one thread, since waking the others would cost more than the copy.
const VALUES_PER_TASK: usize = 1 << 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Epilogue {
    None,
    Relu,
    Gelu,
}

impl Epilogue {
    /// Applies the activation in place.
    pub fn apply(self, values: &mut [f32]) {
        match self {
            Epilogue::None => {}
            Epilogue::Relu => simd::relu(values),
            Epilogue::Gelu => simd::gelu_erf(values),
        }
    }
}

/// x [rows, in] (contiguous), weight [out, in], bias [out] -> x · weightᵀ + bias, then the epilogue.
pub(crate) struct FusedLinear {
    pub epilogue: Epilogue,
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            contiguous_f32(xs, xl, "linear input")?,
            contiguous_f32(ws, wl, "linear weight")?,
            contiguous_f32(bs, bl, "linear bias")?,
        );
        let (rows, in_dim) = xl.shape().dims2()?;
        let (out_dim, w_in) = wl.shape().dims2()?;
        if w_in != in_dim || b.len() != out_dim {
            bail!(
                "linear: input {:?}, weight {:?}, bias {:?}",
                xl.dims(),
                wl.dims(),
                bl.dims()
            );
        }
        let mut out = vec![0f32; rows * out_dim];
        out.par_chunks_mut(out_dim)
            .with_min_len(VALUES_PER_TASK.div_ceil(out_dim.max(1)))
            .for_each(|row| row.copy_from_slice(b));
        let weight = MatRef::rows(w, out_dim, in_dim, in_dim);
        matmul(
            &mut out,
            out_dim,
            MatRef::rows(x, rows, in_dim, in_dim),
            weight.t(),
            1.0,
            true,
            true,
        );
        if self.epilogue != Epilogue::None {
            out.par_chunks_mut(VALUES_PER_TASK)
                .for_each(|chunk| self.epilogue.apply(chunk));
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }
}
