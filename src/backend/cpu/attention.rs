//! Causal multi-head self-attention, forward and backward (CPU twin of kernels/attention.cu).
//!
//! Each (batch, head) pair is one parallel task: it gathers its q, k, v (T × hs) into contiguous
//! scratch, owns its (T × T) slice of `att`, and its results are scattered back into the
//! interleaved (B, T, C) layouts afterwards, so no two tasks write the same memory.
//!
//! The products run as GEMMs, as llm.c's CUDA attention does around cuBLAS, in causal row blocks:
//! the rows [r0, r1) of a head meet only the first r1 keys, so each block's products stop at its
//! last row's diagonal and the masked part beyond it is never multiplied (within a block it is:
//! above the diagonal the probabilities are exact zeros, so it adds nothing). With 8 blocks that
//! is 56 % of the whole T × T products' FLOPs. Per-pair dot products and axpys, before the GEMMs,
//! made attention half of a GPT-2 small CPU step at T = 1024.

use super::exp::exp;
use super::gemm::gemm_windows;
use super::reduce::{dot_f64, sum_f64};
use super::simd::vectorized;
use crate::backend::{Gemm, RowStrides, SeqShape};
use rayon::prelude::*;

/// One head's q, k and v (or their gradients), each T × hs, row-major.
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Where (batch b, head h) lives in the interleaved layouts.
#[derive(Clone, Copy)]
struct Geometry {
    s: SeqShape,
    hs: usize,
}

impl Geometry {
    fn new(s: SeqShape, heads: usize) -> Self {
        Geometry {
            s,
            hs: s.channels / heads,
        }
    }
    fn heads(&self) -> usize {
        self.s.channels / self.hs
    }
    /// Offset of (b, t, part, h) in qkv (B,T,3C), part 0/1/2 = q/k/v.
    fn qkv_at(&self, b: usize, t: usize, part: usize, h: usize) -> usize {
        let c = self.s.channels;
        (b * self.s.seq + t) * 3 * c + part * c + h * self.hs
    }
    /// Offset of (b, t, h) in a (B,T,C) tensor.
    fn btc_at(&self, b: usize, t: usize, h: usize) -> usize {
        (b * self.s.seq + t) * self.s.channels + h * self.hs
    }
    fn gather_head(&self, qkv: &[f32], b: usize, h: usize) -> Head {
        let part = |p| self.gather(qkv, |t| self.qkv_at(b, t, p, h));
        Head {
            q: part(0),
            k: part(1),
            v: part(2),
        }
    }
    fn gather_btc(&self, x: &[f32], b: usize, h: usize) -> Vec<f32> {
        self.gather(x, |t| self.btc_at(b, t, h))
    }
    /// A head's T rows of `hs` values, row t at `at(t)`, copied row by row (an element-wise
    /// iterator over them was half of the CPU attention's time).
    fn gather(&self, x: &[f32], at: impl Fn(usize) -> usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.s.seq * self.hs);
        for t in 0..self.s.seq {
            out.extend_from_slice(&x[at(t)..][..self.hs]);
        }
        out
    }
}

/// A head's rows go in at most this many causal blocks, each of at least `ROW_BLOCK_MIN` rows:
/// more blocks skip more of the masked half, smaller ones run the GEMMs less efficiently. GPT-2
/// small at T = 1024 on 2 cores: 1 block 3.08 s a step, 4 blocks 2.95, 8 blocks 2.86, 16 (64
/// rows) 2.85; 8 kept, for larger products on machines with more cores (cpu-train-2026-12-06.md).
const ROW_BLOCKS: usize = 8;
const ROW_BLOCK_MIN: usize = 64;

/// The causal row blocks [r0, r1) of a T-row head.
fn row_blocks(t_len: usize) -> impl Iterator<Item = (usize, usize)> {
    let block = ROW_BLOCK_MIN.max(t_len.div_ceil(ROW_BLOCKS));
    (0..t_len)
        .step_by(block)
        .map(move |r0| (r0, (r0 + block).min(t_len)))
}

