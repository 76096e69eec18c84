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

// Stage 1 of column sums (see common.cuh): partials[chunk, c] = Σ over the chunk's rows of src[r, c].
template <typename T>
__device__ __forceinline__ void column_partials_body(float* __restrict__ partials, const T* __restrict__ src, int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int r0 = blockIdx.y * COLUMN_CHUNK_ROWS, r1 = min(rows, r0 + COLUMN_CHUNK_ROWS);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) acc += to_float(src[(size_t)r * cols + c]);
    partials[(size_t)blockIdx.y * cols + c] = acc;
}

#define COLUMN_PARTIALS(SUFFIX, T) \
    extern "C" __global__ void column_partials_##SUFFIX(float* partials, const T* src, int rows, int cols) { column_partials_body(partials, src, rows, cols); }
FOR_EACH_ACT(COLUMN_PARTIALS)

// Stage 2: dst[c] += Σ_chunk partials[chunk, c], in chunk order.
extern "C" __global__ void sum_partials_f32(float* __restrict__ dst, const float* __restrict__ partials, int chunks, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (int i = 0; i < chunks; i++) acc += partials[(size_t)i * cols + c];
    dst[c] += acc;
}
