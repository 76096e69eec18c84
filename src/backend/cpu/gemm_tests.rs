//! Tests of the CPU GEMM (every transpose, batches, windows with row strides, the bias and residual
//! epilogues, bf16 output) against a naive f64 reference written from the definition.

use crate::backend::{cpu::Cpu, Backend, Buffer, DType, Gemm};
use crate::util::rng::Rng;

/// Naive f64 reference of `Gemm` on row-major data, written from the definition.
fn reference(g: &Gemm, a: &[f32], b: &[f32], c0: &[f32]) -> Vec<f64> {
    let mut c: Vec<f64> = c0.iter().map(|&x| x as f64).collect();
    for bi in 0..g.batch {
        let (a, b) = (&a[bi * g.stride_a..], &b[bi * g.stride_b..]);
        for i in 0..g.m {
            for j in 0..g.n {
                let mut acc = 0.0f64;
                for p in 0..g.k {
                    let av = if g.trans_a {
                        a[p * g.m + i]
                    } else {
                        a[i * g.k + p]
                    };
                    let bv = if g.trans_b {
                        b[j * g.k + p]
                    } else {
                        b[p * g.n + j]
                    };
                    acc += av as f64 * bv as f64;
                }
                let idx = bi * g.stride_c + i * g.n + j;
                c[idx] = g.alpha as f64 * acc + g.beta as f64 * c[idx];
            }
        }
    }
    c
}

fn max_rel(out: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    out.iter()
        .zip(want)
        .map(|(&o, &w)| (o as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn matches_f64_reference_on_ragged_shapes_all_transposes() {
    let mut rng = Rng::new(11);
    for &(m, n, k) in &[
        (1, 1, 1),
        (3, 5, 7),
        (17, 33, 65),
        (64, 1, 129),
        (130, 70, 300),
        // K ≥ 1024, M ≥ 64: op(B) = Bᵀ copied transposed first; then, with more columns
        // than A has rows, op(A)ᵀ and C copied instead.
        (70, 19, 1030),
        (64, 300, 1030),
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] {
                let mut g = Gemm::new(m, n, k).alpha(alpha).beta(beta);
                g.trans_a = ta;
                g.trans_b = tb;
                let (la, lb, lc) = g.required_lens();
                let (a, b, c0) = (
                    rng.normal_vec(la, 1.0),
                    rng.normal_vec(lb, 1.0),
                    rng.normal_vec(lc, 1.0),
                );
                let mut bufs = [
                    Cpu.alloc(DType::F32, la).unwrap(),
                    Cpu.alloc(DType::F32, lb).unwrap(),
                    Cpu.alloc(DType::F32, lc).unwrap(),
                ];
                for (buf, host) in bufs.iter_mut().zip([&a, &b, &c0]) {
                    Cpu.upload(host, buf.all_mut()).unwrap();
                }
                let [ab, bb, mut cb] = bufs;
                Cpu.gemm(&g, ab.all(), bb.all(), cb.all_mut()).unwrap();
                let err = max_rel(cb.as_slice(), &reference(&g, &a, &b, &c0));
                assert!(err < 1e-5, "{g:?}: max rel err {err}");
            }
        }
    }
}

/// The blocked transpose against its definition, on shapes ragged against the 4 × 4 blocks
/// and the 32-row bands, every element exact.
/// The copies `gemm` keeps on its thread are what `scratch_bytes` plans for it: wteᵀ-like
/// (k·n) with many rows, op(A)ᵀ and Cᵀ (k·m + n·m) with few, none below 1024 columns of K.
#[test]
fn kept_copies_are_what_scratch_bytes_plans() {
    let cases = [
        (Gemm::new(128, 64, 1024).trans_b(), 1024 * 64),
        (Gemm::new(64, 4096, 1024).trans_b(), 1024 * 64 + 4096 * 64),
        (Gemm::new(128, 64, 768).trans_b(), 0),
    ];
    for (g, values) in cases {
        assert_eq!(super::scratch_bytes(&g), 4 * values, "{g:?}");
        // A thread of its own: its scratch starts empty.
        let kept = std::thread::spawn(move || {
            let mut rng = Rng::new(1);
            let (a, b) = (
                rng.normal_vec(g.m * g.k, 1.0),
                rng.normal_vec(g.n * g.k, 1.0),
            );
            super::gemm(&g, &a, &b, &mut vec![0.0; g.m * g.n]);
            super::SCRATCH.with(|s| s.borrow().iter().map(Vec::len).sum::<usize>())
        });
        assert_eq!(kept.join().unwrap(), values, "{g:?}");
    }
}

#[test]
fn transpose_matches_its_definition() {
    let mut rng = Rng::new(3);
    for (rows, cols) in [
        (1, 1),
        (3, 5),
        (4, 4),
        (7, 33),
        (19, 1030),
        (64, 96),
        (130, 67),
    ] {
        let src = rng.normal_vec(rows * cols, 1.0);
        let mut dst = vec![f32::NAN; rows * cols + 3];
        super::transpose(&src, rows, cols, &mut dst);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    dst[c * rows + r],
                    src[r * cols + c],
                    "{rows}x{cols} at ({r}, {c})"
                );
            }
        }
        assert!(
            dst[rows * cols..].iter().all(|x| x.is_nan()),
            "{rows}x{cols}: wrote past"
        );
    }
}

