//! Shape and operand bundles of the low-rank linear layer y = x·W0 + (x·U)·Vᵀ + b, shared by the
//! CPU reference (backend/cpu/lowrank_linear.rs) and the CUDA kernels (backend/cuda/lowrank_linear.rs).
//!
//! The factors are stored transposed, Ut (R × n_in) and Vt (R × n_out) row-major with U = Utᵀ and
//! V = Vtᵀ, so that a live rank k ≤ capacity R is the contiguous prefix of k rows: growing or
//! truncating the rank changes `rank`, never the layout.

use super::{Buffer, DType, LinearEpilogue, Mut, Ref};
use anyhow::{ensure, Result};

/// Rows of the scratch activations t = x·U and s = dy·V are padded to a multiple of this many
/// elements (zero-filled), so every bf16 row starts 16-byte aligned: the CUDA kernels read them
/// with 16-byte cp.async copies and ldmatrix.
pub const SCRATCH_ROW_ALIGN: usize = 8;

/// One low-rank linear layer applied to `n` rows: x (n × n_in) → y (n × n_out), live rank `rank`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LowRankShape {
    pub n: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub rank: usize,
}

/// The layer's weights for one call: optional frozen base W0 (n_in × n_out, row-major, y = x·W0
/// like HF Conv1D) and the transposed factors Ut (≥ rank × n_in) and Vt (≥ rank × n_out), of which
/// only the first `rank` rows are read.
pub struct LowRankWeights<'a, B> {
    pub w0: Option<Ref<'a, B>>,
    pub ut: Ref<'a, B>,
    pub vt: Ref<'a, B>,
}

impl<B> Clone for LowRankWeights<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for LowRankWeights<'_, B> {}

/// Gradients the backward pass accumulates into (f32): three disjoint windows of one buffer
/// (AdamW's gradient buffer in training, so nothing passes through scratch), at these element
/// offsets: dUt (rank × n_in: the live rows), dVt (rank × n_out) and, when the layer has a bias,
/// db (n_out). Nothing else in the buffer is touched.
pub struct LowRankGrads<'a, B> {
    pub buf: &'a mut B,
    pub dut: usize,
    pub dvt: usize,
    pub dbias: Option<usize>,
}

impl<B: Buffer> LowRankGrads<'_, B> {
    /// dUt's live rows for `sh`.
    pub fn dut(&mut self, sh: &LowRankShape) -> Mut<'_, B> {
        self.buf.at_mut(self.dut, sh.rank * sh.n_in)
    }

    /// dVt's live rows for `sh`.
    pub fn dvt(&mut self, sh: &LowRankShape) -> Mut<'_, B> {
        self.buf.at_mut(self.dvt, sh.rank * sh.n_out)
    }

    /// db, when the layer has a bias.
    pub fn dbias(&mut self, sh: &LowRankShape) -> Option<Mut<'_, B>> {
        let n_out = sh.n_out;
        self.dbias.map(move |off| self.buf.at_mut(off, n_out))
    }

    /// (name, offset, length) of each window.
    fn windows(&self, sh: &LowRankShape) -> Vec<(&'static str, usize, usize)> {
        let mut w = vec![
            ("dUt", self.dut, sh.rank * sh.n_in),
            ("dVt", self.dvt, sh.rank * sh.n_out),
        ];
        w.extend(self.dbias.map(|off| ("db", off, sh.n_out)));
        w
    }
}

impl LowRankShape {
    /// Row stride of the scratch activations t and s: `rank` rounded up to [`SCRATCH_ROW_ALIGN`].
    pub fn scratch_stride(&self) -> usize {
        self.rank.next_multiple_of(SCRATCH_ROW_ALIGN)
    }

    /// Elements the t (forward) and s (backward) windows must hold: n rows of `scratch_stride()`.
    pub fn scratch_len(&self) -> usize {
        self.n * self.scratch_stride()
    }

    /// Multiply-add FLOPs of the forward: x·U and t·Vᵀ, plus x·W0 when the base is present.
    pub fn forward_flops(&self, with_w0: bool) -> f64 {
        let (n, i, o, k) = self.dims();
        2.0 * n * (k * (i + o) + if with_w0 { i * o } else { 0.0 })
    }

    /// FLOPs of the backward: s = dy·V, dx (s·Uᵀ, plus dy·W0ᵀ with a base), dU and dV.
    pub fn backward_flops(&self, with_w0: bool) -> f64 {
        let (n, i, o, k) = self.dims();
        2.0 * n * (2.0 * k * (i + o) + if with_w0 { i * o } else { 0.0 })
    }

    fn dims(&self) -> (f64, f64, f64, f64) {
        (
            self.n as f64,
            self.n_in as f64,
            self.n_out as f64,
            self.rank as f64,
        )
    }

