// Causal attention of the new rows of one sequence against the k and v its earlier rows left in
// qkv (a decoding step's KV cache): qkv (rows 0..start+n, 3C each, q | k | v with heads of hs
// inside), out (n × C). One block per (head, new row); its warps take the earlier rows in turn,
// a lane per hs/32 channels, so each k or v row is one coalesced read of hs values. The scores
// live in shared memory (one float per earlier row), the probabilities in f32, out rounded once.

#include "common.cuh"

#define CACHED_WARPS 4
// Channels of a head a lane holds: head sizes up to 32 · CACHED_LANE_VALUES (checked by the launcher).
#define CACHED_LANE_VALUES 8

template <typename T>
__device__ __forceinline__ void attention_cached_body(T* __restrict__ out, const T* __restrict__ qkv, int start, int C, int hs,
                                                      float scale) {
    extern __shared__ __align__(16) unsigned char cached_smem[];
    float* scores = reinterpret_cast<float*>(cached_smem);  // start + n: row i's scores, then probabilities
    __shared__ float partial[CACHED_WARPS][32 * CACHED_LANE_VALUES];
    __shared__ float warp_max[CACHED_WARPS];
    const int h = blockIdx.x, row = blockIdx.y, i = start + row;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const size_t stride = 3 * (size_t)C;
    const T* q = qkv + (size_t)i * stride + (size_t)h * hs;
    float qs[CACHED_LANE_VALUES];
#pragma unroll
    for (int k = 0; k < CACHED_LANE_VALUES; k++) {
        const int d = lane + 32 * k;
        qs[k] = d < hs ? scale * to_float(q[d]) : 0.0f;
    }
    float mx = -INFINITY;
    for (int j = warp; j <= i; j += CACHED_WARPS) {
        const T* key = qkv + (size_t)j * stride + C + (size_t)h * hs;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < CACHED_LANE_VALUES; k++) {
            const int d = lane + 32 * k;
            if (d < hs) s += qs[k] * to_float(key[d]);
        }
        s = warp_sum(s);  // every lane holds it
        if (lane == 0) scores[j] = s;
        mx = fmaxf(mx, s);
    }
    if (lane == 0) warp_max[warp] = mx;
    __syncthreads();  // the scores and the warps' maxima
    mx = warp_max[0];
#pragma unroll
    for (int w = 1; w < CACHED_WARPS; w++) mx = fmaxf(mx, warp_max[w]);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
        const float e = expf(scores[j] - mx);
        scores[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum);  // its barrier also publishes the probabilities
    float acc[CACHED_LANE_VALUES] = {};
    for (int j = warp; j <= i; j += CACHED_WARPS) {
        const T* value = qkv + (size_t)j * stride + 2 * (size_t)C + (size_t)h * hs;
        const float p = scores[j];
#pragma unroll
        for (int k = 0; k < CACHED_LANE_VALUES; k++) {
            const int d = lane + 32 * k;
            if (d < hs) acc[k] += p * to_float(value[d]);
        }
    }
#pragma unroll
    for (int k = 0; k < CACHED_LANE_VALUES; k++) {
        const int d = lane + 32 * k;
        if (d < hs) partial[warp][d] = acc[k];
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hs; d += blockDim.x) {
        float y = 0.0f;
#pragma unroll
        for (int w = 0; w < CACHED_WARPS; w++) y += partial[w][d];
        out[(size_t)row * C + (size_t)h * hs + d] = from_float<T>(y * inv);
    }
}

#define ATTENTION_CACHED(SUFFIX, T)                                                                                 \
    extern "C" __global__ void __launch_bounds__(32 * CACHED_WARPS)                                                 \
        attention_cached_##SUFFIX(T* out, const T* qkv, int start, int C, int hs, float scale) {                    \
        attention_cached_body(out, qkv, start, C, hs, scale);                                                       \
    }
FOR_EACH_ACT(ATTENTION_CACHED)
