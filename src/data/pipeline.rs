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
//! file is named in a second, not after the files before it took their minutes. Shards are written
//! to a hidden staging folder in `out_dir` and moved beside any earlier ones only when every split
//! is complete; a failed run removes its staging folder, and `--overwrite` removes the old shards
//! only then, so a failure (a full disk, a bad file) leaves the old shards as they were.

use super::error::DataError;
use super::progress::Progress;
use super::shard::write_shard;
use super::shardset::Split;
use super::{tokenizer, wikitext};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
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
    /// Remove this name's existing shards in `out_dir` instead of refusing to run.
    pub overwrite: bool,
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
    let files = list_input_files(&config.inputs)?;
    std::fs::create_dir_all(&config.out_dir)
        .with_context(|| format!("creating {}", config.out_dir.display()))?;
    let old_shards = old_shards(&config.out_dir, &config.name, config.overwrite)?;
    let start = Instant::now();
    check_utf8(&files)?;

    let staging = Staging::create(&config.out_dir, &config.name)?;
    let (summary, staged) = tokenize_into(config, &files, &staging.dir)?;
    for path in old_shards {
        std::fs::remove_file(&path)
            .with_context(|| format!("removing old shard {}", path.display()))?;
    }
    staging.publish(&staged, &config.out_dir)?;
    Ok(TokenizeSummary {
        seconds: start.elapsed().as_secs_f64(),
        ..summary
    })
}

/// Tokenizes `files` into shards in `dir`: the summary and the shards' file names.
fn tokenize_into(
    config: &TokenizeConfig,
    files: &[(PathBuf, u64)],
    dir: &Path,
) -> Result<(TokenizeSummary, Vec<String>)> {
    let start = Instant::now();
    let total_bytes = files.iter().map(|(_, len)| len).sum();
    let progress = Progress::new(total_bytes);
    let mut writers =
        [Split::Train, Split::Val, Split::Test].map(|s| ShardWriter::new(config, dir, s));
    let mut free_documents = 0; // documents not pinned to a split by their file name, so far
    for group in group_files(files) {
        let texts = read_texts(group)?;
        let documents = assign_splits(group, &texts, &mut free_documents, config.val_fraction);
        let tokens: Vec<Vec<u16>> = documents
            .par_iter()
            .map(|(_, text)| {
                let ids = tokenizer::encode_document(text);
                progress.advance(text.len() as u64);
                ids
            })
            .collect();
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
    let summary = TokenizeSummary {
        train: train?,
        val: val?,
        test: test?,
        seconds: start.elapsed().as_secs_f64(),
    };
    if summary.train.tokens + summary.val.tokens + summary.test.tokens == 0 {
        bail!("the inputs hold no text (every file empty or whitespace)");
    }
    if summary.train.tokens == 0 {
        eprintln!("warning: no training documents: every document went to val or test");
    }
    Ok((summary, staged))
}

/// Every input is UTF-8, or an error naming each file that is not (the first few) and where.
fn check_utf8(files: &[(PathBuf, u64)]) -> Result<()> {
    let check = |(path, len): &(PathBuf, u64)| -> Result<Option<DataError>, DataError> {
        if *len == 0 {
            return Ok(None); // nothing to map, and nothing to get wrong
        }
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        // SAFETY: read-only; an input changed under the scan is caught again when it is read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        Ok(wikitext::as_utf8(path, &map).err())
    };
    let invalid: Vec<DataError> = files
        .par_iter()
        .map(check)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    match invalid.len() {
        0 => Ok(()),
        1 => Err(invalid.into_iter().next().unwrap().into()),
        n => {
            const LISTED: usize = 10;
            let mut message = format!(
                "{n} of the {} input files are not UTF-8 text; convert them (e.g. with iconv) or \
                 remove them, then run again (nothing was written):",
                files.len()
            );
            for err in invalid.iter().take(LISTED) {
                if let DataError::InvalidUtf8 { path, offset } = err {
                    message += &format!(
                        "\n  {}: invalid UTF-8 at byte offset {offset}",
                        path.display()
                    );
                }
            }
            if n > LISTED {
                message += &format!("\n  and {} more", n - LISTED);
            }
            bail!(message)
        }
    }
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

/// Every input file with its size: files as given, folders walked recursively; sorted by path
/// within each folder, inputs in command-line order.
fn list_input_files(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta =
            std::fs::metadata(input).with_context(|| format!("input {}", input.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
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

fn walk(dir: &Path, found: &mut Vec<(PathBuf, u64)>) -> Result<()> {
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
            walk(&path, found)?;
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

/// The hidden folder a run writes its shards to, removed when dropped: a run that fails (or returns
/// early) leaves nothing behind. One left by an interrupted run is removed by the next.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(out_dir: &Path, name: &str) -> Result<Staging> {
        let dir = out_dir.join(format!(".{name}.tokenizing"));
        if dir.exists() {
            eprintln!(
                "tokenize: removing {}, left by an interrupted run",
                dir.display()
            );
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Staging { dir })
    }

    /// Moves the shards named `staged` into `out_dir` (a rename: the same file system).
    fn publish(self, staged: &[String], out_dir: &Path) -> Result<()> {
        for name in staged {
            let (from, to) = (self.dir.join(name), out_dir.join(name));
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Empty after a publish; holds the partial shards after a failure.
        std::fs::remove_dir_all(&self.dir).ok();
    }
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
