//! The elementwise loops on the CPU's widest vector unit. The crate is built for the x86-64
//! baseline, so a loop the compiler vectorises uses SSE2's four f32 lanes; `vectorized!` runs a
//! loop inside a function compiled for AVX-512 (sixteen lanes) or AVX2 (eight) when the CPU has
//! them, as the `gemm` crate does for its kernels. On GPT-2's CPU step it halved the time of the
//! classifier and the GELU (benches/results/cpu-train-2026-12-06-simd.md).
//!
//! Every path gives the same bits: the loops use IEEE +, −, ×, ÷ and √, which each lane width
//! rounds alike, Rust never fuses a multiply and an add by itself (enabling FMA only makes
//! `mul_add` an instruction), and sums keep the order the source gives them.
//!
//! Other architectures have the baseline path alone (the wider paths' names stay, unused).
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

/// Runs `f` compiled for AVX-512 or AVX2 + FMA when the CPU has them (std caches the check), else
/// as built. `f` must be inlined into the wider function, with what it calls: call it through
/// `vectorized!`, on helpers marked `#[inline(always)]`.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let widest = widest_allowed();
        // Every feature the function enables, not AVX-512F alone: the first AVX-512 CPUs (Xeon
        // Phi) lack VL, BW and DQ.
        if widest >= Path::Avx512
            && has!("avx512f")
            && has!("avx512vl")
            && has!("avx512bw")
            && has!("avx512dq")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { x86_v4(f) };
        }
        if widest >= Path::Avx2 && has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { x86_v3(f) };
        }
    }
    f()
}

/// `vectorized!(expr)` evaluates `expr` through `dispatch`, in a closure marked to be inlined
/// (an unmarked one that calls a large `#[inline(always)]` helper was left out of line, and so
/// ran on the baseline path: the classifier's rows did).
macro_rules! vectorized {
    ($e:expr) => {
        $crate::backend::cpu::simd::dispatch(
            #[inline(always)]
            || $e,
        )
    };
}
pub(super) use vectorized;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
unsafe fn x86_v4<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn x86_v3<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The code paths of `dispatch`, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// The code as built (only tests name it, to run on it: `at_most`).
    #[cfg_attr(not(test), allow(dead_code))]
    Baseline,
    Avx2,
    Avx512,
}

#[cfg(not(test))]
#[inline(always)]
fn widest_allowed() -> Path {
    Path::Avx512
}

/// Tests cap the path to hold the narrower ones to the same bits.
#[cfg(test)]
static WIDEST: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(Path::Avx512 as u8);

#[cfg(test)]
fn widest_allowed() -> Path {
    match WIDEST.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Path::Baseline,
        1 => Path::Avx2,
        _ => Path::Avx512,
    }
}

/// Runs `f` with every `vectorized!` loop on `path` at the widest (a test's reference: tests
/// running beside it meanwhile get the same bits either way, which is what the tests of this
/// check).
#[cfg(test)]
pub fn at_most<R>(path: Path, f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::Ordering::Relaxed;
    WIDEST.store(path as u8, Relaxed);
    let r = f();
    WIDEST.store(Path::Avx512 as u8, Relaxed);
    r
}

#[cfg(test)]
mod tests {
    use super::{at_most, Path};
    use crate::backend::cpu::test_util::{random, upload};
    use crate::backend::cpu::{Cpu, CpuBf16};
    use crate::backend::{AdamW, Backend, Buffer, DType, HeavyBall, MatShape, SeqShape};

