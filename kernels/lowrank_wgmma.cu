// The segmented GEMM of lowrank_linear.cu on Hopper's warpgroup tensor-core instruction (wgmma),
// which issues at about twice mma.sync's rate on sm_90: C = Σ_s A_s·B_s (+ bias) with the same
// SegGemmParams, the same zero-filling loads and the same epilogue, so the launcher swaps one for
// the other per call. Compiled for sm_90a only (wgmma does not exist elsewhere); the sm_80 and PTX
// images carry an empty body, never launched (src/backend/cuda/lowrank_linear picks this file only
// on compute capability 9.x).
//
// Block tile 128 × 128 × 64, two warpgroups (256 threads), each owning 64 rows × 128 columns:
// per 64-wide K step, four m64n128k16 wgmmas per warpgroup, both operands read from shared memory
// through matrix descriptors. Loads are cp.async (every thread, as in the mma.sync kernel) into the
// 128-byte-swizzled layouts wgmma reads without bank conflicts. 5 stages of 32 KB: while one K step
// multiplies, the previous one may still be in the tensor cores (one wgmma batch stays in flight
// across the barrier) and three more are loading.
#include "wgmma.cuh"

// Two warpgroups per block.
constexpr int WGMMA_THREADS = 256;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace wg {
constexpr int BM = 128, BN = 128, BK = WG_BK, STAGES = 5, THREADS = WGMMA_THREADS;
constexpr int A_BYTES = BM * BK * 2, B_BYTES = BK * BN * 2, STAGE_BYTES = A_BYTES + B_BYTES;
// The swizzle pattern repeats every 1024 bytes and must start on a 1024-byte boundary; dynamic
// shared memory is only 16-byte aligned, so the launcher (WGMMA in src/backend/cuda/lowrank_linear)
// asks for STAGES · STAGE_BYTES + 1 KB and the base is rounded up.
}  // namespace wg

// Shared-memory offsets of the swizzled layouts (wgmma.cuh): chunk `chunk` (8 values) of K-major
// row `row`, and chunk `nchunk` of N-major K row `k`.
__device__ __forceinline__ uint32_t kmajor_offset(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }
__device__ __forceinline__ uint32_t nmajor_offset(int k, int nchunk) {
    return (nchunk >> 3) * 8192 + k * 128 + (((nchunk & 7) ^ (k & 7)) << 4);
}

// A tile (128 × 64, row-major) K-major into smem; rows past m and chunks past k zero-filled.
__device__ __forceinline__ void wg_load_a(uint32_t dst, const bf16* a, int lda, int m, int k, int m0, int k0) {
#pragma unroll
    for (int it = 0; it < wg::BM * 8 / wg::THREADS; ++it) {
        const int i = it * wg::THREADS + threadIdx.x, row = i / 8, chunk = i % 8;
        const bool pred = m0 + row < m && k0 + chunk * 8 < k;
        const bf16* src = pred ? a + (size_t)(m0 + row) * lda + k0 + chunk * 8 : a;
        cp_async_16(dst + kmajor_offset(row, chunk), src, pred);
    }
}

// B tile: NT (stored N × K) K-major, NN (stored K × N) N-major; the same predicates as the mma.sync
// kernel's load_b, so the two read exactly the same elements.
template <bool NT>
__device__ __forceinline__ void wg_load_b(uint32_t dst, const bf16* b, int ldb, int n_valid, int k, int n0, int k0) {
#pragma unroll
    for (int it = 0; it < wg::BK * wg::BN / 8 / wg::THREADS; ++it) {
        const int i = it * wg::THREADS + threadIdx.x;
        if constexpr (NT) {
            const int row = i / 8, chunk = i % 8, gn = n0 + row, gk = k0 + chunk * 8;
            const bool pred = gn < n_valid && gk < k;
            cp_async_16(dst + kmajor_offset(row, chunk), pred ? b + (size_t)gn * ldb + gk : b, pred);
        } else {
            const int row = i / 16, chunk = i % 16, gn = n0 + chunk * 8, gk = k0 + row;
            const bool pred = gn < n_valid && gk < k;
            cp_async_16(dst + nmajor_offset(row, chunk), pred ? b + (size_t)gk * ldb + gn : b, pred);
        }
    }
}

