//! The selftest's random inputs, drawn once a comparison. A case runs twice, on the device under
//! test and on the reference, each drawing its inputs from the same seed. Within `shared`, a draw
//! the first run made is handed to the second instead of being drawn again: the normals took most
//! of the host's time in a GPU run's selftest (benches/results/cpu-selftest-2026-12-07-parallel-draws.md).
//! A draw is a pure function of the generator's state, the count and the deviation, so what is
//! handed over is what would have been drawn, and the generator is left where the draw leaves it.

use crate::util::rng::Rng;
use std::cell::RefCell;
use std::collections::HashMap;

/// A draw: the generator's state before it, the count and the standard deviation's bits.
type Key = (Rng, usize, u64);

/// A draw made: its values and the generator's state after it.
type Made = (Vec<f32>, Rng);

thread_local! {
    /// The draws made within `shared` and not yet handed over; None outside it.
    static KEPT: RefCell<Option<HashMap<Key, Made>>> = const { RefCell::new(None) };
}

/// Runs `f` with draws kept for a second run to take; what is left is dropped at the end (or if
/// `f` panics). A `shared` within `f` keeps its own, and the outer one's are back after it.
pub fn shared<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(Option<HashMap<Key, Made>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEPT.with(|k| *k.borrow_mut() = self.0.take());
        }
    }
    let _outer = Restore(KEPT.with(|k| k.borrow_mut().replace(HashMap::new())));
    f()
}

/// `rng.normal_vec(n, std)`: handed over if an earlier run within `shared` made this draw, else
/// drawn (and kept for the next run, within `shared`).
pub fn normals(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    let key = (rng.clone(), n, std.to_bits());
    if let Some((values, after)) = KEPT.with(|k| k.borrow_mut().as_mut()?.remove(&key)) {
        *rng = after;
        return values;
    }
    let values = rng.normal_vec(n, std);
    KEPT.with(|k| {
        if let Some(m) = k.borrow_mut().as_mut() {
            m.insert(key, (values.clone(), rng.clone()));
        }
    });
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> Option<usize> {
        KEPT.with(|k| k.borrow().as_ref().map(HashMap::len))
    }

    /// Two runs from one seed: the second is handed the first's draws (none is left kept), and
    /// both get what the generator draws, ending where it ends. Two of the draws have the same
    /// count and deviation from different states, so a key without the state would swap them.
    #[test]
    fn a_second_run_is_handed_the_first_runs_draws() {
        let run = || {
            let mut rng = Rng::new(3);
            let a = normals(&mut rng, 5000, 1.0);
            let b = normals(&mut rng, 5000, 1.0);
            let c = normals(&mut rng, 7, 0.5);
            let d = normals(&mut rng, 0, 1.0);
            (vec![a, b, c, d], rng)
        };
        let mut want = Rng::new(3);
        let drawn: Vec<Vec<f32>> = [(5000, 1.0), (5000, 1.0), (7, 0.5), (0, 1.0)]
            .into_iter()
            .map(|(n, std)| want.normal_vec(n, std))
            .collect();
        let (first, second) = shared(|| {
            let first = run();
            assert_eq!(kept(), Some(4), "the first run's draws are kept");
            let second = run();
            assert_eq!(kept(), Some(0), "the second run took them all");
            (first, second)
        });
        for got in [first, second] {
            assert_eq!(got.0, drawn);
            assert_eq!(got.1, want);
        }
        assert_eq!(kept(), None, "nothing kept after `shared`");
    }

    /// From one state and deviation, draws of different counts are different draws.
    #[test]
    fn the_count_is_part_of_a_draw() {
        shared(|| {
            let long = normals(&mut Rng::new(1), 100, 1.0);
            let (mut rng, mut want) = (Rng::new(1), Rng::new(1));
            assert_eq!(normals(&mut rng, 50, 1.0), long[..50]);
            want.normal_vec(50, 1.0);
            assert_eq!(rng, want);
        });
    }

    /// A `shared` within another keeps its own draws, and the outer one's are back after it.
    #[test]
    fn a_nested_shared_leaves_the_outer_draws() {
        shared(|| {
            normals(&mut Rng::new(1), 10, 1.0);
            shared(|| {
                assert_eq!(kept(), Some(0));
                normals(&mut Rng::new(2), 10, 1.0);
            });
            assert_eq!(kept(), Some(1));
        });
        assert_eq!(kept(), None);
    }

    /// Outside `shared` nothing is kept, and a different deviation is a different draw.
    #[test]
    fn draws_are_kept_only_within_shared_and_by_deviation() {
        normals(&mut Rng::new(1), 100, 1.0);
        assert_eq!(kept(), None);
        shared(|| {
            let one = normals(&mut Rng::new(1), 100, 1.0);
            let two = normals(&mut Rng::new(1), 100, 2.0);
            assert_eq!(kept(), Some(2));
            assert!(one.iter().zip(&two).all(|(x, y)| 2.0 * x == *y));
        });
    }

    /// A panic within `shared` leaves nothing kept behind it.
    #[test]
    fn a_panic_drops_what_was_kept() {
        let caught = std::panic::catch_unwind(|| {
            shared(|| {
                normals(&mut Rng::new(1), 10, 1.0);
                panic!("a case that panics");
            })
        });
        assert!(caught.is_err());
        assert_eq!(kept(), None);
    }
}
