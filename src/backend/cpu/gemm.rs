//! Row-major GEMM through the `gemm` crate (CPU twin of cuBLASLt in backend/cuda/gemm.rs).

use crate::backend::Gemm;
use gemm::Parallelism;

/// C = alpha·op(A)·op(B) + beta·C for each batch entry. Slices are checked by `Gemm::check`.
pub fn gemm(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    // Row-major strides (column stride, row stride) of op(A) and op(B) as stored.
    let (a_cs, a_rs) = if g.trans_a { (g.m as isize, 1) } else { (1, g.k as isize) };
    let (b_cs, b_rs) = if g.trans_b { (g.k as isize, 1) } else { (1, g.n as isize) };
    let par = if g.m * g.n * g.k >= 1 << 18 { Parallelism::Rayon(0) } else { Parallelism::None };
    for i in 0..g.batch {
        let (a, b) = (&a[i * g.stride_a..], &b[i * g.stride_b..]);
        let c = &mut c[i * g.stride_c..i * g.stride_c + g.m * g.n];
        if g.k == 0 {
            c.iter_mut().for_each(|x| *x *= g.beta);
            continue;
        }
        // SAFETY: `Gemm::check` ensured every window holds the m×k, k×n and m×n elements addressed here.
        unsafe {
            gemm::gemm(
                g.m, g.n, g.k,
                c.as_mut_ptr(), 1, g.n as isize,
                g.beta != 0.0,
                a.as_ptr(), a_cs, a_rs,
                b.as_ptr(), b_cs, b_rs,
                g.beta, g.alpha,
                false, false, false,
                par,
            );
        }
    }
}
