//! Launchers for kernels/elementwise.cu (residual and bias adds, difference, ReLU) and kernels/gelu.cu.

use super::launch::{act_suffix, grid_for};
use super::{Cuda, CudaBuf};
use crate::backend::{Mut, Ref};
use anyhow::Result;
use cudarc::driver::PushKernelArg;

/// Launches `kernel(a, b, n)` from `file` over n elements of two same-dtype windows.
fn binary(cuda: &Cuda, file: &'static str, kernel: &str, a: u64, b: u64, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let f = cuda.modules.function(file, kernel)?;
    // SAFETY: callers pass windows of n elements, checked by the trait.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&a)
            .arg(&b)
            .arg(&n)
            .launch(grid_for(n))?
    };
    Ok(())
}

/// Launches `{op}_{dtype}` from `file` on a written window and a same-dtype, same-length input.
fn same_dtype_binary(
    cuda: &Cuda,
    file: &'static str,
    op: &str,
    out: Mut<CudaBuf>,
    inp: Ref<CudaBuf>,
) -> Result<()> {
    let sfx = act_suffix(op, &[out.dtype(), inp.dtype()])?;
    binary(
        cuda,
        file,
        &format!("{op}_{sfx}"),
        out.ptr(),
        inp.ptr(),
        out.len,
    )
}

pub fn add(cuda: &Cuda, out: Mut<CudaBuf>, x: Ref<CudaBuf>) -> Result<()> {
    same_dtype_binary(cuda, "elementwise", "add", out, x)
}

pub fn sub(cuda: &Cuda, out: Mut<CudaBuf>, x: Ref<CudaBuf>) -> Result<()> {
    same_dtype_binary(cuda, "elementwise", "sub", out, x)
}

pub fn relu_forward(cuda: &Cuda, out: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
    same_dtype_binary(cuda, "elementwise", "relu_forward", out, inp)
}

pub fn relu_backward(cuda: &Cuda, d: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
    same_dtype_binary(cuda, "elementwise", "relu_backward", d, inp)
}

pub fn gelu_forward(cuda: &Cuda, out: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
    same_dtype_binary(cuda, "gelu", "gelu_forward", out, inp)
}

pub fn gelu_backward(cuda: &Cuda, d: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
    same_dtype_binary(cuda, "gelu", "gelu_backward", d, inp)
}

pub fn add_bias(
    cuda: &Cuda,
    out: Mut<CudaBuf>,
    bias: Ref<CudaBuf>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let sfx = act_suffix("add_bias", &[out.dtype(), bias.dtype()])?;
    if rows * cols == 0 {
        return Ok(());
    }
    let f = cuda
        .modules
        .function("elementwise", &format!("add_bias_{sfx}"))?;
    let (o, b, nr, nc) = (out.ptr(), bias.ptr(), rows as i32, cols as i32);
    // SAFETY: out holds rows·cols elements and bias cols (checked by the trait).
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&o)
            .arg(&b)
            .arg(&nr)
            .arg(&nc)
            .launch(grid_for(rows * cols))?
    };
    Ok(())
}
