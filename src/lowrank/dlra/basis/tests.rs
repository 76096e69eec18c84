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
