//! Sliding-window evaluation: every token of a split scored once, each past its shard's first
//! window with more than T − S tokens of context (Hugging Face's "perplexity of fixed-length
//! models" with a stride S).
//!
//! In each shard of n ≥ T+1 tokens, window k holds the T+1 tokens from s_k = min(k·S, n−1−T) (inputs
//! its first T, targets its last T). The first window scores all its T targets; each later one
//! scores only the targets past the previous window's last, so every token but the shard's first
//! is scored exactly once, and a target scored by a later window has at least T − S + 1 tokens
//! of its shard before it in the window (the last window, moved back to end at the shard's end,
//! gives more). Windows never span shards;
//! a shard of T tokens or fewer has no full window and is left out. S = T scores the disjoint
//! windows of evaluation during training plus each shard's tail.

use super::shardset::ShardSet;

/// One window: T+1 tokens of `shard` from `start`; its last `scored` targets count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlidingWindow {
    pub shard: usize,
    pub start: usize,
    pub scored: usize,
}

/// The windows of T = `seq_len` at `stride` (1 ≤ stride ≤ seq_len) over `set`'s shards, in order.
pub fn sliding_windows(set: &ShardSet, seq_len: usize, stride: usize) -> Vec<SlidingWindow> {
    assert!(
        (1..=seq_len).contains(&stride),
        "stride {stride} outside 1..={seq_len}"
    );
    let mut windows = Vec::new();
    for (shard, s) in set.shards().iter().enumerate() {
        let n = s.tokens().len();
        if n <= seq_len {
            continue;
        }
        let last_start = n - 1 - seq_len;
        let mut scored_to = 0; // targets 1..=scored_to are scored
        for k in 0.. {
            let start = (k * stride).min(last_start);
            let end = start + seq_len; // the window's last target
            windows.push(SlidingWindow {
                shard,
                start,
                scored: end - scored_to,
            });
            scored_to = end;
            if end == n - 1 {
                break;
            }
        }
    }
    windows
}

/// Copies `window`'s T+1 tokens into `out`.
pub fn copy_window(set: &ShardSet, window: SlidingWindow, out: &mut [u32]) {
    let tokens = &set.shards()[window.shard].tokens()[window.start..][..out.len()];
    for (o, &t) in out.iter_mut().zip(tokens) {
        *o = u32::from(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For shard lengths around the window's and strides 1..=T: every target (token 1..n of each
    /// shard long enough) scored once, with at least T − S tokens of context in its window
    /// (T in the first window counts from 0), windows within their shard.
    #[test]
    fn every_target_is_scored_once_with_enough_context() {
        let t = 5;
        for lens in [vec![6], vec![7, 2, 16], vec![5, 11, 12, 30]] {
            let shards = lens.iter().map(|&n| vec![1u16; n]).collect();
            let set = ShardSet::from_tokens("s", shards);
            for stride in 1..=t {
                let mut count: Vec<Vec<usize>> = lens.iter().map(|&n| vec![0; n]).collect();
                for w in sliding_windows(&set, t, stride) {
                    let n = lens[w.shard];
                    assert!(w.start + t < n && (1..=t).contains(&w.scored), "{w:?}");
                    for j in t - w.scored..t {
                        // Input position j of the window predicts token start + j + 1.
                        count[w.shard][w.start + j + 1] += 1;
                        let context = j + 1;
                        assert!(w.start == 0 || context > t - stride, "{w:?} j {j}");
                    }
                }
                for (s, &n) in lens.iter().enumerate() {
                    let want: Vec<usize> = (0..n).map(|i| usize::from(n > t && i > 0)).collect();
                    assert_eq!(count[s], want, "shard {s} of {n} tokens, stride {stride}");
                }
            }
        }
    }

    #[test]
    fn stride_t_is_the_disjoint_windows_and_the_tail() {
        let set = ShardSet::from_tokens("s", vec![vec![1u16; 13]]);
        let w = |start, scored| SlidingWindow {
            shard: 0,
            start,
            scored,
        };
        // 12 targets: two disjoint windows of 4, the third disjoint, then none left.
        assert_eq!(sliding_windows(&set, 4, 4), [w(0, 4), w(4, 4), w(8, 4)]);
        // 13 tokens at T 5: windows at 0 and 5, then one moved back to 7 for the last 2 targets.
        assert_eq!(sliding_windows(&set, 5, 5), [w(0, 5), w(5, 5), w(7, 2)]);
        // Stride 2 at T 5: 0 (5), 2 (2), 4 (2), then 6 would end at 11; 7 ends at 12 (1).
        assert_eq!(
            sliding_windows(&set, 5, 2),
            [w(0, 5), w(2, 2), w(4, 2), w(6, 2), w(7, 1)]
        );
    }
}
