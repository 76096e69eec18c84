// Hopper's warpgroup MMA for the emulator: wgmma.fence, wgmma.mma_async m64nNk16 (bf16 operands
// in shared memory through matrix descriptors, f32 accumulators), wgmma.commit_group and
// wgmma.wait_group, each an instruction all 128 threads of a warpgroup must reach (or under
// LOWRANK_EMU_WGMMA=warp, as the PTX ISA's `.sync` says, the 32 of each warp, the warps issuing at
// their own pace: a wait_group then also waits until every warp of the warpgroup has committed the
// groups it retires, and each warp's accumulators are written at its own wait). mma_async is
// asynchronous as on the GPU: its product is taken from shared memory at issue and must still be
// what shared memory holds when the wait_group that retires it runs, and only then are the
// accumulators written. The races around it fail the launch with a sentence: a cp.async into
// shared memory an in-flight wgmma may read (checked in cp_async.cpp), a wgmma reading shared
// memory whose cp.async has not landed, a wgmma without a wgmma.fence, a thread exiting with
// wgmmas in flight, an sm_90a instruction on the emulated sm_80.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emulated_ptx.h"
#include "launch_state.h"

namespace emu {

int wgmma_unit_threads() {
    static const int n = [] {
        const char* m = std::getenv("LOWRANK_EMU_WGMMA");
        if (!m || !*m || std::string(m) == "warpgroup") return 128;
        if (std::string(m) == "warp") return 32;
        std::fprintf(stderr, "emulated GPU: LOWRANK_EMU_WGMMA=%s: use `warpgroup` (the default) or `warp`\n", m);
        std::abort();
    }();
    return n;
}

namespace {

// This thread's wgmma unit (a warpgroup, or a warp) and its index in it.
struct WarpgroupSlot {
    Warpgroup& group;
    int thread;
};
WarpgroupSlot warpgroup_slot(Launch& l, const char* what) {
    if (l.warpgroups.empty()) fail(format("%s needs whole warpgroups, and the block has %zu threads", what, l.fibers.size()).c_str());
    const int i = int(l.cur - l.fibers.data()), u = wgmma_unit_threads();
    return {l.warpgroups[size_t(i / u)], i % u};
}

// The warpgroup-wide analogue of warp_collective: the last of the unit's threads to arrive runs
// `all`.
void warpgroup_collective(int op, void (*all)(Launch&, Warpgroup&)) {
    Launch& l = launch_state();
    Fiber* f = l.cur;
    const int u = wgmma_unit_threads(), g = int(f - l.fibers.data()) / u;
    Warpgroup& w = l.warpgroups[size_t(g)];
    if (w.arrived == 0) w.op = op;
    else if (w.op != op) fail(format("the threads of wgmma unit %d (%d threads) reached different wgmma instructions", g, u).c_str());
    f->state = State::AtWarp;
    if (++w.arrived == u) {
        w.arrived = 0;
        for (int i = u * g; i < u * (g + 1); ++i) l.fibers[size_t(i)].state = State::Ready;
        all(l, w);
    }
    if (f->state != State::Ready) yield();
}

void check_descriptor(uint64_t desc, const char* which) {
    if (desc >> 62 != 1)
        fail(format("wgmma %s descriptor %#llx: swizzle mode %llu; the emulator models the 128-byte swizzle (mode 1) only", which,
                    (unsigned long long)desc, (unsigned long long)(desc >> 62))
                 .c_str());
    if (desc >> 49 & 7)
        fail(format("wgmma %s descriptor %#llx: a nonzero matrix base offset is not emulated", which, (unsigned long long)desc).c_str());
    // The PTX ISA ties the base offset to where the start lies in the 1024-byte swizzle pattern:
    // with offset 0, a start whose bits 7-9 are set reads as the hardware may not (the emulator's
    // XOR of absolute address bits would make any start consistent with the copy's swizzle).
    const uint32_t start = uint32_t(desc & 0x3fff) << 4;
    if (start >> 7 & 7)
        fail(format("wgmma %s descriptor %#llx: start %#x is off the 1024-byte swizzle pattern's boundary (bits 7-9 set) "
                    "with base offset 0",
                    which, (unsigned long long)desc, start)
                 .c_str());
}

// Element (mn, k) of a wgmma operand, read through its matrix descriptor: start address, leading
// and stride byte offsets (LBO, SBO) in 16-byte units. The canonical 128-byte-swizzled layouts (PTX
// ISA, "Shared Memory Matrix Layout"; CUTLASS's make_gmma_desc): K-major, 128-byte rows (one per
// M or N index, K contiguous), 8-row groups SBO apart, LBO unused; MN-major, 128-byte rows of 64
// M or N values (one row per K index), 8-row groups SBO apart, 64-wide M or N blocks LBO apart.
// The swizzle XORs bits 4–6 of the final address with its bits 7–9.
uint32_t wgmma_address(uint64_t desc, int mn, int k, bool mn_major) {
    const uint32_t start = uint32_t(desc & 0x3fff) << 4, lbo = uint32_t(desc >> 16 & 0x3fff) << 4,
                   sbo = uint32_t(desc >> 32 & 0x3fff) << 4;
    uint32_t addr = start + (mn_major ? (mn % 64) * 2 + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo
                                      : (mn % 8) * 128 + (mn / 8) * sbo + k * 2);
    return addr ^ (addr >> 7 & 7) << 4;
}

// Calls f(element address) for A (64 × 16, K-major) and then B (16 × n) of one wgmma.
template <class F>
void for_each_operand(const Wgmma& op, F f) {
    for (int m = 0; m < 64; ++m)
        for (int k = 0; k < 16; ++k) f(wgmma_address(op.desc_a, m, k, false));
    for (int n = 0; n < op.n; ++n)
        for (int k = 0; k < 16; ++k) f(wgmma_address(op.desc_b, n, k, op.trans_b));
}

// A·B (64 × n, row-major) of one wgmma from shared memory as it is now.
std::vector<float> wgmma_product(const Launch& l, const Wgmma& op) {
    std::vector<float> a, b, p(size_t(64) * op.n);
    a.reserve(64 * 16);
    for_each_operand(op, [&](uint32_t addr) {
        (a.size() < 64 * 16 ? a : b).push_back(__bfloat162float({smem_u16(l, addr, "a wgmma operand")}));
    });
    for (int m = 0; m < 64; ++m)
        for (int n = 0; n < op.n; ++n) {
            float acc = 0.0f;
            for (int k = 0; k < 16; ++k) acc += a[m * 16 + k] * b[n * 16 + k];
            p[size_t(m) * op.n + n] = acc;
        }
    return p;
}

// Completes one wgmma's reads: shared memory must still hold what it read at issue (the tensor
// cores may read it at any time in between).
void finish_reads(Launch& l, Wgmma& op) {
    if (op.done) return;
    op.done = true;
    for (uint32_t c : op.chunks) --l.wgmma_reads[c];
    // Compared bit for bit: columns the kernel never stores may read stale NaN bytes (the TMA
    // kernel's N-edge boxes it does not load), and NaN != NaN would call an unchanged tile changed.
    const std::vector<float> now = wgmma_product(l, op);
    if (std::memcmp(now.data(), op.product.data(), now.size() * sizeof(float)) != 0)
        fail("shared memory a wgmma.mma_async reads changed between its issue and the wgmma.wait_group that retires it: "
             "the tile was not complete when the wgmma was issued, or it was refilled while the tensor cores could still read it");
}

// Commit group `g` of unit `w` completes for the whole warpgroup: the reads of every warp's share
// of it end (under LOWRANK_EMU_WGMMA=warp the other warps' shares too, though they have not waited).
void complete_group(Launch& l, const Warpgroup& w, int g) {
    const size_t per_group = size_t(128 / wgmma_unit_threads()), first = size_t(&w - l.warpgroups.data()) / per_group * per_group;
    for (size_t s = first; s < first + per_group; ++s) {
        Warpgroup& sib = l.warpgroups[s];
        const int at = g - sib.retired_total;
        if (at >= 0 && size_t(at) < sib.committed.size())
            for (Wgmma& op : sib.committed[size_t(at)]) finish_reads(l, op);
    }
}

// Writes one wgmma's accumulators, the m64nNk16 layout: warp w of the group holds rows
// 16w + lane/4 (+8), register i column 8·(i/4) + 2·(lane%4) + i%2.
void retire(const Wgmma& op) {
    for (int t = 0; t < wgmma_unit_threads(); ++t) {
        const int warp = op.warp0 + t / 32, lane = t % 32;
        for (int i = 0; i < op.n / 2; ++i) {
            const int row = 16 * warp + lane / 4 + 8 * (i / 2 % 2), col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
            op.d[t][i] = (op.scale_d ? op.d[t][i] : 0.0f) + op.product[size_t(row) * op.n + col];
        }
    }
}

}  // namespace

void wgmma_fence() {
    warpgroup_slot(launch_state(), "wgmma.fence");
    warpgroup_collective(5, [](Launch&, Warpgroup& w) { w.fenced = true; });
}

void wgmma_mma_async(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool scale_d, bool trans_b) {
    Launch& l = launch_state();
    if (l.major < 9) fail(format("wgmma.mma_async on an emulated sm_%d0: the instruction exists on sm_90a only", l.major).c_str());
    auto [w, t] = warpgroup_slot(l, "wgmma.mma_async");
    w.d[t] = d;
    w.a[t] = desc_a;
    w.b[t] = desc_b;
    w.arg[t] = uint32_t(n) | uint32_t(scale_d) << 16 | uint32_t(trans_b) << 17;
    warpgroup_collective(6, [](Launch& l, Warpgroup& w) {
        for (int t = 1; t < wgmma_unit_threads(); ++t)
            if (w.a[t] != w.a[0] || w.b[t] != w.b[0] || w.arg[t] != w.arg[0])
                fail("the threads of a warpgroup gave one wgmma.mma_async different descriptors, shapes or modes");
        if (!w.fenced)
            fail("wgmma.mma_async without a wgmma.fence since the warpgroup last had its accumulators (at the start, or since its "
                 "last wgmma.wait_group)");
        check_descriptor(w.a[0], "A");
        check_descriptor(w.b[0], "B");
        // m64nNk16 exists for N = 8, 16, ..., 256 (N / 2 accumulators per thread, up to 128).
        if (const uint32_t n = w.arg[0] & 0xffff; n < 8 || n > 256 || n % 8 != 0)
            fail(format("wgmma.mma_async with N = %u: the bf16 shapes are m64nNk16 with N a multiple of 8 from 8 to 256", n).c_str());
        Wgmma op{w.d, w.a[0], w.b[0], int(w.arg[0] & 0xffff), bool(w.arg[0] >> 16 & 1), bool(w.arg[0] >> 17 & 1), {}, {}, 0, false};
        op.warp0 = int(&w - l.warpgroups.data()) % (128 / wgmma_unit_threads());
        for_each_operand(op, [&](uint32_t addr) {
            check_landed(l, addr, 2, "wgmma.mma_async");
            op.chunks.push_back(uint32_t(chunk_of(addr)));
        });
        std::sort(op.chunks.begin(), op.chunks.end());
        op.chunks.erase(std::unique(op.chunks.begin(), op.chunks.end()), op.chunks.end());
        for (uint32_t c : op.chunks) ++l.wgmma_reads[c];
        op.product = wgmma_product(l, op);
        w.open.push_back(std::move(op));
    });
}

void wgmma_commit_group() {
    warpgroup_slot(launch_state(), "wgmma.commit_group");
    warpgroup_collective(7, [](Launch& l, Warpgroup& w) {
        w.committed.push_back(std::move(w.open));
        w.open.clear();
        ++w.committed_total;
        ++l.events;
    });
}

void wgmma_wait_group(int n) {
    Launch& l = launch_state();
    auto [w, t] = warpgroup_slot(l, "wgmma.wait_group");
    // Per warp: the groups this wait retires complete only once every warp of the warpgroup has
    // committed them (a spin, as on an mbarrier, until the others catch up).
    if (wgmma_unit_threads() < 128) {
        const size_t first = size_t(&w - l.warpgroups.data()) / 4 * 4;
        auto others_committed = [&] {
            for (size_t s = first; s < first + 4; ++s)
                if (l.warpgroups[s].committed_total < w.committed_total - n) return false;
            return true;
        };
        bool spun = false;
        while (!others_committed()) {
            l.cur->spinning = spun = true;
            yield();
        }
        if (spun) ++l.events;  // a wait that ends is progress
    }
    w.arg[t] = uint32_t(n);
    warpgroup_collective(8, [](Launch& l, Warpgroup& w) {
        for (int t = 1; t < wgmma_unit_threads(); ++t)
            if (w.arg[t] != w.arg[0]) fail("the threads of a warpgroup waited for different numbers of wgmma groups");
        while (w.committed.size() > w.arg[0]) {
            complete_group(l, w, w.retired_total);
            for (const Wgmma& op : w.committed.front()) retire(op);
            w.committed.erase(w.committed.begin());
            ++w.retired_total;
        }
        w.fenced = false;
    });
}

}  // namespace emu
