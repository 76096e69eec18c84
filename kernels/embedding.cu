// Token + position embedding: forward gather and a deterministic backward scatter-add.

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// kernels

// out[row, c] = wte[tokens[row], c] + wpe[row % seq, c]
template <typename T>
__device__ __forceinline__ void embedding_forward_body(T* __restrict__ out, const int* __restrict__ tokens, const T* __restrict__ wte,
                                                       const T* __restrict__ wpe, int rows, int seq, int channels) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * channels) return;
    const int row = idx / channels, c = idx % channels;
    const float v = to_float(wte[(size_t)tokens[row] * channels + c]) + to_float(wpe[(size_t)(row % seq) * channels + c]);
    out[idx] = from_float<T>(v);
}

// The host groups rows by token id (CSR: unique ids, bucket starts, row indices, ascending), so one
// block per distinct token sums its rows in a fixed order: no atomics, bit-identical across runs.
template <typename T>
__device__ __forceinline__ void embedding_backward_body(float* __restrict__ dwte, const T* __restrict__ dout, const int* __restrict__ unique,
                                                        const int* __restrict__ starts, const int* __restrict__ rows, int channels) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    const int bucket = blockIdx.x;
    float acc = 0.0f;
    for (int i = starts[bucket]; i < starts[bucket + 1]; i++) acc += to_float(dout[(size_t)rows[i] * channels + c]);
    dwte[(size_t)unique[bucket] * channels + c] += acc;
}

#define EMBEDDING(SUFFIX, T)                                                                                                  \
    extern "C" __global__ void embedding_forward_##SUFFIX(T* out, const int* tokens, const T* wte, const T* wpe, int rows, int seq, \
                                                          int channels) {                                                     \
        embedding_forward_body(out, tokens, wte, wpe, rows, seq, channels);                                                   \
    }                                                                                                                         \
    extern "C" __global__ void embedding_backward_##SUFFIX(float* dwte, const T* dout, const int* unique, const int* starts,   \
                                                           const int* rows, int channels) {                                   \
        embedding_backward_body(dwte, dout, unique, starts, rows, channels);                                                  \
    }
FOR_EACH_ACT(EMBEDDING)
