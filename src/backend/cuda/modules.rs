//! The kernel registry: embedded fatbins loaded lazily, once per file, and functions cached by name.
//! The driver picks the cubin for the device's arch from the fatbin, else JIT-compiles its PTX.
//! It also notes which kernels were asked for, so the selftest can say which kernels each case ran.

use crate::kernels;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

pub struct Modules {
    ctx: Arc<CudaContext>,
    loaded: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    /// The kernels asked for since the last `take_used` (every launcher asks right before launching).
    used: Mutex<BTreeSet<String>>,
}

impl Modules {
    pub fn new(ctx: Arc<CudaContext>) -> Self {
        Modules {
            ctx,
            loaded: Mutex::default(),
            functions: Mutex::default(),
            used: Mutex::default(),
        }
    }

    /// The kernels asked for since the last call, by name, and the record emptied.
    pub fn take_used(&self) -> Vec<String> {
        std::mem::take(&mut *self.used.lock().unwrap())
            .into_iter()
            .collect()
    }

    /// Kernel `kernel` from kernels/`file`.cu.
    pub fn function(&self, file: &'static str, kernel: &str) -> Result<CudaFunction> {
        // Every launch passes here: allocate only for a kernel not yet noted since the last take.
        let mut used = self.used.lock().unwrap();
        if !used.contains(kernel) {
            used.insert(kernel.to_string());
        }
        drop(used);
        let key = (file, kernel.to_string());
        if let Some(f) = self.functions.lock().unwrap().get(&key) {
            return Ok(f.clone());
        }
        let module = self.module(file)?;
        let f = module
            .load_function(kernel)
            .with_context(|| format!("kernel {kernel} missing from kernels/{file}.cu"))?;
        self.functions.lock().unwrap().insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, file: &'static str) -> Result<Arc<CudaModule>> {
        let mut loaded = self.loaded.lock().unwrap();
        if let Some(m) = loaded.get(file) {
            return Ok(m.clone());
        }
        let image = kernels::file(file).ok_or_else(|| {
            anyhow!("this binary was built without CUDA kernels (no nvcc at build time); rebuild after scripts/install-cuda-compiler.sh")
        })?;
        let m = self
            .ctx
            .load_module(Ptx::from_binary(image.fatbin.to_vec()))
            .with_context(|| format!("the driver rejected kernels/{file}.cu's fatbin (no cubin for this GPU and PTX too new for the driver?)"))?;
        loaded.insert(file, m.clone());
        Ok(m)
    }
}
