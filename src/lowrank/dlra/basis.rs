//! DLRA's basis linear algebra on the backend. A basis is stored as rows (Ut: k × n, n up to
//! 4096) in the parameter buffer; moving it to the host at every window would cost a GPU run more
//! than its steps. So the n-long work (projections, Gram matrices, rotations) runs as f32 GEMMs on
//! the backend, and only k × k matrices (k ≤ 2r) travel: their Cholesky factors and SVDs are taken
//! on the host in f64.
//!
//! New basis rows are orthonormalised by CholeskyQR2 (Fukaya et al., 2014): E = L·Q with L the
//! Cholesky factor of E·Eᵀ, twice. In f32 one pass leaves Q orthonormal to about ε·κ(E)²; the
//! second, on a Q with κ ≈ 1, to about ε. Before each pass the old basis is projected out (twice
//! in the first: "twice is enough", Kahan–Parlett), so the new rows stay orthogonal to it. L is
//! lower-triangular, so row j of Q is row j of E orthogonalised against the rows before it, as
//! Gram–Schmidt (and the host's Householder QR, up to signs) would give.

use crate::backend::{Backend, Buffer, DType, Gemm, Ref};
use crate::util::rng::Rng;
use anyhow::{bail, Result};
use faer::{Mat, MatRef, Side};

/// The rows, scaled to unit length, are orthonormalised only when their Gram matrix's smallest
/// eigenvalue exceeds this (κ ≤ 100: one CholeskyQR pass in f32 then leaves them orthonormal to
/// about 1e-3, which the second pass cleans up); rows that bring it lower are replaced (a zero
/// gradient row, σ = 0, or one that lies in the span).
const DEPENDENT: f64 = 1e-4;

/// Random completions tried before the directions are declared impossible to complete.
const ATTEMPTS: u64 = 3;

/// Scratch for one augmentation or truncation: two blocks of basis rows and the k × k products.
pub struct Scratch<B: Backend> {
    rows: B::Buf,
    next: B::Buf,
    small: B::Buf,
}

impl<B: Backend> Scratch<B> {
    /// Room for `rows` basis rows of length up to `n` and k × k products with k ≤ `k`.
    pub fn new(b: &B, rows: usize, n: usize, k: usize) -> Result<Self> {
        Ok(Scratch {
            rows: b.alloc(DType::F32, rows * n)?,
            next: b.alloc(DType::F32, rows * n)?,
            small: b.alloc(DType::F32, k * k)?,
        })
    }
}

impl<B: Backend> Scratch<B> {
    /// a·bᵀ of row blocks a (m × n) and b (p × n) as an f64 host matrix (m × p), m·p ≤ k².
    pub fn row_products(
        &mut self,
        b: &B,
        a: Ref<B::Buf>,
        m: usize,
        rhs: Ref<B::Buf>,
        p: usize,
        n: usize,
    ) -> Result<Mat<f64>> {
        products(b, a, m, rhs, p, n, &mut self.small)
    }
}

fn products<B: Backend>(
    b: &B,
    a: Ref<B::Buf>,
    m: usize,
    rhs: Ref<B::Buf>,
    p: usize,
    n: usize,
    small: &mut B::Buf,
) -> Result<Mat<f64>> {
    b.gemm(
        &Gemm::new(m, p, n).trans_b(),
        a,
        rhs,
        small.at_mut(0, m * p),
    )?;
    let x = b.download(small.at(0, m * p))?;
    Ok(Mat::from_fn(m, p, |i, j| x[i * p + j] as f64))
}

/// The Gram matrix E·Eᵀ of the r rows in `work.rows`.
fn gram<B: Backend>(b: &B, r: usize, n: usize, work: &mut Scratch<B>) -> Result<Mat<f64>> {
    let rows = work.rows.at(0, r * n);
    products(b, rows, r, rows, r, n, &mut work.small)
}

