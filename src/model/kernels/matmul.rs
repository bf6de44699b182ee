//! A bounds-checked front to the `gemm` crate for the kernels: row- or column-strided matrix
//! views of slices, so each call site states shapes instead of nineteen positional arguments.

use gemm::{Parallelism, gemm};

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
    let parallelism = if parallel {
        Parallelism::Rayon(rayon::current_num_threads())
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
    #[should_panic(expected = "out of bounds")]
    fn views_are_checked() {
        MatRef::rows(&[0.0; 5], 2, 3, 3);
    }
}