/// What `forward` and `backward` allocate beside their operands, at most: every head's output
/// or q, k, v gradients before they are scattered (3·B·T·C values), and per thread one head's
/// rows (q, k, v, dy and their gradients: 7·T·hs) and its T × T score gradients.
pub fn scratch_bytes(s: SeqShape, heads: usize) -> usize {
    let hs = s.channels / heads.max(1);
    let per_thread = s.seq * s.seq + 7 * s.seq * hs;
    4 * (3 * s.len() + rayon::current_num_threads() * per_thread)
}

/// out = softmax(q·kᵀ/√hs, causal)·v per head; att keeps the probabilities.
pub fn forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], s: SeqShape, heads: usize) {
    let g = Geometry::new(s, heads);
    let (t_len, hs) = (s.seq, g.hs);
    let scale = 1.0 / (hs as f32).sqrt();
    let outs: Vec<Vec<f32>> = att
        .par_chunks_mut(t_len * t_len)
        .enumerate()
        .map(|(bh, att)| {
            let head = g.gather_head(qkv, bh / heads, bh % heads);
            let mut y = vec![0.0f32; t_len * hs];
            for (r0, r1) in row_blocks(t_len) {
                // Scores of rows r0..r1 against keys 0..r1, then their probabilities.
                let scores = Gemm::new(r1 - r0, r1, hs).trans_b().alpha(scale);
                let att_rows = &mut att[r0 * t_len..r1 * t_len];
                gemm_windows(
                    &scores,
                    &head.q[r0 * hs..],
                    &head.k,
                    att_rows,
                    RowStrides::new(hs, hs, t_len),
                );
                vectorized!(softmax_rows(att_rows, r0, t_len));
                let weighted = Gemm::new(r1 - r0, hs, r1);
                gemm_windows(
                    &weighted,
                    att_rows,
                    &head.v,
                    &mut y[r0 * hs..],
                    RowStrides::new(t_len, hs, hs),
                );
            }
            y
        })
        .collect();
    for (bh, y) in outs.iter().enumerate() {
        for t in 0..t_len {
            out[g.btc_at(bh / heads, t, bh % heads)..][..hs].copy_from_slice(&y[t * hs..][..hs]);
        }
    }
}

/// Rows start.. of one sequence (out: n × C) from the k and v of rows 0..start + n (qkv: 3C a
/// row): `Backend::attention_cached`. Each (new row, head) pair is a parallel task: a dot product
/// per earlier row, their softmax, and the probabilities' sum of v rows. Decoding meets one row
/// of k and v per earlier token once, so nothing is gathered first.
pub fn cached(out: &mut [f32], qkv: &[f32], start: usize, channels: usize, heads: usize) {
    let hs = channels / heads;
    let scale = 1.0 / (hs as f32).sqrt();
    out.par_chunks_mut(hs).enumerate().for_each(|(task, y)| {
        let (t, h) = (start + task / heads, task % heads);
        let at = |row: usize, part: usize| &qkv[(row * 3 + part) * channels + h * hs..][..hs];
        let q = at(t, 0);
        let mut p: Vec<f32> = (0..=t)
            .map(|row| scale * dot_f64(q, at(row, 1)) as f32)
            .collect();
        let max = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        p.iter_mut().for_each(|x| *x = exp(*x - max));
        let sum = sum_f64(&p) as f32;
        y.fill(0.0);
        for (row, &w) in p.iter().enumerate() {
            let w = w / sum;
            y.iter_mut().zip(at(row, 2)).for_each(|(y, &v)| *y += w * v);
        }
    });
}

/// Rows r0.. of a head's scores (rows of `t_len`) become their causal probabilities.
#[inline(always)]
fn softmax_rows(att_rows: &mut [f32], r0: usize, t_len: usize) {
    for (t, row) in (r0..).zip(att_rows.chunks_mut(t_len)) {
        let (live, masked) = row.split_at_mut(t + 1);
        let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        live.iter_mut().for_each(|x| *x = exp(*x - max));
        let sum = sum_f64(live) as f32;
        live.iter_mut().for_each(|x| *x /= sum);
        masked.fill(0.0);
    }
}

