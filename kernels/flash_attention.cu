// Causal self-attention without the (T × T) scores in memory: FlashAttention-2's algorithm
// (Dao, 2023) with mma.sync m16n8k16 bf16 → f32, for head sizes 32 and 64 (every GPT-2 size has 64).
// Reads q, k, v straight from the fused qkv (B, T, 3C) and writes the heads' output in (B, T, C),
// so the permutes of the materialised path (attention.cu) go too. The forward keeps, per row, the
// log-sum-exp of the scaled scores (base 2, f32) for the backward, which recomputes the
// probabilities tile by tile. The backward is two kernels with no atomics (dQ over key tiles per
// query tile, dK and dV over query tiles per key tile), so gradients are bit-identical run to run.
// Launchers: src/backend/cuda/flash_attention.rs; the CPU reference is the materialised attention.
#include "common.cuh"
#include "ptx.cuh"

typedef __nv_bfloat16 bf16;

// 64 query rows per block (4 warps × 16 rows: one m16 row block each) and 64 keys per tile.
#define FA_ROWS 64
#define FA_THREADS 128

template <int HS>
struct FaTile {
    static_assert(HS % 16 == 0, "head size in whole k16 steps");
    // 8 elements of padding per row: the 8 row addresses of an ldmatrix 8×8 matrix then fall in
    // different 16-byte bank groups (row strides of 80 and 144 bytes).
    static constexpr int LD = HS + 8;
    static constexpr int BYTES = FA_ROWS * LD * (int)sizeof(bf16);
    static constexpr int KSTEPS = HS / 16;  // k16 steps over the head dimension
    static constexpr int DFRAG = HS / 8;    // n8 tiles over the head dimension
};

// Rows [0, 64) of a (rows × HS) window whose row r starts at src + r·ld, into a padded smem tile;
// rows at or past `valid` are zero-filled.
template <int HS>
__device__ __forceinline__ void load_rows(uint32_t dst, const bf16* src, size_t ld, int valid) {
    constexpr int CHUNKS = HS / 8;  // 16-byte chunks per row
#pragma unroll
    for (int i = threadIdx.x; i < FA_ROWS * CHUNKS; i += FA_THREADS) {
        const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        const bool pred = r < valid;
        cp_async_16(dst + (r * FaTile<HS>::LD + c) * (int)sizeof(bf16), pred ? src + r * ld + c : src, pred);
    }
}

// Key tile `tile`'s K and V rows of one head (K at base + C, V at base + 2C, rows ld apart) into
// dst and dst + BYTES.
template <int HS>
__device__ __forceinline__ void load_kv(uint32_t dst, const bf16* base, size_t ld, int C, int tile, int T) {
    const size_t first = (size_t)tile * FA_ROWS * ld;
    load_rows<HS>(dst, base + C + first, ld, T - tile * FA_ROWS);
    load_rows<HS>(dst + FaTile<HS>::BYTES, base + 2 * C + first, ld, T - tile * FA_ROWS);
}

// Key tile j's stage of the double buffer at skv (K then V, two stages), ready to read: starts
// tile j + 1's loads into the other stage (up to tile `last`), waits for tile j's, then a barrier
// (the loads of the tile before were waited for by their own threads; the barrier makes them
// everyone's). The caller ends each iteration with a barrier before the next one refills.
template <int HS>
__device__ __forceinline__ uint32_t kv_tile_ready(uint32_t skv, const bf16* base, size_t ld, int C, int j, int last, int T) {
    if (j < last) load_kv<HS>(skv + ((j + 1) & 1) * 2 * FaTile<HS>::BYTES, base, ld, C, j + 1, T);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    return skv + (j & 1) * 2 * FaTile<HS>::BYTES;
}

// The warp's 16 rows of a smem tile as mma A fragments, one per k16 step (PTX ISA m16n8k16 A layout:
// ldmatrix.x4 over rows lane%16, k half lane/16).
template <int HS>
__device__ __forceinline__ void load_a_frags(uint32_t (&f)[FaTile<HS>::KSTEPS][4], uint32_t tile, int warp, int lane) {
#pragma unroll
    for (int kk = 0; kk < FaTile<HS>::KSTEPS; ++kk) {
        const int row = warp * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
        ldmatrix_x4(f[kk], tile + (row * FaTile<HS>::LD + col) * (int)sizeof(bf16));
    }
}

