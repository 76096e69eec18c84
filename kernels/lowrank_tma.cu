// The segmented GEMM of lowrank_linear.cu on Hopper as cuBLAS runs its own: the copy engine (TMA)
// loads the tiles and warpgroups specialise. C = Σ_s A_s·B_s (+ bias), the same SegGemmParams and
// epilogue as the other two mainloops, plus one tensor map per operand (encoded by the launcher,
// src/backend/cuda/lowrank_linear/tma.rs), so the launcher swaps one for another per call.
//
// Why a third mainloop: in lowrank_wgmma.cu every thread issues cp.async for its share of each
// tile and the block meets at a barrier per K tile, so the tensor cores idle while address
// arithmetic, the barrier and the epilogue's registers compete with them. Here one thread of a
// producer warpgroup issues a few bulk tensor copies per tile (the engine zero-fills what lies
// outside the tensors, so ragged edges cost nothing), and two consumer warpgroups only wait on
// mbarriers and issue wgmmas; register file moves from the producer to them (setmaxnreg), which
// allows a 128 × 256 tile (128 f32 accumulators per consumer thread) that halves the shared-memory
// reads per FLOP of the 128 × 128 one. Stages are handed back through "empty" mbarriers once the
// wgmmas that read them have retired: no block-wide barrier in the K loop.
//
// Block: 384 threads = producer warpgroup 0, consumers 1 and 2 (rows 0–63 and 64–127 of the
// tile; under ping-pong, alternate whole tiles). Tile 128 × BN × 64, BN = 256 (4 stages of 48 KB) or 128 (6 stages of 32 KB), picked per
// call by the launcher from the grid's waves. Blocks are persistent, one per SM, each walking
// output tiles (TileWalk): the producer loads the next tile while the consumers write the last,
// so the pipeline's fill is not paid once per tile. The epilogue still is: both consumers store
// at once while the tensor cores wait. The ping-pong schedule (CUTLASS's
// KernelTmaWarpSpecializedPingpong), the `pingpong` entry points, hides it: each consumer takes
// every other 128 × 128 tile whole and the two take turns at the tensor cores, one's epilogue
// under the other's mainloop, for a feed of 0.031 B per multiply-add from L2 against the 128 × 256
// tile's 0.023 (benches/STATUS.md, "what the first profile decides"). Which pays is for a GPU to
// say: `LOWRANK_LOWRANK_IMPL=pingpong` runs it, `bench` times it beside the default. The other
// candidate, the `mc` entry points (`LOWRANK_LOWRANK_IMPL=multicast`), cuts that feed instead:
// clusters of two blocks on vertically adjacent tiles, each block's producer loading its own A and
// half of the B tile both share, multicast into both blocks' stages (0.015 B per multiply-add on
// 128 × 256). A stage then has four readers, the two consumers of each block, whose releases reach
// both producers (mbarrier arrivals on the peer block's barrier); the blocks meet at a cluster
// barrier after initialising their barriers and again before exiting.
#include "wgmma.cuh"

constexpr int TMA_THREADS = 384, TMA_BM = 128;
// The register hand-off (setmaxnreg): the producer warpgroup gives back down to PRODUCER_REGS,
// the two consumers take up to CONSUMER_REGS, from the block's own pool of what it was launched
// with, TMA_THREADS × LAUNCH_REGS: `setmaxnreg.inc` waits until the pool holds enough, so a split
// the pool cannot pay for hangs the consumers at their first instruction. LAUNCH_REGS is what
// `__launch_bounds__(TMA_THREADS, 1)` allows (65536 / 384, in ptxas's steps of 8), and what ptxas
// gives these kernels (a test of the build's ptxas report checks it: kernels::tests).
constexpr int PRODUCER_REGS = 40, CONSUMER_REGS = 232, LAUNCH_REGS = 65536 / TMA_THREADS / 8 * 8;
static_assert(128 * (LAUNCH_REGS - PRODUCER_REGS) >= 256 * (CONSUMER_REGS - LAUNCH_REGS),
              "the consumers' registers must come from what the producer gives back");

