//! CPU microbenchmarks (criterion): the reference ops at GPT-2-small shapes, and the host-side
//! work of one DLRA window per layer (`--lowrank dlra` runs it on the host on every backend).
//! GPU numbers come from `lowrank bench` on a GPU machine (scripts/gpu-run.sh).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lowrank::backend::{cpu::Cpu, AdamW, Backend, Buffer, DType, Gemm};
use lowrank::linalg::factor::random_orthonormal;
use lowrank::lowrank::dlra::{Dlra, FreshMoment, Keep, Moments};
use lowrank::util::rng::Rng;

fn filled(len: usize, seed: u64) -> lowrank::backend::cpu::CpuBuf {
    let mut b = Cpu.alloc(DType::F32, len).unwrap();
    Cpu.upload(&Rng::new(seed).normal_vec(len, 1.0), b.all_mut())
        .unwrap();
    b
}

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_gemm");
    // GPT-2 small MLP up-projection for 256 tokens, forward and the two backward products.
    for (name, g) in [
        ("fwd_256x3072x768", Gemm::new(256, 3072, 768)),
        ("dx_256x768x3072", Gemm::new(256, 768, 3072).trans_b()),
        (
            "dw_768x3072x256",
            Gemm::new(768, 3072, 256).trans_a().beta(1.0),
        ),
    ] {
        let (la, lb, lc) = g.required_lens();
        let (a, b, mut out) = (filled(la, 1), filled(lb, 2), filled(lc, 3));
        group.throughput(Throughput::Elements(g.flops() as u64));
        group.bench_function(name, |bench| {
            bench.iter(|| Cpu.gemm(&g, a.all(), b.all(), out.all_mut()).unwrap())
        });
    }
    group.finish();
}

fn elementwise(c: &mut Criterion) {
    let n = 1 << 22;
    let mut group = c.benchmark_group("cpu_elementwise");
    group.throughput(Throughput::Bytes(30 * n as u64));
    let (mut p, g, mut m, mut v) = (
        filled(n, 1),
        filled(n, 2),
        filled(n, 3),
        Cpu.alloc(DType::F32, n).unwrap(),
    );
    let mut copy = Cpu.alloc(DType::F32, n).unwrap();
    let hp = AdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 1,
        grad_scale: 1.0,
    };
    group.bench_function("adamw_4M", |b| {
        b.iter(|| {
            Cpu.adamw(
                &hp,
                p.all_mut(),
                g.all(),
                m.all_mut(),
                v.all_mut(),
                Some(copy.all_mut()),
            )
            .unwrap()
        })
    });
    group.throughput(Throughput::Bytes(4 * n as u64));
    group.bench_function("sum_squares_4M", |b| {
        b.iter(|| Cpu.sum_squares(g.all()).unwrap())
    });
    group.finish();
}

/// One DLRA window's host work for a GPT-2-small MLP matrix (768 × 3072) at rank r: augmentation
/// from G·V and Gᵀ·U (two QRs of n × 2r), the tangent gradient, and the truncating SVD with the
/// bases' rotation. The training loop pays this per low-rank layer at every window (layers run in
/// parallel on the host's cores).
fn dlra_window(c: &mut Criterion) {
    let mut group = c.benchmark_group("dlra_host_window");
    group.sample_size(10);
    let (n_in, n_out) = (768, 3072);
    for r in [64, 128] {
        let mut rng = Rng::new(r as u64);
        let gaussian =
            |rows, cols, rng: &mut Rng| faer::Mat::from_fn(rows, cols, |_, _| rng.normal());
        let start = Dlra {
            u: random_orthonormal(n_in, r, &mut rng),
            s: faer::Mat::from_fn(r, r, |i, j| if i == j { 1.0 } else { 0.0 }),
            v: random_orthonormal(n_out, r, &mut rng),
            state: Moments::zeros(r, r),
        };
        let (gu, gv) = (gaussian(n_in, r, &mut rng), gaussian(n_out, r, &mut rng));
        group.bench_function(format!("768x3072_r{r}"), |b| {
            b.iter(|| {
                let mut d = start.clone();
                d.augment_with(gu.as_ref(), gv.as_ref(), FreshMoment::Zero);
                let g_s = d.tangent_gradient(gu.as_ref(), gv.as_ref());
                d.s += 0.01 * g_s;
                d.truncate(Keep::Rank(r)).unwrap();
                d
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gemm, elementwise, dlra_window);
criterion_main!(benches);
