// LayerNorm over the channels of each row (eps 1e-5, biased variance): forward saving mean and
// rstd, backward accumulating into the residual gradient and the (f32) weight and bias gradients.

#include "common.cuh"

#define LN_EPS 1e-5f
// One warp per row: rows are 768–1280 wide, so 32 lanes stride the row with coalesced loads and
// the row statistics need only warp shuffles, no shared memory.
#define LN_ROWS_PER_BLOCK 8

// ---------------------------------------------------------------------------------------------
// kernels

template <typename T>
__device__ __forceinline__ void layernorm_forward_body(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd, const T* __restrict__ inp,
                                                       const T* __restrict__ weight_bias, int rows, int cols) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * LN_ROWS_PER_BLOCK + threadIdx.x / 32;
    if (row >= rows) return;
    const T* x = inp + (size_t)row * cols;
    const T* w = weight_bias;
    const T* b = weight_bias + cols;
    float sum = 0.0f;
    for (int c = lane; c < cols; c += 32) sum += to_float(x[c]);
    const float m = warp_sum(sum) / cols;
    // Two passes over the row (it is in L1/L2): the variance of centred values loses no precision.
    float var = 0.0f;
    for (int c = lane; c < cols; c += 32) {
        const float d = to_float(x[c]) - m;
        var += d * d;
    }
    const float r = rsqrtf(warp_sum(var) / cols + LN_EPS);
    T* o = out + (size_t)row * cols;
    for (int c = lane; c < cols; c += 32) o[c] = from_float<T>((to_float(x[c]) - m) * r * to_float(w[c]) + to_float(b[c]));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

// dinp += rstd · (dnorm − mean(dnorm) − x̂ · mean(dnorm · x̂)), dnorm = w · dout
template <typename T>
__device__ __forceinline__ void layernorm_backward_input_body(T* __restrict__ dinp, const T* __restrict__ dout, const T* __restrict__ inp,
                                                              const T* __restrict__ weight_bias, const float* __restrict__ mean,
                                                              const float* __restrict__ rstd, int rows, int cols) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * LN_ROWS_PER_BLOCK + threadIdx.x / 32;
    if (row >= rows) return;
    const size_t base = (size_t)row * cols;
    const float m = mean[row], r = rstd[row];
    float dnorm_mean = 0.0f, dnorm_xhat_mean = 0.0f;
    for (int c = lane; c < cols; c += 32) {
        const float xhat = (to_float(inp[base + c]) - m) * r;
        const float dnorm = to_float(weight_bias[c]) * to_float(dout[base + c]);
        dnorm_mean += dnorm;
        dnorm_xhat_mean += dnorm * xhat;
    }
    dnorm_mean = warp_sum(dnorm_mean) / cols;
    dnorm_xhat_mean = warp_sum(dnorm_xhat_mean) / cols;
    for (int c = lane; c < cols; c += 32) {
        const float xhat = (to_float(inp[base + c]) - m) * r;
        const float dnorm = to_float(weight_bias[c]) * to_float(dout[base + c]);
        const float dx = (dnorm - dnorm_mean - xhat * dnorm_xhat_mean) * r;
        dinp[base + c] = from_float<T>(to_float(dinp[base + c]) + dx);
    }
}

// Stage 1 of the weight/bias gradients (stage 2 is reduce.cu's sum_partials_f32):
// partials_w[chunk, c] = Σ dout·x̂ and partials_b[chunk, c] = Σ dout over the chunk's rows.
template <typename T>
__device__ __forceinline__ void layernorm_param_partials_body(float* __restrict__ partials_w, float* __restrict__ partials_b, const T* __restrict__ dout,
                                                              const T* __restrict__ inp, const float* __restrict__ mean, const float* __restrict__ rstd,
                                                              int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int r0 = blockIdx.y * COLUMN_CHUNK_ROWS, r1 = min(rows, r0 + COLUMN_CHUNK_ROWS);
    float dw = 0.0f, db = 0.0f;
    for (int r = r0; r < r1; r++) {
        const size_t i = (size_t)r * cols + c;
        const float d = to_float(dout[i]);
        dw += d * (to_float(inp[i]) - mean[r]) * rstd[r];
        db += d;
    }
    partials_w[(size_t)blockIdx.y * cols + c] = dw;
    partials_b[(size_t)blockIdx.y * cols + c] = db;
}

#define LAYERNORM(SUFFIX, T)                                                                                                      \
    extern "C" __global__ void layernorm_forward_##SUFFIX(T* out, float* mean, float* rstd, const T* inp, const T* weight_bias, int rows, \
                                                          int cols) {                                                             \
        layernorm_forward_body(out, mean, rstd, inp, weight_bias, rows, cols);                                                    \
    }                                                                                                                             \
    extern "C" __global__ void layernorm_backward_input_##SUFFIX(T* dinp, const T* dout, const T* inp, const T* weight_bias,       \
                                                                 const float* mean, const float* rstd, int rows, int cols) {      \
        layernorm_backward_input_body(dinp, dout, inp, weight_bias, mean, rstd, rows, cols);                                      \
    }                                                                                                                             \
    extern "C" __global__ void layernorm_param_partials_##SUFFIX(float* partials_w, float* partials_b, const T* dout, const T* inp, \
                                                                 const float* mean, const float* rstd, int rows, int cols) {      \
        layernorm_param_partials_body(partials_w, partials_b, dout, inp, mean, rstd, rows, cols);                                 \
    }
FOR_EACH_ACT(LAYERNORM)
