//! Row-major GEMM through the `gemm` crate (CPU twin of cuBLASLt in backend/cuda/gemm.rs).

use crate::backend::{Gemm, RowStrides};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

/// op(B) = Bᵀ with at least this many rows (K) and at least `TRANSPOSE_B_MIN_M` rows of A is
/// not handed to the `gemm` crate as it is stored: the crate packs Bᵀ's panels by a strided gather
/// whose stride is then K floats (12 KB at K = 3072, a page per element), which held the MLP's
/// dx product (`cpu_gemm/dx_256x768x3072`) at half the speed of its other two products once they
/// ran on AVX-512. At K = 768 (the LM head's logits, the projection's dx) the gather keeps up.
const TRANSPOSE_B_MIN_K: usize = 1024;
const TRANSPOSE_B_MIN_M: usize = 64;

thread_local! {
    /// Transposed copies, reused across calls (a fresh allocation would page-fault in each time).
    static SCRATCH: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// How `gemm` computes a product with op(B) = Bᵀ of long rows: through whichever copies move
/// fewer values (`gemm_through_copies`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Copies {
    /// Bᵀ (n·k values).
    TransposedB,
    /// op(A)ᵀ (m·k; none when A is stored transposed) and C (m·n, twice when beta reads it),
    /// computing Cᵀ = B·op(A)ᵀ.
    SwappedProduct,
}

/// The copies `gemm` makes for `g`; None for a product computed in place.
fn copies(g: &Gemm) -> Option<Copies> {
    if !(g.trans_b && g.k >= TRANSPOSE_B_MIN_K && g.m >= TRANSPOSE_B_MIN_M) {
        return None;
    }
    let copy_a = if g.trans_a { 0 } else { g.m * g.k };
    let copy_c = g.m * g.n * if g.beta == 0.0 { 1 } else { 2 };
    Some(match copy_a + copy_c >= g.n * g.k {
        true => Copies::TransposedB,
        false => Copies::SwappedProduct,
    })
}

/// Bytes of the copies `gemm` makes for `g`, which it keeps on its thread for later calls (GPT-2
/// medium's LM head at 4 × 1024 tokens: wteᵀ, 206 MB), for a run's memory plan.
pub fn scratch_bytes(g: &Gemm) -> usize {
    4 * match copies(g) {
        None => 0,
        Some(Copies::TransposedB) => g.k * g.n,
        Some(Copies::SwappedProduct) => g.k * g.m + g.n * g.m,
    }
}

/// C = alpha·op(A)·op(B) + beta·C for each batch entry. Slices are checked by `Gemm::check`.
pub fn gemm(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    if let Some(way) = copies(g) {
        // A rayon worker may reach here again while an outer call holds the scratch (work
        // stealing inside the gemm crate's parallel loop): that call gets buffers of its own.
        return SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => gemm_through_copies(g, way, a, b, c, &mut scratch),
            Err(_) => gemm_through_copies(g, way, a, b, c, &mut Default::default()),
        });
    }
    for i in 0..g.batch {
        let c = &mut c[i * g.stride_c..];
        gemm_windows(
            g,
            &a[i * g.stride_a..],
            &b[i * g.stride_b..],
            c,
            RowStrides::packed(g),
        );
    }
}

/// A product with op(B) = Bᵀ of long rows, through the copies `way` names, neither operand then
/// transposed. A GPT-2 layer's dx with 256 rows copies 0.98 M values the second way instead of
/// 2.4 M the first; with thousands of rows, the first way is the cheaper one.
fn gemm_through_copies(
    g: &Gemm,
    way: Copies,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    scratch: &mut [Vec<f32>; 2],
) {
    let [first, second] = scratch;
    if way == Copies::TransposedB {
        let untransposed = Gemm {
            trans_b: false,
            stride_b: g.k * g.n,
            batch: 1,
            ..*g
        };
        first.resize(g.k * g.n, 0.0);
        for i in 0..g.batch {
            transpose(&b[i * g.stride_b..][..g.n * g.k], g.n, g.k, first);
            let c = &mut c[i * g.stride_c..];
            gemm(&untransposed, &a[i * g.stride_a..], first, c);
        }
        return;
    }
    // Cᵀ (n × m) = B (n × k) · op(A)ᵀ (k × m).
    let swapped = Gemm {
        m: g.n,
        n: g.m,
        trans_a: false,
        trans_b: false,
        batch: 1,
        ..*g
    };
    first.resize(g.k * g.m, 0.0);
    second.resize(g.n * g.m, 0.0);
    for i in 0..g.batch {
        let a = &a[i * g.stride_a..][..g.m * g.k];
        let a_t: &[f32] = if g.trans_a {
            a
        } else {
            transpose(a, g.m, g.k, first);
            first
        };
        let c = &mut c[i * g.stride_c..][..g.m * g.n];
        if g.beta != 0.0 {
            transpose(c, g.m, g.n, second);
        }
        let (b, ld) = (&b[i * g.stride_b..], RowStrides::packed(&swapped));
        gemm_windows(&swapped, b, a_t, second, ld);
        transpose(second, g.n, g.m, c);
    }
}

