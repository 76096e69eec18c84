// The arithmetic of the emulated cuBLASLt (cublaslt.cpp, which checks the problem first):
// D = alpha·op(A)·op(B) + beta·C, column-major, every batch, products accumulated in double and
// rounded once to D's type. Included by cublaslt.cpp alone (hence the anonymous namespace).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

// A matmul as cublaslt.cpp's checks leave it: sizes, transposes, types, leading dimensions and
// batch strides, all in elements.
struct Problem {
    int64_t m = 0, n = 0, k = 0, batch = 1;
    bool ta = false, tb = false;
    uint32_t ab_type = 0, cd_type = 0;
    int64_t lda = 0, ldb = 0, ldc = 0, ldd = 0;
    int64_t sa = 0, sb = 0, sc = 0, sd = 0;
};

inline double load(const float* p) { return double(*p); }
inline double load(const uint16_t* p) {
    uint32_t u = uint32_t(*p) << 16;
    float f;
    memcpy(&f, &u, 4);
    return double(f);
}

inline void store(float* p, double r) { *p = float(r); }

// double -> bf16, rounded once to nearest even: round to odd into float (24 bits, enough spare
// bits below bf16's 8), then to nearest even into bf16.
inline uint16_t bf16_from_double(double r) {
    float f = float(r);
    uint32_t u;
    if (std::isnan(r)) {
        memcpy(&u, &f, 4);
        return uint16_t((u >> 16) | 0x0040);  // quiet NaN, sign kept
    }
    if (double(f) != r) {
        if (std::fabs(double(f)) > std::fabs(r)) f = std::nextafter(f, 0.0f);  // toward zero
        memcpy(&u, &f, 4);
        u |= 1;  // sticky: inexact
    } else {
        memcpy(&u, &f, 4);
    }
    u += 0x7FFFu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
inline void store(uint16_t* p, double r) { *p = bf16_from_double(r); }

// GPT-2's tanh-approximated GELU and its derivative, in double: what cuBLASLt's GELU epilogues
// compute (NVIDIA's samples give GELU(1) = 0.841192, the tanh form's value, not erf's 0.841345).
enum class Gelu { None, Forward, Backward };
inline double gelu_tanh(double x) {
    const double c = 0.7978845608028654;  // sqrt(2 / pi)
    return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}
inline double gelu_tanh_grad(double x) {
    const double c = 0.7978845608028654, th = std::tanh(c * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * x * x);
}

struct Args {
    Problem p;
    double alpha = 0, beta = 0;
    const void* a = nullptr;
    const void* b = nullptr;
    const void* c = nullptr;
    void* d = nullptr;
    const void* bias = nullptr;  // EPILOGUE_BIAS: D's type, added to row i of every column
    Gelu gelu = Gelu::None;      // EPILOGUE_GELU_AUX_BIAS (forward) or EPILOGUE_DGELU (backward)
    void* aux = nullptr;         // GELU's input, D's type, leading dimension aux_ld
    int64_t aux_ld = 0;
    void* bias_grad = nullptr;   // EPILOGUE_BGRADA: D's type, the sum over k of op(A)'s row i
};

// op(A) of every batch as float, column-major m x k (element (i, q) of batch b at
// (b * k + q) * m + i): exact for bf16 and f32 inputs, read once from "device" memory (where the
// sanitizer checks it), and contiguous in the inner loop whatever A's transpose.
template <class TA>
std::vector<float> unpack_a(const Problem& p, const TA* A) {
    std::vector<float> out(size_t(p.batch * p.k * p.m));
    float* o = out.data();
    for (int64_t bi = 0; bi < p.batch; bi++)
        for (int64_t q = 0; q < p.k; q++)
            for (int64_t i = 0; i < p.m; i++)
                *o++ = float(load(A + bi * p.sa + (p.ta ? q + i * p.lda : i + q * p.lda)));
    return out;
}

// Output tiles: TILE_ROWS rows by up to TILE_COLS columns, so the rows of op(A) are read once per
// TILE_COLS columns rather than once per column.
constexpr int64_t TILE_ROWS = 256, TILE_COLS = 8;

// acc[c * TILE_ROWS + r] = sum over q (in order) of a[q * lda + r] * b[q * TILE_COLS + c], r < rows
// (every one of the TILE_COLS columns is formed: b holds zeros or stale values past the tile's
// own). A register tile of ROW_VECTORS vectors of rows by all the columns runs down q, so each
// element's sum is formed in q's order as the plain loop would, without acc's round trip through
// memory per q. Only this function's own buffers are touched, so it is left uninstrumented: under
// AddressSanitizer it is the emulator's hottest loop.
__attribute__((no_sanitize_address, noinline)) void tile_product(const float* a, int64_t lda, int64_t rows,
                                                                   const double* b, int64_t k, double* acc) {
    typedef float floats __attribute__((vector_size(32)));
    typedef double doubles __attribute__((vector_size(64)));
    constexpr int64_t LANES = 8;
#if defined(__AVX512F__)
    constexpr int64_t ROW_VECTORS = 2;  // 16 accumulators of 32 registers
#else
    constexpr int64_t ROW_VECTORS = 1;  // 8 accumulators of two AVX registers each
#endif
    constexpr int64_t BLOCK = LANES * ROW_VECTORS;
    int64_t r0 = 0;
    for (; r0 + BLOCK <= rows; r0 += BLOCK) {
        doubles sum[ROW_VECTORS][TILE_COLS] = {};
        for (int64_t q = 0; q < k; q++) {
            doubles aq[ROW_VECTORS];
            for (int64_t v = 0; v < ROW_VECTORS; v++) {
                floats f;
                std::memcpy(&f, a + q * lda + r0 + v * LANES, sizeof f);
                aq[v] = __builtin_convertvector(f, doubles);
            }
            for (int64_t c = 0; c < TILE_COLS; c++) {
                const double bq = b[q * TILE_COLS + c];
                for (int64_t v = 0; v < ROW_VECTORS; v++) sum[v][c] += aq[v] * bq;
            }
        }
        for (int64_t c = 0; c < TILE_COLS; c++)
            for (int64_t v = 0; v < ROW_VECTORS; v++) std::memcpy(acc + c * TILE_ROWS + r0 + v * LANES, &sum[v][c], sizeof(doubles));
    }
    for (; r0 < rows; r0++)
        for (int64_t c = 0; c < TILE_COLS; c++) {
            double sum = 0.0;
            for (int64_t q = 0; q < k; q++) sum += double(a[q * lda + r0]) * b[q * TILE_COLS + c];
            acc[c * TILE_ROWS + r0] = sum;
        }
}

// Columns [begin, end) of the batch-flattened output (column index = batch * n + j); `a` is
// unpack_a's op(A), empty when alpha == 0.
template <class TA, class TC>
void run_columns(const Args& g, const std::vector<float>& a, int64_t begin, int64_t end) {
    const Problem& p = g.p;
    std::vector<double> bcols(size_t(TILE_COLS * p.k)), acc(size_t(TILE_COLS * TILE_ROWS));
    for (int64_t col = begin; col < end;) {
        const int64_t bi = col / p.n, j0 = col % p.n;
        const int64_t cols = std::min({TILE_COLS, end - col, p.n - j0});  // within one batch
        TC* D = static_cast<TC*>(g.d) + bi * p.sd;
        if (g.alpha != 0.0) {  // A and B may be NULL otherwise: no pointer arithmetic on them
            const TA* B = static_cast<const TA*>(g.b) + bi * p.sb;
            for (int64_t c = 0; c < cols; c++)
                for (int64_t q = 0; q < p.k; q++)
                    bcols[size_t(q * TILE_COLS + c)] = p.tb ? load(B + j0 + c + q * p.ldb) : load(B + q + (j0 + c) * p.ldb);
        }
        for (int64_t i0 = 0; i0 < p.m; i0 += TILE_ROWS) {
            const int64_t rows = std::min(TILE_ROWS, p.m - i0);
            if (g.alpha != 0.0)
                tile_product(a.data() + bi * p.k * p.m + i0, p.m, rows, bcols.data(), p.k, acc.data());
            else
                std::fill(acc.begin(), acc.end(), 0.0);
            const TC* bias = static_cast<const TC*>(g.bias);
            for (int64_t c = 0; c < cols; c++) {
                const int64_t j = j0 + c;
                const double* t = acc.data() + c * TILE_ROWS;
                for (int64_t r = 0; r < rows; r++) {
                    double v = g.alpha * t[r];
                    // C is not read when beta == 0 (it may hold garbage, or be NULL).
                    if (g.beta != 0.0) v += g.beta * load(static_cast<const TC*>(g.c) + bi * p.sc + i0 + r + j * p.ldc);
                    if (bias) v += load(bias + i0 + r);
                    if (g.gelu != Gelu::None) {
                        TC* aux = static_cast<TC*>(g.aux) + i0 + r + j * g.aux_ld;
                        if (g.gelu == Gelu::Forward) {
                            store(aux, v);
                            v = gelu_tanh(v);
                        } else {
                            v *= gelu_tanh_grad(load(aux));
                        }
                    }
                    store(D + i0 + r + j * p.ldd, v);
                }
            }
        }
        col += cols;
    }
}

template <class TA, class TC>
void run(const Args& g) {
    const Problem& p = g.p;
    const int64_t cols = p.batch * p.n;
    const double work = double(p.m) * double(p.n) * double(p.k) * double(p.batch);
    int64_t threads = 1;
    if (work >= 2e6) {
        unsigned hw = std::thread::hardware_concurrency();
        threads = hw == 0 ? 1 : int64_t(hw);
        if (const char* env = getenv("EMU_CUBLASLT_THREADS")) {
            long v = strtol(env, nullptr, 10);
            if (v >= 1) threads = v;
        }
        threads = std::min(threads, cols);
    }
    const bool read_a = g.alpha != 0.0 || g.bias_grad != nullptr;
    const std::vector<float> a = read_a ? unpack_a(p, static_cast<const TA*>(g.a)) : std::vector<float>();
    if (g.bias_grad != nullptr) {  // one matrix (checked): op(A) is m x k, column-major
        for (int64_t i = 0; i < p.m; i++) {
            double sum = 0.0;
            for (int64_t q = 0; q < p.k; q++) sum += double(a[size_t(q * p.m + i)]);
            store(static_cast<TC*>(g.bias_grad) + i, sum);
        }
    }
    if (threads <= 1) {
        run_columns<TA, TC>(g, a, 0, cols);
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(size_t(threads));
    for (int64_t t = 0; t < threads; t++) {
        const int64_t lo = cols * t / threads, hi = cols * (t + 1) / threads;
        pool.emplace_back([&g, &a, lo, hi] { run_columns<TA, TC>(g, a, lo, hi); });
    }
    for (auto& th : pool) th.join();
}

}  // namespace
