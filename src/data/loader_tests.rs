use super::*;

const T: usize = 4;

/// Shard 0 holds 0..50 (⌊49/4⌋ = 12 windows), shard 1 holds 1000..1023 (⌊22/4⌋ = 5), shard 2 holds
/// 2 tokens (no window): W = 17. Token values say where they came from.
fn set() -> ShardSet {
    ShardSet::from_tokens(
        "t",
        vec![(0..50).collect(), (1000..1023).collect(), vec![7, 7]],
    )
}

/// Window w's tokens, computed from the layout by hand.
fn window(w: usize) -> Vec<u32> {
    let first = if w < 12 {
        4 * w as u32
    } else {
        1000 + 4 * (w as u32 - 12)
    };
    (first..first + T as u32 + 1).collect()
}

fn rows(batch: &[u32]) -> Vec<Vec<u32>> {
    batch.chunks(T + 1).map(<[u32]>::to_vec).collect()
}

fn take(loader: &mut Loader, n: usize) -> Vec<Vec<u32>> {
    (0..n).map(|_| loader.next_batch().to_vec()).collect()
}

#[test]
fn batches_are_windows_in_the_defined_shuffled_order() {
    let set = set();
    let shape = BatchShape {
        batch: 3,
        seq_len: T,
    };
    let mut loader = Loader::new(&set, shape, 42).unwrap();
    assert_eq!(loader.windows_per_epoch(), 17);
    // ⌊17/3⌋ = 5 batches per epoch; 12 batches run into epoch 2.
    for epoch in 0..3u64 {
        let mut order: Vec<usize> = (0..17).collect();
        Rng::new(42 ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut order);
        for k in 0..5 {
            if epoch == 2 && k == 2 {
                return;
            }
            let expected: Vec<Vec<u32>> =
                order[3 * k..3 * k + 3].iter().map(|&w| window(w)).collect();
            assert_eq!(
                rows(loader.next_batch()),
                expected,
                "epoch {epoch} batch {k}"
            );
        }
    }
}

#[test]
fn an_epoch_visits_distinct_windows() {
    let set = set();
    let mut loader = Loader::new(
        &set,
        BatchShape {
            batch: 4,
            seq_len: T,
        },
        1,
    )
    .unwrap();
    let mut seen: Vec<Vec<u32>> = take(&mut loader, 4).iter().flat_map(|b| rows(b)).collect();
    assert_eq!(seen.len(), 16);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 16, "no window twice within an epoch");
    assert!(seen.iter().all(|row| (0..17).any(|w| &window(w) == row)));
}

#[test]
fn same_seed_same_batches_different_seed_different() {
    let set = set();
    let shape = BatchShape {
        batch: 2,
        seq_len: T,
    };
    let run = |seed| take(&mut Loader::new(&set, shape, seed).unwrap(), 20);
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn restore_continues_exactly_across_epochs() {
    let set = set();
    let shape = BatchShape {
        batch: 3,
        seq_len: T,
    };
    let mut reference = Loader::new(&set, shape, 9).unwrap();
    let all = take(&mut reference, 16);
    for stop in [0, 3, 5, 6, 11] {
        let mut first = Loader::new(&set, shape, 9).unwrap();
        take(&mut first, stop);
        let saved = serde_json::to_string(&first.position()).unwrap();
        let mut resumed = Loader::new(&set, shape, 123).unwrap(); // the position's seed wins
        resumed
            .restore(&serde_json::from_str(&saved).unwrap())
            .unwrap();
        assert_eq!(
            take(&mut resumed, 16 - stop),
            all[stop..],
            "resumed after {stop} batches"
        );
    }
}

#[test]
fn restore_refuses_a_position_from_other_data() {
    let set = set();
    let shape = BatchShape {
        batch: 3,
        seq_len: T,
    };
    let mut loader = Loader::new(&set, shape, 0).unwrap();
    let other = LoaderPosition {
        seed: 0,
        epoch: 0,
        index: 0,
        windows_per_epoch: 18,
    };
    assert!(matches!(
        loader.restore(&other),
        Err(DataError::PositionMismatch { .. })
    ));
    let past_end = LoaderPosition {
        index: 18,
        windows_per_epoch: 17,
        ..other
    };
    assert!(matches!(
        loader.restore(&past_end),
        Err(DataError::PositionMismatch { .. })
    ));
}

#[test]
fn too_little_data_or_an_empty_shape_is_an_error() {
    let set = set();
    let err = Loader::new(
        &set,
        BatchShape {
            batch: 18,
            seq_len: T,
        },
        0,
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            DataError::TooFewWindows {
                windows: 17,
                needed: 18,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        Loader::new(
            &set,
            BatchShape {
                batch: 1,
                seq_len: 0
            },
            0
        ),
        Err(DataError::EmptyBatchShape { .. })
    ));
    assert!(matches!(
        EvalLoader::new(
            &set,
            BatchShape {
                batch: 0,
                seq_len: 4
            },
            None
        ),
        Err(DataError::EmptyBatchShape { .. })
    ));
}

#[test]
fn eval_covers_the_split_in_order() {
    let set = set();
    let shape = BatchShape {
        batch: 2,
        seq_len: T,
    };
    let mut eval = EvalLoader::new(&set, shape, None).unwrap();
    assert_eq!(eval.batch_count(), 8); // ⌊17/2⌋
    let mut all_rows = Vec::new();
    while let Some(batch) = eval.next_batch() {
        all_rows.extend(rows(batch));
    }
    assert_eq!(all_rows, (0..16).map(window).collect::<Vec<_>>());
    // Targets (each row's last T tokens) of shard 0's windows cover tokens 1..=48 exactly once.
    let targets: Vec<u32> = all_rows[..12]
        .iter()
        .flat_map(|r| r[1..].to_vec())
        .collect();
    assert_eq!(targets, (1..49).collect::<Vec<u32>>());
    assert_eq!(
        EvalLoader::new(&set, shape, Some(3)).unwrap().batch_count(),
        3
    );
    assert_eq!(
        EvalLoader::new(&set, shape, Some(100))
            .unwrap()
            .batch_count(),
        8
    );
}
