// Fused optimiser updates, AdamW and heavy ball: one pass over f32 master weights, gradients and
// optimiser state; optionally writes the bf16 compute copy in the same pass, so the update costs
// one read and one write of each array.
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// kernels

// lerp(a, b, w) = a + w·(b − a) as two FMAs: fewer rounding steps than the textbook form (llm.c).
__device__ __forceinline__ float lerp(float start, float end, float weight) {
    return fmaf(weight, end, fmaf(-weight, start, start));
}

extern "C" __global__ void adamw_f32(float* __restrict__ params, __nv_bfloat16* __restrict__ copy_bf16,
                                     float* __restrict__ copy_f32, const float* __restrict__ grads,
                                     float* __restrict__ m, float* __restrict__ v, size_t n, float lr,
                                     float beta1, float beta2, float bc1, float bc2, float eps,
                                     float weight_decay, float grad_scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float grad = grads[i] * grad_scale;
    float mi = lerp(grad, m[i], beta1);
    float vi = lerp(grad * grad, v[i], beta2);
    m[i] = mi;
    v[i] = vi;
    float p = params[i];
    p -= lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + weight_decay * p);
    params[i] = p;
    if (copy_bf16) copy_bf16[i] = __float2bfloat16_rn(p);
    if (copy_f32) copy_f32[i] = p;
}

// Heavy ball in friction form (DLRA heavy ball, SCIENCE.md §3): z ← (1 − γ)·z − h·g, then
// θ ← θ + h·z − h·wd·θ.
extern "C" __global__ void heavy_ball_f32(float* __restrict__ params, __nv_bfloat16* __restrict__ copy_bf16,
                                          float* __restrict__ copy_f32, const float* __restrict__ grads,
                                          float* __restrict__ z, size_t n, float h, float friction,
                                          float weight_decay, float grad_scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float zi = (1.0f - friction) * z[i] - h * (grads[i] * grad_scale);
    z[i] = zi;
    float p = params[i];
    p += h * (zi - weight_decay * p);
    params[i] = p;
    if (copy_bf16) copy_bf16[i] = __float2bfloat16_rn(p);
    if (copy_f32) copy_f32[i] = p;
}
