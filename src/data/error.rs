//! Every way the data layer can refuse its input, each naming the file and what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // The I/O error is part of the message, not a `source`: `{:#}` prints a source again after it.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: empty file, not a token shard (re-run `lowrank tokenize` to rebuild it)")]
    EmptyShard { path: PathBuf },

    #[error("{path}: {len} bytes is shorter than the 1024-byte shard header: the file is truncated (re-run `lowrank tokenize`)")]
    HeaderTruncated { path: PathBuf, len: u64 },

    #[error("{path}: magic number {found}, expected 20240520: not an llm.c-format token shard")]
    BadMagic { path: PathBuf, found: i32 },

    #[error("{path}: shard version {found}, only version 1 (uint16 GPT-2 tokens) is supported; version 2 (uint32 tokens) is llm.c's Llama 3 format")]
    BadVersion { path: PathBuf, found: i32 },

    #[error("{path}: header token count {count} is negative: the header is corrupt")]
    NegativeTokenCount { path: PathBuf, count: i32 },

    #[error(
        "{path}: {bytes} payload bytes is odd, but tokens are 2 bytes each: the file is corrupt"
    )]
    OddPayload { path: PathBuf, bytes: u64 },

    #[error("{path}: header promises {count} tokens ({expected} bytes in all) but the file has {actual} bytes: {}",
        if actual < expected { "it is truncated (re-run `lowrank tokenize`)" } else { "it has trailing bytes" })]
    SizeMismatch {
        path: PathBuf,
        count: u64,
        expected: u64,
        actual: u64,
    },

    #[error(
        "{path}: token {token} at position {index} is outside the GPT-2 vocabulary of {vocab} ids"
    )]
    TokenOutOfVocab {
        path: PathBuf,
        index: usize,
        token: u16,
        vocab: usize,
    },

    #[error("{path}: invalid UTF-8 at byte offset {offset}; convert the file to UTF-8 (e.g. with iconv) or remove it")]
    InvalidUtf8 { path: PathBuf, offset: usize },

    #[error("no shard matches {pattern}; run `lowrank tokenize` first, or check the path (see datasets/README.md)")]
    NoShards { pattern: String },

    #[error("bad shard pattern {pattern}: {reason}")]
    BadPattern {
        pattern: String,
        reason: &'static str,
    },

    #[error("{what}: {windows} windows of {window_len} tokens, but one batch needs {needed}; use a smaller batch or context, or more data")]
    TooFewWindows {
        what: String,
        windows: usize,
        window_len: usize,
        needed: usize,
    },

    #[error("batch size {batch} and context length {seq_len} must both be positive")]
    EmptyBatchShape { batch: usize, seq_len: usize },

    #[error("loader position does not fit this data: {reason}")]
    PositionMismatch { reason: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            error,
        }
    }
}