/// Writes rows r..2r of the basis whose rows 0..r (of length n) start at `basis` in `params`:
/// orthonormal rows orthogonal to the first r that span the part of `dir` (r × n) outside them,
/// completed by pseudo-random directions where that part has rank below r. `seed` makes the
/// completion repeatable (a resumed run must take the same one).
#[allow(clippy::too_many_arguments)]
pub fn extend<B: Backend>(
    b: &B,
    params: &mut B::Buf,
    basis: usize,
    n: usize,
    r: usize,
    dir: Ref<B::Buf>,
    work: &mut Scratch<B>,
    seed: u64,
) -> Result<()> {
    let len = r * n;
    b.cast(dir, work.rows.at_mut(0, len))?;
    let mut attempt = 0;
    let first = loop {
        for _ in 0..2 {
            outside_basis(b, params.at(basis, len), r, n, work)?;
        }
        let gram = gram(b, r, n, work)?;
        match whitening(gram.as_ref()) {
            Whitening::Full(x) => break x,
            Whitening::Partial(keep) if attempt < ATTEMPTS => {
                // The well-conditioned part of the span, orthonormalised, then random rows with
                // that part taken out: they start orthogonal to the c rows kept (and, once the
                // loop projects again, to the basis), so they add what is still missing.
                let c = keep.nrows();
                if c > 0 {
                    multiply(b, keep.as_ref(), work.rows.at(0, len), n, &mut work.small, &mut work.next)?;
                }
                for j in c..r {
                    let row = Rng::new(seed ^ (attempt << 40) ^ ((j as u64) << 20)).normal_vec(n, 1.0);
                    b.upload(&row, work.rows.at_mut(j * n, n))?;
                }
                if c > 0 {
                    for _ in 0..2 {
                        let kept = work.next.at(0, c * n);
                        project_out(b, kept, c, &mut work.rows, c, r - c, n, &mut work.small)?;
                    }
                }
                let fresh = (c * n, (r - c) * n);
                b.cast(work.rows.at(fresh.0, fresh.1), work.next.at_mut(fresh.0, fresh.1))?;
                std::mem::swap(&mut work.rows, &mut work.next);
                attempt += 1;
            }
            Whitening::Partial(keep) => bail!(
                "cannot complete the basis: {} of {r} new directions after {ATTEMPTS} random completions",
                keep.nrows()
            ),
        }
    };
    // First pass: next = X·E.
    multiply(
        b,
        first.as_ref(),
        work.rows.at(0, len),
        n,
        &mut work.small,
        &mut work.next,
    )?;
    std::mem::swap(&mut work.rows, &mut work.next);
    outside_basis(b, params.at(basis, len), r, n, work)?;
    let gram = gram(b, r, n, work)?;
    let Whitening::Full(second) = whitening(gram.as_ref()) else {
        bail!("CholeskyQR's second pass found dependent rows: the basis rows are not finite or not orthonormal")
    };
    upload_matrix(b, second.as_ref(), &mut work.small)?;
    let g = Gemm::new(r, n, r);
    b.gemm(
        &g,
        work.small.at(0, r * r),
        work.rows.at(0, len),
        params.at_mut(basis + len, len),
    )
}

/// Rows 0..k' of the basis at `basis` (k live rows of length n, `cap` in all) become Pᵀ·(rows
/// 0..k), i.e. U ← U·P for P (k × k'); the rows from k' on are zeroed.
pub fn rotate<B: Backend>(
    b: &B,
    params: &mut B::Buf,
    basis: usize,
    n: usize,
    cap: usize,
    p: MatRef<f64>,
    work: &mut Scratch<B>,
) -> Result<()> {
    let (k, kept) = (p.nrows(), p.ncols());
    let pt = p.transpose().to_owned();
    multiply(
        b,
        pt.as_ref(),
        params.at(basis, k * n),
        n,
        &mut work.small,
        &mut work.rows,
    )?;
    b.cast(work.rows.at(0, kept * n), params.at_mut(basis, kept * n))?;
    b.fill(params.at_mut(basis + kept * n, (cap - kept) * n), 0.0)
}

/// `out` (x.rows × n) = x·rows for a host matrix x and a block of rows (x.cols × n).
fn multiply<B: Backend>(
    b: &B,
    x: MatRef<f64>,
    rows: Ref<B::Buf>,
    n: usize,
    small: &mut B::Buf,
    out: &mut B::Buf,
) -> Result<()> {
    let (m, k) = (x.nrows(), x.ncols());
    upload_matrix(b, x, small)?;
    b.gemm(
        &Gemm::new(m, n, k),
        small.at(0, m * k),
        rows,
        out.at_mut(0, m * n),
    )
}

fn upload_matrix<B: Backend>(b: &B, x: MatRef<f64>, small: &mut B::Buf) -> Result<()> {
    let (m, k) = (x.nrows(), x.ncols());
    let flat: Vec<f32> = (0..m)
        .flat_map(|i| (0..k).map(move |j| x[(i, j)] as f32))
        .collect();
    b.upload(&flat, small.at_mut(0, m * k))
}

