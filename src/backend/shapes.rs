//! Shapes of the model ops and the window checks every backend runs before touching memory.

use super::{Buffer, DType, Mut, Ref};
use anyhow::{ensure, Result};

/// A row-major matrix of `rows` × `cols`, e.g. B·T tokens × C channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatShape {
    pub rows: usize,
    pub cols: usize,
}

impl MatShape {
    pub fn new(rows: usize, cols: usize) -> Self {
        MatShape { rows, cols }
    }
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch of token sequences with `channels` features per token: (batch, seq, channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqShape {
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
}

impl SeqShape {
    pub fn new(batch: usize, seq: usize, channels: usize) -> Self {
        SeqShape {
            batch,
            seq,
            channels,
        }
    }
    /// Number of tokens, B·T.
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
    /// Elements of a (B, T, C) tensor.
    pub fn len(&self) -> usize {
        self.tokens() * self.channels
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks that a window holds exactly `want` elements, naming the op and the operand.
pub(crate) fn window_len(op: &str, operand: &str, len: usize, want: usize) -> Result<()> {
    ensure!(
        len == want,
        "{op}: {operand} window has {len} elements, the shape needs {want}"
    );
    Ok(())
}

/// Checks that every token id indexes a row of a table with `rows` rows.
pub(crate) fn token_ids(op: &str, tokens: &[u32], rows: usize) -> Result<()> {
    if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= rows) {
        anyhow::bail!("{op}: token id {t} at position {i} is outside the table of {rows} rows");
    }
    Ok(())
}

/// Checks the operands of `embedding_forward`.
pub(crate) fn check_embedding<T: Buffer>(
    out: &Mut<T>,
    tokens: &[u32],
    wte: &Ref<T>,
    wpe: &Ref<T>,
    s: SeqShape,
) -> Result<()> {
    let op = "embedding_forward";
    ensure!(s.channels > 0, "{op}: channels must be positive");
    window_len(op, "tokens", tokens.len(), s.tokens())?;
    window_len(op, "out", out.len, s.len())?;
    ensure!(
        wte.len.is_multiple_of(s.channels),
        "{op}: wte window of {} is not a whole number of rows of {}",
        wte.len,
        s.channels
    );
    ensure!(
        wpe.len >= s.seq * s.channels,
        "{op}: wpe window of {} holds fewer than seq = {} positions",
        wpe.len,
        s.seq
    );
    token_ids(op, tokens, wte.len / s.channels)
}

/// Checks the operands of `layernorm_forward` / `layernorm_backward` that both share.
pub(crate) fn check_layernorm(
    op: &str,
    x: usize,
    weight_bias: usize,
    mean: usize,
    rstd: usize,
    s: MatShape,
) -> Result<()> {
    window_len(op, "input", x, s.len())?;
    window_len(
        op,
        "weight_bias (weight then bias)",
        weight_bias,
        2 * s.cols,
    )?;
    window_len(op, "mean", mean, s.rows)?;
    window_len(op, "rstd", rstd, s.rows)
}

/// What the attention forward keeps for its backward (`Backend::attention_saved`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionSaved {
    /// The softmax probabilities, (B, heads, T, T) in the activations' dtype.
    Probabilities,
    /// Each row's log-sum-exp of its scaled scores (base 2), (B, heads, T) in f32: flash attention
    /// recomputes the probabilities from it and never holds them all.
    LogSumExp,
}

impl AttentionSaved {
    pub fn dtype(self, act: DType) -> DType {
        match self {
            AttentionSaved::Probabilities => act,
            AttentionSaved::LogSumExp => DType::F32,
        }
    }
    pub fn len(self, s: SeqShape, heads: usize) -> usize {
        match self {
            AttentionSaved::Probabilities => s.batch * heads * s.seq * s.seq,
            AttentionSaved::LogSumExp => s.batch * heads * s.seq,
        }
    }
}

/// Checks the operands of the attention ops: qkv (B,T,3C), out (B,T,C), and att as `saved` says
/// for qkv's dtype.
pub(crate) fn check_attention(
    op: &str,
    (qkv, out, att): (Ref<impl Buffer>, Ref<impl Buffer>, Ref<impl Buffer>),
    saved: AttentionSaved,
    s: SeqShape,
    heads: usize,
) -> Result<()> {
    ensure!(
        heads > 0 && s.channels.is_multiple_of(heads),
        "{op}: {} channels do not split into {heads} heads",
        s.channels
    );
    window_len(op, "qkv", qkv.len, 3 * s.len())?;
    window_len(op, "out", out.len, s.len())?;
    window_len(op, "att", att.len, saved.len(s, heads))?;
    let want = saved.dtype(qkv.dtype());
    ensure!(
        att.dtype() == want,
        "{op}: att is {:?} but this backend saves {saved:?} as {want:?}",
        att.dtype()
    );
    Ok(())
}

/// Checks the operands of `attention_cached`: qkv (start + n rows of 3C) and out (n × C) of one
/// dtype, C split into whole heads.
pub(crate) fn check_attention_cached<T: Buffer>(
    out: &Ref<T>,
    qkv: &Ref<T>,
    start: usize,
    new: MatShape,
    heads: usize,
) -> Result<()> {
    let op = "attention_cached";
    let c = new.cols;
    ensure!(
        heads > 0 && c > 0 && c.is_multiple_of(heads),
        "{op}: {c} channels do not split into {heads} heads"
    );
    window_len(op, "qkv", qkv.len, 3 * (start + new.rows) * c)?;
    window_len(op, "out", out.len, new.len())?;
    ensure!(
        out.dtype() == qkv.dtype(),
        "{op}: out is {:?} but qkv is {:?}",
        out.dtype(),
        qkv.dtype()
    );
    Ok(())
}

/// Checks the operands of `fused_classifier`.
pub(crate) fn check_classifier(
    logits: usize,
    losses: usize,
    targets: &[u32],
    s: MatShape,
    vocab: usize,
) -> Result<()> {
    let op = "fused_classifier";
    ensure!(
        vocab > 0 && vocab <= s.cols,
        "{op}: vocab {vocab} must be in 1..={} (the padded row width)",
        s.cols
    );
    window_len(op, "logits", logits, s.len())?;
    window_len(op, "losses", losses, s.rows)?;
    window_len(op, "targets", targets.len(), s.rows)?;
    token_ids(op, targets, vocab)
}

/// Checks the operands of `embedding_backward`.
pub(crate) fn check_embedding_backward(
    dwte: usize,
    dout: usize,
    tokens: &[u32],
    channels: usize,
) -> Result<()> {
    let op = "embedding_backward";
    ensure!(
        channels > 0 && dwte.is_multiple_of(channels),
        "{op}: dwte window of {dwte} is not whole rows of {channels}"
    );
    window_len(op, "dout", dout, tokens.len() * channels)?;
    token_ids(op, tokens, dwte / channels)
}

/// Checks the operands of `layernorm_backward` beyond those it shares with the forward.
pub(crate) fn check_layernorm_backward(
    dinp: usize,
    dout: usize,
    dweight_bias: Option<usize>,
    s: MatShape,
) -> Result<()> {
    let op = "layernorm_backward";
    window_len(op, "dinp", dinp, s.len())?;
    window_len(op, "dout", dout, s.len())?;
    match dweight_bias {
        Some(len) => window_len(op, "dweight_bias", len, 2 * s.cols),
        None => Ok(()),
    }
}

/// Checks the operands of `add_bias` (out, bias) and `add_column_sums` (src, dst): a matrix and a
/// row, each given as (operand name, window length).
pub(crate) fn check_matrix_and_row(
    op: &str,
    matrix: (&str, usize),
    row: (&str, usize),
    s: MatShape,
) -> Result<()> {
    window_len(op, matrix.0, matrix.1, s.len())?;
    window_len(op, row.0, row.1, s.cols)
}

/// Row strides (leading dimensions, in elements) of a [`Gemm`]'s A, B and C as stored, so that a
/// product can run on windows of larger row-major matrices (cuBLASLt's leading dimensions; the CPU
/// attention's causal row blocks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowStrides {
    pub a: usize,
    pub b: usize,
    pub c: usize,
}

impl RowStrides {
    pub fn new(a: usize, b: usize, c: usize) -> Self {
        RowStrides { a, b, c }
    }

