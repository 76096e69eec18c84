//! Launchers for kernels/elementwise.cu (residual and bias adds) and kernels/gelu.cu.

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

pub fn add(cuda: &Cuda, out: Mut<CudaBuf>, x: Ref<CudaBuf>) -> Result<()> {
    let sfx = act_suffix("add", &[out.dtype(), x.dtype()])?;
    binary(
        cuda,
        "elementwise",
        &format!("add_{sfx}"),
        out.ptr(),
        x.ptr(),
        out.len,
    )
}

pub fn gelu_forward(cuda: &Cuda, out: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
    let sfx = act_suffix("gelu_forward", &[out.dtype(), inp.dtype()])?;
    binary(
        cuda,
        "gelu",
        &format!("gelu_forward_{sfx}"),
        out.ptr(),
        inp.ptr(),
        out.len,
    )
}

pub fn gelu_backward(cuda: &Cuda, d: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
    let sfx = act_suffix("gelu_backward", &[d.dtype(), inp.dtype()])?;
    binary(
        cuda,
        "gelu",
        &format!("gelu_backward_{sfx}"),
        d.ptr(),
        inp.ptr(),
        d.len,
    )
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
