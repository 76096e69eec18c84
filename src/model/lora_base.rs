//! LoRA's frozen base, read from its checkpoint tensor by tensor into the weights and
//! fingerprinted as it is read: never held whole on the host beside the model (GPT-2 medium's base
//! is 1.4 GB of f32, XL's 6.2 GB).

use super::hf::{canonical, open_model_checkpoint};
use crate::train::tensor_file::{fingerprint_of, TensorFile, TensorHash, TensorSource};
use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// A dense checkpoint as LoRA's base: its tensors under the names a LoRA model's layout gives
/// them (each low-rank layer's `{prefix}.weight` as `{prefix}.lowrank_w0`, its W0), and the
/// hashes of those read, for its fingerprint.
pub struct LoraBase {
    path: String,
    file: TensorFile,
    /// Each tensor's name as the model asks for it, its name in the file, and its shape.
    names: Vec<(String, String, Vec<usize>)>,
    /// The hashes of the tensors read so far, by their names in the file.
    hashes: HashMap<String, u64>,
}

impl LoraBase {
    /// The base at `path` (a run or checkpoint directory, a Hugging Face model directory or a
    /// safetensors file) for a model whose low-rank layers' names start with `factored`'s
    /// prefixes (`h.0.mlp.c_fc`).
    pub fn open(path: &str, factored: &[&str]) -> Result<LoraBase> {
        let file = open_model_checkpoint(Path::new(path))
            .and_then(|src| src.dense_file())
            .with_context(|| format!("cannot load the LoRA base {path}"))?;
        let names = (file.shapes())
            .map(|(name, shape)| {
                let w0 = (canonical(name).strip_suffix(".weight")).filter(|p| factored.contains(p));
                let listed = match w0 {
                    Some(prefix) => format!("{prefix}.lowrank_w0"),
                    None => name.to_string(),
                };
                (listed, name.to_string(), shape.to_vec())
            })
            .collect();
        Ok(LoraBase {
            path: path.to_string(),
            file,
            names,
            hashes: HashMap::new(),
        })
    }

    /// The base's fingerprint, as a run records it (`tensor_file::fingerprint` of the file's
    /// tensors sorted by name): the tensors not read are hashed now, a chunk at a time.
    pub fn fingerprint(&mut self) -> Result<String> {
        let mut names: Vec<&String> = self.names.iter().map(|(_, name, _)| name).collect();
        names.sort();
        let mut hashes = Vec::with_capacity(names.len());
        for name in names {
            hashes.push(match self.hashes.get(name) {
                Some(&hash) => hash,
                None => (self.file.hash(name))
                    .with_context(|| format!("cannot read the LoRA base {}", self.path))?,
            });
        }
        Ok(fingerprint_of(hashes))
    }
}

impl TensorSource for LoraBase {
    fn listing(&self) -> Result<Vec<(String, Vec<usize>)>> {
        Ok((self.names.iter())
            .map(|(listed, _, shape)| (listed.clone(), shape.clone()))
            .collect())
    }

    /// Hashed as it is read: the values, once in `dst`, are not read again for the fingerprint.
    fn read_into(&mut self, name: &str, dst: &mut [f32]) -> Result<()> {
        let (_, in_file, shape) = (self.names.iter())
            .find(|(listed, ..)| listed == name)
            .with_context(|| format!("the LoRA base {} holds no tensor {name}", self.path))?;
        self.file.read_into(in_file, dst)?;
        let hash = TensorHash::new(in_file, shape).values(dst).finish();
        self.hashes.insert(in_file.clone(), hash);
        Ok(())
    }
}

/// A LoRA checkpoint's trained tensors (its factors, and the embeddings with
/// `--lora-embeddings`), completed from its base: each low-rank layer's W0 is the base's
/// `{prefix}.weight`, every other tensor the base's unless the checkpoint holds it. The base must
/// be the very one the run was trained on: `finish` holds its fingerprint against the recorded
/// one.
pub struct CompletedLora {
    trained: TensorFile,
    /// The trained tensors' canonical names.
    held: Vec<String>,
    base: LoraBase,
    recorded: String,
}

impl CompletedLora {
    pub fn new(trained: TensorFile, base: &str, recorded: String) -> Result<CompletedLora> {
        let held: Vec<String> = (trained.shapes())
            .map(|(name, _)| canonical(name).to_string())
            .collect();
        let factored: Vec<&str> = (held.iter())
            .filter_map(|name| name.strip_suffix(".lowrank_ut"))
            .collect();
        let base = LoraBase::open(base, &factored)?;
        Ok(CompletedLora {
            trained,
            held,
            base,
            recorded,
        })
    }
}

impl TensorSource for CompletedLora {
    fn listing(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let mut listing = self.trained.listing()?;
        let base = self.base.listing()?.into_iter();
        listing.extend(base.filter(|(name, _)| !self.held.iter().any(|h| h == canonical(name))));
        Ok(listing)
    }

    fn read_into(&mut self, name: &str, dst: &mut [f32]) -> Result<()> {
        let trained = self.trained.shapes().any(|(n, _)| n == name);
        match trained {
            true => self.trained.read_into(name, dst),
            false => self.base.read_into(name, dst),
        }
    }

