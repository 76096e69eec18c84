//! Dense linear layers on cuBLASLt: the GEMM with the work its epilogue can take (the bias, the
//! MLP's GELU and its backward, the residual after a projection, the bias gradient), each falling
//! back to the GEMM and passes of its own where the epilogue does not fit or cuBLASLt has no
//! algorithm for it.

use super::{gemm, Cuda, CudaBuf};
use crate::backend::shapes::check_matrix_and_row;
use crate::backend::{
    same_len, weight_grad_gemm, Backend, Buffer, DType, DenseGrads, Gemm, MatShape, Mut, Ref,
};
use anyhow::{ensure, Result};

/// Whether `e` says cuBLASLt has no algorithm for an epilogue, whose work the caller then does in
/// passes of its own; the first time, a warning on stderr (the epilogue's speed is lost, nothing
/// else).
fn epilogue_unavailable(e: &anyhow::Error) -> bool {
    let Some(none) = e.downcast_ref::<gemm::NoAlgorithm>() else {
        return false;
    };
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        eprintln!("warning: {none}; its epilogue's work runs in passes of its own (reported once)")
    });
    true
}

/// One GEMM with cuBLASLt's epilogue `epi`, which the caller found to fit: Ok(false) where
/// cuBLASLt has no algorithm for it (`epilogue_unavailable`), and the caller does the work in
/// passes of its own.
fn epilogue_gemm(
    cuda: &Cuda,
    g: &Gemm,
    a: Ref<CudaBuf>,
    b: Ref<CudaBuf>,
    c: Mut<CudaBuf>,
    epi: gemm::Epilogue,
) -> Result<bool> {
    g.check(&a, &b, &c)?;
    ensure!(
        g.k > 0,
        "gemm with k = 0 is not supported on CUDA (cuBLASLt rejects it)"
    );
    let (ab, cd) = (a.dtype(), c.dtype());
    let (a, b, c) = (a.ptr(), b.ptr(), c.ptr());
    match cuda.lt.gemm_epilogue(&cuda.stream, g, ab, cd, a, b, c, epi) {
        Ok(()) => Ok(true),
        Err(e) if epilogue_unavailable(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `g` through one of cuBLASLt's bias epilogues, `epi`, writing `out`: Ok(true) where the bias
/// epilogue takes the call (and `extra`, the other window's own conditions and its length, which
/// must be out's), and cuBLASLt has an algorithm for it; else Ok(false), and the caller runs its
/// passes.
#[allow(clippy::too_many_arguments)]
fn bias_epilogue_gemm(
    cuda: &Cuda,
    op: &str,
    g: &Gemm,
    (a, b): (Ref<CudaBuf>, Ref<CudaBuf>),
    bias: &Ref<CudaBuf>,
    out: Mut<CudaBuf>,
    extra: Option<(bool, usize)>,
    epi: gemm::Epilogue,
) -> Result<bool> {
    let fits = cuda.bias_epilogue
        && extra.is_none_or(|(fits, _)| fits)
        && gemm::bias_epilogue_fits(g, out.dtype(), bias.dtype(), bias.ptr());
    if !fits || g.m * g.n == 0 {
        return Ok(false);
    }
    if let Some((_, len)) = extra {
        same_len(op, len, out.len)?;
    }
    let shape = MatShape::new(g.m, g.n);
    check_matrix_and_row(op, ("c", out.len), ("bias", bias.len), shape)?;
    epilogue_gemm(cuda, g, a, b, out, epi)
}

/// `Backend::gemm_bias`: cuBLASLt's BIAS epilogue.
pub(super) fn gemm_bias(
    cuda: &Cuda,
    g: &Gemm,
    a: Ref<CudaBuf>,
    b: Ref<CudaBuf>,
    bias: Ref<CudaBuf>,
    mut c: Mut<CudaBuf>,
) -> Result<()> {
    let epi = gemm::Epilogue::Bias(bias.ptr());
    if bias_epilogue_gemm(cuda, "gemm_bias", g, (a, b), &bias, c.reborrow(), None, epi)? {
        return Ok(());
    }
    cuda.gemm(g, a, b, c.reborrow())?;
    cuda.add_bias(c, bias, MatShape::new(g.m, g.n))
}

/// `Backend::gemm_bias_gelu`: cuBLASLt's GELU_AUX_BIAS epilogue, which writes GELU(x·W + b) as
/// its output and x·W + b as the auxiliary matrix.
pub(super) fn gemm_bias_gelu(
    cuda: &Cuda,
    g: &Gemm,
    a: Ref<CudaBuf>,
    b: Ref<CudaBuf>,
    bias: Ref<CudaBuf>,
    c: Mut<CudaBuf>,
    mut gelu: Mut<CudaBuf>,
) -> Result<()> {
    let aux_fits =
        cuda.gelu_epilogue && gemm::gelu_epilogue_fits(g, gelu.dtype(), c.dtype(), c.ptr());
    let epi = gemm::Epilogue::GeluAuxBias {
        bias: bias.ptr(),
        aux: c.ptr(),
    };
    let extra = Some((aux_fits, c.len));
    let out = gelu.reborrow();
    if bias_epilogue_gemm(cuda, "gemm_bias_gelu", g, (a, b), &bias, out, extra, epi)? {
        return Ok(());
    }
    crate::backend::gemm_bias_then_gelu(cuda, g, a, b, bias, c, gelu)
}

/// `Backend::gemm_bias_residual`: cuBLASLt's BIAS epilogue with β = 1 and the residual as its
/// input matrix C, read with the output's layout and dtype.
pub(super) fn gemm_bias_residual(
    cuda: &Cuda,
    g: &Gemm,
    a: Ref<CudaBuf>,
    b: Ref<CudaBuf>,
    bias: Ref<CudaBuf>,
    residual: Ref<CudaBuf>,
    mut c: Mut<CudaBuf>,
) -> Result<()> {
    let residual_fits = cuda.residual_epilogue
        && residual.dtype() == c.dtype()
        && residual.ptr().is_multiple_of(16);
    let epi = gemm::Epilogue::BiasResidual {
        bias: bias.ptr(),
        residual: residual.ptr(),
    };
    let extra = Some((residual_fits, residual.len));
    let out = c.reborrow();
    if bias_epilogue_gemm(
        cuda,
        "gemm_bias_residual",
        g,
        (a, b),
        &bias,
        out,
        extra,
        epi,
    )? {
        return Ok(());
    }
    crate::backend::gemm_bias_then_residual(cuda, g, a, b, bias, residual, c)
}

/// `Backend::linear_param_grads`: cuBLASLt's BGRADA epilogue beside the weight gradient.
pub(super) fn linear_param_grads(
    cuda: &Cuda,
    x: Ref<CudaBuf>,
    dy: Ref<CudaBuf>,
    (n_in, n_out): (usize, usize),
    mut grads: DenseGrads<CudaBuf>,
) -> Result<()> {
    let rows = grads.check(&x, &dy, n_in, n_out)?;
    let g = weight_grad_gemm(rows, n_in, n_out);
    if cuda.bias_grad_epilogue && gemm::bias_grad_epilogue_fits(&g, dy.dtype(), DType::F32) {
        // cuBLASLt writes the sums; the gradient accumulates, so they go to scratch first.
        let sums = cuda.scratch(DType::F32, n_out)?;
        let epi = gemm::Epilogue::BiasGradB {
            grad: sums.all().ptr(),
        };
        if epilogue_gemm(cuda, &g, x, dy, grads.dw(n_in, n_out), epi)? {
            return cuda.add(grads.db(n_out), sums.all());
        }
    }
    crate::backend::linear_param_grads_in_passes(cuda, x, dy, (n_in, n_out), grads)
}

/// `Backend::gemm_gelu_backward`: cuBLASLt's DGELU epilogue.
pub(super) fn gemm_gelu_backward(
    cuda: &Cuda,
    g: &Gemm,
    a: Ref<CudaBuf>,
    b: Ref<CudaBuf>,
    u: Ref<CudaBuf>,
    mut c: Mut<CudaBuf>,
) -> Result<()> {
    let fits = cuda.gelu_epilogue && gemm::gelu_epilogue_fits(g, c.dtype(), u.dtype(), u.ptr());
    if fits && g.m * g.n > 0 {
        same_len("gemm_gelu_backward", u.len, c.len)?;
        let epi = gemm::Epilogue::GeluGrad { aux: u.ptr() };
        if epilogue_gemm(cuda, g, a, b, c.reborrow(), epi)? {
            return Ok(());
        }
    }
    crate::backend::gemm_then_gelu_backward(cuda, g, a, b, u, c)
}