    /// Rows stored back to back: the stored row lengths of A, B and C.
    pub fn packed(g: &Gemm) -> Self {
        RowStrides {
            a: if g.trans_a { g.m } else { g.k },
            b: if g.trans_b { g.k } else { g.n },
            c: g.n,
        }
    }
}

/// C = alpha · op(A) · op(B) + beta · C, all row-major, repeated `batch` times with the given strides
/// (in elements). op(A) is m×k, op(B) is k×n, C is m×n. With `trans_a`, A is stored k×m; with `trans_b`,
/// B is stored n×k. A linear layer y = x·W is `m=N, k=n_in, n=n_out`; dx = dy·Wᵀ sets `trans_b`;
/// dW += xᵀ·dy sets `trans_a` and `beta = 1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Gemm {
    /// A single (unbatched) C = op(A)·op(B).
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }
    pub fn trans_a(mut self) -> Self {
        self.trans_a = true;
        self
    }
    pub fn trans_b(mut self) -> Self {
        self.trans_b = true;
        self
    }
    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    /// Repeats the product `batch` times over contiguous matrices.
    pub fn batched(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// The element count each operand window must have.
    pub fn required_lens(&self) -> (usize, usize, usize) {
        let last = self.batch.saturating_sub(1);
        (
            last * self.stride_a + self.m * self.k,
            last * self.stride_b + self.k * self.n,
            last * self.stride_c + self.m * self.n,
        )
    }

    /// Checks window sizes: a wrong shape is caught here, before any device touches memory.
    pub fn check<T: Buffer>(&self, a: &Ref<T>, b: &Ref<T>, c: &Mut<T>) -> Result<()> {
        let (la, lb, lc) = self.required_lens();
        ensure!(self.batch >= 1, "gemm batch must be at least 1");
        ensure!(
            a.len >= la && b.len >= lb && c.len >= lc,
            "gemm {:?}: windows too small (A {} < {la}, B {} < {lb} or C {} < {lc})",
            self,
            a.len,
            b.len,
            c.len
        );
        ensure!(
            a.dtype() == b.dtype(),
            "gemm operands differ in dtype: A {:?}, B {:?}",
            a.dtype(),
            b.dtype()
        );
        Ok(())
    }

    /// FLOPs of the product (2·m·n·k per batch entry).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }
}
