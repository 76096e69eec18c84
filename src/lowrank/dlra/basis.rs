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
use rayon::prelude::*;

/// The rows, scaled to unit length, are orthonormalised only when their Gram matrix's smallest
/// eigenvalue exceeds this (κ ≤ 100: one CholeskyQR pass in f32 then leaves them orthonormal to
/// about 1e-3, which the second pass cleans up); rows that bring it lower are replaced (a zero
/// gradient row, σ = 0, or one that lies in the span).
const DEPENDENT: f64 = 1e-4;

/// Random completions tried before the directions are declared impossible to complete.
const ATTEMPTS: u64 = 3;

/// At most this many f32 values of working rows at once (1 GiB): the bases of a large model are
/// extended in groups.
const MAX_WORK_VALUES: usize = 1 << 28;

/// One basis to extend: its r live rows of length n at `basis` in the parameter buffer, and r new
/// directions (r × n) at `dir` in the direction buffer. `seed` makes a random completion repeatable
/// (a resumed run must take the same one).
#[derive(Clone, Copy, Debug)]
pub struct Extension<'a> {
    pub name: &'a str,
    pub basis: usize,
    pub dir: usize,
    pub n: usize,
    pub r: usize,
    pub seed: u64,
}

impl Extension<'_> {
    fn len(&self) -> usize {
        self.r * self.n
    }
}

/// For each extension, writes rows r..2r of its basis: orthonormal rows orthogonal to the first r
/// that span the part of its directions outside them, completed by pseudo-random directions where
/// that part has rank below r.
///
/// The bases go through each phase together, so a model's layers cost one synchronisation per
/// phase rather than one per layer and phase: every basis's GEMMs are launched, their k × k
/// products come back in one download, and the host's f64 algebra runs over them in parallel.
pub fn extend<B: Backend>(
    b: &B,
    params: &mut B::Buf,
    dirs: &B::Buf,
    jobs: &[Extension],
) -> Result<()> {
    let mut group = Vec::new();
    let mut values = 0;
    for job in jobs {
        if !group.is_empty() && values + job.len() > MAX_WORK_VALUES {
            extend_group(b, params, dirs, &group)?;
            (group, values) = (Vec::new(), 0);
        }
        group.push(*job);
        values += job.len();
    }
    if group.is_empty() {
        return Ok(());
    }
    extend_group(b, params, dirs, &group)
}

