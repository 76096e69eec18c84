//! GEMM through cuBLASLt: bf16 (or f32) operands, f32 accumulation, f32 or bf16 output.
//! cuBLASLt is column-major; a row-major C = op(A)·op(B) is computed as the column-major
//! Cᵀ = op(B)ᵀ·op(A)ᵀ, i.e. by swapping the operands, with no data movement.

use crate::backend::{DType, Gemm, RowStrides};
use anyhow::{Context, Result};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

/// cuBLASLt's recommended workspace on Hopper (32 MiB; 4 MiB suffices before it).
const WORKSPACE_BYTES: usize = 32 << 20;

pub struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    /// The heuristic's choice per problem (None: it had none): a training step repeats a few
    /// dozen GEMM problems hundreds of times, and asking the heuristic costs host time every call.
    algos: Mutex<HashMap<AlgoKey, Option<sys::cublasLtMatmulAlgo_t>>>,
}

/// cuBLASLt's heuristic offers no algorithm for a problem: with an epilogue, the caller can do
/// the epilogue's work in a pass of its own instead.
#[derive(Debug, thiserror::Error)]
#[error("cuBLASLt has no algorithm for {0}")]
pub struct NoAlgorithm(String);

/// Everything the heuristic's answer depends on: the problem, the layouts, the dtypes and each
/// pointer's alignment (the workspace is fixed).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct AlgoKey {
    mnk: [usize; 3],
    trans: [bool; 2],
    batch: [usize; 4],
    ld: [usize; 3],
    dtypes: [DType; 2],
    align: [u32; 4],
    /// The epilogue (`Epilogue::kind`; its pointers are always 16-byte aligned: `*_fits`).
    epilogue: u8,
}

/// What cuBLASLt's epilogue does to C = op(A)·op(B) before C's one rounding. The auxiliary matrix
/// (GELU's input) has C's dtype, shape and row stride.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue {
    None,
    /// C += bias (one row of C's dtype) on every row.
    Bias(u64),
    /// `aux` ← C + bias (the pre-activation, kept for the backward), C ← GELU(C + bias):
    /// CUBLASLT_EPILOGUE_GELU_AUX_BIAS, GPT-2's fc layer in one pass.
    GeluAuxBias {
        bias: u64,
        aux: u64,
    },
    /// C ← (A·B + `residual`) + bias: CUBLASLT_EPILOGUE_BIAS with β = 1 and the residual as the
    /// input matrix C (D, the output, is another matrix of C's layout): a block's projection and
    /// the residual connection after it in one pass. The caller's β is 0.
    BiasResidual {
        bias: u64,
        residual: u64,
    },
    /// `grad` ← the column sums of our B operand (f32, one per column of C) besides C ← C + op(A)·
    /// op(B): CUBLASLT_EPILOGUE_BGRADA (cuBLASLt's A is our B), a dense layer's dW += xᵀ·dy
    /// giving db's Σ_rows dy on the way, instead of a pass reading dy again. Written, not added.
    BiasGradB {
        grad: u64,
    },
    /// C ← C ⊙ GELU′(aux): CUBLASLT_EPILOGUE_DGELU, the MLP projection's dx and GELU's backward in
    /// one pass.
    GeluGrad {
        aux: u64,
    },
}

impl Epilogue {
    fn kind(&self) -> u8 {
        match self {
            Epilogue::None => 0,
            Epilogue::Bias(_) => 1,
            Epilogue::GeluAuxBias { .. } => 2,
            Epilogue::GeluGrad { .. } => 3,
            Epilogue::BiasResidual { .. } => 4,
            Epilogue::BiasGradB { .. } => 5,
        }
    }