/// Softmax backward in place over rows r0..r1, ds = att ⊙ (datt − Σ att·datt), scaled as the
/// scores were; zero above the diagonal, where att is.
#[inline(always)]
fn softmax_backward_rows(
    ds: &mut [f32],
    att: &[f32],
    (r0, r1): (usize, usize),
    t_len: usize,
    scale: f32,
) {
    for (t, (p, ds)) in (r0..).zip(att.chunks(t_len).zip(ds.chunks_mut(t_len))) {
        let mean = dot_f64(&p[..=t], &ds[..=t]) as f32;
        ds[..=t]
            .iter_mut()
            .zip(p)
            .for_each(|(d, p)| *d = p * (*d - mean) * scale);
        ds[t + 1..r1].fill(0.0);
    }
}

/// dqkv from dout, the forward's qkv and att (llm.c's attention_backward, per head).
pub fn backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    s: SeqShape,
    heads: usize,
) {
    let g = Geometry::new(s, heads);
    let grads: Vec<Head> = att
        .par_chunks(s.seq * s.seq)
        .enumerate()
        .map(|(bh, att)| {
            let (b, h) = (bh / heads, bh % heads);
            head_backward(&g.gather_head(qkv, b, h), &g.gather_btc(dout, b, h), att, g)
        })
        .collect();
    for (bh, d) in grads.iter().enumerate() {
        let (b, h) = (bh / g.heads(), bh % g.heads());
        for t in 0..s.seq {
            for (part, src) in [&d.q, &d.k, &d.v].into_iter().enumerate() {
                dqkv[g.qkv_at(b, t, part, h)..][..g.hs].copy_from_slice(&src[t * g.hs..][..g.hs]);
            }
        }
    }
}

