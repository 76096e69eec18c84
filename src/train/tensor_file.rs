//! Named f32 tensors to and from safetensors files (the checkpoint format, readable by Hugging Face).

use super::atomic;
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, View};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// A tensor on the host: its name, shape (row-major) and values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(bytemuck::cast_slice(self.data))
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes `tensors` (f32) and string `metadata` to `path` atomically.
pub fn save(path: &Path, tensors: &[HostTensor], metadata: HashMap<String, String>) -> Result<()> {
    for t in tensors {
        ensure!(
            t.shape.iter().product::<usize>() == t.data.len(),
            "tensor {} has shape {:?} but {} values",
            t.name,
            t.shape,
            t.data.len()
        );
    }
    let views = tensors.iter().map(|t| {
        (
            t.name.as_str(),
            F32View {
                shape: &t.shape,
                data: &t.data,
            },
        )
    });
    let bytes = safetensors::serialize(views, Some(metadata))
        .with_context(|| format!("cannot encode {}", path.display()))?;
    atomic::write(path, &bytes)
}

/// Reads every tensor of a safetensors file as f32 (f32, bf16 and f16 files are accepted), plus its
/// metadata.
pub fn load(path: &Path) -> Result<(Vec<HostTensor>, HashMap<String, String>)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open checkpoint {}", path.display()))?;
    // SAFETY: the file is only read; a concurrent writer would replace it by rename, not modify it.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&map)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&map)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec(bytes),
            Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(bytes)
                .into_iter()
                .map(f32::from)
                .collect(),
            Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes)
                .into_iter()
                .map(f32::from)
                .collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other:?}; only f32, bf16 and f16 are supported",
                path.display()
            ),
        };
        tensors.push(HostTensor {
            name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tensors, metadata))
}

/// A 64-bit fingerprint of tensors' names, shapes and values (FNV-1a over each tensor, then over
/// the tensors' hashes in order), as 16 hex digits: tells whether a file still holds the tensors a
/// run was built on. Not cryptographic: it guards against mistakes, not adversaries.
pub fn fingerprint(tensors: &[HostTensor]) -> String {
    use rayon::prelude::*;
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mix = |h: u64, word: u64| (h ^ word).wrapping_mul(PRIME);
    let hashes: Vec<u64> = tensors
        .par_iter()
        .map(|t| {
            let mut h = t.name.bytes().fold(OFFSET, |h, b| mix(h, b.into()));
            h = t.shape.iter().fold(mix(h, 0xff), |h, &d| mix(h, d as u64));
            t.data.iter().fold(h, |h, x| mix(h, x.to_bits().into()))
        })
        .collect();
    format!("{:016x}", hashes.into_iter().fold(OFFSET, mix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_names_shapes_values_and_metadata() {
        let dir = std::env::temp_dir().join(format!("lowrank-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.safetensors");
        let ts = vec![
            HostTensor {
                name: "a.weight".into(),
                shape: vec![2, 3],
                data: vec![1.0, -2.0, 3.5, 0.0, 1e-8, f32::MAX],
            },
            HostTensor {
                name: "b".into(),
                shape: vec![1],
                data: vec![7.0],
            },
        ];
        let meta = HashMap::from([("step".to_string(), "12".to_string())]);
        save(&p, &ts, meta.clone()).unwrap();
        let (back, m) = load(&p).unwrap();
        assert_eq!(back, ts);
        assert_eq!(m, meta);
        let bad = vec![HostTensor {
            name: "x".into(),
            shape: vec![2],
            data: vec![1.0],
        }];
        assert!(save(&p, &bad, HashMap::new()).is_err());
        std::fs::write(&p, b"not a checkpoint").unwrap();
        let e = load(&p).unwrap_err();
        assert!(format!("{e:#}").contains("not a safetensors file"), "{e:#}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn fingerprint_changes_with_any_name_shape_or_value_bit() {
        let t = |name: &str, shape: Vec<usize>, data: Vec<f32>| HostTensor {
            name: name.into(),
            shape,
            data,
        };
        let base = vec![
            t("a", vec![2, 2], vec![1.0, 2.0, 3.0, 0.0]),
            t("b", vec![1], vec![5.0]),
        ];
        let same = fingerprint(&base.clone());
        assert_eq!(fingerprint(&base), same);
        assert_eq!(same.len(), 16);
        let variants = [
            vec![
                t("a", vec![2, 2], vec![1.0, 2.0, 3.0, -0.0]),
                base[1].clone(),
            ],
            vec![t("a", vec![4], vec![1.0, 2.0, 3.0, 0.0]), base[1].clone()],
            vec![
                t("c", vec![2, 2], vec![1.0, 2.0, 3.0, 0.0]),
                base[1].clone(),
            ],
            vec![base[1].clone(), base[0].clone()],
            vec![base[0].clone()],
        ];
        for v in variants {
            assert_ne!(fingerprint(&v), same, "{v:?}");
        }
    }
}