// The kernel's parameter: tensor maps of A_0, A_1, B_0, B_1 (a segment with k = 0 borrows the
// other's maps and issues no copy), then the contract the other mainloops read. Passed as a
// __grid_constant__ so the maps stay in parameter space, where the copy engine may read them.
struct TmaGemmParams {
    TmaMap a[2], b[2];
    SegGemmParams p;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// PP: the ping-pong schedule, whose consumer holds a whole tile (two 64-row halves of BN / 2
// accumulators each), so only the 128-wide tile fits its registers.
// CL: CTAs per cluster. At 2 (the `mc` entry points) the cluster's two blocks take vertically
// adjacent tiles, which share their B tile: each block's producer loads its own A and half of B,
// and multicasts that half into both blocks' stage, so B is read from L2 once per pair.
template <int BN, bool PP, int CL>
struct TmaTile {
    static_assert(!PP || BN == 128, "a ping-pong consumer holds 128 × BN accumulators: BN = 128");
    static_assert(CL == 1 || (CL == 2 && !PP), "multicast clusters of two, on the cooperative schedule");
    static constexpr int BM = TMA_BM, BK = WG_BK, STAGES = BN == 256 ? 4 : 6;
    static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BK * BN * 2, STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr int NN_BOX_BYTES = BK * 64 * 2;  // an NN B box, 64 × 64; BN / 64 of them fill B
    static constexpr int NT_BOX_BYTES = B_BYTES / CL;  // an NT B box, 64 × BN / CL (K innermost)
    // Warpgroups reading each stage, in every block the producer fills it for: both consumers
    // (their halves of one tile), or under ping-pong the one whose tile it holds; and in a cluster
    // the peer block's as well, whose stage this producer's multicast also fills. The count of
    // arrivals its empty barrier waits for.
    static constexpr int STAGE_READERS = (PP ? 1 : 2) * CL;
    // Stages from a 1024-byte aligned base (the swizzle atom; dynamic shared memory is only
    // 16-byte aligned, so the launcher adds 1 KB), then the full and empty mbarriers, and under
    // ping-pong the two consumers' turn barriers.
    static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024 + 2 * STAGES * 8 + (PP ? 2 * 8 : 0);
    // The launcher asks for exactly this (TMA256 / TMA128 / PINGPONG in
    // src/backend/cuda/lowrank_linear/tiles.rs); Hopper gives a block at most 227 KB.
    static_assert(SMEM_BYTES <= 227 * 1024, "the stages must fit Hopper's shared memory");
};

// The block's output tiles: persistent blocks (one per SM, or fewer when there are fewer tiles)
// take units first, first + stride, ... in row-major order (consecutive blocks share A's row block
// while walking B, which stays in L2), a unit being one tile, or in a cluster of CL blocks CL
// vertically adjacent tiles, the one at `rank` this block's: first and stride count clusters.
// Producer and consumers walk the same tiles and count K tiles `it` across them (under ping-pong a
// consumer walks every other tile, its count set to its tile's first: tma_consume), so stage
// it % STAGES and its phase (it / STAGES) carry over: the producer fills the next tile's stages
// while the consumers write the last one's output.
struct TileWalk {
    int n_tiles, total, first, stride, cl, rank;
    __device__ __forceinline__ int m0(int unit) const { return (unit / n_tiles * cl + rank) * TMA_BM; }
    template <int BN>
    __device__ __forceinline__ int n0(int unit) const { return unit % n_tiles * BN; }
};

// The producer: one thread, K tile after K tile, waits until consumers have released the stage's
// previous use, tells its full barrier how many bytes to expect, and issues the copies. A is a
// 64 × 128 box (K innermost); an NT B one 64 × BN box, an NN B BN / 64 boxes of 64 × 64 (N
// innermost), the N-major blocks 8 KB apart that the wgmma descriptor walks. In a cluster of two,
// B's boxes are shared out (NT: a 64 × BN / 2 box each, the second only where n0 + BN / 2 <
// n_valid; NN: the even boxes to rank 0, the odd to rank 1) and multicast into both blocks, whose
// full barriers each expect the whole stage; both blocks count the same boxes. The peer's bytes may
// land before this block's arrive.expect_tx: the tx-count then goes negative (at most one stage's
// B, 32 KB, against the PTX ISA's −(2^20 − 1)) and the phase cannot complete before that arrival.
// On a last N tile where rank 1 issues no box, rank 0's consumers may release a stage's next use
// before rank 1's have released this one, so rank 1's empty barrier can count an arrival one phase
// early: harmless, as any such phase still needs every consumer of the pair to have retired the
// stage (review 2026-12-06, multicast.md F1). A cluster's second tile below the last row block
// (an odd count) loads the last row block's A again, as a box wholly outside A must not be issued
// (below); its rows are past m, never stored.
// Every box issued overlaps its tensor: the last N tile's NN boxes that would start at or past
// n_valid (n = 1160 at BN 256 leaves one) are not issued and not counted in expect_tx. How many
// bytes a box wholly outside the tensor completes is not documented (a partial box completes all
// of its bytes, zero-filled), and a wrong guess would hang the consumers; the columns such a box
// would have fed are past n_valid = n_store (tma::params), so they are never stored.
template <bool NT0, bool NT1, int BN, bool PP, int CL>
__device__ __forceinline__ void tma_produce(const TmaGemmParams& q, uint32_t s0, uint32_t full, uint32_t empty, int ktiles0,
                                            int ktiles, TileWalk walk) {
    using T = TmaTile<BN, PP, CL>;
    const int m_last = (q.p.m - 1) / T::BM * T::BM;
    // A box of B: plain, or multicast to the cluster's blocks.
    auto load_b = [&](uint32_t dst, const TmaMap* map, int c0, int c1, uint32_t bar) {
        if constexpr (CL == 1) tma_load_2d(dst, map, c0, c1, bar);
        else tma_load_2d_multicast(dst, map, c0, c1, bar, (1u << CL) - 1);
    };
    int it = 0;
    for (int unit = walk.first; unit < walk.total; unit += walk.stride) {
        const int m0 = min(walk.m0(unit), m_last), n0 = walk.n0<BN>(unit);
        const int nn_boxes = min(BN / 64, (q.p.n_valid - n0 + 63) / 64);
        const int nt_boxes = min(CL, (q.p.n_valid - n0 + BN / CL - 1) / (BN / CL));
        for (int kt = 0; kt < ktiles; ++kt, ++it) {
            const int s = it % T::STAGES, use = it / T::STAGES;
            if (use > 0) {
                while (!mbar_try_wait(empty + s * 8, (use - 1) & 1)) {
                }
            }
            const uint32_t sa = s0 + s * T::STAGE_BYTES, sb = sa + T::A_BYTES, bar = full + s * 8;
            const int seg = kt >= ktiles0, k0 = (seg ? kt - ktiles0 : kt) * T::BK;
            const bool nt = seg ? NT1 : NT0;
            mbar_arrive_expect_tx(bar, T::A_BYTES + (nt ? nt_boxes * T::NT_BOX_BYTES : nn_boxes * T::NN_BOX_BYTES));
            tma_load_2d(sa, &q.a[seg], k0, m0, bar);
            if (nt) {
                if (walk.rank < nt_boxes)
                    load_b(sb + walk.rank * T::NT_BOX_BYTES, &q.b[seg], k0, n0 + walk.rank * (BN / CL), bar);
            } else {
#pragma unroll
                for (int j = 0; j < BN / 64; ++j)
                    if (j < nn_boxes && j % CL == walk.rank) load_b(sb + j * T::NN_BOX_BYTES, &q.b[seg], n0 + 64 * j, k0, bar);
            }
        }
    }
}

// A consumer warpgroup, one wgmma batch left in flight while it waits for the next K tile; the
// stage of the K tile before is released once that batch has retired, and a tile's last stage as
// soon as its accumulators are final, before the epilogue.
// Cooperative (PP false): its 64 rows of every tile (rows 64 · consumer ..).
// Ping-pong: the whole of every other tile of the block (its j-th tile for j = consumer,
// consumer + 2, ..., whose K tiles are the producer's j · ktiles ..), as two 64-row halves. The
// consumers take turns, a turn being one tile's mainloop, through the `order` mbarriers (128
// arrivals each: every thread of the other consumer once it has issued its last K tile), so one's
// epilogue runs under the other's mainloop. Every thread arrives, not a leader, as CUTLASS's
// OrderedSequenceBarrier does: the PTX ISA syncs wgmma's threads per warp only, so with one K tile
// per tile a leader's arrival could come before its group's other warps passed their own wait for
// the turn, and two turns later such a warp would poll a barrier two phases past its own (review
// 2026-12-06, F1). The turns also keep the stages' parities unambiguous: a consumer waits on a
// stage's full barrier only after every earlier use of it has completed.
template <bool NT0, bool NT1, int BN, bool PP, int CL, class OutT>
__device__ __forceinline__ void tma_consume(const SegGemmParams& p, int consumer, uint32_t s0, uint32_t full, uint32_t empty,
                                            uint32_t order, int ktiles0, int ktiles, TileWalk walk) {
    using T = TmaTile<BN, PP, CL>;
    constexpr int HALVES = PP ? 2 : 1;
    const int row0 = PP ? 0 : consumer * 64;
    const bool leader = threadIdx.x % 128 == 0;
    // A stage is released to every producer that fills it: this block's, and in a cluster the
    // peer's too (its half of B).
    auto release = [&](int it) {
        if (!leader) return;
        const uint32_t bar = empty + (it % T::STAGES) * 8;
        if constexpr (CL == 1) {
            mbar_arrive(bar);
        } else {
#pragma unroll
            for (int cta = 0; cta < CL; ++cta) mbar_arrive_cluster(bar, cta);
        }
    };
    float d[HALVES][BN / 2];
    int it = 0;
    auto step = [&](int kt, auto nt) {
        const int s = it % T::STAGES;
        while (!mbar_try_wait(full + s * 8, (it / T::STAGES) & 1)) {
        }
        const uint32_t sa = s0 + s * T::STAGE_BYTES;
        wgmma_fence();
#pragma unroll
        for (int h = 0; h < HALVES; ++h)
            wg_mma_ktile<decltype(nt)::value, BN>(d[h], sa + (row0 + 64 * h) * 128, sa + T::A_BYTES, p.nmajor_lbo, p.nmajor_sbo);
        wgmma_commit();
        wgmma_wait<1>();  // the previous K tile's wgmmas have read their stage
        if (kt > 0) release(it - 1);
        ++it;
    };
    for (int j = PP ? consumer : 0;; j += PP ? 2 : 1) {
        const int tile = walk.first + j * walk.stride;
        if (tile >= walk.total) break;
        if constexpr (PP) {
            // Consumer 1's turn m = j / 2 follows consumer 0's m-th mainloop (order[1], phase m);
            // consumer 0's follows consumer 1's (m − 1)-th (order[0], phase m − 1), its first none.
            const int m = j / 2;
            if (consumer == 1 || m > 0) {
                while (!mbar_try_wait(order + consumer * 8, (consumer == 1 ? m : m - 1) & 1)) {
                }
            }
            it = j * ktiles;
        }
#pragma unroll
        for (int h = 0; h < HALVES; ++h)
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) d[h][i] = 0.0f;
        // Two loops, not a branch per K tile, so each wgmma variant sits in straight-line code.
        int kt = 0;
        for (; kt < ktiles0; ++kt) step(kt, Bool<NT0>{});
        for (; kt < ktiles; ++kt) step(kt, Bool<NT1>{});
        if constexpr (PP) {
            mbar_arrive(order + (1 - consumer) * 8);  // the other consumer's turn, once all of this one is past its own
        }
        wgmma_wait<0>();
        release(it - 1);
#pragma unroll
        for (int h = 0; h < HALVES; ++h) {
            fence_accumulators(d[h]);
            wg_store<BN, OutT>(p, d[h], walk.m0(tile) + row0 + 64 * h, walk.n0<BN>(tile));
        }
    }
}

