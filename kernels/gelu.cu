// GPT-2's tanh-approximated GELU, forward and backward (in place on the gradient).

#include "common.cuh"

#define GELU_SCALING 0.7978845608028654f  // sqrt(2 / pi)

// ---------------------------------------------------------------------------------------------
// kernels

template <typename T>
__device__ __forceinline__ void gelu_forward_body(T* __restrict__ out, const T* __restrict__ inp, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = to_float(inp[i]);
    const float cube = 0.044715f * x * x * x;
    out[i] = from_float<T>(0.5f * x * (1.0f + tanhf(GELU_SCALING * (x + cube))));
}

// d ← d · GELU'(x)
template <typename T>
__device__ __forceinline__ void gelu_backward_body(T* __restrict__ d, const T* __restrict__ inp, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = to_float(inp[i]);
    const float arg = GELU_SCALING * (x + 0.044715f * x * x * x);
    const float th = tanhf(arg);
    const float sech2 = 1.0f - th * th;
    const float local = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALING * (1.0f + 3.0f * 0.044715f * x * x);
    d[i] = from_float<T>(to_float(d[i]) * local);
}

#define GELU(SUFFIX, T)                                                                                                    \
    extern "C" __global__ void gelu_forward_##SUFFIX(T* out, const T* inp, size_t n) { gelu_forward_body(out, inp, n); }   \
    extern "C" __global__ void gelu_backward_##SUFFIX(T* d, const T* inp, size_t n) { gelu_backward_body(d, inp, n); }
FOR_EACH_ACT(GELU)
