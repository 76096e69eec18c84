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

thread_local! {
    /// The draws made within `shared` and not yet handed over; None outside it.
    static KEPT: RefCell<Option<HashMap<Key, Vec<f32>>>> = const { RefCell::new(None) };
}

/// Runs `f` with draws kept for a second run to take; what is left is dropped at the end (or if
/// `f` panics).
pub fn shared<T>(f: impl FnOnce() -> T) -> T {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            KEPT.with(|k| *k.borrow_mut() = None);
        }
    }
    KEPT.with(|k| *k.borrow_mut() = Some(HashMap::new()));
    let _end = Clear;
    f()
}

/// `rng.normal_vec(n, std)`: handed over if an earlier run within `shared` made this draw, else
/// drawn (and kept for the next run, within `shared`).
pub fn normals(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    let key = (rng.clone(), n, std.to_bits());
    let kept = KEPT.with(|k| k.borrow_mut().as_mut().and_then(|m| m.remove(&key)));
    if let Some(values) = kept {
        *rng = rng.jumped(2 * n as u128); // two steps a normal, as normal_vec leaves it
        return values;
    }
    let values = rng.normal_vec(n, std);
    KEPT.with(|k| {
        if let Some(m) = k.borrow_mut().as_mut() {
            m.insert(key, values.clone());
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
    /// both get what the generator draws, ending where it ends.
    #[test]
    fn a_second_run_is_handed_the_first_runs_draws() {
        let run = || {
            let mut rng = Rng::new(3);
            let a = normals(&mut rng, 5000, 1.0);
            let b = normals(&mut rng, 7, 0.5);
            let c = normals(&mut rng, 0, 1.0);
            (a, b, c, rng)
        };
        let mut want = Rng::new(3);
        let (a, b) = (want.normal_vec(5000, 1.0), want.normal_vec(7, 0.5));
        let (first, second) = shared(|| {
            let first = run();
            assert_eq!(kept(), Some(3), "the first run's three draws are kept");
            let second = run();
            assert_eq!(kept(), Some(0), "the second run took them all");
            (first, second)
        });
        for got in [first, second] {
            assert_eq!((&got.0, &got.1, got.2.len()), (&a, &b, 0));
            assert_eq!(got.3, want);
        }
        assert_eq!(kept(), None, "nothing kept after `shared`");
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