// acc (16 × 64) = A (the warp's 16 rows, HS wide) · tileᵀ: column n is the tile's row n, so B
// comes plain from the tile's rows (two n8 tiles per ldmatrix.x4).
template <int HS>
__device__ __forceinline__ void mma_abt(float (&acc)[8][4], const uint32_t (&a)[FaTile<HS>::KSTEPS][4], uint32_t tile, int lane) {
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[n][c] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < FaTile<HS>::KSTEPS; ++kk)
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) {
            const int n = nj * 16 + (lane & 7) + ((lane >> 4) << 3), k = kk * 16 + ((lane >> 3) & 1) * 8;
            uint32_t r[4];
            ldmatrix_x4(r, tile + (n * FaTile<HS>::LD + k) * (int)sizeof(bf16));
            mma_bf16(acc[2 * nj], a[kk], r[0], r[1]);
            mma_bf16(acc[2 * nj + 1], a[kk], r[2], r[3]);
        }
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);  // lo in the low half, as mma's fragments hold element pairs
    return bits;
}

// o (16 × HS) += P (16 × 64, an mma_abt accumulator, rounded to bf16) · tile (64 × HS): P's
// accumulator layout is the A fragment layout of two k8 halves, so it feeds the MMA from registers
// (FlashAttention-2's trick); the tile's rows are k, so B comes by ldmatrix.trans.
template <int HS>
__device__ __forceinline__ void mma_pv(float (&o)[FaTile<HS>::DFRAG][4], const float (&p)[8][4], uint32_t tile, int lane) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const uint32_t a[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                               pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int nj = 0; nj < FaTile<HS>::KSTEPS; ++nj) {
            const int k = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, n = nj * 16 + (lane >> 4) * 8;
            uint32_t r[4];
            ldmatrix_x4_trans(r, tile + (k * FaTile<HS>::LD + n) * (int)sizeof(bf16));
            mma_bf16(o[2 * nj], a, r[0], r[1]);
            mma_bf16(o[2 * nj + 1], a, r[2], r[3]);
        }
    }
}

// A block's place: its lane and warp, its (sequence, head) from blockIdx.x, C, qkv's row stride 3C,
// and `base`, the head's q columns at the sequence's first token (k at base + C, v at base + 2C).
template <int HS>
struct FaBlock {
    int lane, warp, bh, b, h, C;
    size_t ld;
    const bf16* base;
    __device__ __forceinline__ FaBlock(const bf16* qkv, int T, int NH)
        : lane(threadIdx.x % 32), warp(threadIdx.x / 32), bh(blockIdx.x), b(bh / NH), h(bh % NH), C(NH * HS), ld(3 * (size_t)C),
          base(qkv + (size_t)b * T * ld + h * HS) {}
};

// Where accumulator element (n, c) of lane `lane` lies in its warp's 16 × 64 tile: row (0..16) and
// column (0..64), per the m16n8 C layout.
__device__ __forceinline__ int acc_row(int c, int lane) { return (lane >> 2) + ((c >> 1) << 3); }
__device__ __forceinline__ int acc_col(int n, int c, int lane) { return n * 8 + 2 * (lane & 3) + (c & 1); }

// Sum and max over the 4 lanes that share an accumulator row.
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// The warp's 16 × HS accumulator × `scale`, as bf16 at dst + row·ld + column, rows < valid.
template <int HS>
__device__ __forceinline__ void store_rows(bf16* dst, size_t ld, const float (&o)[FaTile<HS>::DFRAG][4], float scale, int warp, int lane,
                                           int valid) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = warp * 16 + (lane >> 2) + half * 8;
        if (row >= valid) continue;
#pragma unroll
        for (int n = 0; n < FaTile<HS>::DFRAG; ++n)
            *reinterpret_cast<__nv_bfloat162*>(dst + row * ld + n * 8 + 2 * (lane & 3)) =
                __floats2bfloat162_rn(o[n][2 * half] * scale, o[n][2 * half + 1] * scale);
    }
}

// ---------------------------------------------------------------------------------------------
// forward: block (query tile, b·NH + h); keys 0 .. the diagonal tile, double-buffered K and V.
// lse[bh·T + t] = log2 Σ_s 2^(x_ts), x = q·k·scale·log2(e): the row's normaliser in base 2.

