//! Finding a GPU without panicking: cudarc panics when libcuda is missing, so its presence is
//! checked first, and every driver call's failure becomes a sentence for the user.

use anyhow::{bail, Context, Result};
use cudarc::driver::{sys, CudaContext};
use std::sync::Arc;

/// Facts about one CUDA device, for `doctor` and for benchmark reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sms: i32,
    pub memory_bytes: usize,
    pub l2_bytes: usize,
    pub driver_version: String,
}

/// True when the NVIDIA driver library (libcuda) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen candidate library names.
    unsafe { sys::is_culib_present() }
}

/// The driver's CUDA version, e.g. "13.0".
pub fn driver_version() -> Result<String> {
    ensure_driver()?;
    let mut v = 0;
    // SAFETY: writes one int.
    let rc = unsafe { sys::cuDriverGetVersion(&mut v) };
    if rc != sys::CUresult::CUDA_SUCCESS {
        bail!("cuDriverGetVersion failed: {rc:?}");
    }
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

fn ensure_driver() -> Result<()> {
    if !driver_present() {
        bail!("no NVIDIA driver found (libcuda.so could not be loaded): this machine has no usable GPU; \
               run on a machine with an NVIDIA GPU and driver, or use the CPU backend");
    }
    Ok(())
}

/// Number of CUDA devices visible to this process.
pub fn device_count() -> Result<usize> {
    ensure_driver()?;
    let n = CudaContext::device_count().context(
        "the NVIDIA driver is present but cuInit failed (is the GPU visible to this process?)",
    )?;
    Ok(n.max(0) as usize)
}

/// The device ordinal chosen by LOWRANK_DEVICE (default 0), checked against the devices present.
pub fn selected_ordinal() -> Result<usize> {
    let n = device_count()?;
    if n == 0 {
        bail!("the NVIDIA driver found no CUDA devices");
    }
    let ordinal = match std::env::var("LOWRANK_DEVICE") {
        Ok(s) => s.trim().parse::<usize>().map_err(|_| {
            anyhow::anyhow!(
                "LOWRANK_DEVICE={s:?} is not a device number; use an integer from 0 to {}",
                n - 1
            )
        })?,
        Err(_) => 0,
    };
    if ordinal >= n {
        bail!(
            "LOWRANK_DEVICE={ordinal} but this machine has {n} CUDA device(s), numbered 0 to {}",
            n - 1
        );
    }
    Ok(ordinal)
}

/// Opens a context on the selected device.
pub fn open_context() -> Result<Arc<CudaContext>> {
    let ordinal = selected_ordinal()?;
    let ctx = CudaContext::new(ordinal)
        .with_context(|| format!("cannot create a CUDA context on device {ordinal}"))?;
    // One stream, ordered work: cudarc's per-buffer event tracking would only add overhead.
    // SAFETY: called before any buffer or stream exists.
    unsafe { ctx.disable_event_tracking() };
    Ok(ctx)
}

/// Facts about the device behind `ctx`.
pub fn info(ctx: &Arc<CudaContext>) -> Result<DeviceInfo> {
    Ok(DeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        sms: ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        memory_bytes: ctx.total_mem()?,
        l2_bytes: ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?
            .max(0) as usize,
        driver_version: driver_version()?,
    })
}
