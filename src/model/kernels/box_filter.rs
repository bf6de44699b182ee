//! The mean over a square window clipped at the border, on f64 planes: the guided filter's
//! building block, in O(H·W) per plane whatever the radius.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, bail};
use rayon::prelude::*;

/// `box_mean` of [.., H, W] (contiguous f64): each pixel's mean over the (2r+1)² window around
/// it, clipped at the border. Like the reference, from a summed-area table: the window's sum is
/// four lookups, divided by the window's clipped area.
pub(crate) struct BoxMean {
    pub radius: usize,
}

impl CustomOp1 for BoxMean {
    fn name(&self) -> &'static str {
        "box-mean"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F64(data) = s else {
            bail!("box mean: f64 expected");
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("box mean: contiguous input expected");
        };
        let dims = l.dims();
        if dims.len() < 2 {
            bail!("box mean: [.., H, W] expected, got {dims:?}");
        }
        let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let x = &data[start..end];
        let r = self.radius;
        // The clipped window of each row and column: [lo, hi).
        let span = |n: usize| -> Vec<(usize, usize)> {
            (0..n)
                .map(|i| (i.saturating_sub(r), (i + r + 1).min(n)))
                .collect()
        };
        let (rows, cols) = (span(h), span(w));
        let mut out = vec![0f64; x.len()];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                // table[i][j]: the sum of src over rows < i and columns < j, accumulated along
                // the row first and then down the columns, as the reference's two cumsums.
                let stride = w + 1;
                let mut table = vec![0f64; (h + 1) * stride];
                for i in 0..h {
                    let mut run = 0f64;
                    for j in 0..w {
                        run += src[i * w + j];
                        table[(i + 1) * stride + j + 1] = run;
                    }
                }
                for i in 1..=h {
                    for j in 1..=w {
                        table[i * stride + j] += table[(i - 1) * stride + j];
                    }
                }
                for (i, &(y0, y1)) in rows.iter().enumerate() {
                    let (top, bottom) = (&table[y0 * stride..], &table[y1 * stride..]);
                    for (j, &(x0, x1)) in cols.iter().enumerate() {
                        let total = bottom[x1] - top[x1] - bottom[x0] + top[x0];
                        dst[i * w + j] = total / ((y1 - y0) * (x1 - x0)) as f64;
                    }
                }
            });
        Ok((CpuStorage::F64(out), l.shape().clone()))
    }
}