template <int HS>
__device__ __forceinline__ void flash_forward_body(const bf16* __restrict__ qkv, bf16* __restrict__ out, float* __restrict__ lse, int T,
                                                   int NH, float scale_log2) {
    using F = FaTile<HS>;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    const auto [lane, warp, bh, b, h, C, ld, base] = FaBlock<HS>(qkv, T, NH);
    // Tiles along y, (sequence, head) along x: blocks go out x fastest, so the whole grid runs its
    // longest query tiles (most key tiles) first and the last wave holds the short ones.
    const int qt = gridDim.y - 1 - blockIdx.y, q0 = qt * FA_ROWS;
    const uint32_t sq = smem_addr(fa_smem), skv = sq + F::BYTES;  // then K0, V0, K1, V1
    load_rows<HS>(sq, base + q0 * ld, ld, T - q0);
    load_kv<HS>(skv, base, ld, C, 0, T);
    cp_async_commit();

    float o[F::DFRAG][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    uint32_t qf[F::KSTEPS][4];
    for (int j = 0; j <= qt; ++j) {
        const uint32_t sk = kv_tile_ready<HS>(skv, base, ld, C, j, qt, T), sv = sk + F::BYTES;
        if (j == 0) load_a_frags<HS>(qf, sq, warp, lane);
        float s[8][4];
        mma_abt<HS>(s, qf, sk, lane);
        // Scale into base 2, mask the future (only the diagonal tile has any), and take the rows'
        // running max. Every row has its diagonal key, so the max is finite from the first tile on.
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float x = s[n][c] * scale_log2;
                if (j == qt && acc_col(n, c, lane) > warp * 16 + acc_row(c, lane)) x = -INFINITY;
                s[n][c] = x;
                mx[c >> 1] = fmaxf(mx[c >> 1], x);
            }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = quad_max(mx[r]);
            corr[r] = exp2f(m[r] - mx[r]);  // 0 on the first tile (m = −∞)
            m[r] = mx[r];
            l[r] *= corr[r];
        }
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                s[n][c] = exp2f(s[n][c] - m[c >> 1]);
                l[c >> 1] += s[n][c];  // this lane's part of the row sum; the quad adds up at the end
            }
#pragma unroll
        for (int n = 0; n < F::DFRAG; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) o[n][c] *= corr[c >> 1];
        mma_pv<HS>(o, s, sv, lane);
        __syncthreads();  // the next iteration's loads overwrite this tile's stage
    }
    const int valid = T - q0;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] = quad_sum(l[r]);
        const int row = warp * 16 + (lane >> 2) + r * 8;
        if ((lane & 3) == 0 && row < valid) lse[(size_t)bh * T + q0 + row] = m[r] + log2f(l[r]);
    }
#pragma unroll
    for (int n = 0; n < F::DFRAG; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) o[n][c] /= l[c >> 1];
    store_rows<HS>(out + ((size_t)b * T + q0) * C + h * HS, C, o, 1.0f, warp, lane, valid);
}

// ---------------------------------------------------------------------------------------------
// backward

// delta[bh·T + t] = Σ_d dout[b,t,h,d]·out[b,t,h,d] (= Σ_s p_ts·dp_ts, the softmax backward's row
// term). One warp per (b, t, h), in memory order.
__device__ __forceinline__ void flash_backward_dot_body(float* __restrict__ delta, const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                                        int B, int T, int NH, int HS) {
    const int lane = threadIdx.x % 32;
    const size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // (b·T + t)·NH + h
    if (row >= (size_t)B * T * NH) return;
    const int h = row % NH, t = (row / NH) % T, b = row / ((size_t)NH * T);
    float sum = 0.0f;
    for (int d = lane; d < HS; d += 32) sum += to_float(dout[row * HS + d]) * to_float(out[row * HS + d]);
    sum = warp_sum(sum);
    if (lane == 0) delta[((size_t)b * NH + h) * T + t] = sum;
}

