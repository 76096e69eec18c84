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

/// Tensors a model is loaded from: their names and shapes known first (to check them all before
/// anything is written), then each one's values read into memory the loader chooses, once.
pub trait TensorSource {
    /// Each tensor's name (as its source spells it) and shape; an error where a tensor's values
    /// do not fill its shape.
    fn listing(&self) -> Result<Vec<(String, Vec<usize>)>>;
    /// Tensor `name`'s values into `dst` (of its length). Each tensor is read once: a source that
    /// holds them may free it then.
    fn read_into(&mut self, name: &str, dst: &mut [f32]) -> Result<()>;
    /// Tensor `name` will not be read: a source that holds it may free it now.
    fn skip(&mut self, _name: &str) {}
    /// Every tensor is read or skipped: a source that vouches for what it gave (a LoRA base's
    /// fingerprint) says here whether it was what it should be.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

macro_rules! forward_tensor_source {
    ($($source:ty),*) => {$(
        impl<T: TensorSource + ?Sized> TensorSource for $source {
            fn listing(&self) -> Result<Vec<(String, Vec<usize>)>> {
                (**self).listing()
            }
            fn read_into(&mut self, name: &str, dst: &mut [f32]) -> Result<()> {
                (**self).read_into(name, dst)
            }
            fn skip(&mut self, name: &str) {
                (**self).skip(name)
            }
            fn finish(&mut self) -> Result<()> {
                (**self).finish()
            }
        }
    )*};
}
forward_tensor_source!(Box<T>, &mut T);

/// Every tensor of `src` read into memory (in its order, then sorted by name), and `finish`ed.
pub fn read_all(mut src: impl TensorSource) -> Result<Vec<HostTensor>> {
    let shapes = src.listing()?;
    let mut tensors = Vec::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let mut data = vec![0.0; shape.iter().product()];
        src.read_into(&name, &mut data)?;
        tensors.push(HostTensor { name, shape, data });
    }
    src.finish()?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// Tensors read already, each freed once read or skipped.
impl TensorSource for Vec<HostTensor> {
    fn listing(&self) -> Result<Vec<(String, Vec<usize>)>> {
        (self.iter())
            .map(|t| {
                ensure_len(&t.name, &t.shape, t.data.len())?;
                Ok((t.name.clone(), t.shape.clone()))
            })
            .collect()
    }

    fn read_into(&mut self, name: &str, dst: &mut [f32]) -> Result<()> {
        let t = (self.iter_mut())
            .find(|t| t.name == name)
            .with_context(|| format!("no tensor {name}"))?;
        ensure!(
            t.data.len() == dst.len(),
            "tensor {name} has {} values, not {} (read twice?)",
            t.data.len(),
            dst.len()
        );
        dst.copy_from_slice(&std::mem::take(&mut t.data));
        Ok(())
    }

