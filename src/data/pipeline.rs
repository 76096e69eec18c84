//! Text files to token shards: the work behind `lowrank tokenize`.
//!
//! Inputs are files or folders (walked recursively, hidden entries skipped, sorted by path). Each
//! file splits into documents at WikiText article headers (one document if it has none); each
//! document becomes `<|endoftext|>` + its GPT-2 tokens. Which split a document goes to:
//! - a file named `wiki.train.*`, `wiki.valid.*` or `wiki.test.*` (WikiText as distributed) keeps its
//!   split: train, val, test. Test gets its own `NAME_test_*` shards so that it stays held out from
//!   training and validation yet can be evaluated on explicitly;
//! - every other document, numbered i = 0, 1, ... in input order, goes to val when
//!   ⌈(i+1)·F⌉ > ⌈i·F⌉ for the val fraction F: every (1/F)-th document starting with the first, so
//!   ⌈N·F⌉ of N documents, spread evenly over the inputs.
//!
//! Shards are filled to `shard_tokens` each (documents may straddle two shards, as in llm.c), in
//! input order, so the output is the same on any number of cores.
//!
//! A run is all or nothing. Every input is checked to be UTF-8 before any is tokenized, so a bad
//! file is named before the files ahead of it take their minutes. Shards are written to a hidden
//! staging folder in `out_dir` (`staging`) and replace the old ones (with `--overwrite`) only when
//! every split is complete, so a failure (a full disk, a bad file) leaves the old shards as they
//! were. An `out_dir` inside an input folder is not read as input.

use super::error::DataError;
use super::progress::Progress;
use super::shard::write_shard;
use super::shardset::Split;
use super::staging::Staging;
use super::{tokenizer, wikitext};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Files are read and tokenized in groups of about this many bytes: big enough to keep every core
/// busy when each file is one small document, small enough to bound memory.
const GROUP_BYTES: u64 = 64 << 20;

pub struct TokenizeConfig {
    pub inputs: Vec<PathBuf>,
    pub out_dir: PathBuf,
    /// Shards are `{name}_{split}_{NNNNNN}.bin`.
    pub name: String,
    pub val_fraction: f64,
    pub shard_tokens: usize,
    /// Replace this name's existing shards in `out_dir` (once the new ones are complete) instead of
    /// refusing to run.
    pub overwrite: bool,
    /// Set (by a Ctrl-C handler) to stop: the run ends with an error within a document's work,
    /// writing nothing.
    pub interrupted: Arc<AtomicBool>,
}

/// What one split received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitCounts {
    pub documents: usize,
    pub tokens: usize,
    pub shards: usize,
}

#[derive(Debug)]
pub struct TokenizeSummary {
    pub train: SplitCounts,
    pub val: SplitCounts,
    pub test: SplitCounts,
    pub seconds: f64,
}

impl TokenizeSummary {
    pub fn line(&self, out_dir: &Path) -> String {
        let splits = [self.train, self.val, self.test];
        let documents: usize = splits.iter().map(|s| s.documents).sum();
        let tokens: usize = splits.iter().map(|s| s.tokens).sum();
        let shards: usize = splits.iter().map(|s| s.shards).sum();
        format!(
            "tokenized {documents} documents into {tokens} tokens (train {}, val {}, test {}) in {:.1} s, \
             {:.0} tokens/s; {shards} shard(s) in {}",
            self.train.tokens,
            self.val.tokens,
            self.test.tokens,
            self.seconds,
            tokens as f64 / self.seconds.max(1e-9),
            out_dir.display()
        )
    }
}

