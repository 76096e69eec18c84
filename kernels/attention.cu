// Causal multi-head attention pieces around cuBLASLt's batched GEMMs (llm.c's cuDNN-free path):
// qkv (B,T,3,NH,hs) is permuted into q, k, v (B,NH,T,hs); scores = q·kᵀ are turned into causal
// softmax probabilities in place; the heads' outputs (B,NH,T,hs) are permuted back to (B,T,C).

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// kernels

// q, k, v[b, h, t, d] = qkv[b, t, {0,1,2}, h, d]
template <typename T>
__device__ __forceinline__ void permute_qkv_body(T* __restrict__ q, T* __restrict__ k, T* __restrict__ v, const T* __restrict__ qkv, int B, int Tn,
                                                 int NH, int hs) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * NH * Tn * hs) return;
    const int d = idx % hs, t = (idx / hs) % Tn, h = (idx / ((size_t)hs * Tn)) % NH, b = idx / ((size_t)hs * Tn * NH);
    const int C = NH * hs;
    const size_t src = ((size_t)b * Tn + t) * 3 * C + (size_t)h * hs + d;
    q[idx] = qkv[src];
    k[idx] = qkv[src + C];
    v[idx] = qkv[src + 2 * C];
}

// dqkv[b, t, {0,1,2}, h, d] = dq, dk, dv[b, h, t, d] (the inverse of permute_qkv)
template <typename T>
__device__ __forceinline__ void permute_qkv_backward_body(T* __restrict__ dqkv, const T* __restrict__ dq, const T* __restrict__ dk,
                                                          const T* __restrict__ dv, int B, int Tn, int NH, int hs) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * NH * Tn * hs) return;
    const int d = idx % hs, t = (idx / hs) % Tn, h = (idx / ((size_t)hs * Tn)) % NH, b = idx / ((size_t)hs * Tn * NH);
    const int C = NH * hs;
    const size_t dst = ((size_t)b * Tn + t) * 3 * C + (size_t)h * hs + d;
    dqkv[dst] = dq[idx];
    dqkv[dst + C] = dk[idx];
    dqkv[dst + 2 * C] = dv[idx];
}

// out[b, t, h, d] = heads[b, h, t, d]; with `backward`, the other direction.
template <typename T>
__device__ __forceinline__ void unpermute_body(T* __restrict__ out, T* __restrict__ heads, int B, int Tn, int NH, int hs, bool backward) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * NH * Tn * hs) return;
    const int d = idx % hs, t = (idx / hs) % Tn, h = (idx / ((size_t)hs * Tn)) % NH, b = idx / ((size_t)hs * Tn * NH);
    const size_t o = ((size_t)b * Tn + t) * NH * hs + (size_t)h * hs + d;
    if (backward) heads[idx] = out[o];
    else out[o] = heads[idx];
}

// In place on each (T × T) score matrix: row t becomes softmax(scale · scores[t, 0..=t]), zero after.
// One warp per row.
template <typename T>
__device__ __forceinline__ void causal_softmax_body(T* __restrict__ att, int rows, int Tn, float scale) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const int t = row % Tn;
    T* x = att + (size_t)row * Tn;
    float mx = -INFINITY;
    for (int s = lane; s <= t; s += 32) mx = fmaxf(mx, scale * to_float(x[s]));
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
    for (int s = lane; s <= t; s += 32) sum += expf(scale * to_float(x[s]) - mx);
    const float inv = 1.0f / warp_sum(sum);
    for (int s = lane; s < Tn; s += 32) x[s] = from_float<T>(s <= t ? expf(scale * to_float(x[s]) - mx) * inv : 0.0f);
}

// In place on datt: dscores[t, s] = scale · p[t, s] · (datt[t, s] − Σ_j p[t, j] · datt[t, j]) for s ≤ t.
template <typename T>
__device__ __forceinline__ void causal_softmax_backward_body(T* __restrict__ datt, const T* __restrict__ att, int rows, int Tn, float scale) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const int t = row % Tn;
    T* d = datt + (size_t)row * Tn;
    const T* p = att + (size_t)row * Tn;
    float dot = 0.0f;
    for (int s = lane; s <= t; s += 32) dot += to_float(p[s]) * to_float(d[s]);
    dot = warp_sum(dot);
    for (int s = lane; s < Tn; s += 32) d[s] = from_float<T>(s <= t ? scale * to_float(p[s]) * (to_float(d[s]) - dot) : 0.0f);
}

#define ATTENTION(SUFFIX, T)                                                                                                    \
    extern "C" __global__ void permute_qkv_##SUFFIX(T* q, T* k, T* v, const T* qkv, int B, int Tn, int NH, int hs) {            \
        permute_qkv_body(q, k, v, qkv, B, Tn, NH, hs);                                                                          \
    }                                                                                                                           \
    extern "C" __global__ void permute_qkv_backward_##SUFFIX(T* dqkv, const T* dq, const T* dk, const T* dv, int B, int Tn, int NH, \
                                                             int hs) {                                                          \
        permute_qkv_backward_body(dqkv, dq, dk, dv, B, Tn, NH, hs);                                                             \
    }                                                                                                                           \
    extern "C" __global__ void unpermute_##SUFFIX(T* out, T* heads, int B, int Tn, int NH, int hs, int backward) {             \
        unpermute_body(out, heads, B, Tn, NH, hs, backward != 0);                                                               \
    }                                                                                                                           \
    extern "C" __global__ void causal_softmax_##SUFFIX(T* att, int rows, int Tn, float scale) { causal_softmax_body(att, rows, Tn, scale); } \
    extern "C" __global__ void causal_softmax_backward_##SUFFIX(T* datt, const T* att, int rows, int Tn, float scale) {        \
        causal_softmax_backward_body(datt, att, rows, Tn, scale);                                                               \
    }
FOR_EACH_ACT(ATTENTION)
