// Elementwise adds of a training step: the residual connection and a linear layer's bias.

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// kernels

// out += x
template <typename T>
__device__ __forceinline__ void add_body(T* __restrict__ out, const T* __restrict__ x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = from_float<T>(to_float(out[i]) + to_float(x[i]));
}

// out[r, c] += bias[c]
template <typename T>
__device__ __forceinline__ void add_bias_body(T* __restrict__ out, const T* __restrict__ bias, int rows, int cols) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    out[i] = from_float<T>(to_float(out[i]) + to_float(bias[i % cols]));
}

#define ELEMENTWISE(SUFFIX, T)                                                                                               \
    extern "C" __global__ void add_##SUFFIX(T* out, const T* x, size_t n) { add_body(out, x, n); }                           \
    extern "C" __global__ void add_bias_##SUFFIX(T* out, const T* bias, int rows, int cols) { add_bias_body(out, bias, rows, cols); }
FOR_EACH_ACT(ELEMENTWISE)