    /// Checks the forward's windows and dtypes: x, weights, bias and t share one operand dtype; y is
    /// f32 or bf16, and the epilogue's window (y's GELU, or the residual added to y) has y's dtype.
    #[allow(clippy::too_many_arguments)]
    pub fn check_forward<B: Buffer>(
        &self,
        x: &Ref<B>,
        w: &LowRankWeights<B>,
        bias: &Option<Ref<B>>,
        t: &Mut<B>,
        y: &Mut<B>,
        epi: &LinearEpilogue<B>,
    ) -> Result<()> {
        let need = self.n * self.n_out;
        match epi {
            LinearEpilogue::None => {}
            LinearEpilogue::Gelu(g) => {
                self.window("gelu(y)", g.len, need, g.dtype(), Some(y.dtype()))?
            }
            LinearEpilogue::Residual(r) => {
                self.window("residual", r.len, need, r.dtype(), Some(y.dtype()))?
            }
        }
        self.check_common(x, w)?;
        let op = x.dtype();
        if let Some(b) = bias {
            self.window("bias", b.len, self.n_out, b.dtype(), Some(op))?;
        }
        self.window("t", t.len, self.scratch_len(), t.dtype(), Some(op))?;
        self.window("y", y.len, self.n * self.n_out, y.dtype(), None)
    }

    /// Checks the backward's windows and dtypes: x, weights, t, dy and s share one operand dtype; dx
    /// is f32 or bf16, and the GELU input, when given, has dx's dtype; dUt, dVt and db are f32.
    #[allow(clippy::too_many_arguments)]
    pub fn check_backward<B: Buffer>(
        &self,
        x: &Ref<B>,
        w: &LowRankWeights<B>,
        t: &Ref<B>,
        dy: &Ref<B>,
        s: &Mut<B>,
        dx: &Mut<B>,
        gelu_input: &Option<Ref<B>>,
        g: &LowRankGrads<B>,
    ) -> Result<()> {
        if let Some(u) = gelu_input {
            let need = self.n * self.n_in;
            self.window("GELU input", u.len, need, u.dtype(), Some(dx.dtype()))?;
        }
        self.check_common(x, w)?;
        let (op, f32) = (Some(x.dtype()), Some(DType::F32));
        self.window("t", t.len, self.scratch_len(), t.dtype(), op)?;
        self.window("dy", dy.len, self.n * self.n_out, dy.dtype(), op)?;
        self.window("s", s.len, self.scratch_len(), s.dtype(), op)?;
        self.window("dx", dx.len, self.n * self.n_in, dx.dtype(), None)?;
        let windows = g.windows(self);
        for &(name, off, len) in &windows {
            let room = g.buf.len().saturating_sub(off);
            self.window(name, room, len, g.buf.dtype(), f32)?;
        }
        for (i, &(a, a_off, a_len)) in windows.iter().enumerate() {
            for &(b, b_off, b_len) in &windows[i + 1..] {
                ensure!(
                    a_off + a_len <= b_off || b_off + b_len <= a_off,
                    "low-rank linear {self:?}: the {a} window ({a_off}+{a_len}) overlaps the {b} window ({b_off}+{b_len})"
                );
            }
        }
        Ok(())
    }

    fn check_common<B: Buffer>(&self, x: &Ref<B>, w: &LowRankWeights<B>) -> Result<()> {
        ensure!(
            self.rank >= 1,
            "low-rank linear {self:?}: rank must be at least 1 (a rank-0 layer is just x·W0: use gemm)"
        );
        ensure!(
            self.n >= 1 && self.n_in >= 1 && self.n_out >= 1,
            "low-rank linear {self:?}: n, n_in and n_out must be positive"
        );
        let op = Some(x.dtype());
        self.window("x", x.len, self.n * self.n_in, x.dtype(), op)?;
        self.window("Ut", w.ut.len, self.rank * self.n_in, w.ut.dtype(), op)?;
        self.window("Vt", w.vt.len, self.rank * self.n_out, w.vt.dtype(), op)?;
        if let Some(w0) = &w.w0 {
            self.window("W0", w0.len, self.n_in * self.n_out, w0.dtype(), op)?;
        }
        Ok(())
    }

    /// A window must hold at least `need` elements and, when `want` is given, have that dtype.
    fn window(
        &self,
        name: &str,
        len: usize,
        need: usize,
        dtype: DType,
        want: Option<DType>,
    ) -> Result<()> {
        ensure!(
            len >= need,
            "low-rank linear {self:?}: {name} window has {len} elements, needs at least {need}"
        );
        if let Some(want) = want {
            ensure!(
                dtype == want,
                "low-rank linear {self:?}: {name} is {dtype:?}, must be {want:?} (operands share x's dtype; gradients are f32)"
            );
        }
        Ok(())
    }
}