/// Gradients of one head's q, k, v, block by causal row block: a block's rows give dq of those
/// rows whole and add their share to dk and dv of the keys they see.
fn head_backward(x: &Head, dy: &[f32], att: &[f32], g: Geometry) -> Head {
    let (t_len, hs) = (g.s.seq, g.hs);
    let scale = 1.0 / (hs as f32).sqrt();
    let mut d = Head {
        q: vec![0.0; t_len * hs],
        k: vec![0.0; t_len * hs],
        v: vec![0.0; t_len * hs],
    };
    let mut ds = vec![0.0f32; t_len * t_len];
    for (r0, r1) in row_blocks(t_len) {
        let rows = r1 - r0;
        let (att, ds) = (
            &att[r0 * t_len..r1 * t_len],
            &mut ds[r0 * t_len..r1 * t_len],
        );
        let (dy, q) = (&dy[r0 * hs..], &x.q[r0 * hs..]);
        // datt = dy·vᵀ; dv += attᵀ·dy.
        let datt = Gemm::new(rows, r1, hs).trans_b();
        gemm_windows(&datt, dy, &x.v, ds, RowStrides::new(hs, hs, t_len));
        let dv = Gemm::new(r1, hs, rows).trans_a().beta(1.0);
        gemm_windows(&dv, att, dy, &mut d.v, RowStrides::new(t_len, hs, hs));
        vectorized!(softmax_backward_rows(ds, att, (r0, r1), t_len, scale));
        // Through the scores q·kᵀ: dq = ds·k, dk += dsᵀ·q.
        let dq = Gemm::new(rows, hs, r1);
        gemm_windows(
            &dq,
            ds,
            &x.k,
            &mut d.q[r0 * hs..],
            RowStrides::new(t_len, hs, hs),
        );
        let dk = Gemm::new(r1, hs, rows).trans_a().beta(1.0);
        gemm_windows(&dk, ds, q, &mut d.k, RowStrides::new(t_len, hs, hs));
    }
    d
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::test_util::{assert_close, random, upload};
    use crate::backend::cpu::{Cpu, CpuBf16};
    use crate::backend::{AttentionSaved, Backend, Buffer, DType, SeqShape};

    /// Naive f64 causal attention: (out (B,T,C), att (B,NH,T,T)).
    fn attention64(qkv: &[f64], s: SeqShape, nh: usize) -> (Vec<f64>, Vec<f64>) {
        let (t_len, c) = (s.seq, s.channels);
        let hs = c / nh;
        let mut out = vec![0.0; s.len()];
        let mut att = vec![0.0; s.batch * nh * t_len * t_len];
        for b in 0..s.batch {
            for h in 0..nh {
                let at = |t: usize, part: usize, i: usize| {
                    qkv[(b * t_len + t) * 3 * c + part * c + h * hs + i]
                };
                for t in 0..t_len {
                    let scores: Vec<f64> = (0..=t)
                        .map(|t2| {
                            (0..hs).map(|i| at(t, 0, i) * at(t2, 1, i)).sum::<f64>()
                                / (hs as f64).sqrt()
                        })
                        .collect();
                    let z: f64 = scores.iter().map(|x| x.exp()).sum();
                    for t2 in 0..=t {
                        let p = scores[t2].exp() / z;
                        att[((b * nh + h) * t_len + t) * t_len + t2] = p;
                        for i in 0..hs {
                            out[(b * t_len + t) * c + h * hs + i] += p * at(t2, 2, i);
                        }
                    }
                }
            }
        }
        (out, att)
    }

    /// Our forward on random qkv (outputs NaN-poisoned first) held to the f64 reference's output
    /// and probabilities, then our backward of Σ out ⊙ dy; returns (qkv in f64, dy, dqkv).
    fn forward_checked_then_backward(
        s: SeqShape,
        nh: usize,
        seed: u64,
        att_tol: f64,
    ) -> (Vec<f64>, Vec<f32>, Vec<f32>) {
        let cpu = Cpu;
        let qkv = random(3 * s.len(), seed);
        let dy = random(s.len(), seed + 1);
        let (qkv_b, dy_b) = (upload(&cpu, &qkv), upload(&cpu, &dy));
        let mut out = upload(&cpu, &vec![f32::NAN; s.len()]);
        let mut att = upload(&cpu, &vec![f32::NAN; s.batch * nh * s.seq * s.seq]);
        cpu.attention_forward(out.all_mut(), att.all_mut(), qkv_b.all(), s, nh)
            .unwrap();
        let qkv64: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
        let (want_out, want_att) = attention64(&qkv64, s, nh);
        assert_close("attention out", out.as_slice(), &want_out, 1e-5);
        assert_close("attention att", att.as_slice(), &want_att, att_tol);
        let mut dqkv = upload(&cpu, &vec![f32::NAN; 3 * s.len()]); // written, not accumulated
        let (q, o) = (qkv_b.all(), out.all());
        cpu.attention_backward(dqkv.all_mut(), dy_b.all(), q, o, att.all(), s, nh)
            .unwrap();
        (qkv64, dy, dqkv.as_slice().to_vec())
    }

    /// The loss whose gradient the backward forms, Σ out ⊙ dy, in f64.
    fn loss64(qkv: &[f64], dy: &[f32], s: SeqShape, nh: usize) -> f64 {
        let out = attention64(qkv, s, nh).0;
        out.iter().zip(dy).map(|(o, &d)| o * d as f64).sum()
    }

    #[test]
    fn attention_matches_naive_and_finite_differences() {
        let (s, nh) = (SeqShape::new(2, 7, 15), 3); // T = 7, head size 5
        let (qkv64, dy, dqkv) = forward_checked_then_backward(s, nh, 1, 1e-6);
        let h = 1e-6;
        let want: Vec<f64> = (0..qkv64.len())
            .map(|i| {
                let (mut p, mut m) = (qkv64.clone(), qkv64.clone());
                p[i] += h;
                m[i] -= h;
                (loss64(&p, &dy, s, nh) - loss64(&m, &dy, s, nh)) / (2.0 * h)
            })
            .collect();
        assert_close("attention dqkv", &dqkv, &want, 1e-4);
    }

    /// GPT-2's head size at a length whose score GEMMs run in parallel: the output and the
    /// probabilities against the f64 reference, the gradient along one random direction within
    /// each of q, k and v (so that each part is held to its own size: v's dominates a direction
    /// over all three) against a central difference of the f64 loss.
    #[test]
    fn attention_at_head_size_64_matches_naive_and_a_directional_difference() {
        let (s, nh) = (SeqShape::new(2, 70, 128), 2);
        let (qkv64, dy, dqkv) = forward_checked_then_backward(s, nh, 3, 1e-5);
        for (part, name) in ["q", "k", "v"].into_iter().enumerate() {
            let mut dir = random(qkv64.len(), 5 + part as u64);
            for (i, d) in dir.iter_mut().enumerate() {
                if (i / s.channels) % 3 != part {
                    *d = 0.0;
                }
            }
            let (h, mut plus, mut minus) = (1e-5, qkv64.clone(), qkv64.clone());
            for ((p, m), &v) in plus.iter_mut().zip(minus.iter_mut()).zip(&dir) {
                *p += h * v as f64;
                *m -= h * v as f64;
            }
            let want = (loss64(&plus, &dy, s, nh) - loss64(&minus, &dy, s, nh)) / (2.0 * h);
            let got: f64 = (dqkv.iter().zip(&dir))
                .map(|(&g, &v)| g as f64 * v as f64)
                .sum();
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "d{name} along a direction: {got} against {want}"
            );
        }
    }

    /// Rows start.. of a sequence from its earlier rows' k and v: the rows the f64 reference gives
    /// the whole sequence, for one new row at the end, several after a prefix, and all of them.
    #[test]
    fn cached_attention_gives_the_whole_sequences_rows() {
        let (t_len, c, nh) = (9, 15, 3);
        let s = SeqShape::new(1, t_len, c);
        let qkv = random(3 * s.len(), 11);
        let qkv64: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
        let want = attention64(&qkv64, s, nh).0;
        let cpu = Cpu;
        for (start, n) in [(8, 1), (3, 4), (0, 9), (0, 1)] {
            let rows = upload(&cpu, &qkv[..3 * (start + n) * c]);
            let mut out = upload(&cpu, &vec![f32::NAN; n * c]);
            let new = crate::backend::MatShape::new(n, c);
            cpu.attention_cached(out.all_mut(), rows.all(), start, new, nh)
                .unwrap();
            let what = format!("rows {start}..{}", start + n);
            assert_close(&what, out.as_slice(), &want[start * c..][..n * c], 1e-5);
        }
        // The cache must hold every earlier row.
        let rows = upload(&cpu, &qkv[..3 * 4 * c]);
        let mut out = cpu.alloc(DType::F32, c).unwrap();
        let new = crate::backend::MatShape::new(1, c);
        let err = cpu
            .attention_cached(out.all_mut(), rows.all(), 4, new, nh)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("qkv window has 180 elements, the shape needs 225"),
            "{err}"
        );
    }

    #[test]
    fn attention_rejects_heads_that_do_not_divide_channels() {
        let cpu = Cpu;
        let s = SeqShape::new(1, 2, 10);
        let qkv = upload(&cpu, &[0.0; 60]);
        let mut out = cpu.alloc(DType::F32, 20).unwrap();
        let mut att = cpu.alloc(DType::F32, 3 * 4).unwrap();
        let err = cpu
            .attention_forward(out.all_mut(), att.all_mut(), qkv.all(), s, 3)
            .unwrap_err();
        assert!(
            err.to_string().contains("do not split into 3 heads"),
            "{err}"
        );
    }

    /// The CPU saves the probabilities: a buffer planned for flash attention's log-sum-exp (B·heads·T
    /// f32) or one of the wrong dtype is refused with what was expected, not written past.
    #[test]
    fn attention_refuses_a_saved_buffer_of_another_kind() {
        let cpu = CpuBf16;
        let (s, nh) = (SeqShape::new(2, 5, 8), 2);
        assert_eq!(
            cpu.attention_saved(4, DType::BF16),
            AttentionSaved::Probabilities
        );
        let qkv = cpu.alloc(DType::BF16, 3 * s.len()).unwrap();
        let mut out = cpu.alloc(DType::BF16, s.len()).unwrap();
        let lse = AttentionSaved::LogSumExp;
        assert_eq!((lse.len(s, nh), lse.dtype(DType::BF16)), (20, DType::F32));
        let mut att = cpu.alloc(DType::F32, lse.len(s, nh)).unwrap();
        let err = cpu
            .attention_forward(out.all_mut(), att.all_mut(), qkv.all(), s, nh)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("att window has 20 elements, the shape needs 100"),
            "{err}"
        );
        let mut att = cpu.alloc(DType::F32, 100).unwrap();
        let err = cpu
            .attention_forward(out.all_mut(), att.all_mut(), qkv.all(), s, nh)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("att is F32 but this backend saves Probabilities as BF16"),
            "{err}"
        );
    }
}
