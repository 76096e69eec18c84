//! The fused classifier: softmax, cross-entropy and its gradient in one pass over the logits
//! (CPU twin of kernels/classifier.cu; llm.c's fused_classifier).

use super::exp::exp;
use super::reduce::sum_f64;
use super::simd::vectorized;
use crate::backend::MatShape;
use rayon::prelude::*;

/// losses[r] = −log softmax(logits[r, ..vocab])[targets[r]]; logits[r,:] ← (softmax − onehot)·dloss,
/// zero in the padding columns vocab..cols. The exponentials are f32 (max-subtracted, so in (0, 1]);
/// their 50k-wide sum is f64, where f32 would lose digits the loss curve can show.
pub fn fused(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    s: MatShape,
    vocab: usize,
    dloss: f32,
) {
    logits
        .par_chunks_mut(s.cols)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((row, loss), &target)| {
            *loss = vectorized!(row_loss(row, target as usize, vocab, dloss));
        });
}

/// One row of `fused`: its loss, and its logits replaced by their gradient.
#[inline(always)]
fn row_loss(row: &mut [f32], target: usize, vocab: usize, dloss: f32) -> f32 {
    let (real, padding) = row.split_at_mut(vocab);
    let max = real.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let target_logit = real[target] - max;
    real.iter_mut().for_each(|x| *x = exp(*x - max));
    let sum = sum_f64(real);
    let scale = (1.0 / sum) as f32 * dloss;
    real.iter_mut().for_each(|e| *e *= scale);
    real[target] -= dloss;
    padding.fill(0.0);
    (sum.ln() - target_logit as f64) as f32
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::test_util::{assert_close, random, upload};
    use crate::backend::cpu::Cpu;
    use crate::backend::{Backend, Buffer, MatShape};

    #[test]
    fn fused_classifier_matches_naive_softmax_cross_entropy() {
        let cpu = Cpu;
        let (s, vocab, dloss) = (MatShape::new(9, 40), 37, 0.25f32);
        let logits: Vec<f32> = random(s.len(), 1).iter().map(|v| 4.0 * v).collect();
        let targets: Vec<u32> = (0..s.rows as u32)
            .map(|r| (r * 11) % vocab as u32)
            .collect();
        let mut lb = upload(&cpu, &logits);
        let mut losses = upload(&cpu, &vec![f32::NAN; s.rows]);
        cpu.fused_classifier(lb.all_mut(), losses.all_mut(), &targets, s, vocab, dloss)
            .unwrap();
        let (mut want_loss, mut want_d) = (vec![], vec![]);
        for r in 0..s.rows {
            let row: Vec<f64> = logits[r * s.cols..][..vocab]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            want_loss.push(z.ln() - row[targets[r] as usize]);
            for i in 0..s.cols {
                let p = row.get(i).map_or(0.0, |v| v.exp() / z);
                let onehot = if i == targets[r] as usize { 1.0 } else { 0.0 };
                want_d.push((p - onehot) * dloss as f64);
            }
        }
        assert_close("classifier losses", losses.as_slice(), &want_loss, 1e-6);
        assert_close("classifier dlogits", lb.as_slice(), &want_d, 1e-7);
    }

    #[test]
    fn fused_classifier_rejects_target_outside_vocab() {
        let cpu = Cpu;
        let (mut logits, mut losses) = (upload(&cpu, &[0.0; 8]), upload(&cpu, &[0.0; 2]));
        let err = cpu
            .fused_classifier(
                logits.all_mut(),
                losses.all_mut(),
                &[1, 3],
                MatShape::new(2, 4),
                3,
                1.0,
            )
            .unwrap_err();
        assert!(err.to_string().contains("token id 3"), "{err}");
    }
}