    /// Every op with a `vectorized!` loop, on ragged lengths, its outputs as bits.
    fn outputs() -> Vec<(&'static str, Vec<u32>)> {
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let n = 20_011;
        let (x, y) = (random(n, 1), random(n, 2));
        let x3: Vec<f32> = x.iter().map(|v| 4.0 * v).collect();
        let mut out = vec![];

        let xb = upload(&Cpu, &x3);
        let mut o = upload(&Cpu, &y);
        Cpu.gelu_forward(o.all_mut(), xb.all()).unwrap();
        out.push(("gelu_forward", bits(o.as_slice())));
        Cpu.gelu_backward(o.all_mut(), xb.all()).unwrap();
        out.push(("gelu_backward", bits(o.as_slice())));
        Cpu.add(o.all_mut(), xb.all()).unwrap();
        Cpu.sub(o.all_mut(), upload(&Cpu, &y).all()).unwrap();
        Cpu.add_bias(o.at_mut(0, 19_999), xb.at(0, 7), MatShape::new(2857, 7))
            .unwrap();
        out.push(("add, sub, add_bias", bits(o.as_slice())));
        Cpu.relu_forward(o.all_mut(), xb.all()).unwrap();
        Cpu.relu_backward(o.all_mut(), upload(&Cpu, &y).all())
            .unwrap();
        out.push(("relu", bits(o.as_slice())));
        let ss = Cpu.sum_squares(&[xb.all(), o.at(3, 9_000)]).unwrap();
        out.push((
            "sum_squares",
            bits(&[ss as f32, (ss - ss as f32 as f64) as f32]),
        ));
        let mut half = CpuBf16.alloc(DType::BF16, n).unwrap();
        CpuBf16.cast(xb.all(), half.all_mut()).unwrap();
        out.push(("cast to bf16", bits(half.as_slice())));

        let (mut p, g) = (upload(&Cpu, &x), upload(&Cpu, &y));
        let squares: Vec<f32> = x3.iter().map(|v| v * v).collect();
        let (mut m, mut v) = (upload(&Cpu, &y), upload(&Cpu, &squares));
        let hp = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 3,
            grad_scale: 0.7,
        };
        Cpu.adamw(&hp, p.all_mut(), g.all(), m.all_mut(), v.all_mut(), None)
            .unwrap();
        out.push((
            "adamw",
            bits(&[p.as_slice(), m.as_slice(), v.as_slice()].concat()),
        ));
        let hb = HeavyBall {
            h: 0.1,
            friction: 0.3,
            weight_decay: 0.01,
            grad_scale: 0.7,
        };
        Cpu.heavy_ball(&hb, p.all_mut(), g.all(), m.all_mut(), None)
            .unwrap();
        out.push(("heavy_ball", bits(&[p.as_slice(), m.as_slice()].concat())));

        let (rows, vocab, cols) = (5, 1003, 1008);
        let mut logits = upload(&Cpu, &x3[..rows * cols]);
        let mut losses = upload(&Cpu, &[0.0; 5]);
        let targets = [0, 17, 1002, 500, 3];
        let shape = MatShape::new(rows, cols);
        Cpu.fused_classifier(
            logits.all_mut(),
            losses.all_mut(),
            &targets,
            shape,
            vocab,
            0.2,
        )
        .unwrap();
        out.push((
            "fused_classifier",
            bits(&[logits.as_slice(), losses.as_slice()].concat()),
        ));

        let s = SeqShape {
            batch: 2,
            seq: 37,
            channels: 16,
        };
        let qkv = upload(&Cpu, &x[..3 * s.batch * s.seq * s.channels]);
        let mut y = upload(&Cpu, &vec![0.0; s.batch * s.seq * s.channels]);
        let mut att = upload(&Cpu, &vec![0.0; 2 * s.batch * s.seq * s.seq]);
        Cpu.attention_forward(y.all_mut(), att.all_mut(), qkv.all(), s, 2)
            .unwrap();
        out.push((
            "attention_forward",
            bits(&[y.as_slice(), att.as_slice()].concat()),
        ));
        let mut dqkv = upload(&Cpu, &vec![0.0; qkv.len()]);
        let dy = upload(&Cpu, &x3[..y.len()]);
        Cpu.attention_backward(
            dqkv.all_mut(),
            dy.all(),
            qkv.all(),
            y.all(),
            att.all(),
            s,
            2,
        )
        .unwrap();
        out.push(("attention_backward", bits(dqkv.as_slice())));
        out
    }

    /// The AVX-512 and AVX2 paths give the baseline's bits in every op (what a run resumed on
    /// another machine relies on); a path this CPU lacks runs the next narrower one.
    #[test]
    fn vectorized_loops_give_the_baselines_bits() {
        let base = at_most(Path::Baseline, outputs);
        for path in [Path::Avx2, Path::Avx512] {
            for ((op, w), (_, b)) in at_most(path, outputs).iter().zip(&base) {
                let first = w.iter().zip(b).position(|(w, b)| w != b);
                assert!(
                    first.is_none(),
                    "{op}: element {first:?} differs between {path:?} and the baseline"
                );
            }
        }
    }
}