#[test]
fn batched_with_strides_and_window_offsets() {
    let mut rng = Rng::new(5);
    // The second shape goes through the transposed copy of B (K ≥ 1024, M ≥ 64), the third
    // through those of A and C.
    for (m, n, k) in [(9, 7, 5), (65, 7, 1030), (64, 100, 1030)] {
        let mut g = Gemm::new(m, n, k).trans_b().batched(3);
        g.stride_a = m * k + 41; // gaps between matrices are left alone
        g.stride_b = n * k + 3;
        let (la, lb, lc) = g.required_lens();
        let (a, b) = (rng.normal_vec(la, 1.0), rng.normal_vec(lb, 1.0));
        let mut ab = Cpu.alloc(DType::F32, la + 4).unwrap();
        Cpu.upload(&a, ab.at_mut(4, la)).unwrap();
        let mut bb = Cpu.alloc(DType::F32, lb).unwrap();
        Cpu.upload(&b, bb.all_mut()).unwrap();
        let mut cb = Cpu.alloc(DType::F32, lc).unwrap();
        Cpu.gemm(&g, ab.at(4, la), bb.all(), cb.all_mut()).unwrap();
        let err = max_rel(cb.as_slice(), &reference(&g, &a, &b, &vec![0.0; lc]));
        assert!(err < 1e-5, "{m}x{n}x{k}: max rel err {err}");
    }
}

/// Operands as windows of wider matrices (row strides past their rows, as attention's causal
/// blocks take them): the product of the packed copies, and C's gap columns left as they were.
#[test]
fn windows_with_row_strides_match_the_packed_reference() {
    use super::gemm_windows;
    use crate::backend::RowStrides;
    let mut rng = Rng::new(8);
    for (m, n, k) in [(5, 3, 4), (70, 64, 33), (33, 70, 64)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut g = Gemm::new(m, n, k).alpha(0.5).beta(0.25);
            (g.trans_a, g.trans_b) = (ta, tb);
            let packed = RowStrides::packed(&g);
            let ld = RowStrides {
                a: packed.a + 3,
                b: packed.b + 7,
                c: packed.c + 2,
            };
            // Stored shapes (rows, packed row length) of A, B and C.
            let rows = [if ta { k } else { m }, if tb { n } else { k }, m];
            let widen = |x: &[f32], rows: usize, cols: usize, stride: usize| {
                let mut wide = vec![f32::NAN; rows * stride];
                for r in 0..rows {
                    wide[r * stride..][..cols].copy_from_slice(&x[r * cols..][..cols]);
                }
                wide
            };
            let (la, lb, lc) = g.required_lens();
            let (a, b, c0) = (
                rng.normal_vec(la, 1.0),
                rng.normal_vec(lb, 1.0),
                rng.normal_vec(lc, 1.0),
            );
            let wide_a = widen(&a, rows[0], packed.a, ld.a);
            let wide_b = widen(&b, rows[1], packed.b, ld.b);
            let mut c = widen(&c0, rows[2], packed.c, ld.c);
            gemm_windows(&g, &wide_a, &wide_b, &mut c, ld);
            let want = reference(&g, &a, &b, &c0);
            for r in 0..m {
                let row = &c[r * ld.c..][..ld.c];
                let err = max_rel(&row[..n], &want[r * n..][..n]);
                assert!(err < 1e-5, "{g:?} row {r}: max rel err {err}");
                assert!(row[n..].iter().all(|x| x.is_nan()), "{g:?}: gap written");
            }
        }
    }
    // No K: C = beta·C, and beta = 0 writes zeros over whatever C held.
    let mut c = vec![f32::NAN, 2.0, f32::NAN, 4.0];
    let ld = RowStrides { a: 0, b: 2, c: 2 };
    gemm_windows(&Gemm::new(2, 1, 0), &[], &[], &mut c, ld);
    assert_eq!(c[0], 0.0);
    assert_eq!(c[2], 0.0);
    assert_eq!((c[1], c[3]), (2.0, 4.0));
}

