//! Buffers and the windows ops take of them.

/// Element type of a buffer. The CPU backend stores BF16 buffers as f32 values rounded to bf16,
/// so a CPU op sees the same numbers a GPU op reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    BF16,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 => 2,
        }
    }
}

/// A window `off`+`len` of a buffer of `buf_len` elements lies inside it.
fn assert_in_range(off: usize, len: usize, buf_len: usize) {
    assert!(
        off + len <= buf_len,
        "window {off}+{len} past buffer of {buf_len}"
    );
}

/// A buffer on some device: a dtype and a length in elements.
pub trait Buffer {
    fn dtype(&self) -> DType;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The whole buffer, read-only.
    fn all(&self) -> Ref<'_, Self>
    where
        Self: Sized,
    {
        self.at(0, self.len())
    }
    /// `len` elements from `off`, read-only. Panics when out of range: a planning bug, not bad input.
    fn at(&self, off: usize, len: usize) -> Ref<'_, Self>
    where
        Self: Sized,
    {
        assert_in_range(off, len, self.len());
        Ref {
            buf: self,
            off,
            len,
        }
    }
    fn all_mut(&mut self) -> Mut<'_, Self>
    where
        Self: Sized,
    {
        let len = self.len();
        self.at_mut(0, len)
    }
    fn at_mut(&mut self, off: usize, len: usize) -> Mut<'_, Self>
    where
        Self: Sized,
    {
        assert_in_range(off, len, self.len());
        Mut {
            buf: self,
            off,
            len,
        }
    }
}

/// A read-only window of a buffer: `len` elements starting at `off`.
pub struct Ref<'a, T> {
    pub buf: &'a T,
    pub off: usize,
    pub len: usize,
}

impl<T> Clone for Ref<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ref<'_, T> {}

/// A writable window of a buffer.
pub struct Mut<'a, T> {
    pub buf: &'a mut T,
    pub off: usize,
    pub len: usize,
}

impl<T: Buffer> Ref<'_, T> {
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
}

impl<T: Buffer> Mut<'_, T> {
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
    /// A shorter-lived read-only view of the same window.
    pub fn as_ref(&self) -> Ref<'_, T> {
        Ref {
            buf: self.buf,
            off: self.off,
            len: self.len,
        }
    }
    /// A shorter-lived writable view of the same window.
    pub fn reborrow(&mut self) -> Mut<'_, T> {
        Mut {
            buf: self.buf,
            off: self.off,
            len: self.len,
        }
    }
}
