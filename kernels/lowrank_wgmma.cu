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
#include "seg_gemm.cuh"

// Two warpgroups per block.
constexpr int WGMMA_THREADS = 256;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace wg {
constexpr int BM = 128, BN = 128, BK = 64, STAGES = 5, THREADS = WGMMA_THREADS;
constexpr int A_BYTES = BM * BK * 2, B_BYTES = BK * BN * 2, STAGE_BYTES = A_BYTES + B_BYTES;
// The swizzle pattern repeats every 1024 bytes and must start on a 1024-byte boundary; dynamic
// shared memory is only 16-byte aligned, so the launcher (WGMMA in src/backend/cuda/lowrank_linear)
// asks for STAGES · STAGE_BYTES + 1 KB and the base is rounded up.
}  // namespace wg

// 128-byte swizzle (the PTX ISA's Swizzle<3,4,3>): within each 1024-byte block of eight 128-byte
// rows, 16-byte chunk c of row r lives at chunk c ^ (r % 8).
//
// K-major tile (A, and B stored N × K): one 128-byte row per M (or N) index holding its 64 K values.
// Descriptor: 8-row groups 1024 bytes apart (stride byte offset); leading byte offset unused.
__device__ __forceinline__ uint32_t kmajor_offset(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }
// N-major tile (B stored K × N): one 128-byte row per K index holding 64 N values; the 128 N
// columns are two such 64 × 64 blocks 8 KB apart (leading byte offset), 8-K-row groups 1024 bytes
// apart (stride byte offset).
__device__ __forceinline__ uint32_t nmajor_offset(int k, int nchunk) {
    return (nchunk >> 3) * 8192 + k * 128 + (((nchunk & 7) ^ (k & 7)) << 4);
}

// Matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address, leading and stride byte
// offsets, each encoded as (x & 0x3FFFF) >> 4, and the 128-byte swizzle mode (1) in bits 62–63.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    auto enc = [](uint32_t x) { return (uint64_t)((x & 0x3FFFF) >> 4); };
    return enc(addr) | enc(lbo) << 16 | enc(sbo) << 32 | 1ull << 62;
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

// One 64-wide K step of this warpgroup: four k16 wgmmas. K-major operands advance 32 bytes per k16
// inside the swizzled row (the hardware applies the XOR to the final address); the N-major B
// advances two 8-row groups (2 KB).
template <bool NT>
__device__ __forceinline__ void wg_mma_stage(float (&d)[64], uint32_t sa, uint32_t sb, int warpgroup, uint32_t lbo,
                                             uint32_t sbo) {
    const uint32_t a0 = sa + warpgroup * 64 * 128;
#pragma unroll
    for (int kk = 0; kk < wg::BK / 16; ++kk) {
        const uint64_t da = smem_desc(a0 + kk * 32, 16, 1024);
        if constexpr (NT) wgmma_m64n128k16<0>(d, da, smem_desc(sb + kk * 32, 16, 1024));
        else wgmma_m64n128k16<1>(d, da, smem_desc(sb + kk * 2048, lbo, sbo));
    }
}

template <bool V>
struct Bool {
    static constexpr bool value = V;
};

template <bool NT0, bool NT1, class OutT>
__device__ __forceinline__ void seg_gemm_wgmma(const SegGemmParams& p) {
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint32_t s0 = (smem_addr(smem) + 1023u) & ~1023u;
    const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
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
        wg_mma_stage<decltype(nt)::value>(d, stage_a(tile), stage_b(tile), warpgroup, p.nmajor_lbo, p.nmajor_sbo);
        wgmma_commit();
        wgmma_wait<1>();  // leaves this tile's batch running across the next barrier
    };
    // Two loops, not a branch per tile, so each wgmma variant sits in straight-line code.
    int tile = 0;
    for (; tile < tiles0; ++tile) step(tile, Bool<NT0>{});
    for (; tile < tiles; ++tile) step(tile, Bool<NT1>{});
    wgmma_wait<0>();
    fence_accumulators(d);

    // Epilogue: the m64nNk16 accumulator layout is mma.sync's m16n8 one per warp (rows 16·warp +
    // lane/4 and +8) repeated every 8 columns: d[4j], d[4j+1] at columns 8j + 2·(lane % 4) + {0, 1}.
    OutT* c = static_cast<OutT*>(p.c);
    const int row0 = m0 + warpgroup * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < wg::BN / 8; ++j) {
        const int col = n0 + j * 8 + (lane % 4) * 2;
        if (col >= p.n_store) continue;
        const float b0 = p.bias ? to_float(p.bias[col]) : 0.0f, b1 = p.bias ? to_float(p.bias[col + 1]) : 0.0f;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = row0 + half * 8;
            if (row < p.m) store_pair(c + (size_t)row * p.ldc + col, d[4 * j + 2 * half] + b0, d[4 * j + 2 * half + 1] + b1);
        }
    }
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
