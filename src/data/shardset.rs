//! A split's token shards, opened and validated once: memory-mapped files, or token vectors built in
//! memory (the embedded corpus), behind one type so the loader reads both the same way.

use super::error::DataError;
use super::shard::{validate, HEADER_BYTES};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which part of a dataset; names the shards `NAME_{train,val,test}_NNNNNN.bin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train = 0,
    Val = 1,
    Test = 2,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// 0, 1, 2 for train, val, test: a position in per-split arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u16>),
}

/// One shard's tokens, validated when opened.
pub struct Shard {
    name: String,
    storage: Storage,
}

impl Shard {
    /// Maps and validates one shard file (magic, version, size, every token in the vocabulary).
    pub fn open(path: &Path) -> Result<Shard, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        // SAFETY: the map is read-only; we assume, as every mmap reader must, that nobody truncates
        // the shard while training reads it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        validate(path, &map)?;
        Ok(Shard {
            name: path.display().to_string(),
            storage: Storage::Mapped(map),
        })
    }

    /// The file's path, or the in-memory shard's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tokens(&self) -> &[u16] {
        match &self.storage {
            // Validated in `open`: size and alignment hold, so the cast cannot fail.
            Storage::Mapped(map) => bytemuck::cast_slice(&map[HEADER_BYTES..]),
            Storage::Owned(tokens) => tokens,
        }
    }
}

/// The shards of one split, in file-name order. Cloning is cheap (the shards are shared), so loaders
/// hold their own handle and need no lifetime.
#[derive(Clone)]
pub struct ShardSet {
    shards: Arc<[Shard]>,
}

impl ShardSet {
    /// Opens the shards matching `pattern`: a file path whose file-name part may contain `*`
    /// (any run of characters), e.g. `datasets/wikitext103/wikitext103_train_*.bin`.
    pub fn open(pattern: &str) -> Result<ShardSet, DataError> {
        let paths = expand_pattern(pattern)?;
        if paths.is_empty() {
            return Err(DataError::NoShards {
                pattern: pattern.to_string(),
            });
        }
        ShardSet::from_paths(&paths)
    }

    /// Opens one split of a directory written by `lowrank tokenize` (or llm.c): the files
    /// `*_{split}*.bin` in it, e.g. `wikitext103_val_000000.bin` or `tiny_shakespeare_val.bin`.
    pub fn open_split(dir: &Path, split: Split) -> Result<ShardSet, DataError> {
        ShardSet::open(
            &dir.join(format!("*_{}*.bin", split.name()))
                .to_string_lossy(),
        )
    }

    /// Opens these shard files (sorted by path), validating each in parallel.
    pub fn from_paths(paths: &[PathBuf]) -> Result<ShardSet, DataError> {
        if paths.is_empty() {
            return Err(DataError::NoShards {
                pattern: "(an empty list of paths)".into(),
            });
        }
        let mut sorted = paths.to_vec();
        sorted.sort();
        let shards = sorted
            .par_iter()
            .map(|p| Shard::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ShardSet {
            shards: shards.into(),
        })
    }

    /// A set held in memory; `name` labels the shards in messages. Token ids must be < 50257.
    pub fn from_tokens(name: &str, shards: Vec<Vec<u16>>) -> ShardSet {
        debug_assert!(shards
            .iter()
            .flatten()
            .all(|&t| (t as usize) < super::shard::VOCAB_SIZE));
        let shards = shards
            .into_iter()
            .enumerate()
            .map(|(i, tokens)| Shard {
                name: format!("{name}[{i}]"),
                storage: Storage::Owned(tokens),
            })
            .collect();
        ShardSet { shards }
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn total_tokens(&self) -> usize {
        self.shards.iter().map(|s| s.tokens().len()).sum()
    }

    /// A one-line description for messages: the first shard's name and the counts.
    pub fn describe(&self) -> String {
        let first = self.shards.first().map_or("(none)", |s| s.name());
        format!(
            "{} shard(s) from {first}, {} tokens",
            self.shards.len(),
            self.total_tokens()
        )
    }
}

/// The files matching a pattern whose directory part is literal and whose file-name part may hold
/// `*`; a pattern without `*` names one file.
pub(crate) fn expand_pattern(pattern: &str) -> Result<Vec<PathBuf>, DataError> {
    let path = Path::new(pattern);
    let file_pattern = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if dir.to_string_lossy().contains('*') {
        return Err(DataError::BadPattern {
            pattern: pattern.into(),
            reason: "only the file name may contain `*`",
        });
    }
    if !file_pattern.contains('*') {
        return Ok(if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        });
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DataError::io(dir, e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name();
        let is_file = entry
            .file_type()
            .map(|t| t.is_file() || t.is_symlink())
            .unwrap_or(false);
        if is_file
            && name
                .to_str()
                .is_some_and(|n| wildcard_match(file_pattern, n))
        {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (including none) and
/// every other character matches itself. Greedy with backtracking to the last `*`: linear-ish and
/// exact for this one wildcard.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            last_star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((star_p, star_n)) = last_star {
            // Let the last `*` swallow one more character and retry from there.
            pi = star_p + 1;
            ni = star_n + 1;
            last_star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_by_hand() {
        assert!(wildcard_match("*_train_*.bin", "fineweb_train_000001.bin"));
        assert!(wildcard_match("*_val*.bin", "tiny_shakespeare_val.bin"));
        assert!(!wildcard_match("*_train_*.bin", "fineweb_val_000000.bin"));
        assert!(wildcard_match("a*b*c", "abc"));
        assert!(wildcard_match("a*b*c", "aXbYbZc"));
        assert!(!wildcard_match("a*b*c", "aXbYcZ"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("x", ""));
        assert!(wildcard_match("exact.bin", "exact.bin"));
        assert!(!wildcard_match("exact.bin", "exact.bin2"));
    }

    #[test]
    fn pattern_with_star_in_directory_is_refused() {
        assert!(matches!(
            ShardSet::open("data/*/x_*.bin"),
            Err(DataError::BadPattern { .. })
        ));
    }

    #[test]
    fn pattern_matching_nothing_names_the_pattern() {
        let err = ShardSet::open("/nonexistent-dir/none_*.bin")
            .err()
            .expect("no shards there");
        assert!(matches!(err, DataError::NoShards { .. }));
        assert!(
            err.to_string().contains("/nonexistent-dir/none_*.bin"),
            "{err}"
        );
    }
}
