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
    dweight_bias: usize,
    s: MatShape,
) -> Result<()> {
    let op = "layernorm_backward";
    window_len(op, "dinp", dinp, s.len())?;
    window_len(op, "dout", dout, s.len())?;
    window_len(op, "dweight_bias", dweight_bias, 2 * s.cols)
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