/// The r rows in `work.rows` lose their parts along the r basis rows `basis`.
fn outside_basis<B: Backend>(
    b: &B,
    basis: Ref<B::Buf>,
    r: usize,
    n: usize,
    work: &mut Scratch<B>,
) -> Result<()> {
    project_out(b, basis, r, &mut work.rows, 0, r, n, &mut work.small)
}

/// Rows `first..first + m` of `target` (E, m × n) lose their parts along the k orthonormal rows
/// `basis` (U): E ← E − (U·Eᵀ)ᵀ·U.
#[allow(clippy::too_many_arguments)]
fn project_out<B: Backend>(
    b: &B,
    basis: Ref<B::Buf>,
    k: usize,
    target: &mut B::Buf,
    first: usize,
    m: usize,
    n: usize,
    small: &mut B::Buf,
) -> Result<()> {
    let rows = (first * n, m * n);
    b.gemm(
        &Gemm::new(k, m, n).trans_b(),
        basis,
        target.at(rows.0, rows.1),
        small.at_mut(0, k * m),
    )?;
    let g = Gemm::new(m, n, k).trans_a().alpha(-1.0).beta(1.0);
    b.gemm(&g, small.at(0, k * m), basis, target.at_mut(rows.0, rows.1))
}

/// How rows E with Gram matrix E·Eᵀ are orthonormalised.
enum Whitening {
    /// X·E has orthonormal rows: X = L⁻¹·D, where D = diag(E·Eᵀ)^-½ scales the rows to unit
    /// length and L·Lᵀ = A = D·E·Eᵀ·D (lower-triangular L): row j of X·E is row j of E
    /// orthogonalised against the rows before it.
    Full(Mat<f64>),
    /// A is too ill-conditioned for that (its smallest eigenvalue is at most [`DEPENDENT`]): the
    /// c × r map K with K·E orthonormal onto the span of A's eigenvectors above [`DEPENDENT`]
    /// (K = Λ_c^-½·Q_cᵀ·D), c < r; the other rows are to be completed.
    Partial(Mat<f64>),
}