template <bool NT0, bool NT1, class OutT>
__device__ __forceinline__ void seg_gemm_wgmma(const SegGemmParams& p) {
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint32_t s0 = (smem_addr(smem) + 1023u) & ~1023u;
    const int warpgroup = threadIdx.x / 128;
    const int m0 = blockIdx.y * wg::BM, n0 = blockIdx.x * wg::BN;
    const int tiles0 = (p.k[0] + wg::BK - 1) / wg::BK, tiles = tiles0 + (p.k[1] + wg::BK - 1) / wg::BK;
    auto stage_a = [&](int tile) { return s0 + (tile % wg::STAGES) * wg::STAGE_BYTES; };
    auto stage_b = [&](int tile) { return stage_a(tile) + wg::A_BYTES; };
    auto load = [&](int tile) {
        if (tile >= tiles0) {
            const int k0 = (tile - tiles0) * wg::BK;
            wg_load_a(stage_a(tile), p.a[1], p.lda[1], p.m, p.k[1], m0, k0);
            wg_load_b<NT1>(stage_b(tile), p.b[1], p.ldb[1], p.n_valid, p.k[1], n0, k0);
        } else {
            const int k0 = tile * wg::BK;
            wg_load_a(stage_a(tile), p.a[0], p.lda[0], p.m, p.k[0], m0, k0);
            wg_load_b<NT0>(stage_b(tile), p.b[0], p.ldb[0], p.n_valid, p.k[0], n0, k0);
        }
    };

    float d[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0.0f;
#pragma unroll
    for (int s = 0; s < wg::STAGES - 2; ++s) {
        if (s < tiles) load(s);
        cp_async_commit();
    }
    // Tile t's stage is refilled at iteration t + 2, after the barrier that follows every
    // warpgroup's wait for its wgmmas of tile t (at iteration t + 1): loads run STAGES − 2 ahead.
    auto step = [&](int tile, auto nt) {
        cp_async_wait<wg::STAGES - 3>();  // this thread's part of the tile has landed,
        fence_proxy_async();              // is visible to the async proxy,
        __syncthreads();                  // and so is everyone's; tile − 2's wgmmas are done
        if (tile + wg::STAGES - 2 < tiles) load(tile + wg::STAGES - 2);
        cp_async_commit();
        wgmma_fence();
        wg_mma_ktile<decltype(nt)::value, wg::BN>(d, stage_a(tile) + warpgroup * 64 * 128, stage_b(tile), p.nmajor_lbo, p.nmajor_sbo);
        wgmma_commit();
        wgmma_wait<1>();  // leaves this tile's batch running across the next barrier
    };
    // Two loops, not a branch per tile, so each wgmma variant sits in straight-line code.
    int tile = 0;
    for (; tile < tiles0; ++tile) step(tile, Bool<NT0>{});
    for (; tile < tiles; ++tile) step(tile, Bool<NT1>{});
    wgmma_wait<0>();
    fence_accumulators(d);

    wg_store<wg::BN, OutT>(p, d, m0 + warpgroup * 64, n0);
}
#define WGMMA_BODY(NT0, NT1, OutT) seg_gemm_wgmma<NT0, NT1, OutT>(p);
#else
// Never launched off sm_90a (the launcher picks wgmma on compute capability 9 only, whose driver
// loads the sm_90a cubin); should the PTX ever be JIT-compiled there, fail loudly rather than
// leave y or dx unwritten.
#define WGMMA_BODY(NT0, NT1, OutT) __trap();
#endif

// Entry points, as in lowrank_linear.cu: y = [x | t]·[W0 ; Vt] (both NN), dx = [dy | s]·[W0ᵀ ; Ut]
// (W0 read as NT, Ut as NN). One block per SM (160 KB of shared memory).
#define SEG_GEMM_WGMMA(name, NT0, NT1, OutT) \
    extern "C" __global__ void __launch_bounds__(WGMMA_THREADS, 1) name(const SegGemmParams p) { WGMMA_BODY(NT0, NT1, OutT) }
SEG_GEMM_WGMMA(lowrank_y_wgmma_bf16, false, false, bf16)
SEG_GEMM_WGMMA(lowrank_y_wgmma_f32, false, false, float)
SEG_GEMM_WGMMA(lowrank_dx_wgmma_bf16, true, false, bf16)
SEG_GEMM_WGMMA(lowrank_dx_wgmma_f32, true, false, float)
