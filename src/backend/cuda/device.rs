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

impl DeviceInfo {
    /// The maker's dense bf16 tensor-core peak in TFLOP/s, the denominator of MFU, for the
    /// datacenter GPUs whose name the driver reports as below; None for any other (no guess).
    pub fn bf16_peak_tflops(&self) -> Option<f64> {
        bf16_peak_tflops(&self.name)
    }
}

fn bf16_peak_tflops(name: &str) -> Option<f64> {
    // (name, SMs, dense bf16 FLOPs per SM per clock, boost clock in MHz), as llm.c's mfu.h counts
    // them: the datasheets' figures are these products.
    const KNOWN: [(&str, f64, f64, f64); 7] = [
        ("NVIDIA H100 80GB HBM3", 132.0, 4096.0, 1830.0), // H100 SXM5
        ("NVIDIA H100 PCIe", 114.0, 4096.0, 1620.0),
        ("NVIDIA H200", 132.0, 4096.0, 1830.0),
        ("NVIDIA A100-SXM4-80GB", 108.0, 2048.0, 1410.0),
        ("NVIDIA A100-SXM4-40GB", 108.0, 2048.0, 1410.0),
        ("NVIDIA A100 80GB PCIe", 108.0, 2048.0, 1410.0),
        ("NVIDIA A100-PCIE-40GB", 108.0, 2048.0, 1410.0),
    ];
    KNOWN
        .iter()
        .find(|k| k.0 == name)
        .map(|&(_, sms, flops, mhz)| sms * flops * mhz * 1e6 / 1e12)
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

#[cfg(test)]
mod tests {
    use super::bf16_peak_tflops;

    #[test]
    fn peaks_are_the_datasheets_dense_bf16_figures() {
        // NVIDIA's datasheets give BF16 tensor-core TFLOPS with 2:4 sparsity, twice the dense peak:
        // H100 SXM 1,979, H100 PCIe 1,513; H200 as H100 SXM; A100 624 (312 dense).
        for (name, sparse) in [
            ("NVIDIA H100 80GB HBM3", 1979.0),
            ("NVIDIA H100 PCIe", 1513.0),
            ("NVIDIA H200", 1979.0),
            ("NVIDIA A100-SXM4-80GB", 624.0),
            ("NVIDIA A100-PCIE-40GB", 624.0),
        ] {
            let peak = bf16_peak_tflops(name).unwrap();
            assert!((2.0 * peak - sparse).abs() < 1.0, "{name}: {peak}");
        }
        for unknown in [
            "NVIDIA H100",
            "NVIDIA GeForce RTX 4090",
            "Emulated GPU (CPU, sm_90a, 4 SMs)",
        ] {
            assert_eq!(bf16_peak_tflops(unknown), None, "{unknown}");
        }
    }
}