// dq for one query tile: over key tiles 0 .. diagonal, p = 2^(x − lse), ds = p·(dout·vᵀ − delta),
// dq = scale · Σ ds·k. Q and dout are read once into registers, K and V double-buffered.
template <int HS>
__device__ __forceinline__ void flash_backward_dq_body(bf16* __restrict__ dqkv, const bf16* __restrict__ qkv, const bf16* __restrict__ dout,
                                                       const float* __restrict__ lse, const float* __restrict__ delta, int T, int NH,
                                                       float scale_log2, float scale) {
    using F = FaTile<HS>;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    const auto [lane, warp, bh, b, h, C, ld, base] = FaBlock<HS>(qkv, T, NH);
    const int qt = gridDim.y - 1 - blockIdx.y, q0 = qt * FA_ROWS;  // the longest rows first
    const uint32_t sq = smem_addr(fa_smem), sdo = sq + F::BYTES, skv = sdo + F::BYTES;
    load_rows<HS>(sq, base + q0 * ld, ld, T - q0);
    load_rows<HS>(sdo, dout + ((size_t)b * T + q0) * C + h * HS, C, T - q0);
    load_kv<HS>(skv, base, ld, C, 0, T);
    cp_async_commit();
    float row_lse[2], row_delta[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int t = q0 + warp * 16 + (lane >> 2) + r * 8;
        row_lse[r] = t < T ? lse[(size_t)bh * T + t] : 0.0f;
        row_delta[r] = t < T ? delta[(size_t)bh * T + t] : 0.0f;
    }

    float dq[F::DFRAG][4] = {};
    uint32_t qf[F::KSTEPS][4], dof[F::KSTEPS][4];
    for (int j = 0; j <= qt; ++j) {
        const uint32_t sk = kv_tile_ready<HS>(skv, base, ld, C, j, qt, T), sv = sk + F::BYTES;
        if (j == 0) {
            load_a_frags<HS>(qf, sq, warp, lane);
            load_a_frags<HS>(dof, sdo, warp, lane);
        }
        float s[8][4], dp[8][4];
        mma_abt<HS>(s, qf, sk, lane);
        mma_abt<HS>(dp, dof, sv, lane);
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const bool future = j == qt && acc_col(n, c, lane) > warp * 16 + acc_row(c, lane);
                const float p = future ? 0.0f : exp2f(s[n][c] * scale_log2 - row_lse[c >> 1]);
                s[n][c] = p * (dp[n][c] - row_delta[c >> 1]);
            }
        mma_pv<HS>(dq, s, sk, lane);
        __syncthreads();
    }
    store_rows<HS>(dqkv + ((size_t)b * T + q0) * ld + h * HS, ld, dq, scale, warp, lane, T - q0);
}