fn extend_group<B: Backend>(
    b: &B,
    params: &mut B::Buf,
    dirs: &B::Buf,
    jobs: &[Extension],
) -> Result<()> {
    let widest = jobs.iter().map(|j| j.len()).max().unwrap_or(0);
    let k = jobs.iter().map(|j| j.r).max().unwrap_or(0);
    let mut rows = jobs
        .iter()
        .map(|j| {
            let mut e = b.alloc(DType::F32, j.len())?;
            b.cast(dirs.at(j.dir, j.len()), e.all_mut())?;
            Ok(e)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut next = b.alloc(DType::F32, widest.max(1))?;
    let mut small = b.alloc(DType::F32, (k * k).max(1))?;
    let mut grams = Products::new(b, jobs.iter().map(|j| (j.r, j.r)))?;

    // Project the old bases out (twice), whiten where the rows allow it; where they do not, keep
    // the well-conditioned part, complete it with random rows and try again.
    let mut first: Vec<Option<Mat<f64>>> = vec![None; jobs.len()];
    let mut todo: Vec<usize> = (0..jobs.len()).collect();
    for attempt in 0.. {
        for &i in &todo {
            let j = &jobs[i];
            for _ in 0..2 {
                project_out(
                    b,
                    params.at(j.basis, j.len()),
                    j.r,
                    &mut rows[i],
                    0,
                    j.r,
                    j.n,
                    &mut small,
                )?;
            }
            let e = rows[i].all();
            grams.launch(b, i, e, e, j.n)?;
        }
        let gram = grams.download(b)?;
        let whitened: Vec<Whitening> = todo
            .par_iter()
            .map(|&i| whitening(gram[i].as_ref()))
            .collect();
        let mut again = Vec::new();
        for (&i, w) in todo.iter().zip(whitened) {
            let j = &jobs[i];
            match w {
                Whitening::Full(x) => first[i] = Some(x),
                Whitening::Partial(keep) if attempt < ATTEMPTS => {
                    complete(b, j, keep.as_ref(), attempt, &mut rows[i], &mut next, &mut small)?;
                    again.push(i);
                }
                Whitening::Partial(keep) => bail!(
                    "{}: cannot complete the basis: {} of {} new directions after {ATTEMPTS} random completions",
                    j.name,
                    keep.nrows(),
                    j.r
                ),
            }
        }
        if again.is_empty() {
            break;
        }
        todo = again;
    }

    // First pass: E ← X·E; then the second pass, after projecting the old bases out once more.
    for (i, j) in jobs.iter().enumerate() {
        let x = first[i]
            .as_ref()
            .expect("every basis is whitened or the loop bailed");
        multiply(b, x.as_ref(), rows[i].all(), j.n, &mut small, &mut next)?;
        b.cast(next.at(0, j.len()), rows[i].all_mut())?;
        project_out(
            b,
            params.at(j.basis, j.len()),
            j.r,
            &mut rows[i],
            0,
            j.r,
            j.n,
            &mut small,
        )?;
        let e = rows[i].all();
        grams.launch(b, i, e, e, j.n)?;
    }
    let gram = grams.download(b)?;
    let second: Vec<Whitening> = gram.par_iter().map(|g| whitening(g.as_ref())).collect();
    for ((j, w), e) in jobs.iter().zip(second).zip(&rows) {
        let Whitening::Full(x) = w else {
            bail!("{}: CholeskyQR's second pass found dependent rows: the basis rows are not finite or not orthonormal", j.name)
        };
        upload_matrix(b, x.as_ref(), &mut small)?;
        b.gemm(
            &Gemm::new(j.r, j.n, j.r),
            small.at(0, j.r * j.r),
            e.all(),
            params.at_mut(j.basis + j.len(), j.len()),
        )?;
    }
    Ok(())
}

/// Replaces the rows E (r × n) by the well-conditioned part of their span, K·E (c rows,
/// orthonormalised), followed by r − c random rows with that part taken out: they start
/// orthogonal to the rows kept (and, once the caller projects again, to the basis), so they add
/// what is still missing.
fn complete<B: Backend>(
    b: &B,
    j: &Extension,
    keep: MatRef<f64>,
    attempt: u64,
    rows: &mut B::Buf,
    next: &mut B::Buf,
    small: &mut B::Buf,
) -> Result<()> {
    let (n, r, c) = (j.n, j.r, keep.nrows());
    if c > 0 {
        multiply(b, keep, rows.all(), n, small, next)?;
    }
    for row in c..r {
        let x = Rng::new(j.seed ^ (attempt << 40) ^ ((row as u64) << 20)).normal_vec(n, 1.0);
        b.upload(&x, rows.at_mut(row * n, n))?;
    }
    if c > 0 {
        for _ in 0..2 {
            project_out(b, next.at(0, c * n), c, rows, c, r - c, n, small)?;
        }
        b.cast(next.at(0, c * n), rows.at_mut(0, c * n))?;
    }
    Ok(())
}

/// Small products a·bᵀ of row blocks, each in its own region of one buffer, so that all of them
/// come back to the host in one download.
pub struct Products<B: Backend> {
    shapes: Vec<(usize, usize)>,
    offsets: Vec<usize>,
    buf: B::Buf,
}

impl<B: Backend> Products<B> {
    /// Room for one m × p product per shape.
    pub fn new(b: &B, shapes: impl IntoIterator<Item = (usize, usize)>) -> Result<Self> {
        let shapes: Vec<_> = shapes.into_iter().collect();
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut total = 0;
        for &(m, p) in &shapes {
            offsets.push(total);
            total += m * p;
        }
        Ok(Products {
            buf: b.alloc(DType::F32, total.max(1))?,
            shapes,
            offsets,
        })
    }

    /// Product `i` = a·rhsᵀ of a (m × n) and rhs (p × n), m × p as given to `new`.
    pub fn launch(
        &mut self,
        b: &B,
        i: usize,
        a: Ref<B::Buf>,
        rhs: Ref<B::Buf>,
        n: usize,
    ) -> Result<()> {
        let (m, p) = self.shapes[i];
        b.gemm(
            &Gemm::new(m, p, n).trans_b(),
            a,
            rhs,
            self.buf.at_mut(self.offsets[i], m * p),
        )
    }

    /// Every product as an f64 host matrix (those not launched since `new` hold stale values).
    pub fn download(&self, b: &B) -> Result<Vec<Mat<f64>>> {
        let x = b.download(self.buf.all())?;
        Ok(self
            .shapes
            .iter()
            .zip(&self.offsets)
            .map(|(&(m, p), &o)| Mat::from_fn(m, p, |i, j| x[o + i * p + j] as f64))
            .collect())
    }
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
) -> Result<()> {
    let (k, kept) = (p.nrows(), p.ncols());
    let pt = p.transpose().to_owned();
    let mut small = b.alloc(DType::F32, (k * kept).max(1))?;
    let mut rows = b.alloc(DType::F32, (kept * n).max(1))?;
    multiply(
        b,
        pt.as_ref(),
        params.at(basis, k * n),
        n,
        &mut small,
        &mut rows,
    )?;
    b.cast(rows.at(0, kept * n), params.at_mut(basis, kept * n))?;
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
mod tests;
