//! `nn.Linear` on the CPU (f32) as one GEMM into a destination pre-filled with the bias, with an
//! optional activation applied in the same pass: candle's matmul plus a broadcast add (plus an
//! activation) would read and write the output two or three times.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, bail};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::simd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Epilogue {
    None,
    Relu,
    Gelu,
}

/// x [rows, in] (contiguous), weight [out, in], bias [out] -> x · weightᵀ + bias, then the epilogue.
pub(crate) struct FusedLinear {
    pub epilogue: Epilogue,
}

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("linear: {what} must be f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("linear: {what} must be contiguous"),
    }
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
            slice(xs, xl, "input")?,
            slice(ws, wl, "weight")?,
            slice(bs, bl, "bias")?,
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
            .for_each(|row| row.copy_from_slice(b));
        if rows > 0 && out_dim > 0 {
            // SAFETY: row-major [rows, in] · [in, out] (the weight read transposed through its
            // strides) into row-major [rows, out]; all in bounds, `out` aliases nothing.
            unsafe {
                gemm(
                    rows,
                    out_dim,
                    in_dim,
                    out.as_mut_ptr(),
                    1,
                    out_dim as isize,
                    true,
                    x.as_ptr(),
                    1,
                    in_dim as isize,
                    w.as_ptr(),
                    in_dim as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::Rayon(rayon::current_num_threads()),
                );
            }
        }
        match self.epilogue {
            Epilogue::None => {}
            Epilogue::Relu => out.par_chunks_mut(1 << 14).for_each(simd::relu),
            Epilogue::Gelu => out.par_chunks_mut(1 << 14).for_each(simd::gelu_erf),
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }
}
