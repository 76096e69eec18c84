// Elementwise ops of a training step: the residual connection, a linear layer's bias, a difference
// (output minus target) and ReLU forward and backward (the function-aware low-rank init fits through them).

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

// out -= x
template <typename T>
__device__ __forceinline__ void sub_body(T* __restrict__ out, const T* __restrict__ x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = from_float<T>(to_float(out[i]) - to_float(x[i]));
}

// out = max(inp, 0)
template <typename T>
__device__ __forceinline__ void relu_forward_body(T* __restrict__ out, const T* __restrict__ inp, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = from_float<T>(fmaxf(to_float(inp[i]), 0.0f));
}

// d ← d · [inp > 0]
template <typename T>
__device__ __forceinline__ void relu_backward_body(T* __restrict__ d, const T* __restrict__ inp, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (!(to_float(inp[i]) > 0.0f)) d[i] = from_float<T>(0.0f);
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
    extern "C" __global__ void add_bias_##SUFFIX(T* out, const T* bias, int rows, int cols) { add_bias_body(out, bias, rows, cols); } \
    extern "C" __global__ void sub_##SUFFIX(T* out, const T* x, size_t n) { sub_body(out, x, n); }                           \
    extern "C" __global__ void relu_forward_##SUFFIX(T* out, const T* inp, size_t n) { relu_forward_body(out, inp, n); }     \
    extern "C" __global__ void relu_backward_##SUFFIX(T* d, const T* inp, size_t n) { relu_backward_body(d, inp, n); }
FOR_EACH_ACT(ELEMENTWISE)
