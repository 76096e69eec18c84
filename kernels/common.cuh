// Shared device helpers: bf16 loads/stores and warp reductions.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

// Element types are chosen at run time by the Rust side; kernels come in _f32 and _bf16 variants.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
// Round to nearest even, as half::bf16::from_f32 does on the CPU side.
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) / 32;
    v = (lane < warps) ? partial[lane] : 0.0f;  // every warp reads the partials
    v = warp_sum(v);
    __syncthreads();  // partial[] may be reused by a following call
    return v;
}

// Max over a block of up to 1024 threads; every thread gets the result.
__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) / 32;
    v = (lane < warps) ? partial[lane] : -INFINITY;
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    __syncthreads();
    return v;
}

// GPT-2's tanh-approximated GELU and its derivative: gelu.cu's kernels and the low-rank GEMMs'
// fused epilogues (seg_gemm.cuh) share these, so fused and unfused agree to the bit.
#define GELU_SCALING 0.7978845608028654f  // sqrt(2 / pi)
__device__ __forceinline__ float gelu_tanh(float x) {
    const float cube = 0.044715f * x * x * x;
    return 0.5f * x * (1.0f + tanhf(GELU_SCALING * (x + cube)));
}
__device__ __forceinline__ float gelu_tanh_grad(float x) {
    const float th = tanhf(GELU_SCALING * (x + 0.044715f * x * x * x));
    const float sech2 = 1.0f - th * th;
    return 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALING * (1.0f + 3.0f * 0.044715f * x * x);
}

// Column sums are reduced in two deterministic stages: blocks of COLUMN_CHUNK_ROWS rows write one
// partial per column (coalesced: adjacent threads own adjacent columns), then sum_partials adds the
// partials of each column in chunk order. No atomics, so gradients are bit-identical across runs.
#define COLUMN_CHUNK_ROWS 64

// Instantiates one extern "C" kernel per activation type: NAME_f32 and NAME_bf16.
#define FOR_EACH_ACT(MACRO) MACRO(f32, float) MACRO(bf16, __nv_bfloat16)
