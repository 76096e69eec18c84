//! CPU microbenchmarks (criterion): the reference ops at GPT-2-small shapes, the low-rank linear
//! layer beside the dense GEMM of the same layer, and one DLRA window (augmentation and truncation
//! of a GPT-2-small layer's bases) on the CPU backend.
//! GPU numbers come from `lowrank bench` on a GPU machine (scripts/gpu-run.sh).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lowrank::backend::{
    cpu::Cpu, AdamW, Backend, Buffer, DType, Gemm, LinearEpilogue, LowRankGrads, LowRankShape,
    LowRankWeights,
};
use lowrank::lowrank::dlra::{schedule, FreshMoment};
use lowrank::lowrank::{LowRankConfig, LowRankMode};
use lowrank::model::{Gpt, GptConfig};
use lowrank::optim::{AdamWConfig, AdamWOptimizer};
use lowrank::util::rng::Rng;
use std::time::{Duration, Instant};

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
        // The LM head's logits x·wteᵀ: the step's largest GEMM, and B transposed.
        (
            "lm_head_256x50257x768",
            Gemm::new(256, 50257, 768).trans_b(),
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

/// The low-rank layer y = x·W0 + (x·U)·Vᵀ + b (`w0+lr`) and y = (x·U)·Vᵀ + b (`lr`), forward and
/// backward, at GPT-2 small's up-projection for 256 tokens and two ranks: beside `cpu_gemm`'s
/// dense products of the same layer, what the factors cost or save on the reference backend.
fn lowrank_linear(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_lowrank_linear");
    let (n, n_in, n_out) = (256, 768, 3072);
    let (x, dy, w0, bias) = (
        filled(n * n_in, 1),
        filled(n * n_out, 2),
        filled(n_in * n_out, 3),
        filled(n_out, 4),
    );
    for rank in [32, 96] {
        let sh = LowRankShape {
            n,
            n_in,
            n_out,
            rank,
        };
        let (ut, vt) = (filled(rank * n_in, 5), filled(rank * n_out, 6));
        let (mut t, mut s) = (filled(sh.scratch_len(), 7), filled(sh.scratch_len(), 8));
        let (mut y, mut dx) = (filled(n * n_out, 9), filled(n * n_in, 10));
        // dUt, dVt and db back to back, as in the gradient buffer.
        let mut grads = filled(rank * (n_in + n_out) + n_out, 11);
        for base in [true, false] {
            let pass = if base { "w0+lr" } else { "lr" };
            let w = LowRankWeights {
                w0: base.then(|| w0.all()),
                ut: ut.all(),
                vt: vt.all(),
            };
            group.bench_function(format!("fwd_{pass}_256x768x3072_r{rank}"), |bench| {
                bench.iter(|| {
                    Cpu.lowrank_linear_forward(
                        &sh,
                        x.all(),
                        w,
                        Some(bias.all()),
                        t.all_mut(),
                        y.all_mut(),
                        LinearEpilogue::None,
                    )
                    .unwrap()
                })
            });
            group.bench_function(format!("bwd_{pass}_256x768x3072_r{rank}"), |bench| {
                bench.iter(|| {
                    let grads = LowRankGrads {
                        buf: &mut grads,
                        dut: 0,
                        dvt: rank * n_in,
                        dbias: Some(rank * (n_in + n_out)),
                    };
                    Cpu.lowrank_linear_backward(
                        &sh,
                        x.all(),
                        w,
                        t.all(),
                        dy.all(),
                        s.all_mut(),
                        dx.all_mut(),
                        None,
                        grads,
                    )
                    .unwrap()
                })
            });
        }
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
        b.iter(|| Cpu.sum_squares(&[g.all()]).unwrap())
    });
    // GPT-2 small's MLP activation for 256 tokens (12 of each per training step).
    let act = 256 * 3072;
    let (pre, mut out) = (filled(act, 5), filled(act, 6));
    group.throughput(Throughput::Bytes(8 * act as u64));
    group.bench_function("gelu_forward_256x3072", |b| {
        b.iter(|| Cpu.gelu_forward(out.all_mut(), pre.all()).unwrap())
    });
    // The gradient is scaled in place: a fresh copy per call, or repeated scaling would run it
    // into subnormal numbers and time those.
    let grad = filled(act, 7);
    group.bench_function("gelu_backward_256x3072", |b| {
        b.iter_batched_ref(
            || grad.clone(),
            |d| Cpu.gelu_backward(d.all_mut(), pre.all()).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// One DLRA window of a GPT-2-small layer (its MLP matrices 768 × 3072 and 3072 × 768) at rank r:
/// augmentation (projections and CholeskyQR2 of the new basis rows, the tangent gradient) and the
/// truncating SVD with the bases' rotation, as the training loop runs them. The gradients are
/// refreshed outside the timing, since augmentation clears the bases' own.
fn dlra_window(c: &mut Criterion) {
    let mut group = c.benchmark_group("dlra_window");
    group.sample_size(10);
    for r in [64, 128] {
        let config = GptConfig {
            n_layer: 1,
            ..GptConfig::preset("gpt2").unwrap()
        };
        let lr = LowRankConfig {
            mode: LowRankMode::Dlra,
            rank_init: r,
            ..Default::default()
        };
        let mut model = Gpt::with_lowrank(&Cpu, config, &lr, 1, 16, 0).unwrap();
        let n = model.layout().trainable_len();
        let mut opt =
            AdamWOptimizer::new(&Cpu, AdamWConfig::default(), n, &model.param_groups(&lr)).unwrap();
        let len = model.grads().unwrap().buf().len();
        let grads = Rng::new(r as u64).normal_vec(len, 1e-3);
        group.bench_function(format!("gpt2_layer_r{r}"), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    Cpu.upload(&grads, model.grads_mut().unwrap().buf_mut().all_mut())
                        .unwrap();
                    let t0 = Instant::now();
                    schedule::augment(&Cpu, &mut model, &mut opt, FreshMoment::Zero).unwrap();
                    schedule::truncate(&Cpu, &mut model, &mut opt, None).unwrap();
                    total += t0.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gemm, lowrank_linear, elementwise, dlra_window);
criterion_main!(benches);
