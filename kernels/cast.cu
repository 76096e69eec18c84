// Dtype conversion and fill: f32 <-> bf16 copies, and filling a buffer with one value
// (NaN poisoning before a selftest launch, zeroing gradients).
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// kernels

template <typename S, typename D>
__device__ __forceinline__ void cast_body(const S* __restrict__ src, D* __restrict__ dst, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dst[i] = from_float<D>(to_float(src[i]));
}

extern "C" __global__ void cast_f32_bf16(const float* src, __nv_bfloat16* dst, size_t n) { cast_body(src, dst, n); }
extern "C" __global__ void cast_bf16_f32(const __nv_bfloat16* src, float* dst, size_t n) { cast_body(src, dst, n); }
extern "C" __global__ void cast_f32_f32(const float* src, float* dst, size_t n) { cast_body(src, dst, n); }
extern "C" __global__ void cast_bf16_bf16(const __nv_bfloat16* src, __nv_bfloat16* dst, size_t n) { cast_body(src, dst, n); }

extern "C" __global__ void fill_f32(float* dst, float value, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = value;
}

extern "C" __global__ void fill_bf16(__nv_bfloat16* dst, float value, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(value);
}
