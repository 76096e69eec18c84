//! Named f32 tensors to and from safetensors files (the checkpoint format, readable by Hugging Face).

use super::atomic;
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tensor on the host: its name, shape (row-major) and values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn view(&self) -> TensorRef<'_> {
        TensorRef {
            name: &self.name,
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// A tensor to write, borrowed: its name, shape (row-major) and values.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// Tensors laid end to end in one buffer, as a model's parameters come off the device: a
/// checkpoint is written from it without a copy per tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlatTensors {
    pub values: Vec<f32>,
    pub spans: Vec<Span>,
}

/// Where one tensor of a `FlatTensors` lies.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl FlatTensors {
    pub fn views(&self) -> impl Iterator<Item = TensorRef<'_>> {
        self.spans.iter().map(|s| {
            let len = s.shape.iter().product::<usize>();
            TensorRef {
                name: &s.name,
                shape: &s.shape,
                data: &self.values[s.offset..s.offset + len],
            }
        })
    }

    /// Keeps the tensors `keep` picks (by index), moving their values together in place.
    pub fn retain(mut self, keep: impl Fn(usize) -> bool) -> FlatTensors {
        let mut spans: Vec<Span> = (std::mem::take(&mut self.spans).into_iter().enumerate())
            .filter(|(i, _)| keep(*i))
            .map(|(_, s)| s)
            .collect();
        // In offset order each tensor moves towards the front, over values already moved.
        spans.sort_by_key(|s| s.offset);
        let mut end = 0;
        for s in &mut spans {
            let len = s.shape.iter().product::<usize>();
            debug_assert!(
                s.offset >= end,
                "tensor {} overlaps the one before it",
                s.name
            );
            self.values.copy_within(s.offset..s.offset + len, end);
            (s.offset, end) = (end, end + len);
        }
        self.values.truncate(end);
        FlatTensors {
            values: self.values,
            spans,
        }
    }

    pub fn into_host_tensors(self) -> Vec<HostTensor> {
        self.views()
            .map(|t| HostTensor {
                name: t.name.to_string(),
                shape: t.shape.to_vec(),
                data: t.data.to_vec(),
            })
            .collect()
    }
}

/// Writes `tensors` (f32) and string `metadata` to `path` atomically.
pub fn save(path: &Path, tensors: &[HostTensor], metadata: HashMap<String, String>) -> Result<()> {
    save_views(path, tensors.iter().map(HostTensor::view), metadata)
}

/// A tensor to write (f32): its name, shape (row-major) and values.
pub struct Outgoing<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values<'a>,
}

/// An outgoing tensor's values: borrowed, or formed when the writer reaches the tensor and freed
/// once written, so that a file of formed tensors (a merged export's layers) never holds them
/// all at once.
pub enum Values<'a> {
    Borrowed(&'a [f32]),
    Formed(Box<dyn FnOnce() -> Result<Vec<f32>> + 'a>),
}

impl<'a> From<TensorRef<'a>> for Outgoing<'a> {
    fn from(t: TensorRef<'a>) -> Self {
        Outgoing {
            name: t.name.to_string(),
            shape: t.shape.to_vec(),
            values: Values::Borrowed(t.data),
        }
    }
}

impl Outgoing<'_> {
    /// The tensor with its values on the host (formed if they are not yet).
    pub fn into_host(self) -> Result<HostTensor> {
        let data = match self.values {
            Values::Borrowed(values) => values.to_vec(),
            Values::Formed(form) => form()?,
        };
        ensure_len(&self.name, &self.shape, data.len())?;
        Ok(HostTensor {
            name: self.name,
            shape: self.shape,
            data,
        })
    }
}

/// The JSON header `safetensors::serialize` writes for `tensors` (in order, laid end to end),
/// but for the metadata's keys, sorted rather than in their HashMap's random order: the same
/// tensors and metadata make the same bytes every time.
fn header(tensors: &[Outgoing], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let metadata: std::collections::BTreeMap<String, String> = metadata.into_iter().collect();
    let mut json = format!("{{\"__metadata__\":{}", serde_json::to_string(&metadata)?);
    let mut offset = 0;
    for t in tensors {
        let start = offset;
        offset += 4 * t.shape.iter().product::<usize>();
        let info = TensorInfo {
            dtype: Dtype::F32,
            shape: t.shape.clone(),
            data_offsets: (start, offset),
        };
        json += &format!(
            ",{}:{}",
            serde_json::to_string(&t.name)?,
            serde_json::to_string(&info)?
        );
    }
    json.push('}');
    Ok(json.into_bytes())
}

