//! `lowrank tokenize` run as a user would, then its shards read back through the library.

mod common;

use common::{tmp, Scratch};
use lowrank::data::{BatchShape, DataError, EvalLoader, ShardSet, Split};
use std::path::Path;
use std::process::Command;

/// A fresh, empty folder for one test, removed when it passes.
fn scratch(test: &str) -> Scratch {
    let dir = tmp(&format!("data-{test}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tokenize(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lowrank"))
        .arg("tokenize")
        .args(args)
        .output()
        .expect("run lowrank")
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A shard file's tokens, parsed by hand from llm.c's layout (not through the library).
fn raw_tokens(path: &Path) -> Vec<u16> {
    let bytes = std::fs::read(path).unwrap();
    let word = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    assert_eq!((word(0), word(1)), (20240520, 1), "{}", path.display());
    assert_eq!(bytes.len(), 1024 + 2 * word(2) as usize);
    bytes[1024..]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn wikitext_files_keep_their_splits() {
    let dir = scratch("wikitext");
    let raw = dir.join("wikitext-103-raw");
    std::fs::create_dir_all(&raw).unwrap();
    let article = |title: &str| {
        format!(
            " \n = {title} = \n \n Some text about {title} . \n \n = = Section = = \n \n More . \n"
        )
    };
    std::fs::write(
        raw.join("wiki.train.raw"),
        [article("A"), article("B"), article("C")].concat(),
    )
    .unwrap();
    std::fs::write(raw.join("wiki.valid.raw"), article("D")).unwrap();
    std::fs::write(
        raw.join("wiki.test.raw"),
        [article("E"), article("F")].concat(),
    )
    .unwrap();
    let out = dir.join("wt");
    let run = tokenize(&[path_str(&raw), "--out", path_str(&out)]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = String::from_utf8_lossy(&run.stdout);
    assert!(summary.contains("tokenized 6 documents"), "{summary}");

    // The shard name defaults to the --out folder's name.
    assert_eq!(
        file_names(&out),
        [
            "wt_test_000000.bin",
            "wt_train_000000.bin",
            "wt_val_000000.bin"
        ]
    );
    let eot_count = |name: &str| {
        raw_tokens(&out.join(name))
            .iter()
            .filter(|&&t| t == 50256)
            .count()
    };
    assert_eq!(eot_count("wt_train_000000.bin"), 3);
    assert_eq!(eot_count("wt_val_000000.bin"), 1);
    assert_eq!(eot_count("wt_test_000000.bin"), 2);
    assert_eq!(
        raw_tokens(&out.join("wt_train_000000.bin"))[0],
        50256,
        "documents start with <|endoftext|>"
    );

    let train = ShardSet::open_split(&out, Split::Train).unwrap();
    assert_eq!(
        train.shards()[0].tokens(),
        raw_tokens(&out.join("wt_train_000000.bin"))
    );
}

#[test]
fn plain_files_split_by_fraction_and_fill_shards() {
    let dir = scratch("plain");
    let input = dir.join("texts");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    for name in ["a.txt", "b.txt", "c.txt", "sub/d.txt"] {
        std::fs::write(input.join(name), "Hello world").unwrap();
    }
    std::fs::write(input.join(".hidden"), "skipped").unwrap();
    let out = dir.join("out");
    let run = tokenize(&[
        path_str(&input),
        "--out",
        path_str(&out),
        "--name",
        "hw",
        "--val-fraction",
        "0.5",
        "--shard-tokens",
        "4",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Documents a, b, c, sub/d; val gets documents 0 and 2 (⌈(i+1)/2⌉ > ⌈i/2⌉), train 1 and 3.
    // "Hello world" is [15496, 995] in GPT-2 BPE; shards hold 4 tokens each.
    let doc = [50256u16, 15496, 995];
    assert_eq!(
        file_names(&out),
        [
            "hw_train_000000.bin",
            "hw_train_000001.bin",
            "hw_val_000000.bin",
            "hw_val_000001.bin"
        ]
    );
    assert_eq!(
        raw_tokens(&out.join("hw_train_000000.bin")),
        [50256, 15496, 995, 50256]
    );
    assert_eq!(raw_tokens(&out.join("hw_train_000001.bin")), [15496, 995]);
    let val = ShardSet::open(path_str(&out.join("hw_val_*.bin"))).unwrap();
    let val_tokens: Vec<u16> = val
        .shards()
        .iter()
        .flat_map(|s| s.tokens().to_vec())
        .collect();
    assert_eq!(val_tokens, [doc, doc].concat());

    let again = tokenize(&[path_str(&input), "--out", path_str(&out), "--name", "hw"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    let overwrite = tokenize(&[
        path_str(&input),
        "--out",
        path_str(&out),
        "--name",
        "hw",
        "--val-fraction",
        "0",
        "--overwrite",
    ]);
    assert!(
        overwrite.status.success(),
        "{}",
        String::from_utf8_lossy(&overwrite.stderr)
    );
    assert_eq!(
        file_names(&out),
        ["hw_train_000000.bin"],
        "old shards removed"
    );
}

/// Tokenizes two small files into `out` as the shards named `name`: a val shard (the first
/// document) and a train shard. Their files' bytes, by file name.
fn write_old_shards(dir: &Path, out: &Path, name: &str) -> Vec<(String, Vec<u8>)> {
    let inputs = [dir.join("old1.txt"), dir.join("old2.txt")];
    std::fs::write(&inputs[0], "Old text, tokenized first.").unwrap();
    std::fs::write(&inputs[1], "More old text.").unwrap();
    let (first, second) = (path_str(&inputs[0]), path_str(&inputs[1]));
    let run = tokenize(&[first, second, "--out", path_str(out), "--name", name]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let shards: Vec<(String, Vec<u8>)> = file_names(out)
        .into_iter()
        .map(|n| (n.clone(), std::fs::read(out.join(n)).unwrap()))
        .collect();
    assert_eq!(shards.len(), 2);
    shards
}

/// `out` holds exactly `shards`, byte for byte, and nothing else (no staging folder either).
fn assert_holds(out: &Path, shards: &[(String, Vec<u8>)]) {
    let names: Vec<String> = shards.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(file_names(out), names);
    for (name, bytes) in shards {
        assert!(
            std::fs::read(out.join(name)).unwrap() == *bytes,
            "{name} changed"
        );
    }
}

/// A shard that cannot be written (a full disk, here RLIMIT_FSIZE at 1 MiB with SIGXFSZ ignored, so
/// the write fails instead of the signal killing the process) is named once, with the system's
/// reason; the run leaves no partial shard or temporary file taking space, and the shards it was to
/// replace with `--overwrite` are as they were.
#[cfg(unix)]
#[test]
fn a_full_disk_names_the_shard_and_loses_nothing() {
    let dir = scratch("full");
    let out = dir.join("out");
    let old = write_old_shards(&dir, &out, "out");
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(60_000); // ~600 k tokens
    std::fs::write(dir.join("big.txt"), text).unwrap();
    let run = Command::new("sh")
        .arg("-c")
        .arg(r#"trap "" XFSZ; ulimit -f 1024; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_lowrank"))
        .args(["tokenize", "--val-fraction", "0", "--overwrite", "--out"])
        .args([path_str(&out), path_str(&dir.join("big.txt"))])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("out_train_000000.bin: "), "{stderr}");
    assert_eq!(stderr.matches("File too large").count(), 1, "{stderr}");
    assert_holds(&out, &old);
}

#[test]
fn invalid_utf8_input_names_the_file_and_offset() {
    let dir = scratch("utf8");
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, b"good text \xC3\x28 more").unwrap();
    let run = tokenize(&[path_str(&bad), "--out", path_str(&dir.join("out"))]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("bad.txt") && stderr.contains("invalid UTF-8 at byte offset 10"),
        "{stderr}"
    );
}

/// Every input that is not UTF-8 is named in one refusal, before anything is tokenized: the good
/// files before and after them write no shard, and the old shards stay.
#[test]
fn every_invalid_input_is_named_before_anything_is_written() {
    let dir = scratch("utf8-many");
    let out = dir.join("out");
    let old = write_old_shards(&dir, &out, "t");
    let input = dir.join("texts");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "fine").unwrap();
    std::fs::write(input.join("b.txt"), b"latin-1 caf\xe9").unwrap();
    std::fs::write(input.join("c.txt"), "also fine").unwrap();
    std::fs::write(input.join("d.bin"), b"\x1f\x8b\x08 gzip").unwrap();
    std::fs::write(input.join("e.txt"), "").unwrap();
    let run = tokenize(&[
        path_str(&input),
        "--out",
        path_str(&out),
        "--name",
        "t",
        "--overwrite",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 of the 5 input files are not UTF-8"),
        "{stderr}"
    );
    assert!(
        stderr.contains("b.txt: invalid UTF-8 at byte offset 11"),
        "{stderr}"
    );
    assert!(
        stderr.contains("d.bin: invalid UTF-8 at byte offset 1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("a.txt") && !stderr.contains("e.txt"),
        "{stderr}"
    );
    assert_holds(&out, &old);
}

/// A run killed part-way leaves its hidden staging folder; the next run removes it, says so, and
/// writes its shards as usual.
#[test]
fn an_interrupted_runs_staging_folder_is_cleared() {
    let dir = scratch("interrupted");
    let out = dir.join("out");
    let staging = out.join(".t.tokenizing");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("t_train_000000.bin"), b"partial").unwrap();
    let input = dir.join("in.txt");
    std::fs::write(&input, "Hello world").unwrap();
    let run = tokenize(&[path_str(&input), "--out", path_str(&out), "--name", "t"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("left by an interrupted run"), "{stderr}");
    assert_eq!(file_names(&out), ["t_val_000000.bin"]); // one document: the first goes to val
    assert_eq!(
        raw_tokens(&out.join("t_val_000000.bin")),
        [50256, 15496, 995]
    );
}

#[test]
fn corrupt_shard_files_are_refused_by_name() {
    let dir = scratch("corrupt");
    let path = dir.join("c_train_000000.bin");
    lowrank::data::write_shard(&path, &[50256, 15496, 995]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 1030);
    assert_eq!(raw_tokens(&path), [50256, 15496, 995]);
    let intact = ShardSet::open(path_str(&path)).unwrap();
    assert_eq!(intact.shards()[0].tokens(), [50256, 15496, 995]);
    drop(intact); // unmap before rewriting the file

    std::fs::write(&path, &bytes[..1028]).unwrap();
    let err = ShardSet::open(path_str(&path)).err().unwrap();
    assert!(
        matches!(
            err,
            DataError::SizeMismatch {
                expected: 1030,
                actual: 1028,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("c_train_000000.bin"), "{err}");

    std::fs::write(&path, []).unwrap();
    assert!(matches!(
        ShardSet::open(path_str(&path)),
        Err(DataError::EmptyShard { .. })
    ));

    let mut bad_token = bytes.clone();
    bad_token[1028..1030].copy_from_slice(&60000u16.to_le_bytes());
    std::fs::write(&path, &bad_token).unwrap();
    assert!(matches!(
        ShardSet::open(path_str(&path)),
        Err(DataError::TokenOutOfVocab {
            index: 2,
            token: 60000,
            ..
        })
    ));
}

#[test]
fn shards_on_disk_feed_the_loader() {
    let dir = scratch("loader");
    // Two shards whose tokens are their positions; with T = 3 each 10-token shard holds 3 windows.
    lowrank::data::write_shard(
        &dir.join("s_val_000001.bin"),
        &(100..110).collect::<Vec<u16>>(),
    )
    .unwrap();
    lowrank::data::write_shard(
        &dir.join("s_val_000000.bin"),
        &(0..10).collect::<Vec<u16>>(),
    )
    .unwrap();
    let set = ShardSet::open_split(&dir, Split::Val).unwrap();
    let mut eval = EvalLoader::new(
        &set,
        BatchShape {
            batch: 2,
            seq_len: 3,
        },
        None,
    )
    .unwrap();
    let mut batches = Vec::new();
    while let Some(b) = eval.next_batch() {
        batches.push(b.to_vec());
    }
    // Shards in name order: windows [0..4), [3..7), [6..10) of shard 0, then of shard 1.
    let expected: Vec<Vec<u32>> = vec![
        vec![0, 1, 2, 3, 3, 4, 5, 6],
        vec![6, 7, 8, 9, 100, 101, 102, 103],
        vec![103, 104, 105, 106, 106, 107, 108, 109],
    ];
    assert_eq!(batches, expected);
}

/// An --out folder inside an input folder is not read as input: a second run over the same
/// folder with --overwrite tokenizes the same one document, not the first run's shards.
#[test]
fn an_output_folder_inside_an_input_is_skipped() {
    let dir = scratch("out-inside");
    let input = dir.join("texts");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "Hello world").unwrap();
    let out = input.join("shards");
    for _ in 0..2 {
        let run = tokenize(&[path_str(&input), "--out", path_str(&out), "--overwrite"]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr),
        );
        assert!(run.status.success(), "{stderr}");
        assert!(
            stdout.contains("tokenized 1 documents into 3 tokens"),
            "{stdout}"
        );
    }
    assert_eq!(file_names(&out), ["shards_val_000000.bin"]);
}

/// Ctrl-C (SIGINT) while tokenizing stops the run within a document's work: it says so, exits as
/// a process killed by SIGINT would (130), and leaves the old shards as they were, with no
/// staging folder or lock behind.
#[cfg(unix)]
#[test]
fn an_interrupt_writes_nothing_and_keeps_the_old_shards() {
    use std::io::{BufRead, BufReader};
    let dir = scratch("sigint");
    let out = dir.join("out");
    let old = write_old_shards(&dir, &out, "out");
    let input = dir.join("texts");
    std::fs::create_dir_all(&input).unwrap();
    // 200 files of 120 kB, ~5 s of work on 2 cores: the interrupt comes at the first 10 %.
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(2_700);
    for i in 0..200 {
        std::fs::write(input.join(format!("{i:03}.txt")), &text).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_lowrank"))
        .args([
            "tokenize",
            "--overwrite",
            "--out",
            path_str(&out),
            path_str(&input),
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("tokenize: 10%") {
        assert!(
            stderr.read_line(&mut said).unwrap() > 0,
            "ended first: {said}"
        );
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    said += &rest;
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("interrupted: nothing was written"), "{said}");
    assert!(
        !said.contains("100%"),
        "the run finished before the interrupt: {said}"
    );
    assert_holds(&out, &old);
}