    /// cuBLASLt's name for it.
    fn name(&self) -> &'static str {
        match self {
            Epilogue::None => "DEFAULT",
            Epilogue::Bias(_) => "BIAS",
            Epilogue::GeluAuxBias { .. } => "GELU_AUX_BIAS",
            Epilogue::GeluGrad { .. } => "DGELU",
            Epilogue::BiasResidual { .. } => "BIAS (β = 1, the residual as C)",
            Epilogue::BiasGradB { .. } => "BGRADA",
        }
    }
}

/// An on/off switch from the environment: `1` (the default) or `0`.
fn switch_from_env(var: &str) -> Result<bool> {
    match std::env::var(var).as_deref() {
        Err(_) | Ok("") | Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(other) => anyhow::bail!("{var}={other:?}: use `1` (the default) or `0`"),
    }
}

/// LOWRANK_BIAS_EPILOGUE: `1` (the default) adds linear layers' biases in cuBLASLt's epilogue, `0`
/// in a pass of their own (the way back if the epilogue misbehaves on some GPU or cuBLASLt).
pub fn bias_epilogue_from_env() -> Result<bool> {
    switch_from_env("LOWRANK_BIAS_EPILOGUE")
}

/// LOWRANK_GELU_EPILOGUE: `1` (the default) runs the MLP's GELU, forward and backward, in the
/// epilogue of the GEMM beside it (cuBLASLt's for dense layers, ours for low-rank ones), `0` in
/// passes of their own.
pub fn gelu_epilogue_from_env() -> Result<bool> {
    switch_from_env("LOWRANK_GELU_EPILOGUE")
}

/// LOWRANK_RESIDUAL_EPILOGUE: `1` (the default) adds the residual connection after a block's
/// projections in the epilogue of the projection's GEMM (cuBLASLt's for dense layers, ours for
/// low-rank ones), `0` in a pass of its own.
pub fn residual_epilogue_from_env() -> Result<bool> {
    switch_from_env("LOWRANK_RESIDUAL_EPILOGUE")
}

/// LOWRANK_BIAS_GRAD_EPILOGUE: `1` (the default) forms dense layers' bias gradients in the epilogue
/// of their weight gradient's GEMM (cuBLASLt's BGRADA), `0` in a pass of their own over dy.
pub fn bias_grad_epilogue_from_env() -> Result<bool> {
    switch_from_env("LOWRANK_BIAS_GRAD_EPILOGUE")
}

/// Whether cuBLASLt's BGRADA epilogue takes this weight gradient: one GEMM of bf16 operands into
/// f32 (the gradient then f32 too, D's type), reducing over more than one row (OneFlow found
/// cuBLASLt's bias gradient wrong at k = 1 and works around it the same way).
pub fn bias_grad_epilogue_fits(g: &Gemm, ab: DType, c_dtype: DType) -> bool {
    g.batch == 1 && g.k > 1 && ab == DType::BF16 && c_dtype == DType::F32
}

/// Whether cuBLASLt's bias epilogue takes this call: one GEMM writing bf16 (the bias then has C's
/// dtype, cuBLASLt's default bias type), β = 0, and a bias 16-byte aligned (some of its kernels
/// need that, e.g. Marian's experience on the A100; every bias of our parameter layout is, since
/// its tensors are multiples of 8 elements).
pub fn bias_epilogue_fits(g: &Gemm, c_dtype: DType, bias_dtype: DType, bias: u64) -> bool {
    g.batch == 1
        && g.beta == 0.0
        && c_dtype == DType::BF16
        && bias_dtype == c_dtype
        && bias.is_multiple_of(16)
}

/// Whether cuBLASLt's GELU epilogues take this call: a bf16 C with β = 0 and one GEMM (as for the
/// bias), and an auxiliary matrix of C's dtype, 16-byte aligned, whose leading dimension (C's row
/// length n) is a multiple of 8, as cuBLASLt requires of EPILOGUE_AUX_LD.
pub fn gelu_epilogue_fits(g: &Gemm, c_dtype: DType, aux_dtype: DType, aux: u64) -> bool {
    g.batch == 1
        && g.beta == 0.0
        && c_dtype == DType::BF16
        && aux_dtype == c_dtype
        && aux.is_multiple_of(16)
        && g.n.is_multiple_of(8)
}

