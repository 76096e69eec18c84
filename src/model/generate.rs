//! Text generation: a prompt continued one token at a time, each drawn from the model's next-token
//! distribution (softmax of the logits at a temperature, over the top k) or taken greedily.

use super::Gpt;
use crate::backend::{Backend, Buffer};
use crate::util::rng::Rng;
use anyhow::{ensure, Result};

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits before the softmax; 0 takes the most likely token (greedy).
    pub temperature: f32,
    /// Draw among the k most likely tokens only; 0 for the whole vocabulary.
    pub top_k: usize,
}

impl Sampling {
    /// The next token given one position's logits over the vocabulary (padding columns excluded).
    pub fn next_token(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        let argmax =
            |xs: &[f32]| (0..xs.len()).fold(0, |best, i| if xs[i] > xs[best] { i } else { best });
        if self.temperature == 0.0 || self.top_k == 1 {
            return argmax(logits) as u32;
        }
        let mut ids: Vec<usize> = (0..logits.len()).collect();
        if self.top_k > 0 && self.top_k < logits.len() {
            // Ties at the k-th logit: either may be kept, as in PyTorch's topk.
            ids.select_nth_unstable_by(self.top_k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
            ids.truncate(self.top_k);
        }
        let t = self.temperature as f64;
        let max = ids.iter().map(|&i| logits[i]).fold(f32::MIN, f32::max) as f64;
        let weights: Vec<f64> = ids
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / t).exp())
            .collect();
        let mut u = rng.uniform() * weights.iter().sum::<f64>();
        for (&i, w) in ids.iter().zip(&weights) {
            if u < *w {
                return i as u32;
            }
            u -= w;
        }
        // Rounding left u at the total: the last candidate.
        *ids.last().unwrap() as u32
    }
}