template <bool NT0, bool NT1, int BN, bool PP, int CL, class OutT>
__device__ __forceinline__ void seg_gemm_tma(const TmaGemmParams& q) {
    using T = TmaTile<BN, PP, CL>;
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint32_t s0 = (smem_addr(smem) + 1023u) & ~1023u;
    const uint32_t full = s0 + T::STAGES * T::STAGE_BYTES, empty = full + T::STAGES * 8, order = empty + T::STAGES * 8;
    const SegGemmParams& p = q.p;
    const int n_tiles = (p.n_store + BN - 1) / BN;
    // A clustered kernel launched without its cluster would multicast to and arrive on a block that
    // does not exist: refused loudly (the launcher's cuLaunchKernelEx sets the dimension).
    if constexpr (CL > 1) {
        if (cluster_nctarank() != CL) __trap();
    }
    const int rank = CL == 1 ? 0 : int(cluster_ctarank());
    const TileWalk walk{n_tiles, n_tiles * ((p.m + CL * T::BM - 1) / (CL * T::BM)), int(blockIdx.x) / CL, int(gridDim.x) / CL, CL,
                        rank};
    const int ktiles0 = (p.k[0] + T::BK - 1) / T::BK, ktiles = ktiles0 + (p.k[1] + T::BK - 1) / T::BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < T::STAGES; ++s) {
            mbar_init(full + s * 8, 1);                    // the producer's arrive.expect_tx, then the bytes
            mbar_init(empty + s * 8, T::STAGE_READERS);  // one arrival per consumer reading it, in each block
        }
        if constexpr (PP) {
            mbar_init(order, 128);      // consumer 0's turn, given by consumer 1's threads
            mbar_init(order + 8, 128);  // consumer 1's, given by consumer 0's
        }
        mbar_fence_init();
        // The initialised barriers visible to the copy engine (the async proxy), as the CUDA
        // Programming Guide's TMA examples do: fence.mbarrier_init emits nothing outside a cluster.
        fence_proxy_async();
    }
    // In a cluster, the peer's barriers must be initialised before this block's first multicast or
    // remote arrival reaches them.
    if constexpr (CL == 1) __syncthreads();
    else cluster_sync();
    const int warpgroup = threadIdx.x / 128;
    if (warpgroup == 0) {
        setmaxnreg_dec<PRODUCER_REGS>();
        if (threadIdx.x == 0) tma_produce<NT0, NT1, BN, PP, CL>(q, s0, full, empty, ktiles0, ktiles, walk);
    } else {
        // CUTLASS's split for one producer and two consumer warpgroups: 128·(168 − 40) registers
        // given back pay exactly for 256·(232 − 168) taken (40 leave the producer's loop room).
        setmaxnreg_inc<CONSUMER_REGS>();
        tma_consume<NT0, NT1, BN, PP, CL, OutT>(p, warpgroup - 1, s0, full, empty, order, ktiles0, ktiles, walk);
    }
    // Neither block of a cluster exits while the other's consumers may still arrive on its empty
    // barriers (their last releases) or its producer's copies may still land in it: shared memory
    // of an exited block is gone.
    if constexpr (CL > 1) cluster_sync();
}
#define TMA_BODY(NT0, NT1, BN, PP, CL, OutT) seg_gemm_tma<NT0, NT1, BN, PP, CL, OutT>(q);
#else
// Never launched off sm_90a (the launcher picks this file on compute capability 9 only, whose
// driver loads the sm_90a cubin); a JIT of the PTX elsewhere fails loudly.
#define TMA_BODY(NT0, NT1, BN, PP, CL, OutT) __trap();
#endif