// SAFETY: the handle is used from one stream, under the backend's ownership.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Lt {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        // cudarc panics on a library it cannot load: check first (a driver without the toolkit's
        // libraries is a common set-up).
        // SAFETY: only tries to dlopen candidate library names.
        anyhow::ensure!(
            unsafe { cudarc::cublaslt::sys::is_culib_present() },
            "the NVIDIA driver is present but libcublasLt.so could not be loaded: install the CUDA \
             toolkit's cuBLAS and put the folder holding libcublasLt.so on LD_LIBRARY_PATH"
        );
        let handle = lt::create_handle()
            .context("cuBLASLt could not be initialised (is libcublasLt on LD_LIBRARY_PATH?)")?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        let workspace_ptr = super::slice_ptr(&workspace, stream);
        Ok(Lt {
            handle,
            workspace,
            workspace_ptr,
            algos: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `g` on device pointers (already offset to their windows), rows packed.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        stream: &CudaStream,
        g: &Gemm,
        ab: DType,
        c_dtype: DType,
        a: u64,
        b: u64,
        c: u64,
    ) -> Result<()> {
        self.gemm_strided(stream, g, RowStrides::packed(g), ab, c_dtype, a, b, c)
    }

    /// Runs `g` with explicit row strides (e.g. the padded low-rank scratch t and s).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_strided(
        &self,
        stream: &CudaStream,
        g: &Gemm,
        ld: RowStrides,
        ab: DType,
        c_dtype: DType,
        a: u64,
        b: u64,
        c: u64,
    ) -> Result<()> {
        self.matmul(stream, g, ld, (ab, c_dtype), [a, b, c], Epilogue::None)
    }

    /// Runs `g` (rows packed) with `epi` applied in cuBLASLt's epilogue, before C's one rounding:
    /// a linear layer's forward (bias, GELU) or the GELU's backward in the same pass over C.
    /// Callers check `bias_epilogue_fits` and `gelu_epilogue_fits` first.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_epilogue(
        &self,
        stream: &CudaStream,
        g: &Gemm,
        ab: DType,
        c_dtype: DType,
        a: u64,
        b: u64,
        c: u64,
        epi: Epilogue,
    ) -> Result<()> {
        let ld = RowStrides::packed(g);
        self.matmul(stream, g, ld, (ab, c_dtype), [a, b, c], epi)
    }

    fn matmul(
        &self,
        stream: &CudaStream,
        g: &Gemm,
        ld: RowStrides,
        (ab, c_dtype): (DType, DType),
        [a, b, c]: [u64; 3],
        epi: Epilogue,
    ) -> Result<()> {
        let ty = |d: DType| match d {
            DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
            DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        };
        let (m, n, k) = (g.m as u64, g.n as u64, g.k as u64);
        // Column-major view: Lt's A is our B, Lt's B is our A, Lt's C is our C (n×m, ld n).
        let (la_rows, la_cols) = if g.trans_b { (k, n) } else { (n, k) };
        let (lb_rows, lb_cols) = if g.trans_a { (m, k) } else { (k, m) };
        let (lda, ldb, ldc) = (ld.a as u64, ld.b as u64, ld.c as u64);
        let layout_a = Layout::new(ty(ab), la_rows, la_cols, ldb, g.batch, g.stride_b)?;
        let layout_b = Layout::new(ty(ab), lb_rows, lb_cols, lda, g.batch, g.stride_a)?;
        let layout_c = Layout::new(ty(c_dtype), n, m, ldc, g.batch, g.stride_c)?;
        // The auxiliary matrix has C's leading dimension (column-major: C's row length).
        let desc = Desc::new(g.trans_b, g.trans_a, epi, ldc)?;
        // The input matrix C is the output unless the epilogue adds a residual of its own.
        let (beta, c_in) = match epi {
            Epilogue::BiasResidual { residual, .. } => {
                anyhow::ensure!(
                    g.beta == 0.0,
                    "a residual epilogue takes beta = 0, not {}",
                    g.beta
                );
                (1.0f32, residual)
            }
            _ => (g.beta, c),
        };
        let ptrs = [b, a, c_in, c];
        let key = AlgoKey {
            mnk: [g.m, g.n, g.k],
            trans: [g.trans_a, g.trans_b],
            batch: [g.batch, g.stride_a, g.stride_b, g.stride_c],
            ld: [ld.a, ld.b, ld.c],
            dtypes: [ab, c_dtype],
            align: ptrs.map(alignment),
            epilogue: epi.kind(),
        };
        let cached = self
            .algos
            .lock()
            .expect("algorithm cache")
            .get(&key)
            .copied();
        let algo = match cached {
            Some(algo) => algo,
            None => {
                let pref = Pref::new(key.align)?;
                // SAFETY: every descriptor is alive.
                let heuristic = unsafe {
                    lt::get_matmul_algo_heuristic(
                        self.handle,
                        desc.0,
                        layout_a.0,
                        layout_b.0,
                        layout_c.0,
                        layout_c.0,
                        pref.0,
                    )
                };
                // NOT_SUPPORTED (or no result) is an answer, kept; any other status is an error.
                let found = match heuristic {
                    Ok(h) => Some(h.algo),
                    Err(lt::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => None,
                    Err(e) => {
                        let what = format!(
                            "cuBLASLt's heuristic failed for {}",
                            problem(g, ab, c_dtype, &epi)
                        );
                        return Err(anyhow::Error::new(e).context(what));
                    }
                };
                let algos = &mut self.algos.lock().expect("algorithm cache");
                *algos.entry(key).or_insert(found)
            }
        };
        let Some(algo) = algo else {
            return Err(NoAlgorithm(problem(g, ab, c_dtype, &epi)).into());
        };
        // SAFETY: every descriptor is alive; pointers come from live buffers checked by Gemm::check.
        unsafe {
            lt::matmul(
                self.handle,
                desc.0,
                &g.alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b as *const c_void,
                layout_a.0,
                a as *const c_void,
                layout_b.0,
                c_in as *const c_void,
                layout_c.0,
                c as *mut c_void,
                layout_c.0,
                &algo,
                self.workspace_ptr as *mut c_void,
                self.workspace.len(),
                stream.cu_stream() as sys::cudaStream_t,
            )
            .with_context(|| format!("cuBLASLt matmul failed for {g:?}"))?;
        }
        Ok(())
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(
        ty: sys::cudaDataType,
        rows: u64,
        cols: u64,
        ld: u64,
        batch: usize,
        stride: usize,
    ) -> Result<Self> {
        let l = Layout(lt::create_matrix_layout(ty, rows, cols, ld as i64)?);
        if batch > 1 {
            let (count, stride) = (batch as i32, stride as i64);
            // SAFETY: attribute buffers have the sizes cuBLASLt documents for these attributes.
            unsafe {
                lt::set_matrix_layout_attribute(
                    l.0,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &count as *const i32 as *const c_void,
                    size_of::<i32>(),
                )?;
                lt::set_matrix_layout_attribute(l.0, sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride as *const i64 as *const c_void, size_of::<i64>())?;
            }
        }
        Ok(l)
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.0);
        }
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);

