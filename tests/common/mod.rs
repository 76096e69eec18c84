//! Helpers shared by the integration tests that run the binary as a user would.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `lowrank ARGS` with extra environment variables and returns its output.
pub fn lowrank_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lowrank"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("the lowrank binary runs")
}

/// Runs `lowrank ARGS`.
pub fn lowrank(args: &[&str]) -> Output {
    lowrank_env(args, &[])
}

/// Standard output followed by standard error.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fresh temporary path unique to this test process, for a directory a command creates (or
/// a file, `tmp_file`): removed when dropped at the end of a test that passes, kept after a
/// failure (dropped while panicking) for a look at what the command left.
pub struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        match std::thread::panicking() {
            true if self.0.exists() => eprintln!("kept {} for a look", self.0.display()),
            true => {}
            false if self.0.is_dir() => std::fs::remove_dir_all(&self.0).unwrap_or_default(),
            false => std::fs::remove_file(&self.0).unwrap_or_default(),
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

/// `lowrank-test-NAME-PID` in the temporary directory, emptied of an earlier run's remains.
pub fn tmp(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("lowrank-test-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    Scratch(d)
}

/// `tmp` for a file: `lowrank-test-NAME-PID.EXT`.
pub fn tmp_file(name: &str, ext: &str) -> Scratch {
    let f = std::env::temp_dir().join(format!("lowrank-test-{name}-{}.{ext}", std::process::id()));
    std::fs::remove_file(&f).ok();
    Scratch(f)
}

/// Runs `lowrank ARGS` and asserts that it fails with a message containing `needle`.
pub fn assert_fails_with(args: &[&str], needle: &str) {
    let o = lowrank(args);
    assert!(
        failed_with(&o, needle),
        "`lowrank {}` should fail saying {needle:?}:\n{}",
        args.join(" "),
        text(&o)
    );
}

/// Whether a command failed with a message containing `needle`.
pub fn failed_with(o: &Output, needle: &str) -> bool {
    !o.status.success() && text(o).contains(needle)
}

/// Small, fast settings: 2 sequences of 16 tokens, evaluation every 2 steps on one batch.
pub const SMALL: [&str; 10] = [
    "--batch",
    "2",
    "--seq",
    "16",
    "--eval-every",
    "2",
    "--eval-batches",
    "1",
    "--warmup",
    "2",
];

/// `lowrank train --out OUT` with SMALL's settings and `extra`.
pub fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    lowrank(&args)
}

/// The records of DIR/metrics.jsonl.
pub fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The fields of a record that must match bit for bit (all but the wall-clock rates).
pub fn trajectory(rs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    rs.iter()
        .map(|r| {
            let mut r = r.clone();
            for rate in ["tok_per_s", "tflops", "mfu"] {
                r.as_object_mut().unwrap().remove(rate);
            }
            r
        })
        .collect()
}

/// Writes `files` (name, text) into DIR/text and tokenizes them with `lowrank tokenize` (and
/// `extra` flags) into DIR/shards, whose path it returns (shards named `shards_{split}_*.bin`).
pub fn tokenize_texts(dir: &Path, files: &[(&str, &str)], extra: &[&str]) -> PathBuf {
    let corpus = dir.join("text");
    std::fs::create_dir_all(&corpus).unwrap();
    for (name, body) in files {
        std::fs::write(corpus.join(name), body).unwrap();
    }
    let shards = dir.join("shards");
    let (c, s) = (corpus.to_str().unwrap(), shards.to_str().unwrap());
    let o = lowrank(&[&["tokenize", c, "--out", s], extra].concat());
    assert!(o.status.success(), "{}", text(&o));
    shards
}