fn ensure_len(name: &str, shape: &[usize], len: usize) -> Result<()> {
    ensure!(
        shape.iter().product::<usize>() == len,
        "tensor {name} has shape {shape:?} but {len} values"
    );
    Ok(())
}

/// Writes `tensors` and `metadata` to `path` atomically, streaming the values to the file: the
/// bytes of `safetensors::serialize` (the header, tensors in name order), without forming them in
/// memory first (a GPT-2 medium checkpoint's moments are 2.8 GB).
pub fn save_views<'a, T: Into<Outgoing<'a>>>(
    path: &Path,
    tensors: impl IntoIterator<Item = T>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut tensors: Vec<Outgoing<'a>> = tensors.into_iter().map(Into::into).collect();
    for t in &tensors {
        if let Values::Borrowed(values) = t.values {
            ensure_len(&t.name, &t.shape, values.len())?;
        }
    }
    // safetensors' order: by dtype's alignment, then by name; ours are all f32.
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let header =
        header(&tensors, metadata).with_context(|| format!("cannot encode {}", path.display()))?;
    // The header is padded with spaces to a multiple of 8 bytes, as safetensors aligns it.
    let padded = header.len().next_multiple_of(8);
    atomic::write_with(path, |w| {
        w.write_all(&(padded as u64).to_le_bytes())?;
        w.write_all(&header)?;
        w.write_all(&vec![b' '; padded - header.len()])?;
        for t in tensors {
            match t.values {
                Values::Borrowed(values) => w.write_all(bytemuck::cast_slice(values))?,
                Values::Formed(form) => {
                    // Forming can fail as a write does: the file is then not made.
                    let values = form()
                        .and_then(|v| ensure_len(&t.name, &t.shape, v.len()).map(|_| v))
                        .map_err(std::io::Error::other)?;
                    w.write_all(bytemuck::cast_slice(&values))?;
                }
            }
        }
        Ok(())
    })
}

/// Reads every tensor of a safetensors file as f32 (f32, bf16 and f16 files are accepted), plus its
/// metadata: `TensorFile::open`, then `read`.
pub fn load(path: &Path) -> Result<(Vec<HostTensor>, HashMap<String, String>)> {
    let file = TensorFile::open(path)?;
    let metadata = file.metadata.clone();
    Ok((file.read()?, metadata))
}

/// A safetensors file whose header is read and checked and whose values are not read yet: what
/// it holds is known (a model's shape, so the memory it will take) before its values take any.
pub struct TensorFile {
    path: PathBuf,
    file: File,
    /// Where the values begin: after the header's length and the header.
    data_start: u64,
    /// The tensors in the file's order, so that reads run forward.
    tensors: Vec<(String, TensorInfo)>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads `path`'s header: every tensor's byte range must lie in the file, without gaps or
    /// overlaps (safetensors checks that), and every dtype must be f32, bf16 or f16. The file is
    /// mapped for its header alone; `read` reads the values into their vectors, so the file's
    /// pages are not counted again beside them while it loads (GPT-2 XL's are 6.2 GB).
    pub fn open(path: &Path) -> Result<TensorFile> {
        let file = File::open(path)
            .with_context(|| format!("cannot open checkpoint {}", path.display()))?;
        // SAFETY: the file is only read; a concurrent writer would replace it by rename, not
        // modify it.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let (header_len, header) = SafeTensors::read_metadata(&map)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let infos = header.tensors();
        if let Some((name, info)) =
            (infos.iter()).find(|(_, i)| !matches!(i.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16))
        {
            bail!(
                "{}: tensor {name} has dtype {:?}; only f32, bf16 and f16 are supported",
                path.display(),
                info.dtype
            );
        }
        let tensors = (header.offset_keys().into_iter())
            .map(|name| {
                let info = infos[&name].clone();
                (name, info)
            })
            .collect();
        Ok(TensorFile {
            path: path.to_path_buf(),
            file,
            data_start: 8 + header_len as u64,
            tensors,
            metadata: header.metadata().clone().unwrap_or_default(),
        })
    }