// dk, dv for one key tile: over query tiles from the diagonal on, pᵀ = 2^(xᵀ − lse), dv = Σ pᵀ·dout,
// dsᵀ = pᵀ·(v·doutᵀ − delta), dk = scale · Σ dsᵀ·q. K and V are read once into registers; Q, dout,
// lse and delta double-buffered: Q and dout by cp.async, the next tile's lse and delta rows into
// registers at the top of an iteration and into shared memory at its end, so their loads' latency
// passes under the iteration's MMAs instead of stalling warps 0–1 before its barrier.
template <int HS>
__device__ __forceinline__ void flash_backward_dkdv_body(bf16* __restrict__ dqkv, const bf16* __restrict__ qkv, const bf16* __restrict__ dout,
                                                         const float* __restrict__ lse, const float* __restrict__ delta, int T, int NH,
                                                         float scale_log2, float scale) {
    using F = FaTile<HS>;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    const FaBlock<HS> blk(qkv, T, NH);
    const auto [lane, warp, bh, b, h, C, ld, base] = blk;
    const int kt = blockIdx.y, k0 = kt * FA_ROWS, tiles = (T + FA_ROWS - 1) / FA_ROWS;  // the longest columns first
    const bf16* dbase = dout + (size_t)b * T * C + h * HS;
    // K, V, then two stages of (Q, dout), then two stages of (lse, delta) rows.
    const uint32_t sk = smem_addr(fa_smem), sv = sk + F::BYTES, sqd = sv + F::BYTES;
    float(*rows)[2][FA_ROWS] = reinterpret_cast<float(*)[2][FA_ROWS]>(fa_smem + 6 * F::BYTES);
    auto load_query_tile = [&](int i, int stage) {  // captures blk, not its bindings (C++17)
        const uint32_t st = sqd + stage * 2 * F::BYTES;
        load_rows<HS>(st, blk.base + (size_t)i * FA_ROWS * blk.ld, blk.ld, T - i * FA_ROWS);
        load_rows<HS>(st + F::BYTES, dbase + (size_t)i * FA_ROWS * blk.C, blk.C, T - i * FA_ROWS);
    };
    // Threads 0–63: query tile i's lse and delta for their row (0 past T).
    float row_lse = 0.0f, row_delta = 0.0f;
    auto load_row_stats = [&](int i) {
        const int t = i * FA_ROWS + threadIdx.x;
        if (threadIdx.x < FA_ROWS && t < T) {
            row_lse = lse[(size_t)blk.bh * T + t];
            row_delta = delta[(size_t)blk.bh * T + t];
        } else {
            row_lse = row_delta = 0.0f;
        }
    };
    auto store_row_stats = [&](int stage) {
        if (threadIdx.x < FA_ROWS) {
            rows[stage][0][threadIdx.x] = row_lse;
            rows[stage][1][threadIdx.x] = row_delta;
        }
    };
    load_kv<HS>(sk, base, ld, C, kt, T);
    load_query_tile(kt, 0);
    cp_async_commit();
    load_row_stats(kt);
    store_row_stats(0);

    float dk[F::DFRAG][4] = {}, dv[F::DFRAG][4] = {};
    uint32_t kf[F::KSTEPS][4], vf[F::KSTEPS][4];
    for (int i = kt; i < tiles; ++i) {
        const int stage = (i - kt) & 1;
        const uint32_t sq = sqd + stage * 2 * F::BYTES, sdo = sq + F::BYTES;
        if (i + 1 < tiles) {
            load_query_tile(i + 1, stage ^ 1);
            load_row_stats(i + 1);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (i == kt) {
            load_a_frags<HS>(kf, sk, warp, lane);
            load_a_frags<HS>(vf, sv, warp, lane);
        }
        float p[8][4], dp[8][4];
        mma_abt<HS>(p, kf, sq, lane);  // rows: the warp's keys; columns: the tile's queries
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int key = k0 + warp * 16 + acc_row(c, lane), col = acc_col(n, c, lane), query = i * FA_ROWS + col;
                p[n][c] = key <= query && query < T ? exp2f(p[n][c] * scale_log2 - rows[stage][0][col]) : 0.0f;
            }
        mma_pv<HS>(dv, p, sdo, lane);
        mma_abt<HS>(dp, vf, sdo, lane);
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) p[n][c] *= dp[n][c] - rows[stage][1][acc_col(n, c, lane)];
        mma_pv<HS>(dk, p, sq, lane);
        // The stage read last in iteration i − 1, free since that iteration's closing barrier.
        if (i + 1 < tiles) store_row_stats(stage ^ 1);
        __syncthreads();
    }
    bf16* dst = dqkv + ((size_t)b * T + k0) * ld + h * HS;
    store_rows<HS>(dst + C, ld, dk, scale, warp, lane, T - k0);
    store_rows<HS>(dst + 2 * C, ld, dv, 1.0f, warp, lane, T - k0);
}

// ---------------------------------------------------------------------------------------------
// entry points

#define FLASH_KERNELS(HS)                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                                              \
        flash_forward_hs##HS(const bf16* qkv, bf16* out, float* lse, int T, int NH, float scale_log2) {                                    \
        flash_forward_body<HS>(qkv, out, lse, T, NH, scale_log2);                                                                          \
    }                                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_backward_dq_hs##HS(                                                     \
        bf16* dqkv, const bf16* qkv, const bf16* dout, const float* lse, const float* delta, int T, int NH, float scale_log2, float scale) { \
        flash_backward_dq_body<HS>(dqkv, qkv, dout, lse, delta, T, NH, scale_log2, scale);                                                 \
    }                                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_backward_dkdv_hs##HS(                                                   \
        bf16* dqkv, const bf16* qkv, const bf16* dout, const float* lse, const float* delta, int T, int NH, float scale_log2, float scale) { \
        flash_backward_dkdv_body<HS>(dqkv, qkv, dout, lse, delta, T, NH, scale_log2, scale);                                               \
    }
FLASH_KERNELS(32)
FLASH_KERNELS(64)

extern "C" __global__ void flash_backward_dot(float* delta, const bf16* dout, const bf16* out, int B, int T, int NH, int HS) {
    flash_backward_dot_body(delta, dout, out, B, T, NH, HS);
}