/// Continues `prompt` (non-empty token ids) by `new_tokens`, calling `emit` with each as it is
/// chosen; stops early after a token `stop` returns true for. Each token sees at most the last
/// `model.seq()` tokens, in the batch's first sequence. Within that window each new token is one
/// `Gpt::decode` row against the earlier tokens' cached k and v. When the window is full it
/// restarts from its last half (⌈window/2⌉ tokens, computed anew: GPT-2's positions are absolute,
/// so the cached rows do not carry over) and fills again a row a token, as llama.cpp's context
/// shift does: past the window a token sees between half a window and a window of context, and
/// costs a row, not a whole window's forward. Returns the generated tokens.
#[allow(clippy::too_many_arguments)]
pub fn generate<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    prompt: &[u32],
    new_tokens: usize,
    sampling: Sampling,
    rng: &mut Rng,
    stop: impl Fn(u32) -> bool,
    mut emit: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    ensure!(
        !prompt.is_empty(),
        "generation needs at least one prompt token"
    );
    let (window, vocab) = (model.seq(), model.config().vocab_size);
    let padded = model.config().padded_vocab;
    let mut tokens = prompt.to_vec();
    // The window is tokens[first..]; its positions 0..computed are in the model's activations. A
    // prompt longer than the window starts it full.
    let (mut first, mut computed) = (prompt.len().saturating_sub(window), 0);
    for _ in 0..new_tokens {
        if tokens.len() - first > window {
            (first, computed) = (tokens.len() - window.div_ceil(2), 0);
        }
        model.decode(b, &tokens[first + computed..], computed)?;
        computed = tokens.len() - first;
        let logits = model.logits();
        let row = logits.off + (computed - 1) * padded;
        let logits = b.download(logits.buf.at(row, vocab))?;
        let next = sampling.next_token(&logits, rng);
        tokens.push(next);
        emit(next)?;
        if stop(next) {
            break;
        }
    }
    Ok(tokens.split_off(prompt.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::model::reference::{micro, random_tokens};

    /// Frequencies of `draws` tokens against `want` (probabilities): every |f − p| within 4.5
    /// standard deviations of a binomial count.
    fn assert_frequencies(s: Sampling, logits: &[f32], want: &[f64]) {
        let (mut rng, draws) = (Rng::new(7), 200_000);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.next_token(logits, &mut rng) as usize] += 1;
        }
        for (i, (&c, &p)) in counts.iter().zip(want).enumerate() {
            let f = c as f64 / draws as f64;
            let sd = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (f - p).abs() <= 4.5 * sd + 1e-12,
                "{s:?}: token {i} drawn {f:.4}, want {p:.4}"
            );
        }
    }

    #[test]
    fn draws_follow_the_tempered_softmax_over_the_top_k() {
        // Logits ln(1..=4) (shuffled): softmax ∝ 1:2:3:4.
        let logits: Vec<f32> = [3.0f64, 1.0, 4.0, 2.0]
            .iter()
            .map(|x| x.ln() as f32)
            .collect();
        let s = |temperature, top_k| Sampling { temperature, top_k };
        assert_frequencies(s(1.0, 0), &logits, &[0.3, 0.1, 0.4, 0.2]);
        // Temperature 2: ∝ √p.
        let r: Vec<f64> = [3.0f64, 1.0, 4.0, 2.0].iter().map(|x| x.sqrt()).collect();
        let z: f64 = r.iter().sum();
        assert_frequencies(
            s(2.0, 0),
            &logits,
            &r.iter().map(|x| x / z).collect::<Vec<_>>(),
        );
        // Top 2: the tokens of 3 and 4, ∝ 3:4.
        assert_frequencies(s(1.0, 2), &logits, &[3.0 / 7.0, 0.0, 4.0 / 7.0, 0.0]);
        // Greedy either way.
        for greedy in [s(0.0, 0), s(1.0, 1)] {
            assert_eq!(greedy.next_token(&logits, &mut Rng::new(1)), 2);
        }
    }

    /// Greedy generation through the sliding window: each token's logits are those of a model
    /// built for exactly its window's tokens, with no padding (all of them up to `window`, then,
    /// whenever the window would pass `window`, the last ⌈window/2⌉ and on from there), and the
    /// token is their argmax.
    #[test]
    fn greedy_generation_matches_exact_forwards_of_each_window() {
        let (cfg, window) = (micro(), 4);
        // Large weights, the same in every model, so that the window's tokens move the logits.
        let big = Rng::new(9).normal_vec(Gpt::new(&Cpu, cfg, 1, 1, 5).unwrap().layout().len(), 0.5);
        let model_for = |batch, seq| {
            let mut m = Gpt::new(&Cpu, cfg, batch, seq, 5).unwrap();
            Cpu.upload(&big, m.params_mut().buf_mut().all_mut())
                .unwrap();
            m.refresh_compute_copy(&Cpu).unwrap();
            m
        };
        let mut model = model_for(1, window);
        let prompt = random_tokens(2, cfg.vocab_size, 3);
        let greedy = Sampling {
            temperature: 0.0,
            top_k: 0,
        };
        let mut emitted = Vec::new();
        let never = |_| false;
        let record = |t| {
            emitted.push(t);
            Ok(())
        };
        let out = generate(
            &Cpu,
            &mut model,
            &prompt,
            7,
            greedy,
            &mut Rng::new(1),
            never,
            record,
        )
        .unwrap();
        assert_eq!(out.len(), 7);
        assert_eq!(out, emitted);

        // The logits after `context`, from a model built for exactly its length.
        let exact_logits = |context: &[u32]| {
            let mut exact = model_for(1, context.len());
            exact.forward(&Cpu, context, None).unwrap();
            let all = Cpu.download(exact.logits()).unwrap();
            all[(context.len() - 1) * cfg.padded_vocab..][..cfg.vocab_size].to_vec()
        };
        // Generates 1, 2, ... tokens after `prompt` and checks each last token's logits, which the
        // generating model holds at the end, against the exact model of its window (the greedy
        // choice alone seldom depends on more than the last few tokens). Returns the tokens and
        // the windows' lengths.
        let check_windows = |model: &mut Gpt<Cpu>, prompt: &[u32], n: usize| {
            let mut tokens = prompt.to_vec();
            let mut first = prompt.len().saturating_sub(window); // the window's first token
            let mut lengths = Vec::new();
            for made in 1..=n {
                if tokens.len() - first > window {
                    first = tokens.len() - 2; // ⌈4/2⌉
                }
                let context = &tokens[first..];
                let out = generate(
                    &Cpu,
                    model,
                    prompt,
                    made,
                    greedy,
                    &mut Rng::new(1),
                    never,
                    |_| Ok(()),
                );
                let out = out.unwrap();
                assert_eq!(
                    out[..made - 1],
                    tokens[prompt.len()..],
                    "greedy: the same prefix"
                );
                let logits = Cpu.download(model.logits()).unwrap();
                let got = &logits[(context.len() - 1) * cfg.padded_vocab..][..cfg.vocab_size];
                let want = exact_logits(context);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0.0, f32::max);
                assert!(
                    err < 1e-4,
                    "after {tokens:?} ({lengths:?}): logits off by {err}"
                );
                let argmax = (0..want.len())
                    .max_by(|&a, &b| want[a].total_cmp(&want[b]))
                    .unwrap();
                assert_eq!(out[made - 1] as usize, argmax, "after {tokens:?}");
                lengths.push(context.len());
                tokens.push(out[made - 1]);
            }
            (tokens.split_off(prompt.len()), lengths)
        };
        let (checked, lengths) = check_windows(&mut model, &prompt, 7);
        assert_eq!((checked, lengths), (out.clone(), vec![2, 3, 4, 2, 3, 4, 2]));
        // A prompt longer than the window: the first token sees a whole window.
        let long = random_tokens(6, cfg.vocab_size, 4);
        assert_eq!(check_windows(&mut model, &long, 3).1, [4, 2, 3]);
        // A model built for a batch generates in its first row: the same tokens.
        let mut batched = model_for(3, window);
        let rows = generate(
            &Cpu,
            &mut batched,
            &prompt,
            7,
            greedy,
            &mut Rng::new(1),
            never,
            |_| Ok(()),
        );
        assert_eq!(rows.unwrap(), out);
        // A stop token ends generation after it.
        let first = out[0];
        let stopped = generate(
            &Cpu,
            &mut model,
            &prompt,
            7,
            greedy,
            &mut Rng::new(1),
            |t| t == first,
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(stopped, vec![first]);
    }
}