/// A linear layer's forward: the f64 product plus the bias per column; in bf16 rounded once
/// after the bias (as CUDA's epilogue), so a sum that lands between bf16 values only after
/// adding the bias is not rounded twice.
#[test]
fn gemm_bias_adds_the_bias_to_every_row_and_rounds_once() {
    let mut rng = Rng::new(3);
    let g = Gemm::new(13, 10, 21).trans_b();
    let (la, lb, lc) = g.required_lens();
    let (a, b, bias) = (
        rng.normal_vec(la, 1.0),
        rng.normal_vec(lb, 1.0),
        rng.normal_vec(g.n, 1.0),
    );
    let upload = |host: &[f32]| {
        let mut buf = Cpu.alloc(DType::F32, host.len()).unwrap();
        Cpu.upload(host, buf.all_mut()).unwrap();
        buf
    };
    let (ab, bb, biasb) = (upload(&a), upload(&b), upload(&bias));
    let mut cb = Cpu.alloc(DType::F32, lc).unwrap();
    Cpu.gemm_bias(&g, ab.all(), bb.all(), biasb.all(), cb.all_mut())
        .unwrap();
    let mut want = reference(&g, &a, &b, &vec![0.0; lc]);
    want.iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w += bias[i % g.n] as f64);
    let err = max_rel(cb.as_slice(), &want);
    assert!(err < 1e-5, "max rel err {err}");

    // bf16's spacing at 1 is 2⁻⁷. The product 1 + 3·2⁻¹⁰ (0.375 of it) rounds to 1, and
    // adding the bias 2⁻⁹ after that rounding leaves 1; rounded once, the sum 1 + 5·2⁻¹⁰ (0.625
    // of the spacing) is 1 + 2⁻⁷.
    let g = Gemm::new(1, 1, 1);
    let (one, x) = (upload(&[1.0]), upload(&[1.0 + 3.0 / 1024.0]));
    let quarter = upload(&[1.0 / 512.0]);
    let mut c = Cpu.alloc(DType::BF16, 1).unwrap();
    Cpu.gemm_bias(&g, one.all(), x.all(), quarter.all(), c.all_mut())
        .unwrap();
    assert_eq!(c.as_slice(), &[1.0 + 1.0 / 128.0]);
    let two = upload(&[0.0, 0.0]);
    let err = Cpu
        .gemm_bias(&g, one.all(), x.all(), two.all(), c.all_mut())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("bias window has 2 elements, the shape needs 1"),
        "{err}"
    );
}

/// A projection and the residual connection after it: the f64 product plus the bias plus the
/// residual; in bf16 rounded once, after the residual joins (as cuBLASLt's epilogue).
#[test]
fn gemm_bias_residual_adds_both_and_rounds_once() {
    let mut rng = Rng::new(4);
    let g = Gemm::new(13, 10, 21);
    let (la, lb, lc) = g.required_lens();
    let (a, b, bias, r) = (
        rng.normal_vec(la, 1.0),
        rng.normal_vec(lb, 1.0),
        rng.normal_vec(g.n, 1.0),
        rng.normal_vec(lc, 4.0),
    );
    let upload = |host: &[f32]| {
        let mut buf = Cpu.alloc(DType::F32, host.len()).unwrap();
        Cpu.upload(host, buf.all_mut()).unwrap();
        buf
    };
    let (ab, bb, biasb, rb) = (upload(&a), upload(&b), upload(&bias), upload(&r));
    let mut cb = Cpu.alloc(DType::F32, lc).unwrap();
    Cpu.gemm_bias_residual(&g, ab.all(), bb.all(), biasb.all(), rb.all(), cb.all_mut())
        .unwrap();
    let mut want = reference(&g, &a, &b, &vec![0.0; lc]);
    want.iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w += bias[i % g.n] as f64 + r[i] as f64);
    let err = max_rel(cb.as_slice(), &want);
    assert!(err < 1e-5, "max rel err {err}");

    // As in the bias test: the product 1 + 3·2⁻¹⁰ and a residual of 2⁻⁹ come to 1 + 2⁻⁷
    // rounded once; rounding the product first would leave 1.
    let g = Gemm::new(1, 1, 1);
    let (one, x, zero) = (
        upload(&[1.0]),
        upload(&[1.0 + 3.0 / 1024.0]),
        upload(&[0.0]),
    );
    let quarter = upload(&[1.0 / 512.0]);
    let mut c = Cpu.alloc(DType::BF16, 1).unwrap();
    Cpu.gemm_bias_residual(
        &g,
        one.all(),
        x.all(),
        zero.all(),
        quarter.all(),
        c.all_mut(),
    )
    .unwrap();
    assert_eq!(c.as_slice(), &[1.0 + 1.0 / 128.0]);
    let err = Cpu
        .gemm_bias_residual(
            &g,
            one.all(),
            x.all(),
            zero.all(),
            zero.at(0, 0),
            c.all_mut(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("window lengths differ"), "{err}");
}

#[test]
fn bf16_output_is_rounded_and_undersized_windows_are_rejected() {
    let g = Gemm::new(1, 1, 2);
    let mut a = Cpu.alloc(DType::F32, 2).unwrap();
    Cpu.upload(&[1.0, 1.0], a.all_mut()).unwrap();
    let mut b = Cpu.alloc(DType::F32, 2).unwrap();
    // 1 + 2⁻¹⁰ is not representable in bf16 (8 mantissa bits): it rounds to 1.
    Cpu.upload(&[1.0, 1.0 / 1024.0], b.all_mut()).unwrap();
    let mut c = Cpu.alloc(DType::BF16, 1).unwrap();
    Cpu.gemm(&g, a.all(), b.all(), c.all_mut()).unwrap();
    assert_eq!(c.as_slice(), &[1.0]);
    let err = Cpu
        .gemm(&Gemm::new(2, 1, 2), a.all(), b.all(), c.all_mut())
        .unwrap_err();
    assert!(err.to_string().contains("windows too small"), "{err}");
}