fn whitening(gram: MatRef<f64>) -> Whitening {
    let r = gram.nrows();
    if !(0..r).all(|i| (0..r).all(|j| gram[(i, j)].is_finite())) {
        return Whitening::Partial(Mat::zeros(0, r));
    }
    let d: Vec<f64> = (0..r)
        .map(|i| match gram[(i, i)] > f64::MIN_POSITIVE {
            true => gram[(i, i)].sqrt().recip(),
            false => 0.0,
        })
        .collect();
    let a = Mat::from_fn(r, r, |i, j| d[i] * gram[(i, j)] * d[j]);
    let Ok(evd) = a.self_adjoint_eigen(Side::Lower) else {
        return Whitening::Partial(Mat::zeros(0, r));
    };
    let lambda = evd.S().column_vector();
    if lambda[0] > DEPENDENT {
        // Every pivot of the Cholesky factorisation is at least the smallest eigenvalue.
        if let Ok(llt) = a.llt(Side::Lower) {
            let l = llt.L();
            // X = L⁻¹·D by forward substitution, column by column of D.
            let mut x = Mat::<f64>::zeros(r, r);
            for c in 0..r {
                for i in c..r {
                    let rhs = if i == c { d[c] } else { 0.0 };
                    let dot: f64 = (c..i).map(|k| l[(i, k)] * x[(k, c)]).sum();
                    x[(i, c)] = (rhs - dot) / l[(i, i)];
                }
            }
            return Whitening::Full(x);
        }
    }
    // Eigenvalues ascend: keep the largest ones, largest first.
    let kept: Vec<usize> = (0..r).rev().filter(|&i| lambda[i] > DEPENDENT).collect();
    let q = evd.U();
    Whitening::Partial(Mat::from_fn(kept.len(), r, |row, j| {
        let i = kept[row];
        q[(j, i)] * d[j] / lambda[i].sqrt()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::linalg::factor::random_orthonormal;

    fn upload(x: &[f32]) -> <Cpu as Backend>::Buf {
        let mut buf = Cpu.alloc(DType::F32, x.len()).unwrap();
        Cpu.upload(x, buf.all_mut()).unwrap();
        buf
    }

    /// A buffer of 2r basis rows whose first r are a random orthonormal U (r × n), and (f64) those
    /// rows, r zero rows and the directions `dir`.
    fn setup(n: usize, r: usize, dir: &[f32], seed: u64) -> (<Cpu as Backend>::Buf, Vec<f64>) {
        let u = random_orthonormal(n, r, &mut Rng::new(seed));
        let mut flat: Vec<f32> = (0..r)
            .flat_map(|j| (0..n).map(move |i| (j, i)))
            .map(|(j, i)| u[(i, j)] as f32)
            .collect();
        flat.resize(2 * r * n, 0.0);
        let buf = upload(&flat);
        flat.extend_from_slice(dir);
        (buf, flat.iter().map(|&x| x as f64).collect())
    }

    /// Rows 0..2r are orthonormal to f32 accuracy (plain loops in f64).
    fn assert_orthonormal(rows: &[f32], k: usize, n: usize) {
        for a in 0..k {
            for c in 0..k {
                let dot: f64 = (0..n)
                    .map(|x| rows[a * n + x] as f64 * rows[c * n + x] as f64)
                    .sum();
                let want = f64::from(a == c);
                assert!((dot - want).abs() < 2e-6, "⟨{a}, {c}⟩ = {dot}");
            }
        }
    }

    /// Residual of row `e` (f64) after projecting onto the span of `rows` (orthonormal, k × n).
    fn outside(e: &[f64], rows: &[f32], k: usize, n: usize) -> f64 {
        let mut res = e.to_vec();
        for a in 0..k {
            let row = &rows[a * n..(a + 1) * n];
            let dot: f64 = row.iter().zip(e).map(|(&q, &x)| q as f64 * x).sum();
            res.iter_mut()
                .zip(row)
                .for_each(|(x, &q)| *x -= dot * q as f64);
        }
        res.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    /// The new rows are orthonormal, orthogonal to the old, and with the old they span every
    /// direction given (checked by plain f64 projections): so they span exactly its part outside U.
    #[test]
    fn extension_spans_the_directions_outside_the_basis() {
        let (n, r) = (50, 4);
        let dir = Rng::new(2).normal_vec(r * n, 3.0);
        let (mut buf, host) = setup(n, r, &dir, 1);
        let dir_at = 2 * r * n;
        let mut work = Scratch::new(&Cpu, r, n, 2 * r).unwrap();
        let d = upload(&dir);
        extend(&Cpu, &mut buf, 0, n, r, d.all(), &mut work, 7).unwrap();
        let out = Cpu.download(buf.at(0, 2 * r * n)).unwrap();
        assert_eq!(
            &out[..r * n],
            &host[..r * n].iter().map(|&x| x as f32).collect::<Vec<_>>()[..]
        );
        assert_orthonormal(&out, 2 * r, n);
        for j in 0..r {
            let e = &host[dir_at + j * n..dir_at + (j + 1) * n];
            let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(outside(e, &out, 2 * r, n) < 1e-5 * norm, "direction {j}");
        }
        // Gram–Schmidt order: the first new row is the first direction's part outside U.
        let e0 = &host[dir_at..dir_at + n];
        assert!(outside(e0, &out, r + 1, n) < 1e-5 * 3.0 * (n as f64).sqrt());
    }

    /// A zero direction and a repeated one leave rank below r: the completion is still orthonormal
    /// and orthogonal to the basis, spans what was given, and repeats with the seed.
    #[test]
    fn dependent_directions_are_completed() {
        let (n, r) = (40, 3);
        let mut dir = Rng::new(3).normal_vec(r * n, 1.0);
        dir[n..2 * n].fill(0.0);
        let first = dir[..n].to_vec();
        dir[2 * n..]
            .iter_mut()
            .zip(&first)
            .for_each(|(d, &x)| *d = 2.0 * x);
        let run = |seed| {
            let (mut buf, host) = setup(n, r, &dir, 1);
            let mut work = Scratch::new(&Cpu, r, n, 2 * r).unwrap();
            let d = upload(&dir);
            extend(&Cpu, &mut buf, 0, n, r, d.all(), &mut work, seed).unwrap();
            let out = Cpu.download(buf.at(0, 2 * r * n)).unwrap();
            assert_orthonormal(&out, 2 * r, n);
            let e = &host[2 * r * n..2 * r * n + n];
            assert!(outside(e, &out, 2 * r, n) < 1e-5 * (n as f64).sqrt());
            out
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    /// Nearly parallel directions (sin of their angle about 0.02, just inside [`DEPENDENT`]) make
    /// E ill-conditioned: they are kept, and one CholeskyQR pass in f32 would leave the rows
    /// orthonormal only to about 1e-4.
    #[test]
    fn nearly_parallel_directions_are_kept_and_give_orthonormal_rows() {
        let (n, r) = (512, 3);
        let mut rng = Rng::new(8);
        let mut dir = rng.normal_vec(r * n, 1.0);
        let noise = rng.normal_vec(n, 0.02);
        for x in 0..n {
            dir[n + x] = dir[x] + noise[x];
        }
        let (mut buf, host) = setup(n, r, &dir, 9);
        let mut work = Scratch::new(&Cpu, r, n, 2 * r).unwrap();
        extend(&Cpu, &mut buf, 0, n, r, upload(&dir).all(), &mut work, 1).unwrap();
        let out = Cpu.download(buf.at(0, 2 * r * n)).unwrap();
        assert_orthonormal(&out, 2 * r, n);
        for j in 0..r {
            let e = &host[(2 * r + j) * n..(2 * r + j + 1) * n];
            assert!(
                outside(e, &out, 2 * r, n) < 1e-4 * (n as f64).sqrt(),
                "direction {j}"
            );
        }
    }

    /// With as many new rows as the complement has dimensions (n = 2r), the gradient rows are
    /// often ill-conditioned as a set (here M·G with M's singular values spread from 1 to 1e-4, or
    /// half of them zero): the extension keeps their well-conditioned part and completes the whole
    /// space with random rows. (Rare failures are not caught here: a tiny-model run at r = 64,
    /// where n = 2r, is the end-to-end check of run-tau.sh in results/dlra/gpt.)
    #[test]
    fn the_extension_can_fill_the_whole_space() {
        let (n, r) = (128, 64);
        for seed in 0..20 {
            let mut rng = Rng::new(100 + seed);
            let (p, q) = (
                random_orthonormal(r, r, &mut rng),
                random_orthonormal(r, r, &mut rng),
            );
            let sigma = |k: usize| match seed % 2 {
                0 => 10f64.powf(-4.0 * k as f64 / (r - 1) as f64),
                _ => f64::from(k < r / 2),
            };
            let m = Mat::from_fn(r, r, |i, j| {
                (0..r)
                    .map(|k| p[(i, k)] * sigma(k) * q[(j, k)])
                    .sum::<f64>()
            });
            let g = Mat::from_fn(r, n, |_, _| rng.normal());
            let e = m * g;
            let dir: Vec<f32> = (0..r * n).map(|i| e[(i / n, i % n)] as f32).collect();
            let (mut buf, _) = setup(n, r, &dir, seed);
            let mut work = Scratch::new(&Cpu, r, n, 2 * r).unwrap();
            extend(&Cpu, &mut buf, 0, n, r, upload(&dir).all(), &mut work, seed).unwrap();
            assert_orthonormal(&Cpu.download(buf.at(0, 2 * r * n)).unwrap(), 2 * r, n);
        }
    }

    /// rotate(P) leaves Pᵀ·U in the first k' rows (f64 loops) and zeros after.
    #[test]
    fn rotation_multiplies_the_basis() {
        let (n, k, kept, cap) = (30, 4, 2, 5);
        let init = Rng::new(4).normal_vec(cap * n, 1.0);
        let mut buf = Cpu.alloc(DType::F32, cap * n).unwrap();
        Cpu.upload(&init, buf.all_mut()).unwrap();
        let p = Mat::from_fn(k, kept, |i, j| {
            (i as f64 + 1.0) * if j == 0 { 1.0 } else { -0.5 }
        });
        let mut work = Scratch::new(&Cpu, k, n, k).unwrap();
        rotate(&Cpu, &mut buf, 0, n, cap, p.as_ref(), &mut work).unwrap();
        let out = Cpu.download(buf.all()).unwrap();
        for j in 0..kept {
            for x in 0..n {
                let want: f64 = (0..k).map(|i| p[(i, j)] * init[i * n + x] as f64).sum();
                assert!((out[j * n + x] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
            }
        }
        assert!(out[kept * n..].iter().all(|&x| x == 0.0));
    }
}
