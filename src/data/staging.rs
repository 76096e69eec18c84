//! Where `tokenize` writes: a hidden staging folder in the output folder, whose shards replace the
//! old ones only when the whole run succeeds, and a lock that keeps two runs off the same shards.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The hidden folder `OUT/.NAME.tokenizing` a run writes its shards to, held under the lock
/// `OUT/.NAME.tokenizing.lock`. Dropping it removes the folder (after a failure, the partial shards;
/// after `replace`, the old shards set aside) and the lock file. A folder left by a killed run is
/// removed by the next run of the same name.
pub struct Staging {
    dir: PathBuf,
    lock_path: PathBuf,
    // Held open: the lock lasts as long as the file handle.
    _lock: File,
}

impl Staging {
    pub fn create(out_dir: &Path, name: &str) -> Result<Staging> {
        let dir = out_dir.join(format!(".{name}.tokenizing"));
        let lock_path = out_dir.join(format!(".{name}.tokenizing.lock"));
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "another `lowrank tokenize` is writing shards named {name}_* in {}: wait for it, or \
                 choose another --out or --name",
                out_dir.display()
            );
        }
        if dir.exists() {
            eprintln!(
                "tokenize: removing {}, left by an interrupted run",
                dir.display()
            );
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Staging {
            dir,
            lock_path,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the `old` shards (in `out_dir`) aside into the staging folder, then the shards named
    /// `staged` from it into `out_dir` (renames: the same file system). If a move fails, the ones
    /// made are moved back, as far as they go, so `out_dir` holds the old shards as before.
    pub fn replace(&self, old: &[PathBuf], staged: &[String], out_dir: &Path) -> Result<()> {
        let aside = self.dir.join("replaced");
        std::fs::create_dir(&aside).with_context(|| format!("creating {}", aside.display()))?;
        let set_aside: Vec<(PathBuf, PathBuf)> = old
            .iter()
            .map(|p| (p.clone(), aside.join(p.file_name().expect("a shard file"))))
            .collect();
        rename_all(&set_aside)?;
        let publish: Vec<(PathBuf, PathBuf)> = staged
            .iter()
            .map(|n| (self.dir.join(n), out_dir.join(n)))
            .collect();
        rename_all(&publish).inspect_err(|_| undo(&set_aside))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
        std::fs::remove_file(&self.lock_path).ok();
    }
}

/// Renames each (from, to) in order; if one fails, renames back those done and returns its error.
fn rename_all(moves: &[(PathBuf, PathBuf)]) -> Result<()> {
    for (i, (from, to)) in moves.iter().enumerate() {
        if let Err(e) = std::fs::rename(from, to) {
            undo(&moves[..i]);
            return Err(e)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()));
        }
    }
    Ok(())
}

fn undo(moves: &[(PathBuf, PathBuf)]) {
    for (from, to) in moves.iter().rev() {
        std::fs::rename(to, from).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// A publish that fails part-way (a folder where a new shard's name is) leaves the old
    /// shards in place with their contents and no new shard; the next run, while the first holds
    /// the lock, is refused.
    #[test]
    fn a_failed_replace_puts_the_old_shards_back() {
        let out = std::env::temp_dir().join(format!("lowrank-staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(out.join("t_val_000000.bin")).unwrap(); // not a file: blocks
        std::fs::write(out.join("t_train_000000.bin"), "old train").unwrap();
        let staging = Staging::create(&out, "t").unwrap();
        let err = Staging::create(&out, "t").err().unwrap();
        assert!(
            err.to_string().contains("another `lowrank tokenize`"),
            "{err}"
        );
        std::fs::write(staging.dir().join("t_train_000000.bin"), "new train").unwrap();
        std::fs::write(staging.dir().join("t_val_000000.bin"), "new val").unwrap();
        let old = [out.join("t_train_000000.bin")];
        let staged = ["t_train_000000.bin".to_string(), "t_val_000000.bin".into()];
        let err = staging.replace(&old, &staged, &out).err().unwrap();
        assert!(format!("{err:#}").contains("t_val_000000.bin"), "{err:#}");
        let train = std::fs::read_to_string(out.join("t_train_000000.bin")).unwrap();
        assert_eq!(train, "old train");
        drop(staging);
        assert_eq!(names(&out), ["t_train_000000.bin", "t_val_000000.bin"]);
        std::fs::remove_dir_all(&out).ok();
    }
}