    fn finish(&mut self) -> Result<()> {
        let fingerprint = self.base.fingerprint()?;
        let base = &self.base.path;
        ensure!(
            fingerprint == self.recorded,
            "the LoRA base {base} is not the one this run was trained on (its tensors' fingerprint is {fingerprint}, the run recorded {}): a LoRA checkpoint holds its trained tensors alone, so it needs that very base; put it back at that path",
            self.recorded
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tensor_file::{fingerprint, save, HostTensor};

    /// A directory of the test's own.
    fn test_dir(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lowrank-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A base file of the tiny preset's (the shape comes from its metadata) with these tensors.
    fn base_file(dir: &Path, name: &str, tensors: &[HostTensor]) -> String {
        let path = dir.join(name);
        let meta = [("lowrank_model".to_string(), "tiny".to_string())].into();
        save(&path, tensors, meta).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn tensor(name: &str, shape: Vec<usize>, seed: f32) -> HostTensor {
        let len = shape.iter().product::<usize>();
        HostTensor {
            name: name.into(),
            shape,
            data: (0..len).map(|i| (i as f32 * 0.37 + seed).sin()).collect(),
        }
    }

    /// The fingerprint of a base read in part (the rest hashed a chunk at a time, one tensor
    /// longer than a chunk) is the whole file's, as runs recorded it; its W0 is listed under the
    /// low-rank layer's name with the file's values.
    #[test]
    fn a_base_read_in_part_has_the_whole_files_fingerprint() {
        let tensors = vec![
            tensor("transformer.h.0.mlp.c_fc.weight", vec![3, 5], 0.1),
            tensor("transformer.h.0.mlp.c_fc.bias", vec![5], 0.2),
            tensor("transformer.h.0.attn.c_attn.weight", vec![3, 9], 0.3),
            tensor("transformer.wte.weight", vec![(1 << 20) + 3], 0.4),
        ];
        let dir = test_dir("lora-base-part");
        let path = base_file(&dir, "base.safetensors", &tensors);
        let whole = fingerprint(&TensorFile::open(Path::new(&path)).unwrap().read().unwrap());
        let mut base = LoraBase::open(&path, &["h.0.mlp.c_fc"]).unwrap();
        let mut listing = base.listing().unwrap();
        listing.sort();
        let names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "h.0.mlp.c_fc.lowrank_w0",
                "transformer.h.0.attn.c_attn.weight",
                "transformer.h.0.mlp.c_fc.bias",
                "transformer.wte.weight"
            ]
        );
        let mut w0 = vec![f32::NAN; 15];
        base.read_into("h.0.mlp.c_fc.lowrank_w0", &mut w0).unwrap();
        assert_eq!(w0, tensors[0].data);
        assert_eq!(base.fingerprint().unwrap(), whole);
        // Read whole or not at all: the same.
        let mut unread = LoraBase::open(&path, &[]).unwrap();
        assert_eq!(unread.fingerprint().unwrap(), whole);
        // One value's last bit changed: another fingerprint.
        let mut changed = tensors.clone();
        changed[3].data[1 << 20] = f32::from_bits(changed[3].data[1 << 20].to_bits() ^ 1);
        let other = base_file(&dir, "changed.safetensors", &changed);
        let mut other = LoraBase::open(&other, &["h.0.mlp.c_fc"]).unwrap();
        assert_ne!(other.fingerprint().unwrap(), whole);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A LoRA checkpoint's tensors complete from the base (the checkpoint's own before the
    /// base's), and a base whose fingerprint is not the recorded one is refused once read.
    #[test]
    fn a_completed_lora_checkpoint_prefers_its_own_tensors_and_checks_its_base() {
        let base = vec![
            tensor("h.0.mlp.c_fc.weight", vec![3, 5], 0.1),
            tensor("wte.weight", vec![4, 3], 0.2),
            tensor("wpe.weight", vec![2, 3], 0.3),
        ];
        let trained = vec![
            tensor("h.0.mlp.c_fc.lowrank_ut", vec![2, 3], 0.4),
            tensor("h.0.mlp.c_fc.lowrank_vt", vec![2, 5], 0.5),
            tensor("transformer.wte.weight", vec![4, 3], 0.6),
        ];
        let dir = test_dir("lora-completed");
        let base_path = base_file(&dir, "lora-base.safetensors", &base);
        let recorded = fingerprint(
            &TensorFile::open(Path::new(&base_path))
                .unwrap()
                .read()
                .unwrap(),
        );
        let trained_file = || {
            let path = base_file(&dir, "lora-trained.safetensors", &trained);
            TensorFile::open(Path::new(&path)).unwrap()
        };
        let completed = CompletedLora::new(trained_file(), &base_path, recorded.clone());
        let whole = crate::train::tensor_file::read_all(completed.unwrap()).unwrap();
        let got: Vec<(&str, &[f32])> = (whole.iter())
            .map(|t| (t.name.as_str(), &t.data[..]))
            .collect();
        let want: Vec<(&str, &[f32])> = vec![
            ("h.0.mlp.c_fc.lowrank_ut", &trained[0].data),
            ("h.0.mlp.c_fc.lowrank_vt", &trained[1].data),
            ("h.0.mlp.c_fc.lowrank_w0", &base[0].data),
            ("transformer.wte.weight", &trained[2].data),
            ("wpe.weight", &base[2].data),
        ];
        assert_eq!(got, want);
        let wrong = CompletedLora::new(trained_file(), &base_path, "0123456789abcdef".into());
        let e = crate::train::tensor_file::read_all(wrong.unwrap()).unwrap_err();
        assert!(
            format!("{e:#}").contains("not the one this run was trained on"),
            "{e:#}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
