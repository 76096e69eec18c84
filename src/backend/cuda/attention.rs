//! Causal multi-head attention: kernels/attention.cu's permutes and causal softmax around cuBLASLt
//! batched GEMMs over the B·NH heads (llm.c's cuDNN-free path). Scores are materialised as
//! (B, NH, T, T). flash_attention.rs is the default where it applies (bf16, head sizes 32 and 64);
//! this path serves f32 activations, other head sizes and `LOWRANK_ATTENTION=materialized`.

use super::launch::{act_suffix, grid_for};
use super::{Cuda, CudaBuf};
use crate::backend::{Buffer, DType, Gemm, Mut, Ref};
use anyhow::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Rows of the softmax kernels per block: one warp each.
const SOFTMAX_ROWS_PER_BLOCK: u32 = 8;

/// The geometry of one attention call.
#[derive(Clone, Copy)]
struct Heads {
    batch: usize,
    seq: usize,
    heads: usize,
    head_size: usize,
}

impl Heads {
    fn new(batch: usize, seq: usize, channels: usize, heads: usize) -> Self {
        Heads {
            batch,
            seq,
            heads,
            head_size: channels / heads,
        }
    }
    /// Elements of a (B, NH, T, hs) tensor.
    fn len(&self) -> usize {
        self.batch * self.heads * self.seq * self.head_size
    }
    fn bh(&self) -> usize {
        self.batch * self.heads
    }
    fn scale(&self) -> f32 {
        1.0 / (self.head_size as f32).sqrt()
    }
    fn ints(&self) -> (i32, i32, i32, i32) {
        (
            self.batch as i32,
            self.seq as i32,
            self.heads as i32,
            self.head_size as i32,
        )
    }
}

fn gemm(cuda: &Cuda, g: Gemm, dtype: DType, a: u64, b: u64, c: u64) -> Result<()> {
    cuda.lt.gemm(&cuda.stream, &g, dtype, dtype, a, b, c)
}

fn softmax(cuda: &Cuda, kernel: &str, h: Heads, d: u64, p: Option<u64>) -> Result<()> {
    let f = cuda.modules.function("attention", kernel)?;
    let rows = h.bh() * h.seq;
    let (nr, nt, scale) = (rows as i32, h.seq as i32, h.scale());
    let cfg = LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(SOFTMAX_ROWS_PER_BLOCK), 1, 1),
        block_dim: (32 * SOFTMAX_ROWS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = cuda.stream.launch_builder(&f);
    launch.arg(&d);
    if let Some(p) = &p {
        launch.arg(p);
    }
    // SAFETY: d (and p) hold B·NH·T·T elements (checked by the trait).
    unsafe { launch.arg(&nr).arg(&nt).arg(&scale).launch(cfg)? };
    Ok(())
}

/// q, k, v (B, NH, T, hs) from qkv (B, T, 3C).
fn split_heads(cuda: &Cuda, sfx: &str, h: Heads, qkv: u64, dtype: DType) -> Result<[CudaBuf; 3]> {
    let (mut q, mut k, mut v) = (
        cuda.scratch(dtype, h.len())?,
        cuda.scratch(dtype, h.len())?,
        cuda.scratch(dtype, h.len())?,
    );
    let f = cuda
        .modules
        .function("attention", &format!("permute_qkv_{sfx}"))?;
    let (qp, kp, vp) = (q.all_mut().ptr(), k.all_mut().ptr(), v.all_mut().ptr());
    let (b, t, nh, hs) = h.ints();
    // SAFETY: q, k, v hold B·NH·T·hs elements and qkv 3× that (checked by the trait).
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&qp)
            .arg(&kp)
            .arg(&vp)
            .arg(&qkv)
            .arg(&b)
            .arg(&t)
            .arg(&nh)
            .arg(&hs)
            .launch(grid_for(h.len()))?
    };
    Ok([q, k, v])
}

