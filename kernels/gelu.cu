// GPT-2's tanh-approximated GELU, forward and backward (in place on the gradient).

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// kernels

template <typename T>
__device__ __forceinline__ void gelu_forward_body(T* __restrict__ out, const T* __restrict__ inp, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = from_float<T>(gelu_tanh(to_float(inp[i])));
}

// d ← d · GELU'(x)
template <typename T>
__device__ __forceinline__ void gelu_backward_body(T* __restrict__ d, const T* __restrict__ inp, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    d[i] = from_float<T>(to_float(d[i]) * gelu_tanh_grad(to_float(inp[i])));
}

#define GELU(SUFFIX, T)                                                                                                    \
    extern "C" __global__ void gelu_forward_##SUFFIX(T* out, const T* inp, size_t n) { gelu_forward_body(out, inp, n); }   \
    extern "C" __global__ void gelu_backward_##SUFFIX(T* d, const T* inp, size_t n) { gelu_backward_body(d, inp, n); }
FOR_EACH_ACT(GELU)
