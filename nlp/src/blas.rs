//! Single-precision matrix products through OpenBLAS's `cblas_sgemm`.
//!
//! The encoder's products run here rather than in candle's `gemm` crate
//! because OpenBLAS picks its kernel for the processor at run time, AVX-512
//! included. On a 2-vCPU AVX-512 Xeon it computed the encoder's dense
//! products 1.3 to 2.2 times as fast as candle 0.11's `matmul`, and 0.9 to
//! 1.3 times as fast with its AVX2 kernels forced (docs/benchmarks.md).
//!
//! OpenBLAS is linked from the system, and `build.rs` finds it with
//! pkg-config. Each call runs on the calling thread, and callers spread
//! products over the rayon threads (see [`use_calling_thread_only`]).

// The bindings below are the crate's only foreign calls. Each wrapper
// checks every dimension, stride and slice length before it calls, so the
// library never reads or writes outside the slices it is given.
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::sync::Once;

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

// Declared by OpenBLAS's `cblas.h` and `openblas_config.h` (0.3 series).
unsafe extern "C" {
    fn cblas_sgemm(
        order: c_int,
        transpose_a: c_int,
        transpose_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn openblas_set_num_threads(threads: c_int);
}

/// Sets OpenBLAS to compute each product on the calling thread.
///
/// OpenBLAS starts its own thread pool, one thread per core unless
/// `OPENBLAS_NUM_THREADS` sets another count. The encoder calls it from rayon
/// tasks, which already occupy `RAYON_NUM_THREADS` cores (all cores when
/// unset), so OpenBLAS threads on top would oversubscribe the cores. With
/// one OpenBLAS thread, the process computes on exactly rayon's threads.
/// The setting is process-wide, so it holds for any other OpenBLAS caller
/// in the process too, and is made once.
pub(crate) fn use_calling_thread_only() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the function only stores a thread count, and 1 is valid.
        unsafe { openblas_set_num_threads(1) }
    });
}

/// A row-major `f32` matrix inside a slice: element `(i, j)` is
/// `values[i * row_stride + j]`.
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> Matrix<'a> {
    /// Views `values` as a `rows` × `cols` matrix whose rows start
    /// `row_stride` values apart.
    ///
    /// # Panics
    ///
    /// If `row_stride < cols`, or `values` ends before the last element.
    pub(crate) fn new(values: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        check_layout(values.len(), rows, cols, row_stride);
        Matrix {
            values,
            rows,
            cols,
            row_stride,
        }
    }
}

/// A mutable row-major `f32` matrix inside a slice, laid out as [`Matrix`].
pub(crate) struct MatrixMut<'a> {
    values: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatrixMut<'a> {
    /// Views `values` as a mutable `rows` × `cols` matrix whose rows start
    /// `row_stride` values apart.
    ///
    /// # Panics
    ///
    /// If `row_stride < cols`, or `values` ends before the last element.
    pub(crate) fn new(values: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        check_layout(values.len(), rows, cols, row_stride);
        MatrixMut {
            values,
            rows,
            cols,
            row_stride,
        }
    }
}

fn check_layout(len: usize, rows: usize, cols: usize, row_stride: usize) {
    assert!(
        row_stride >= cols.max(1),
        "row stride {row_stride} is below the {cols} columns"
    );
    if rows > 0 && cols > 0 {
        let needed = (rows - 1) * row_stride + cols;
        assert!(
            len >= needed,
            "{rows} × {cols} matrix with row stride {row_stride} needs {needed} values, the slice has {len}"
        );
    }
    for value in [rows, cols, row_stride] {
        assert!(
            c_int::try_from(value).is_ok(),
            "matrix dimension {value} exceeds the BLAS integer range"
        );
    }
}

/// Form of the right operand of a product: as stored, or transposed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operand {
    AsIs,
    Transposed,
}