    /// Each tensor's name and shape, in the file's order.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        (self.tensors.iter()).map(|(name, info)| (name.as_str(), info.shape.as_slice()))
    }

    /// Every tensor's values as f32, the tensors sorted by name.
    pub fn read(mut self) -> Result<Vec<HostTensor>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for (name, info) in std::mem::take(&mut self.tensors) {
            let (start, end) = info.data_offsets;
            let (file, path) = (&mut self.file, &self.path);
            let at = self.data_start + start as u64;
            let mut read = |bytes: &mut [u8]| -> Result<()> {
                file.seek(SeekFrom::Start(at))
                    .and_then(|_| file.read_exact(bytes))
                    .with_context(|| format!("cannot read tensor {name} of {}", path.display()))
            };
            let data: Vec<f32> = match info.dtype {
                Dtype::F32 => {
                    let mut values = vec![0.0f32; (end - start) / 4];
                    read(bytemuck::cast_slice_mut(&mut values))?;
                    values
                }
                Dtype::BF16 => {
                    let mut values = vec![half::bf16::ZERO; (end - start) / 2];
                    read(bytemuck::cast_slice_mut(&mut values))?;
                    values.into_iter().map(f32::from).collect()
                }
                Dtype::F16 => {
                    let mut values = vec![half::f16::ZERO; (end - start) / 2];
                    read(bytemuck::cast_slice_mut(&mut values))?;
                    values.into_iter().map(f32::from).collect()
                }
                _ => unreachable!("dtypes checked by open"),
            };
            tensors.push(HostTensor {
                name,
                shape: info.shape,
                data,
            });
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tensors)
    }
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

    /// A tensor in any dtype, as bytes, for safetensors' own encoder.
    struct RawView(Dtype, Vec<usize>, Vec<u8>);

    impl safetensors::View for &RawView {
        fn dtype(&self) -> Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }

    /// A file safetensors' own encoder wrote with f32, bf16 and f16 tensors side by side (each
    /// read at its own offset) loads as their f32 values; one cut short is refused.
    #[test]
    fn mixed_dtypes_load_as_f32_and_a_truncated_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("lowrank-st-mixed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.safetensors");
        let values = [1.5f32, -0.25, 3.0, 1024.0, -7.5];
        let f32s: Vec<u8> = bytemuck::cast_slice(&values[..3]).to_vec();
        let bf16s: Vec<half::bf16> = values.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let f16s: Vec<half::f16> = values[1..]
            .iter()
            .map(|&x| half::f16::from_f32(x))
            .collect();
        let views = [
            ("a", RawView(Dtype::F32, vec![3], f32s)),
            (
                "b",
                RawView(Dtype::BF16, vec![5], bytemuck::cast_slice(&bf16s).to_vec()),
            ),
            (
                "c",
                RawView(Dtype::F16, vec![2, 2], bytemuck::cast_slice(&f16s).to_vec()),
            ),
        ];
        let bytes = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), None).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        let (back, _) = load(&p).unwrap();
        let got: Vec<(&str, &[usize], &[f32])> = (back.iter())
            .map(|t| (t.name.as_str(), &t.shape[..], &t.data[..]))
            .collect();
        let want: [(&str, &[usize], &[f32]); 3] = [
            ("a", &[3], &values[..3]),
            ("b", &[5], &values[..]),
            ("c", &[2, 2], &values[1..]),
        ];
        assert_eq!(got, want);
        std::fs::write(&p, &bytes[..bytes.len() - 2]).unwrap();
        let e = load(&p).unwrap_err();
        assert!(format!("{e:#}").contains("not a safetensors file"), "{e:#}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The reference: safetensors' own encoder, through its `View` trait.
    struct F32View<'a>(&'a HostTensor);

    impl safetensors::View for F32View<'_> {
        fn dtype(&self) -> Dtype {
            Dtype::F32
        }
        fn shape(&self) -> &[usize] {
            &self.0.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(&self.0.data))
        }
        fn data_len(&self) -> usize {
            self.0.data.len() * 4
        }
    }

    #[test]
    fn streamed_file_is_byte_for_byte_what_safetensors_serializes() {
        let dir = std::env::temp_dir().join(format!("lowrank-st-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.safetensors");
        let mut rng = crate::util::rng::Rng::new(5);
        // Names out of order, an empty tensor, a scalar-like one, and header lengths that need
        // 0..7 bytes of padding as the metadata grows.
        let shapes: [(&str, Vec<usize>); 5] = [
            ("h.1.mlp.c_fc.weight", vec![3, 7]),
            ("b", vec![1]),
            ("a.empty", vec![0, 4]),
            ("h.0.ln_1.bias", vec![5]),
            ("wte", vec![2, 3, 4]),
        ];
        let tensors: Vec<HostTensor> = shapes
            .iter()
            .map(|(name, shape)| HostTensor {
                name: name.to_string(),
                shape: shape.clone(),
                data: rng.normal_vec(shape.iter().product(), 1.0),
            })
            .collect();
        // One key: safetensors writes several in its HashMap's order (ours are sorted).
        for extra in 0..9 {
            let meta = HashMap::from([("note".to_string(), "x".repeat(extra))]);
            save(&p, &tensors, meta.clone()).unwrap();
            let views = tensors.iter().map(|t| (t.name.as_str(), F32View(t)));
            let want = safetensors::serialize(views, Some(meta)).unwrap();
            assert_eq!(
                std::fs::read(&p).unwrap(),
                want,
                "metadata of {extra} bytes"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The same tensors and metadata saved twice make the same bytes, the metadata's keys sorted
    /// (each save's HashMap iterates its own random order: with eight keys, the two orders
    /// would differ almost always), and read back whole.
    #[test]
    fn the_same_tensors_make_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("lowrank-st-same-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tensors = [HostTensor {
            name: "w".into(),
            shape: vec![2],
            data: vec![1.0, -2.0],
        }];
        let keys = ["format", "lowrank_model", "a", "z", "m", "b", "y", "c"];
        let meta = || -> HashMap<String, String> {
            keys.iter().map(|k| (k.to_string(), k.repeat(2))).collect()
        };
        let (p, q) = (dir.join("p.safetensors"), dir.join("q.safetensors"));
        save(&p, &tensors, meta()).unwrap();
        save(&q, &tensors, meta()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes, std::fs::read(&q).unwrap());
        let text = String::from_utf8_lossy(&bytes);
        let at = |k: &str| text.find(&format!("\"{k}\":\"{}\"", k.repeat(2))).unwrap();
        let mut sorted = keys;
        sorted.sort();
        assert!(sorted.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
        let (read, read_meta) = load(&p).unwrap();
        assert_eq!((read.as_slice(), read_meta), (&tensors[..], meta()));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn flat_tensors_give_their_spans_and_keep_the_chosen_ones_packed() {
        let flat = FlatTensors {
            values: (0..10).map(|x| x as f32).collect(),
            spans: vec![
                Span {
                    name: "a".into(),
                    shape: vec![2, 2],
                    offset: 0,
                },
                Span {
                    name: "b".into(),
                    shape: vec![3],
                    offset: 4,
                },
                // A gap before it (padding rows the checkpoint leaves out).
                Span {
                    name: "c".into(),
                    shape: vec![2],
                    offset: 8,
                },
            ],
        };
        let data: Vec<Vec<f32>> = flat.views().map(|t| t.data.to_vec()).collect();
        assert_eq!(data, [vec![0., 1., 2., 3.], vec![4., 5., 6.], vec![8., 9.]]);
        let kept = flat.clone().retain(|i| i != 1);
        assert_eq!(kept.values, [0., 1., 2., 3., 8., 9.]);
        let host = kept.into_host_tensors();
        assert_eq!(
            host.iter()
                .map(|t| (t.name.as_str(), t.shape.clone()))
                .collect::<Vec<_>>(),
            [("a", vec![2, 2]), ("c", vec![2])]
        );
        assert_eq!(host[1].data, [8., 9.]);
        // Spans out of offset order: index 0 is now c, 2 is a.
        let mut reversed = flat;
        reversed.spans.reverse();
        let kept = reversed.retain(|i| i != 2);
        assert_eq!(kept.values, [4., 5., 6., 8., 9.]);
        let names: Vec<&str> = kept.views().map(|t| t.name).collect();
        assert_eq!(names, ["b", "c"]);
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
