// The fused classifier (llm.c's fused_classifier): softmax over the real vocabulary, the per-token
// cross-entropy loss, and dlogits = (softmax − onehot)·dloss written in place of the logits, so the
// (B·T × 50304) probabilities are never stored separately.

#include "common.cuh"

// One block per row: a row is 50304 wide, so 512 threads give ~100 elements each and three passes
// (max, sum, write) stay in L2.
#define CLASSIFIER_BLOCK 512

// ---------------------------------------------------------------------------------------------
// kernels

template <typename T>
__device__ __forceinline__ void fused_classifier_body(T* __restrict__ logits, float* __restrict__ losses, const int* __restrict__ targets,
                                                      int cols, int vocab, float dloss) {
    const int row = blockIdx.x;
    T* x = logits + (size_t)row * cols;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, to_float(x[i]));
    mx = block_max(mx);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(to_float(x[i]) - mx);
    sum = block_sum(sum);
    const int target = targets[row];
    const float target_logit = to_float(x[target]);
    __syncthreads();  // every thread has read x[target] before it is overwritten below
    if (threadIdx.x == 0) losses[row] = logf(sum) + mx - target_logit;
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float p = i < vocab ? expf(to_float(x[i]) - mx) * inv : 0.0f;
        const float onehot = i == target ? 1.0f : 0.0f;
        x[i] = from_float<T>(i < vocab ? (p - onehot) * dloss : 0.0f);
    }
}

#define CLASSIFIER(SUFFIX, T)                                                                                           \
    extern "C" __global__ void fused_classifier_##SUFFIX(T* logits, float* losses, const int* targets, int cols, int vocab, \
                                                         float dloss) {                                                 \
        fused_classifier_body(logits, losses, targets, cols, vocab, dloss);                                             \
    }
FOR_EACH_ACT(CLASSIFIER)