    fn skip(&mut self, name: &str) {
        self.retain(|t| t.name != name);
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

impl Span {
    /// How many values its tensor has.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

impl FlatTensors {
    pub fn views(&self) -> impl Iterator<Item = TensorRef<'_>> {
        self.spans.iter().map(|s| TensorRef {
            name: &s.name,
            shape: &s.shape,
            data: &self.values[s.offset..s.offset + s.elements()],
        })
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

#[cfg(test)]
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
/// bytes of `safetensors::serialize` (the header, tensors in name order; `header` sorts the
/// metadata's keys), without forming them in memory first (a GPT-2 medium checkpoint's moments
/// are 2.8 GB). A formed tensor that fails, or does not fill its shape, fails the write: the file
/// is then not made (an earlier one at `path` stays).
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
    if let Some(w) = tensors.windows(2).find(|w| w[0].name == w[1].name) {
        bail!(
            "cannot write {}: two tensors are named {}",
            path.display(),
            w[0].name
        );
    }
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
                        .with_context(|| format!("cannot form tensor {}", t.name))
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
    /// mapped for its header alone; `read_into` reads a tensor's values where its caller says (a
    /// model's weights), so the file's pages are not counted again beside them as it loads.
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

    /// Every tensor's values as f32, the tensors sorted by name (read in the file's order, so
    /// that reads run forward).
    pub fn read(self) -> Result<Vec<HostTensor>> {
        read_all(self)
    }
}

impl TensorSource for TensorFile {
    fn listing(&self) -> Result<Vec<(String, Vec<usize>)>> {
        Ok((self.shapes())
            .map(|(name, shape)| (name.to_string(), shape.to_vec()))
            .collect())
    }

    /// Straight from the file into `dst` (a model's weights, on a host backend), bf16 and f16
    /// widened to f32.
    fn read_into(&mut self, name: &str, dst: &mut [f32]) -> Result<()> {
        let len = self.info(name)?.shape.iter().product::<usize>();
        ensure!(
            dst.len() == len,
            "tensor {name} of {} has {len} values, not {}",
            self.path.display(),
            dst.len()
        );
        self.read_values(name, 0, dst)
    }
}

impl TensorFile {
    fn info(&self, name: &str) -> Result<&TensorInfo> {
        (self.tensors.iter())
            .find(|(n, _)| n == name)
            .map(|(_, info)| info)
            .with_context(|| format!("{} holds no tensor {name}", self.path.display()))
    }

    /// Values `start..start + dst.len()` of tensor `name` into `dst`, bf16 and f16 widened to f32.
    fn read_values(&mut self, name: &str, start: usize, dst: &mut [f32]) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let info = self.info(name)?;
        let (dtype, offset) = (info.dtype, info.data_offsets.0);
        let at = self.data_start + (offset + start * dtype.bitsize() / 8) as u64;
        let (path, file) = (&self.path, &mut self.file);
        file.seek(SeekFrom::Start(at))
            .and_then(|_| match dtype {
                Dtype::F32 => file.read_exact(bytemuck::cast_slice_mut(dst)),
                Dtype::BF16 => read_widened::<half::bf16>(file, dst),
                Dtype::F16 => read_widened::<half::f16>(file, dst),
                _ => unreachable!("dtypes checked by open"),
            })
            .with_context(|| format!("cannot read tensor {name} of {}", path.display()))
    }

    /// Tensor `name`'s hash for a fingerprint (`TensorHash`), its values read a chunk at a time:
    /// a tensor is hashed without a copy of it in memory.
    pub fn hash(&mut self, name: &str) -> Result<u64> {
        let shape = self.info(name)?.shape.clone();
        let len = shape.iter().product::<usize>();
        let mut hash = TensorHash::new(name, &shape);
        let mut chunk = vec![0.0; CHUNK.min(len)];
        for start in (0..len).step_by(CHUNK) {
            let values = &mut chunk[..CHUNK.min(len - start)];
            self.read_values(name, start, values)?;
            hash = hash.values(values);
        }
        Ok(hash.finish())
    }
}

/// Values read at a time where a tensor is not read into its destination whole.
const CHUNK: usize = 1 << 20;

/// `dst.len()` half-precision values from `file`'s position into `dst` as f32, a chunk at a time:
/// no copy of the whole tensor beside the weights it is read into.
fn read_widened<T: bytemuck::Pod + Into<f32>>(
    file: &mut File,
    dst: &mut [f32],
) -> std::io::Result<()> {
    use std::io::Read;
    let mut chunk = vec![T::zeroed(); CHUNK.min(dst.len())];
    for out in dst.chunks_mut(CHUNK) {
        let values = &mut chunk[..out.len()];
        file.read_exact(bytemuck::cast_slice_mut(values))?;
        (out.iter_mut().zip(values.iter())).for_each(|(d, &v)| *d = v.into());
    }
    Ok(())
}

/// A 64-bit fingerprint of tensors' names, shapes and values (FNV-1a over each tensor, then over
/// the tensors' hashes in order), as 16 hex digits: tells whether a file still holds the tensors a
/// run was built on. Not cryptographic: it guards against mistakes, not adversaries. A source
/// read tensor by tensor is fingerprinted with `TensorHash` and `fingerprint_of`.
#[cfg(test)]
pub fn fingerprint(tensors: &[HostTensor]) -> String {
    use rayon::prelude::*;
    let hashes: Vec<u64> = (tensors.par_iter())
        .map(|t| TensorHash::new(&t.name, &t.shape).values(&t.data).finish())
        .collect();
    fingerprint_of(hashes)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv_mix(h: u64, word: u64) -> u64 {
    (h ^ word).wrapping_mul(0x0100_0000_01b3)
}

/// One tensor's hash for a fingerprint, its values given a piece at a time.
pub struct TensorHash(u64);

impl TensorHash {
    pub fn new(name: &str, shape: &[usize]) -> TensorHash {
        let h = name.bytes().fold(FNV_OFFSET, |h, b| fnv_mix(h, b.into()));
        TensorHash(
            shape
                .iter()
                .fold(fnv_mix(h, 0xff), |h, &d| fnv_mix(h, d as u64)),
        )
    }

    /// The next of its values.
    pub fn values(mut self, values: &[f32]) -> TensorHash {
        self.0 = values
            .iter()
            .fold(self.0, |h, x| fnv_mix(h, x.to_bits().into()));
        self
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The fingerprint of tensors whose hashes these are, in order.
pub fn fingerprint_of(hashes: impl IntoIterator<Item = u64>) -> String {
    format!("{:016x}", hashes.into_iter().fold(FNV_OFFSET, fnv_mix))
}

#[cfg(test)]
#[path = "tensor_file_tests.rs"]
mod tests;
