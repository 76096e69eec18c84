// Sum of squares (for the global gradient norm), deterministic: each block writes one partial sum
// in a fixed order, and the host adds the partials in f64. No atomics, so the norm, and with it
// gradient clipping, is the same on every run.
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// kernels

template <typename T>
__device__ __forceinline__ void sum_squares_body(const T* __restrict__ x, float* __restrict__ partials, size_t n) {
    float acc = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = to_float(x[i]);
        acc = fmaf(v, v, acc);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

extern "C" __global__ void sum_squares_f32(const float* x, float* partials, size_t n) { sum_squares_body(x, partials, n); }
extern "C" __global__ void sum_squares_bf16(const __nv_bfloat16* x, float* partials, size_t n) { sum_squares_body(x, partials, n); }