impl Desc {
    fn new(trans_a: bool, trans_b: bool, epi: Epilogue, aux_ld: u64) -> Result<Self> {
        let d = Desc(lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )?);
        for (attr, t) in [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                trans_a,
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                trans_b,
            ),
        ] {
            // cublasOperation_t as an int32: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
            let op: i32 = t as i32;
            // SAFETY: the attribute is a 32-bit cublasOperation_t.
            unsafe {
                lt::set_matmul_desc_attribute(
                    d.0,
                    attr,
                    &op as *const i32 as *const c_void,
                    size_of::<i32>(),
                )?
            };
        }
        use sys::cublasLtEpilogue_t as E;
        let (epilogue, bias, aux) = match epi {
            Epilogue::None => return Ok(d),
            Epilogue::Bias(bias) | Epilogue::BiasResidual { bias, .. } => {
                (E::CUBLASLT_EPILOGUE_BIAS, Some(bias), None)
            }
            Epilogue::GeluAuxBias { bias, aux } => {
                (E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS, Some(bias), Some(aux))
            }
            Epilogue::GeluGrad { aux } => (E::CUBLASLT_EPILOGUE_DGELU, None, Some(aux)),
            // The gradient goes where a bias would come from (BIAS_POINTER), in D's type.
            Epilogue::BiasGradB { grad } => (E::CUBLASLT_EPILOGUE_BGRADA, Some(grad), None),
        };
        use sys::cublasLtMatmulDescAttributes_t as A;
        // SAFETY: each attribute is written with the size cuBLASLt documents: the epilogue a
        // 32-bit enum, the pointers 64-bit device addresses, the auxiliary leading dimension int64.
        unsafe {
            let set = |attr, value: *const c_void, size| {
                lt::set_matmul_desc_attribute(d.0, attr, value, size)
            };
            set(
                A::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue as *const E as *const c_void,
                size_of::<E>(),
            )?;
            if let Some(ptr) = bias {
                let p = &ptr as *const u64 as *const c_void;
                set(A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, p, size_of::<u64>())?;
            }
            if let Some(ptr) = aux {
                let p = &ptr as *const u64 as *const c_void;
                set(
                    A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                    p,
                    size_of::<u64>(),
                )?;
                let ld = aux_ld as i64;
                let p = &ld as *const i64 as *const c_void;
                set(A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, p, size_of::<i64>())?;
            }
        }
        Ok(d)
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.0);
        }
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);

