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
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::linalg::factor::random_orthonormal;

    fn upload(x: &[f32]) -> <Cpu as Backend>::Buf {
        let mut buf = Cpu.alloc(DType::F32, x.len()).unwrap();
        Cpu.upload(x, buf.all_mut()).unwrap();
        buf
    }

    /// Extends the single basis at the start of `buf` (r rows of length n) by the directions `dir`.
    fn extend_one(buf: &mut <Cpu as Backend>::Buf, n: usize, r: usize, dir: &[f32], seed: u64) {
        let job = Extension {
            name: "test",
            basis: 0,
            dir: 0,
            n,
            r,
            seed,
        };
        extend(&Cpu, buf, &upload(dir), &[job]).unwrap();
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
        extend_one(&mut buf, n, r, &dir, 7);
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
            extend_one(&mut buf, n, r, &dir, seed);
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
        extend_one(&mut buf, n, r, &dir, 1);
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
            extend_one(&mut buf, n, r, &dir, seed);
            assert_orthonormal(&Cpu.download(buf.at(0, 2 * r * n)).unwrap(), 2 * r, n);
        }
    }

    /// Bases of different shapes extended in one call, one of them needing a random completion,
    /// each come out orthonormal and spanning their own directions (f64 projections), exactly as
    /// when extended alone: the shared phases mix nothing between them.
    #[test]
    fn bases_extended_together_come_out_as_if_alone() {
        let shapes = [(50, 4), (40, 3), (64, 8)];
        let (mut params, mut dirs, mut jobs, mut alone) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (t, &(n, r)) in shapes.iter().enumerate() {
            let mut dir = Rng::new(20 + t as u64).normal_vec(r * n, 1.0);
            if t == 1 {
                // A zero row and a repeated one: rank r − 2, completed at random.
                dir[..n].fill(0.0);
                let (a, b) = dir.split_at_mut(2 * n);
                b[..n].copy_from_slice(&a[n..2 * n]);
            }
            let (mut one, host) = setup(n, r, &dir, 30 + t as u64);
            let seed = 40 + t as u64;
            jobs.push(Extension {
                name: "test",
                basis: params.len(),
                dir: dirs.len(),
                n,
                r,
                seed,
            });
            params.extend(host[..2 * r * n].iter().map(|&x| x as f32));
            dirs.extend_from_slice(&dir);
            extend_one(&mut one, n, r, &dir, seed);
            alone.push((Cpu.download(one.all()).unwrap(), host));
        }
        let mut buf = upload(&params);
        extend(&Cpu, &mut buf, &upload(&dirs), &jobs).unwrap();
        let out = Cpu.download(buf.all()).unwrap();
        for (j, (one, host)) in jobs.iter().zip(&alone) {
            let (n, r) = (j.n, j.r);
            let mine = &out[j.basis..j.basis + 2 * r * n];
            assert_orthonormal(mine, 2 * r, n);
            for d in 0..r {
                let e = &host[(2 * r + d) * n..(2 * r + d + 1) * n];
                let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
                assert!(
                    outside(e, mine, 2 * r, n) <= 1e-5 * norm.max(1.0),
                    "{n} × {r}: direction {d}"
                );
            }
            assert_eq!(mine, &one[..], "{n} × {r}");
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
        rotate(&Cpu, &mut buf, 0, n, cap, p.as_ref()).unwrap();
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