/// One product of `g` (its batch fields are ignored): C = alpha·op(A)·op(B) + beta·C, each
/// operand's first row at the start of its slice, its rows `ld` apart. Panics if a slice is too
/// short for its window or a row stride shorter than its row (the callers have checked shapes).
pub fn gemm_windows(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32], ld: RowStrides) {
    let (a_rows, a_cols) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    let (b_rows, b_cols) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    for (name, rows, cols, stride, len) in [
        ("A", a_rows, a_cols, ld.a, a.len()),
        ("B", b_rows, b_cols, ld.b, b.len()),
        ("C", g.m, g.n, ld.c, c.len()),
    ] {
        let need = if rows == 0 {
            0
        } else {
            (rows - 1) * stride + cols
        };
        assert!(
            stride >= cols && len >= need,
            "gemm window {name}: {rows} x {cols} at row stride {stride} needs {need} elements, has {len}"
        );
    }
    if g.m == 0 || g.n == 0 {
        return;
    }
    if g.k == 0 {
        for row in c.chunks_mut(ld.c).take(g.m) {
            // BLAS's rule: beta = 0 writes zeros, whatever C held (NaN included).
            let scale = |x: f32| if g.beta == 0.0 { 0.0 } else { x * g.beta };
            row[..g.n].iter_mut().for_each(|x| *x = scale(*x));
        }
        return;
    }
    // Row-major strides (column stride, row stride) of op(A) and op(B) as stored.
    let (a_cs, a_rs) = if g.trans_a {
        (ld.a as isize, 1)
    } else {
        (1, ld.a as isize)
    };
    let (b_cs, b_rs) = if g.trans_b {
        (ld.b as isize, 1)
    } else {
        (1, ld.b as isize)
    };
    let par = if g.m * g.n * g.k >= 1 << 18 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above ensured every window holds the elements addressed here.
    unsafe {
        gemm::gemm(
            g.m,
            g.n,
            g.k,
            c.as_mut_ptr(),
            1,
            ld.c as isize,
            g.beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            g.beta,
            g.alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// `dst` (cols × rows, row-major) = `src` (rows × cols, row-major)ᵀ, bands of 32 destination rows
/// in parallel, each filled in 4 × 4 blocks transposed in registers: a GPT-2 small CPU step's 24
/// transposes (1.8–2.4 M values each) took 44 ms element by element, 23 ms so.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const BAND: usize = 32;
    dst[..rows * cols]
        .par_chunks_mut(BAND * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let c0 = band * BAND;
            let band_cols = out.len() / rows;
            let (rows4, cols4) = (rows / 4 * 4, band_cols / 4 * 4);
            for r in (0..rows4).step_by(4) {
                for c in (0..cols4).step_by(4) {
                    transpose4x4(
                        &src[r * cols + c0 + c..],
                        cols,
                        &mut out[c * rows + r..],
                        rows,
                    );
                }
            }
            // The ragged edges, element by element.
            for c in 0..band_cols {
                let r_from = if c < cols4 { rows4 } else { 0 };
                for r in r_from..rows {
                    out[c * rows + r] = src[r * cols + c0 + c];
                }
            }
        });
}

/// The 4 × 4 block at the start of `src` (rows `src_stride` apart), transposed into the start of
/// `dst` (rows `dst_stride` apart).
#[inline(always)]
fn transpose4x4(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
    let (src, dst) = (&src[..3 * src_stride + 4], &mut dst[..3 * dst_stride + 4]);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the slices above hold every row read or written (SSE is part of x86-64).
    unsafe {
        use std::arch::x86_64::*;
        let p = src.as_ptr();
        let (a, b) = (_mm_loadu_ps(p), _mm_loadu_ps(p.add(src_stride)));
        let (c, d) = (
            _mm_loadu_ps(p.add(2 * src_stride)),
            _mm_loadu_ps(p.add(3 * src_stride)),
        );
        // (a0 b0 a1 b1), (c0 d0 c1 d1), (a2 b2 a3 b3), (c2 d2 c3 d3), then their halves.
        let (ab01, cd01) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
        let (ab23, cd23) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
        let q = dst.as_mut_ptr();
        _mm_storeu_ps(q, _mm_movelh_ps(ab01, cd01));
        _mm_storeu_ps(q.add(dst_stride), _mm_movehl_ps(cd01, ab01));
        _mm_storeu_ps(q.add(2 * dst_stride), _mm_movelh_ps(ab23, cd23));
        _mm_storeu_ps(q.add(3 * dst_stride), _mm_movehl_ps(cd23, ab23));
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..4 {
        for j in 0..4 {
            dst[j * dst_stride + i] = src[i * src_stride + j];
        }
    }
}

#[cfg(test)]
#[path = "gemm_tests.rs"]
mod tests;