/// Computes `c = a · op(b) + beta · c`, where `op(b)` is `b` or its
/// transpose as `b_operand` selects. With `beta` 0, `c` is only written.
///
/// # Panics
///
/// If the dimensions do not match: `a` is `m` × `k`, `op(b)` is `k` × `n`
/// and `c` is `m` × `n`.
pub(crate) fn multiply(a: Matrix, b: Matrix, b_operand: Operand, beta: f32, c: MatrixMut) {
    let (m, k) = (a.rows, a.cols);
    let (b_rows, n) = match b_operand {
        Operand::AsIs => (b.rows, b.cols),
        Operand::Transposed => (b.cols, b.rows),
    };
    assert_eq!(b_rows, k, "inner dimensions differ: {k} and {b_rows}");
    assert_eq!(
        (c.rows, c.cols),
        (m, n),
        "the product is {m} × {n}, the destination {} × {}",
        c.rows,
        c.cols
    );

    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // The product is empty, so the result is beta · c, where beta 0
        // clears c as BLAS does (even NaN values).
        for row in c.values.chunks_mut(c.row_stride).take(m) {
            for value in &mut row[..n] {
                *value = if beta == 0.0 { 0.0 } else { *value * beta };
            }
        }
        return;
    }

    let transpose_b = match b_operand {
        Operand::AsIs => CBLAS_NO_TRANS,
        Operand::Transposed => CBLAS_TRANS,
    };

    // The casts are lossless: check_layout bounded every dimension and
    // stride by c_int's range.
    // SAFETY: check_layout proved that each slice contains its whole
    // matrix, and the asserts above that the shapes agree, so sgemm reads
    // only inside `a` and `b` and writes only inside `c`. `c` is a unique
    // borrow, so it overlaps neither operand.
    unsafe {
        cblas_sgemm(
            CBLAS_ROW_MAJOR,
            CBLAS_NO_TRANS,
            transpose_b,
            m as c_int,
            n as c_int,
            k as c_int,
            1.0,
            a.values.as_ptr(),
            a.row_stride as c_int,
            b.values.as_ptr(),
            b.row_stride as c_int,
            beta,
            c.values.as_mut_ptr(),
            c.row_stride as c_int,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computes `a · op(b)` naively for comparison.
    fn naive(a: Matrix, b: Matrix, b_operand: Operand) -> Vec<f32> {
        let n = match b_operand {
            Operand::AsIs => b.cols,
            Operand::Transposed => b.rows,
        };
        let mut out = vec![0.0; a.rows * n];
        for i in 0..a.rows {
            for j in 0..n {
                let mut sum = 0.0;
                for p in 0..a.cols {
                    let b_value = match b_operand {
                        Operand::AsIs => b.values[p * b.row_stride + j],
                        Operand::Transposed => b.values[j * b.row_stride + p],
                    };
                    sum += a.values[i * a.row_stride + p] * b_value;
                }
                out[i * n + j] = sum;
            }
        }
        out
    }

    fn sequence(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7) % 11) as f32 - 5.0).collect()
    }

    #[test]
    fn multiply_matches_naive_product_with_strides() {
        // a is 3 × 4 inside rows of 6. b is 4 × 5 as stored, or 5 × 4 transposed.
        let a_values = sequence(3 * 6);
        let a = Matrix::new(&a_values, 3, 4, 6);
        let b_values = sequence(4 * 5);
        let b_transposed_values = sequence(5 * 4);
        for (b, operand) in [
            (Matrix::new(&b_values, 4, 5, 5), Operand::AsIs),
            (
                Matrix::new(&b_transposed_values, 5, 4, 4),
                Operand::Transposed,
            ),
        ] {
            let expected = naive(a, b, operand);
            // c is 3 × 5 inside rows of 7, and the two extra columns must stay as they were.
            let mut c_values = vec![-1.0f32; 3 * 7];
            multiply(a, b, operand, 0.0, MatrixMut::new(&mut c_values, 3, 5, 7));
            for i in 0..3 {
                assert_eq!(&c_values[i * 7..i * 7 + 5], &expected[i * 5..i * 5 + 5]);
                assert_eq!(&c_values[i * 7 + 5..i * 7 + 7], &[-1.0, -1.0]);
            }
        }
    }

    #[test]
    fn multiply_adds_to_destination_with_beta() {
        let a_values = [1.0f32, 2.0];
        let b_values = [3.0f32, 4.0];
        let mut c_values = [10.0f32];
        multiply(
            Matrix::new(&a_values, 1, 2, 2),
            Matrix::new(&b_values, 1, 2, 2),
            Operand::Transposed,
            1.0,
            MatrixMut::new(&mut c_values, 1, 1, 1),
        );
        assert_eq!(c_values, [21.0]);
    }

    #[test]
    fn multiply_with_empty_inner_dimension_scales_destination() {
        let empty: [f32; 0] = [];
        let mut c_values = [f32::NAN, 4.0];
        multiply(
            Matrix::new(&empty, 1, 0, 1),
            Matrix::new(&empty, 0, 2, 2),
            Operand::AsIs,
            0.0,
            MatrixMut::new(&mut c_values, 1, 2, 2),
        );
        assert_eq!(c_values, [0.0, 0.0]);
        let mut c_values = [3.0f32, 4.0];
        multiply(
            Matrix::new(&empty, 1, 0, 1),
            Matrix::new(&empty, 0, 2, 2),
            Operand::AsIs,
            0.5,
            MatrixMut::new(&mut c_values, 1, 2, 2),
        );
        assert_eq!(c_values, [1.5, 2.0]);
    }

    #[test]
    #[should_panic(expected = "needs 11 values")]
    fn matrix_rejects_short_slice() {
        let values = [0.0f32; 10];
        Matrix::new(&values, 3, 3, 4);
    }

    #[test]
    #[should_panic(expected = "inner dimensions differ")]
    fn multiply_rejects_mismatched_shapes() {
        let values = [0.0f32; 6];
        let mut out = [0.0f32; 4];
        multiply(
            Matrix::new(&values, 2, 3, 3),
            Matrix::new(&values, 2, 3, 3),
            Operand::AsIs,
            0.0,
            MatrixMut::new(&mut out, 2, 2, 2),
        );
    }
}