/// Tokenizes `config.inputs` into shards in `config.out_dir`.
pub fn tokenize_files(config: &TokenizeConfig) -> Result<TokenizeSummary> {
    if !(0.0..1.0).contains(&config.val_fraction) {
        bail!(
            "--val-fraction must be in [0, 1), got {}",
            config.val_fraction
        );
    }
    let start = Instant::now();
    // Refused at once, before the inputs are read; listed again under the lock below.
    old_shards(&config.out_dir, &config.name, config.overwrite)?;
    let files = list_input_files(&config.inputs, &config.out_dir)?;
    check_utf8(&files)?;
    std::fs::create_dir_all(&config.out_dir)
        .with_context(|| format!("creating {}", config.out_dir.display()))?;
    let staging = Staging::create(&config.out_dir, &config.name)?;
    let old_shards = old_shards(&config.out_dir, &config.name, config.overwrite)?;
    let (counts, staged) = tokenize_into(config, &files, staging.dir())?;
    staging.replace(&old_shards, &staged, &config.out_dir)?;
    let [train, val, test] = counts;
    Ok(TokenizeSummary {
        train,
        val,
        test,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Tokenizes `files` into shards in `dir`: what each split (train, val, test) received, and the
/// shards' file names.
fn tokenize_into(
    config: &TokenizeConfig,
    files: &[(PathBuf, u64)],
    dir: &Path,
) -> Result<([SplitCounts; 3], Vec<String>)> {
    let total_bytes = files.iter().map(|(_, len)| len).sum();
    let progress = Progress::new(total_bytes);
    let mut writers =
        [Split::Train, Split::Val, Split::Test].map(|s| ShardWriter::new(config, dir, s));
    let mut free_documents = 0; // documents not pinned to a split by their file name, so far
    let interrupted = || config.interrupted.load(Ordering::Relaxed);
    for group in group_files(files) {
        let texts = read_texts(group)?;
        let documents = assign_splits(group, &texts, &mut free_documents, config.val_fraction);
        let tokens: Vec<Vec<u16>> = documents
            .par_iter()
            .map(|(_, text)| {
                if interrupted() {
                    return Vec::new(); // the run is over: skip the work
                }
                let ids = tokenizer::encode_document(text);
                progress.advance(text.len() as u64);
                ids
            })
            .collect();
        if interrupted() {
            progress.finish();
            bail!(
                "interrupted: nothing was written; {} holds what it held before",
                config.out_dir.display()
            );
        }
        for ((split, _), ids) in documents.iter().zip(&tokens) {
            writers[split.index()].push(ids)?;
        }
        // Whitespace between and before documents counts too, so the bar ends at 100 %.
        let text_bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
        progress.advance(text_bytes - documents.iter().map(|(_, t)| t.len() as u64).sum::<u64>());
    }
    progress.finish();
    let mut staged = Vec::new();
    let [train, val, test] = writers.map(|w| w.finish(&mut staged));
    let counts = [train?, val?, test?];
    if counts.iter().all(|c| c.tokens == 0) {
        bail!("the inputs hold no text (every file empty or whitespace)");
    }
    if counts[0].tokens == 0 {
        eprintln!("warning: no training documents: every document went to val or test");
    }
    Ok((counts, staged))
}

/// Every input is UTF-8, or an error naming each file that is not (the first ten) and where.
fn check_utf8(files: &[(PathBuf, u64)]) -> Result<()> {
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    if total > GROUP_BYTES {
        let mib = total as f64 / (1u64 << 20) as f64;
        eprintln!(
            "tokenize: checking that {} files ({mib:.0} MiB) are UTF-8",
            files.len()
        );
    }
    // Read, not memory-mapped: a file truncated under a map would kill the process with SIGBUS.
    let first_invalid = |path: &Path| -> Result<Option<usize>, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Ok(std::str::from_utf8(&bytes).err().map(|e| e.valid_up_to()))
    };
    let offsets = files
        .par_iter()
        .map(|(path, _)| first_invalid(path))
        .collect::<Result<Vec<_>, _>>()?;
    let invalid: Vec<(&Path, usize)> = files
        .iter()
        .zip(offsets)
        .filter_map(|((path, _), offset)| Some((path.as_path(), offset?)))
        .collect();
    if invalid.is_empty() {
        return Ok(());
    }
    const LISTED: usize = 10;
    let (n, of) = (invalid.len(), files.len());
    let mut message = match n {
        1 => format!("1 of the {of} input files is not UTF-8 text; convert it (e.g. with iconv) or remove it"),
        _ => format!("{n} of the {of} input files are not UTF-8 text; convert them (e.g. with iconv) or remove them"),
    };
    message += ", then run again (nothing was written):";
    for (path, offset) in invalid.iter().take(LISTED) {
        message += &format!(
            "\n  {}: invalid UTF-8 at byte offset {offset}",
            path.display()
        );
    }
    if n > LISTED {
        message += &format!("\n  and {} more", n - LISTED);
    }
    bail!(message)
}

/// Each document of a group's files with its split, in input order; `free_documents` counts the
/// documents whose split the val fraction decides, across groups.
fn assign_splits<'t>(
    group: &[(PathBuf, u64)],
    texts: &'t [String],
    free_documents: &mut usize,
    val_fraction: f64,
) -> Vec<(Split, &'t str)> {
    let mut documents = Vec::new();
    for ((path, _), text) in group.iter().zip(texts) {
        let pinned = pinned_split(path);
        for doc in wikitext::split_documents(text) {
            let split = pinned.unwrap_or_else(|| {
                *free_documents += 1;
                if is_val_document(*free_documents - 1, val_fraction) {
                    Split::Val
                } else {
                    Split::Train
                }
            });
            documents.push((split, doc.text));
        }
    }
    documents
}

/// Whether free document `i` goes to val: ⌈(i+1)·F⌉ > ⌈i·F⌉.
pub fn is_val_document(i: usize, fraction: f64) -> bool {
    ((i + 1) as f64 * fraction).ceil() > (i as f64 * fraction).ceil()
}

/// The split a WikiText file's name pins its documents to.
pub fn pinned_split(path: &Path) -> Option<Split> {
    let name = path.file_name()?.to_str()?;
    [
        ("wiki.train.", Split::Train),
        ("wiki.valid.", Split::Val),
        ("wiki.test.", Split::Test),
    ]
    .into_iter()
    .find_map(|(prefix, split)| name.starts_with(prefix).then_some(split))
}

/// Every input file with its size: files as given, folders walked recursively (but `out_dir`,
/// whose shards are not text); sorted by path within each folder, inputs in command-line order.
fn list_input_files(inputs: &[PathBuf], out_dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let out_dir = std::fs::canonicalize(out_dir).ok(); // none yet: nothing to skip
    let mut files = Vec::new();
    for input in inputs {
        let meta =
            std::fs::metadata(input).with_context(|| format!("input {}", input.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, out_dir.as_deref(), &mut found)?;
            found.sort();
            files.extend(found);
        } else {
            files.push((input.clone(), meta.len()));
        }
    }
    if files.is_empty() {
        bail!("no input files found in {:?}", inputs);
    }
    Ok(files)
}

fn walk(dir: &Path, skip: Option<&Path>, found: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    if skip.is_some() && std::fs::canonicalize(dir).ok().as_deref() == skip {
        return Ok(());
    }
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?
    {
        let entry = entry.with_context(|| format!("reading folder {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).with_context(|| format!("input {}", path.display()))?;
        if meta.is_dir() {
            walk(&path, skip, found)?;
        } else {
            found.push((path, meta.len()));
        }
    }
    Ok(())
}

/// Consecutive runs of files of about `GROUP_BYTES` (a bigger file is a group of its own).
fn group_files(files: &[(PathBuf, u64)]) -> Vec<&[(PathBuf, u64)]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, len)) in files.iter().enumerate() {
        if i > start && bytes + len > GROUP_BYTES {
            groups.push(&files[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    groups.push(&files[start..]);
    groups
}

fn read_texts(group: &[(PathBuf, u64)]) -> Result<Vec<String>> {
    let read = |path: &PathBuf| -> Result<String, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        wikitext::as_utf8(path, &bytes)?;
        Ok(String::from_utf8(bytes).expect("checked just above"))
    };
    Ok(group
        .par_iter()
        .map(|(path, _)| read(path))
        .collect::<Result<Vec<_>, _>>()?)
}

/// This name's shards already in `out_dir`, which a successful run replaces when `overwrite`; else
/// a refusal if there are any (a shorter run would leave stale shards that a `*` pattern still
/// matches).
fn old_shards(out_dir: &Path, name: &str, overwrite: bool) -> Result<Vec<PathBuf>> {
    let mut old = Vec::new();
    for split in [Split::Train, Split::Val, Split::Test] {
        let pattern = out_dir.join(format!("{name}_{}_*.bin", split.name()));
        if let Ok(set) = super::shardset::expand_pattern(&pattern.to_string_lossy()) {
            old.extend(set);
        }
    }
    if !old.is_empty() && !overwrite {
        bail!(
            "{} already holds {} shard(s) named {name}_*: pass --overwrite to replace them, or choose another --out or --name",
            out_dir.display(),
            old.len()
        );
    }
    Ok(old)
}

/// Fills one split's shards to `shard_tokens` each, in order.
struct ShardWriter<'a> {
    config: &'a TokenizeConfig,
    dir: &'a Path,
    split: Split,
    buffer: Vec<u16>,
    counts: SplitCounts,
}

impl<'a> ShardWriter<'a> {
    fn new(config: &'a TokenizeConfig, dir: &'a Path, split: Split) -> Self {
        ShardWriter {
            config,
            dir,
            split,
            buffer: Vec::new(),
            counts: SplitCounts::default(),
        }
    }

    fn push(&mut self, mut tokens: &[u16]) -> Result<(), DataError> {
        self.counts.documents += 1;
        self.counts.tokens += tokens.len();
        while !tokens.is_empty() {
            let room = self.config.shard_tokens - self.buffer.len();
            let (now, later) = tokens.split_at(room.min(tokens.len()));
            self.buffer.extend_from_slice(now);
            tokens = later;
            if self.buffer.len() == self.config.shard_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        write_shard(
            &self.dir.join(self.shard_name(self.counts.shards)),
            &self.buffer,
        )?;
        self.buffer.clear();
        self.counts.shards += 1;
        Ok(())
    }

    fn shard_name(&self, index: usize) -> String {
        format!("{}_{}_{index:06}.bin", self.config.name, self.split.name())
    }

    /// Writes the last, partly filled shard; adds the names of all this split's shards to `names`.
    fn finish(mut self, names: &mut Vec<String>) -> Result<SplitCounts, DataError> {
        if !self.buffer.is_empty() {
            self.flush()?;
        }
        names.extend((0..self.counts.shards).map(|i| self.shard_name(i)));
        Ok(self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn val_rule_picks_every_kth_document_from_the_first() {
        let picked = |f: f64, n: usize| {
            (0..n)
                .filter(|&i| is_val_document(i, f))
                .collect::<Vec<_>>()
        };
        assert_eq!(picked(0.25, 10), vec![0, 4, 8]); // ⌈10·0.25⌉ = 3
        assert_eq!(picked(0.5, 5), vec![0, 2, 4]);
        assert_eq!(picked(0.0, 5), Vec::<usize>::new());
        assert_eq!(picked(0.001, 3), vec![0]);
    }

    #[test]
    fn wikitext_file_names_pin_their_split() {
        assert_eq!(
            pinned_split(Path::new("d/wiki.train.raw")),
            Some(Split::Train)
        );
        assert_eq!(
            pinned_split(Path::new("wiki.valid.tokens")),
            Some(Split::Val)
        );
        assert_eq!(pinned_split(Path::new("wiki.test.raw")), Some(Split::Test));
        assert_eq!(pinned_split(Path::new("notes.txt")), None);
        assert_eq!(pinned_split(Path::new("my.wiki.train.raw")), None);
    }

    #[test]
    fn groups_cover_files_in_order() {
        let files: Vec<(PathBuf, u64)> = [10, GROUP_BYTES, 5, 5]
            .iter()
            .enumerate()
            .map(|(i, &n)| (PathBuf::from(i.to_string()), n))
            .collect();
        let sizes: Vec<usize> = group_files(&files).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![1, 1, 2]);
    }
}
