// The segmented GEMM's contract, shared by its two mainloops: mma.sync (lowrank_linear.cu, every
// GPU) and wgmma (lowrank_wgmma.cu, sm_90a). Both read the same SegGemmParams, load tiles with the
// same zero-filling cp.async predicates and write the same epilogue, so the launcher can pick either.
#pragma once
#include "common.cuh"
#include "ptx.cuh"

typedef __nv_bfloat16 bf16;

// One call's operands, mirrored field for field by `SegGemmParams` in the Rust launcher (#[repr(C)]).
// Segment s multiplies A_s (m × k[s], row-major, row stride lda[s]) by B_s, stored k[s] × N ("NN") or
// N × k[s] ("NT", i.e. Bᵀ row-major), row stride ldb[s]; a segment with k[s] = 0 is skipped.
// Requirements checked by the launcher: every row stride and the A segments' k[s] rounded up to 8
// lie in the buffer (16-byte cp.async chunks), pointers 16-byte aligned, n_valid and n_store even,
// and n_valid a multiple of 8 where a B segment is NN (a chunk is predicated by where it starts).
struct SegGemmParams {
    const bf16* a[2];
    const bf16* b[2];
    const bf16* bias;  // n_valid values added in the epilogue, or null
    void* c;           // m × n_store output (bf16 or f32), row stride ldc
    int lda[2], ldb[2], k[2];
    int m;
    int n_valid;  // B columns that exist; columns in [n_valid, n_store) come out exactly 0
    int n_store;  // output columns written (the padded width of t and s)
    int ldc;
    // Split K (mma.sync kernels; 0: off): block z multiplies k-tiles [z·split_tiles, (z+1)·split_tiles)
    // of the concatenated segments and writes its partial product (f32, no bias past z = 0) at
    // c + z·split_stride; split_sum adds the partials in order.
    int split_tiles;
    long long split_stride;
    // wgmma kernels: the leading and stride byte offsets of the N-major B descriptor (8192 and 1024
    // per the PTX ISA's canonical layout). A parameter, not a constant, only until a GPU run has
    // confirmed them: LOWRANK_WGMMA_NMAJOR=swap tries the other reading in the same binary.
    int nmajor_lbo, nmajor_sbo;
    // What the epilogue does besides storing C (act_kind; not with split K), with a second matrix
    // `act` of C's dtype and ldc: ACT_GELU (the MLP's fc) writes C as always and GELU of C's
    // rounded values to `act`; ACT_DGELU (its projection's dx) reads the pre-activation u from
    // `act` and writes C = round(round(v)·GELU'(u)): both exactly what the GEMM followed by gelu.cu's
    // kernel gives. ACT_RESIDUAL (a block's projection) reads the residual r from `act` and writes
    // C = round(v + r), one rounding as in cuBLASLt's epilogue for dense layers (the GEMM followed
    // by elementwise.cu's add rounds twice). Each saves a pass over the output.
    void* act;
    int act_kind;
};

enum : int { ACT_NONE = 0, ACT_GELU = 1, ACT_DGELU = 2, ACT_RESIDUAL = 3 };

__device__ __forceinline__ void store_pair(float* p, float v0, float v1) { *reinterpret_cast<float2*>(p) = make_float2(v0, v1); }
__device__ __forceinline__ void store_pair(bf16* p, float v0, float v1) { *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v0, v1); }

// A value as it reads back after its store to C.
__device__ __forceinline__ float stored(float v, const float*) { return v; }
__device__ __forceinline__ float stored(float v, const bf16*) { return __bfloat162float(__float2bfloat16_rn(v)); }
__device__ __forceinline__ float2 load_pair(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load_pair(const bf16* p) { return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p)); }

// The epilogue's last step, shared by every mainloop: two adjacent columns (col even) of one row,
// bias already added, stored to C with p's activation.
template <class OutT>
__device__ __forceinline__ void epilogue_pair(const SegGemmParams& p, OutT* c, int row, int col, float v0, float v1) {
    const size_t at = (size_t)row * p.ldc + col;
    OutT* act = static_cast<OutT*>(p.act);
    if (p.act_kind == ACT_DGELU) {
        const float2 u = load_pair(act + at);
        v0 = stored(v0, c) * gelu_tanh_grad(u.x);
        v1 = stored(v1, c) * gelu_tanh_grad(u.y);
    } else if (p.act_kind == ACT_RESIDUAL) {
        const float2 r = load_pair(act + at);
        v0 += r.x;
        v1 += r.y;
    }
    store_pair(c + at, v0, v1);
    if (p.act_kind == ACT_GELU) store_pair(act + at, gelu_tanh(stored(v0, c)), gelu_tanh(stored(v1, c)));
}