fn unpermute(cuda: &Cuda, sfx: &str, h: Heads, out: u64, heads: u64, backward: bool) -> Result<()> {
    let f = cuda
        .modules
        .function("attention", &format!("unpermute_{sfx}"))?;
    let (b, t, nh, hs) = h.ints();
    let dir = backward as i32;
    // SAFETY: both tensors hold B·T·C elements.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&out)
            .arg(&heads)
            .arg(&b)
            .arg(&t)
            .arg(&nh)
            .arg(&hs)
            .arg(&dir)
            .launch(grid_for(h.len()))?
    };
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn forward(
    cuda: &Cuda,
    out: Mut<CudaBuf>,
    att: Mut<CudaBuf>,
    qkv: Ref<CudaBuf>,
    batch: usize,
    seq: usize,
    channels: usize,
    heads: usize,
) -> Result<()> {
    let dtype = qkv.dtype();
    let sfx = act_suffix("attention_forward", &[out.dtype(), att.dtype(), dtype])?;
    let h = Heads::new(batch, seq, channels, heads);
    if h.len() == 0 {
        return Ok(());
    }
    let [q, k, v] = split_heads(cuda, sfx, h, qkv.ptr(), dtype)?;
    let (t, hs) = (h.seq, h.head_size);
    // scores = q·kᵀ per head, written into att, then turned into probabilities in place.
    gemm(
        cuda,
        Gemm::new(t, t, hs).trans_b().batched(h.bh()),
        dtype,
        q.all().ptr(),
        k.all().ptr(),
        att.ptr(),
    )?;
    softmax(cuda, &format!("causal_softmax_{sfx}"), h, att.ptr(), None)?;
    let mut heads_out = cuda.scratch(dtype, h.len())?;
    gemm(
        cuda,
        Gemm::new(t, hs, t).batched(h.bh()),
        dtype,
        att.ptr(),
        v.all().ptr(),
        heads_out.all_mut().ptr(),
    )?;
    unpermute(cuda, sfx, h, out.ptr(), heads_out.all().ptr(), false)
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    cuda: &Cuda,
    dqkv: Mut<CudaBuf>,
    dout: Ref<CudaBuf>,
    qkv: Ref<CudaBuf>,
    att: Ref<CudaBuf>,
    batch: usize,
    seq: usize,
    channels: usize,
    heads: usize,
) -> Result<()> {
    let dtype = qkv.dtype();
    let sfx = act_suffix(
        "attention_backward",
        &[dqkv.dtype(), dout.dtype(), att.dtype(), dtype],
    )?;
    let h = Heads::new(batch, seq, channels, heads);
    if h.len() == 0 {
        return Ok(());
    }
    let (t, hs) = (h.seq, h.head_size);
    let [q, k, v] = split_heads(cuda, sfx, h, qkv.ptr(), dtype)?;
    let mut dheads = cuda.scratch(dtype, h.len())?;
    unpermute(cuda, sfx, h, dout.ptr(), dheads.all_mut().ptr(), true)?;
    let mut datt = cuda.scratch(dtype, h.bh() * t * t)?;
    let (mut dq, mut dk, mut dv) = (
        cuda.scratch(dtype, h.len())?,
        cuda.scratch(dtype, h.len())?,
        cuda.scratch(dtype, h.len())?,
    );
    let (dh, dap) = (dheads.all().ptr(), datt.all_mut().ptr());
    gemm(
        cuda,
        Gemm::new(t, t, hs).trans_b().batched(h.bh()),
        dtype,
        dh,
        v.all().ptr(),
        dap,
    )?; // datt = dheads·vᵀ
    gemm(
        cuda,
        Gemm::new(t, hs, t).trans_a().batched(h.bh()),
        dtype,
        att.ptr(),
        dh,
        dv.all_mut().ptr(),
    )?; // dv = attᵀ·dheads
    softmax(
        cuda,
        &format!("causal_softmax_backward_{sfx}"),
        h,
        dap,
        Some(att.ptr()),
    )?; // datt → dscores (scaled)
    gemm(
        cuda,
        Gemm::new(t, hs, t).batched(h.bh()),
        dtype,
        dap,
        k.all().ptr(),
        dq.all_mut().ptr(),
    )?; // dq = dscores·k
    gemm(
        cuda,
        Gemm::new(t, hs, t).trans_a().batched(h.bh()),
        dtype,
        dap,
        q.all().ptr(),
        dk.all_mut().ptr(),
    )?; // dk = dscoresᵀ·q
    let f = cuda
        .modules
        .function("attention", &format!("permute_qkv_backward_{sfx}"))?;
    let (d, dqp, dkp, dvp) = (dqkv.ptr(), dq.all().ptr(), dk.all().ptr(), dv.all().ptr());
    let (b, tn, nh, hsz) = h.ints();
    // SAFETY: dqkv holds 3·B·T·C elements (checked by the trait), the head tensors B·T·C each.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&d)
            .arg(&dqp)
            .arg(&dkp)
            .arg(&dvp)
            .arg(&b)
            .arg(&tn)
            .arg(&nh)
            .arg(&hsz)
            .launch(grid_for(h.len()))?
    };
    Ok(())
}
