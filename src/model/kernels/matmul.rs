//! A bounds-checked front to the `gemm` crate for the kernels: row- or column-strided matrix
//! views of slices, so each call site states shapes instead of nineteen positional arguments.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::{MIN_TASK_ROWS, rows_per_thread};

/// Parallel products of fewer multiply-adds than this are split into bands of rows (`matmul`).
const BANDS_BELOW_MACS: usize = 1 << 26;

/// A read-only matrix view: element (r, c) is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows`×`cols` matrix whose rows are `row_stride` apart.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self::strided(data, rows, cols, row_stride, 1)
    }

    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        let view = Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        };
        assert!(view.extent() <= data.len(), "matrix view out of bounds");
        view
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `dst = scale · a · b` (or `dst += scale · a · b` with `accumulate`), `dst` row-major with rows
/// `dst_row_stride` apart. `parallel` splits the product over the rayon pool; kernels that already
/// run one task per thread pass false.
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_row_stride: usize,
    a: MatRef,
    b: MatRef,
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_row_stride + n <= dst.len(),
        "destination out of bounds"
    );
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    if threads > 1 && m >= 2 * MIN_TASK_ROWS && m * n * k < BANDS_BELOW_MACS {
        // A small product (the nano model's 256-token projections): one single-threaded product
        // per band of rows, a band per thread. On two cores a 256³ product took 0.26 ms this way
        // and 0.31 to 0.37 ms with the gemm crate's own threading (0.32 ms on one thread).
        let band = rows_per_thread(m);
        dst[..(m - 1) * dst_row_stride + n]
            .par_chunks_mut(band * dst_row_stride)
            .enumerate()
            .for_each(|(i, dst)| {
                let a = MatRef {
                    data: &a.data[i * band * a.row_stride..],
                    rows: band.min(m - i * band),
                    ..a
                };
                matmul(dst, dst_row_stride, a, b, scale, accumulate, false);
            });
        return;
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the three views were checked to lie inside their slices, and `dst` is a unique
    // borrow, so it aliases neither input.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposed_and_strided_views() {
        // a = [[1, 2], [3, 4]], b = [[5, 6], [7, 8]] stored transposed -> a·b = [[19, 22], [43, 50]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let bt = [5.0, 7.0, 6.0, 8.0];
        let mut dst = [0f32; 6];
        matmul(
            &mut dst,
            3,
            MatRef::rows(&a, 2, 2, 2),
            MatRef::rows(&bt, 2, 2, 2).t(),
            1.0,
            false,
            false,
        );
        assert_eq!(dst, [19.0, 22.0, 0.0, 43.0, 50.0, 0.0]);
        matmul(
            &mut dst,
            3,
            MatRef::rows(&a, 2, 2, 2),
            MatRef::rows(&bt, 2, 2, 2).t(),
            0.5,
            true,
            false,
        );
        assert_eq!(dst, [28.5, 33.0, 0.0, 64.5, 75.0, 0.0]);
    }

    #[test]
    fn bands_of_rows_give_the_whole_product() {
        // 101 rows (bands of 51 and 50 on two threads), a destination wider than the product,
        // accumulating onto what is there: the banded product equals the single one.
        let (m, n, k, stride) = (101, 37, 45, 40);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        let start: Vec<f32> = (0..m * stride).map(|i| (i % 13) as f32).collect();
        let (mut single, mut banded) = (start.clone(), start);
        for (dst, parallel) in [(&mut single, false), (&mut banded, true)] {
            let (a, b) = (MatRef::rows(&a, m, k, k), MatRef::rows(&b, k, n, n));
            matmul(dst, stride, a, b, 0.5, true, parallel);
        }
        for (x, y) in single.iter().zip(&banded) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn views_are_checked() {
        MatRef::rows(&[0.0; 5], 2, 3, 3);
    }
}
