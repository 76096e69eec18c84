//! f32 values of some of the parameters, packed: memory for the tensors that need it alone. The
//! gradients are those of the tensors that have one: a dense model's are the parameters' own
//! layout, cut where its frozen tensors begin (InRank's W0); LoRA's are its factors (and the
//! embeddings with --lora-embeddings): GPT-2 medium's at r = 8 take 7.9 MB, where a gradient for
//! every parameter took 1.4 GB of the GPU. Beside a compute copy, the f32 master weights are
//! those of the same tensors (`model::Weights`): the others are never updated, and the copy holds
//! them.

use crate::backend::{Backend, Buffer, DType, Mut, Ref};
use anyhow::Result;

/// f32 values of the parameter windows given to `new`, addressed by the parameters' offsets.
pub struct PackedParams<B: Backend> {
    buf: B::Buf,
    /// Each window: (offset in the parameters, length, offset in `buf`), in order.
    runs: Vec<(usize, usize, usize)>,
}

impl<B: Backend> PackedParams<B> {
    /// Zeroed values for the parameter windows `spans` ((offset, length), in order, disjoint),
    /// each after the one before it in one buffer.
    pub fn new(b: &B, spans: &[(usize, usize)]) -> Result<Self> {
        let mut runs = Vec::with_capacity(spans.len());
        let mut end = 0;
        for &(offset, len) in spans {
            runs.push((offset, len, end));
            end += len;
        }
        let buf = b.alloc(DType::F32, end)?;
        Ok(PackedParams { buf, runs })
    }

    /// Where the values of parameters `offset..offset + len` lie in `buf()`. Panics where they
    /// have none (outside the windows given to `new`): nothing may be written or read there.
    pub fn offset(&self, offset: usize, len: usize) -> usize {
        match self.run(offset, len) {
            Some(&(at, _, packed)) => packed + offset - at,
            None => panic!(
                "parameters {offset}..{} have no memory here (not among the packed windows)",
                offset + len
            ),
        }
    }

    /// Whether parameters `offset..offset + len` have memory here (within one window).
    pub fn covers(&self, offset: usize, len: usize) -> bool {
        self.run(offset, len).is_some()
    }

    fn run(&self, offset: usize, len: usize) -> Option<&(usize, usize, usize)> {
        (self.runs.iter()).find(|&&(at, run_len, _)| at <= offset && offset + len <= at + run_len)
    }

    /// The values of parameters `offset..offset + len`.
    pub fn at(&self, offset: usize, len: usize) -> Ref<'_, B::Buf> {
        self.buf.at(self.offset(offset, len), len)
    }

    pub fn at_mut(&mut self, offset: usize, len: usize) -> Mut<'_, B::Buf> {
        let at = self.offset(offset, len);
        self.buf.at_mut(at, len)
    }

    /// The windows, as (offset in the parameters, length), in order.
    pub fn windows(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.runs.iter().map(|&(offset, len, _)| (offset, len))
    }

    /// Whether the windows are the parameters `0..len` alone: then `buf()` is laid out as the
    /// parameters are, and an offset in them is one in it.
    pub fn is_whole(&self, len: usize) -> bool {
        matches!(self.runs[..], [(0, l, 0)] if l == len)
    }

    /// Every value, packed.
    pub fn buf(&self) -> &B::Buf {
        &self.buf
    }

    pub fn buf_mut(&mut self) -> &mut B::Buf {
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn windows_pack_in_order_and_a_parameter_without_one_is_refused() {
        let mut g = PackedParams::new(&Cpu, &[(3, 4), (10, 2), (20, 5)]).unwrap();
        assert_eq!(g.buf().len(), 11);
        assert_eq!(
            [
                g.offset(3, 4),
                g.offset(5, 2),
                g.offset(10, 2),
                g.offset(21, 4)
            ],
            [0, 2, 4, 7]
        );
        Cpu.upload(&[1.0], g.at_mut(11, 1)).unwrap();
        assert_eq!(Cpu.download(g.at(10, 2)).unwrap(), [0.0, 1.0]);
        assert_eq!(Cpu.download(g.buf().at(4, 2)).unwrap(), [0.0, 1.0]);
        for (offset, len) in [(0, 1), (6, 5), (12, 1), (24, 2)] {
            assert!(!g.covers(offset, len));
            let caught = std::panic::catch_unwind(|| g.offset(offset, len));
            assert!(caught.is_err(), "{offset}+{len}");
        }
        assert!(g.covers(3, 4) && g.covers(20, 5));
    }
}
