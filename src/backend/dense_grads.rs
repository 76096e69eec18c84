//! The parameter gradients of a dense linear layer y = x·W + b: two windows of one f32 buffer (the
//! training step's gradient buffer), so a backend can form both in one pass over dy.

use super::{Buffer, DType, Gemm, Mut, Ref};
use anyhow::{ensure, Result};

/// dW (n_in × n_out, row-major) at element `dw` and db (n_out) at `db` of `buf`, accumulated
/// into; nothing else in the buffer is touched.
pub struct DenseGrads<'a, B> {
    pub buf: &'a mut B,
    pub dw: usize,
    pub db: usize,
}

impl<B: Buffer> DenseGrads<'_, B> {
    /// Checks x (rows × n_in), dy (rows × n_out) and the two windows, returning the rows.
    pub fn check(&self, x: &Ref<B>, dy: &Ref<B>, n_in: usize, n_out: usize) -> Result<usize> {
        ensure!(
            n_in >= 1 && n_out >= 1 && x.len.is_multiple_of(n_in) && x.len >= n_in,
            "linear parameter gradients: x has {} elements, not rows of {n_in}",
            x.len
        );
        let rows = x.len / n_in;
        ensure!(
            dy.len == rows * n_out,
            "linear parameter gradients: dy has {} elements, x's {rows} rows of {n_out} need {}",
            dy.len,
            rows * n_out
        );
        ensure!(
            x.dtype() == dy.dtype(),
            "linear parameter gradients: x is {:?} but dy {:?}",
            x.dtype(),
            dy.dtype()
        );
        ensure!(
            self.buf.dtype() == DType::F32,
            "linear parameter gradients accumulate in f32, not {:?}",
            self.buf.dtype()
        );
        let (dw_len, len) = (n_in * n_out, self.buf.len());
        ensure!(
            self.dw + dw_len <= len && self.db + n_out <= len,
            "linear parameter gradients: dW ({}+{dw_len}) or db ({}+{n_out}) lies past the buffer's {len} elements",
            self.dw,
            self.db
        );
        ensure!(
            self.dw + dw_len <= self.db || self.db + n_out <= self.dw,
            "linear parameter gradients: dW ({}+{dw_len}) overlaps db ({}+{n_out})",
            self.dw,
            self.db
        );
        Ok(rows)
    }

    pub fn dw(&mut self, n_in: usize, n_out: usize) -> Mut<'_, B> {
        self.buf.at_mut(self.dw, n_in * n_out)
    }

    pub fn db(&mut self, n_out: usize) -> Mut<'_, B> {
        self.buf.at_mut(self.db, n_out)
    }
}

/// dW += xᵀ·dy over `rows` rows: the weight gradient's GEMM.
pub fn weight_grad_gemm(rows: usize, n_in: usize, n_out: usize) -> Gemm {
    Gemm::new(n_in, n_out, rows).trans_a().beta(1.0)
}
