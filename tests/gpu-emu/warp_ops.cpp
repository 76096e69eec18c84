// The warp-wide instructions of the mma.sync kernels for the emulator: ldmatrix .x4 (plain and
// transposed; the reads are recorded against later cp.asyncs of other warps, cp_async.cpp) and
// mma.sync m16n8k16 bf16, each a warp collective: the lanes deposit their operands and the last to
// arrive computes every lane's result (runtime.cpp's scheduler holds the others). Registers and
// shared memory only (through smem_at's bounds check): build.sh leaves it uninstrumented.
#include <cstring>
#include <vector>

#include "emu.h"
#include "emulated_ptx.h"
#include "launch_state.h"
#include "runtime.h"

namespace emu {
namespace {

float bf16_lo(uint32_t u) { return __bfloat162float({uint16_t(u & 0xffffu)}); }
float bf16_hi(uint32_t u) { return __bfloat162float({uint16_t(u >> 16)}); }
uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// ldmatrix's row addresses must be 16-byte aligned rows inside dynamic shared memory; the read is
// recorded against later cp.asyncs of other warps (Launch::read_warp).
void check_row(Launch& l, uint32_t addr) {
    if (addr % 16 != 0) fail(format("ldmatrix row address %#x is not 16-byte aligned", addr).c_str());
    check_landed(l, addr, 16, "ldmatrix");
    const size_t c = chunk_of(addr);
    const int warp = l.cur->warp;
    if (l.read_generation[c] != l.block_generation) {
        l.read_generation[c] = l.block_generation;
        l.read_warp[c] = warp;
    } else if (l.read_warp[c] != warp) {
        l.read_warp[c] = -1;
    }
}

// ldmatrix .x4 for the whole warp, from the row addresses the lanes deposited.
void ldmatrix_all(WarpSlots& w, bool t) {
    Launch& l = launch_state();
    for (int i = 0; i < 32; ++i) check_row(l, w.in[i][0]);
    for (int lane = 0; lane < 32; ++lane)
        for (int m = 0; m < 4; ++m) {
            auto row = [&](int r) { return w.in[8 * m + r][0]; };  // matrix m's row r
            if (!t) {
                // Row lane/4, elements 2·(lane%4) and the next.
                std::memcpy(&w.out[lane][m], smem_at(l, row(lane / 4) + 4 * (lane % 4), 4, "an ldmatrix row"), 4);
            } else {
                // The transpose: elements (2·(lane%4), lane/4) and (2·(lane%4)+1, lane/4).
                const int r0 = 2 * (lane % 4), col = lane / 4;
                w.out[lane][m] = smem_u16(l, row(r0) + 2 * col, "an ldmatrix row") |
                                 uint32_t(smem_u16(l, row(r0 + 1) + 2 * col, "an ldmatrix row")) << 16;
            }
        }
}

}  // namespace

void warp_collective(int op, void (*all)(WarpSlots&)) {
    Launch& l = launch_state();
    Fiber* f = l.cur;
    Warp& w = l.warps[f->warp];
    if (w.arrived == 0) w.op = op;
    else if (w.op != op) fail(format("the lanes of warp %d reached different warp-wide instructions", f->warp).c_str());
    f->state = State::AtWarp;
    if (++w.arrived == w.lanes) {
        all(w.slots);
        w.arrived = 0;
        for (int i = f->warp * 32; i < f->warp * 32 + w.lanes; ++i) l.fibers[i].state = State::Ready;
    }
    if (f->state != State::Ready) yield();
}

void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans) {
    WarpSlots& s = warp_slots();
    const int lane = lane_id();
    s.in[lane][0] = addr;
    if (trans) warp_collective(3, [](WarpSlots& w) { ldmatrix_all(w, true); });
    else warp_collective(2, [](WarpSlots& w) { ldmatrix_all(w, false); });
    for (int m = 0; m < 4; ++m) r[m] = s.out[lane][m];
}

void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    WarpSlots& s = warp_slots();
    const int lane = lane_id();
    for (int i = 0; i < 4; ++i) s.in[lane][i] = a[i];
    s.in[lane][4] = b0;
    s.in[lane][5] = b1;
    for (int i = 0; i < 4; ++i) s.in[lane][6 + i] = bits(d[i]);
    warp_collective(4, [](WarpSlots& w) {
        // Fragment layouts of the PTX ISA's m16n8k16 figures (g = lane / 4, t = lane % 4); the low
        // half of each 32-bit register holds the element of the lower column (A) or row (B) index.
        float A[16][16], Bt[8][16], C[16][8];
        for (int l = 0; l < 32; ++l) {
            const int g = l / 4, t = l % 4;
            const uint32_t* in = w.in[l];
            const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
            for (int i = 0; i < 4; ++i) {
                A[rows[i]][cols[i]] = bf16_lo(in[i]);
                A[rows[i]][cols[i] + 1] = bf16_hi(in[i]);
            }
            Bt[g][2 * t] = bf16_lo(in[4]);
            Bt[g][2 * t + 1] = bf16_hi(in[4]);
            Bt[g][2 * t + 8] = bf16_lo(in[5]);
            Bt[g][2 * t + 9] = bf16_hi(in[5]);
            C[g][2 * t] = from_bits(in[6]);
            C[g][2 * t + 1] = from_bits(in[7]);
            C[g + 8][2 * t] = from_bits(in[8]);
            C[g + 8][2 * t + 1] = from_bits(in[9]);
        }
        for (int l = 0; l < 32; ++l) {
            const int g = l / 4, t = l % 4;
            const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
            for (int i = 0; i < 4; ++i) {
                const float* a = A[rows[i]];
                const float* b = Bt[cols[i]];
                float acc = C[rows[i]][cols[i]];
                for (int k = 0; k < 16; ++k) acc += a[k] * b[k];
                w.out[l][i] = bits(acc);
            }
        }
    });
    for (int i = 0; i < 4; ++i) d[i] = from_bits(s.out[lane][i]);
}

}  // namespace emu