// Entry points, as in lowrank_wgmma.cu: y = [x | t]·[W0 ; Vt] (both NN), dx = [dy | s]·[W0ᵀ ; Ut]
// (W0 read as NT, Ut as NN), each with the 128 × 256 and 128 × 128 tiles, the ping-pong schedule
// on 128 × 128, and both tiles in clusters of two sharing B (`mc`: launched with a cluster
// dimension of 2, cuLaunchKernelEx). One block per SM, a 1-D grid of at most the SM count
// (TileWalk; in clusters, of at most twice the clusters that fit at once).
#define SEG_GEMM_TMA(name, NT0, NT1, BN, PP, CL, OutT)                                                        \
    extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1) name(const __grid_constant__ TmaGemmParams q) { \
        TMA_BODY(NT0, NT1, BN, PP, CL, OutT)                                                                  \
    }
SEG_GEMM_TMA(lowrank_y_tma256_bf16, false, false, 256, false, 1, bf16)
SEG_GEMM_TMA(lowrank_y_tma256_f32, false, false, 256, false, 1, float)
SEG_GEMM_TMA(lowrank_dx_tma256_bf16, true, false, 256, false, 1, bf16)
SEG_GEMM_TMA(lowrank_dx_tma256_f32, true, false, 256, false, 1, float)
SEG_GEMM_TMA(lowrank_y_tma128_bf16, false, false, 128, false, 1, bf16)
SEG_GEMM_TMA(lowrank_y_tma128_f32, false, false, 128, false, 1, float)
SEG_GEMM_TMA(lowrank_dx_tma128_bf16, true, false, 128, false, 1, bf16)
SEG_GEMM_TMA(lowrank_dx_tma128_f32, true, false, 128, false, 1, float)
SEG_GEMM_TMA(lowrank_y_pingpong_bf16, false, false, 128, true, 1, bf16)
SEG_GEMM_TMA(lowrank_y_pingpong_f32, false, false, 128, true, 1, float)
SEG_GEMM_TMA(lowrank_dx_pingpong_bf16, true, false, 128, true, 1, bf16)
SEG_GEMM_TMA(lowrank_dx_pingpong_f32, true, false, 128, true, 1, float)
SEG_GEMM_TMA(lowrank_y_mc256_bf16, false, false, 256, false, 2, bf16)
SEG_GEMM_TMA(lowrank_y_mc256_f32, false, false, 256, false, 2, float)
SEG_GEMM_TMA(lowrank_dx_mc256_bf16, true, false, 256, false, 2, bf16)
SEG_GEMM_TMA(lowrank_dx_mc256_f32, true, false, 256, false, 2, float)
SEG_GEMM_TMA(lowrank_y_mc128_bf16, false, false, 128, false, 2, bf16)
SEG_GEMM_TMA(lowrank_y_mc128_f32, false, false, 128, false, 2, float)
SEG_GEMM_TMA(lowrank_dx_mc128_bf16, true, false, 128, false, 2, bf16)
SEG_GEMM_TMA(lowrank_dx_mc128_f32, true, false, 128, false, 2, float)