impl Pref {
    /// Preferences with our workspace size and the real alignment of each pointer (`alignment`):
    /// cuBLASLt otherwise assumes 256-byte alignment, which windows into planned buffers need not
    /// have.
    fn new(aligns: [u32; 4]) -> Result<Self> {
        let p = Pref(lt::create_matmul_pref()?);
        let ws = WORKSPACE_BYTES;
        use sys::cublasLtMatmulPreferenceAttributes_t as A;
        // SAFETY: attribute sizes as documented (usize workspace, u32 alignments).
        unsafe {
            lt::set_matmul_pref_attribute(
                p.0,
                A::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const usize as *const c_void,
                size_of::<usize>(),
            )?;
            let attrs = [
                A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ];
            for (attr, align) in attrs.into_iter().zip(aligns) {
                lt::set_matmul_pref_attribute(
                    p.0,
                    attr,
                    &align as *const u32 as *const c_void,
                    size_of::<u32>(),
                )?;
            }
        }
        Ok(p)
    }
}

/// A GEMM call in a few words, e.g. "8192×3072×768 NN (BF16 → BF16) with the GELU_AUX_BIAS epilogue".
fn problem(g: &Gemm, ab: DType, c_dtype: DType, epi: &Epilogue) -> String {
    let t = |trans: bool| if trans { 'T' } else { 'N' };
    format!(
        "{}×{}×{} {}{}{} ({ab:?} → {c_dtype:?}) with the {} epilogue",
        g.m,
        g.n,
        g.k,
        t(g.trans_a),
        t(g.trans_b),
        if g.batch > 1 {
            format!(" ×{}", g.batch)
        } else {
            String::new()
        },
        epi.name()
    )
}

/// A pointer's alignment in bytes, up to the 256 cuBLASLt assumes by default.
fn alignment(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(8)
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_pref(self.0);
        }
    }
}
