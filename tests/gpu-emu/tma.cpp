// Hopper's transaction barriers and tensor copies for the emulator: mbarrier.init, mbarrier.arrive
// (.expect_tx, and on a barrier of another block of the cluster), mbarrier.try_wait.parity, and
// cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes (TMA, also
// .multicast::cluster: one copy per destination block, each landing on its own) with the tensor
// maps of the fake driver's
// cuTensorMapEncodeTiled (tensor_map.h). A copy is asynchronous as on the GPU: issuing it marks its
// destination chunks as landing (a wgmma or ldmatrix reading them before it lands fails, as for
// cp.async), and it lands, writing the box and completing its bytes on its mbarrier, only when a
// thread polls that barrier's open phase for the second time in a row, or when no thread can move
// (runtime.cpp's scheduler), or when the block ends: as late as a GPU could deliver it, so a
// consumer that reads a stage without waiting for its barrier, or after one failed poll, reads it
// before the data is there. What a kernel can get wrong
// fails the launch with a sentence: an uninitialised or unpublished barrier, more arrivals than a
// phase expects, a tx-count out of range, a copy into shared memory a wgmma still reads or another
// copy still writes, a misaligned destination, a map the driver never encoded.
#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

#include "emulated_ptx.h"
#include "launch_state.h"
#include "tensor_map.h"

namespace emu {
namespace {

// PTX ISA, "Contents of the mbarrier object": the expected arrival count lies in [1, 2^20 - 1],
// the tx-count in [-(2^20 - 1), 2^20 - 1].
constexpr int64_t LIMIT = (1 << 20) - 1;

int thread_of(const Launch& l) { return int(l.cur - l.fibers.data()); }

void need_sm90(const Launch& l, const char* what) {
    if (l.major < 9) fail(format("%s on an emulated sm_%d0: the instruction exists on sm_90 and later only", what, l.major).c_str());
}

// The barrier at `bar` of block `owner` (this thread's, or another of its cluster) for `what`:
// 8-byte aligned in dynamic shared memory, initialised, and its initialisation published to this
// thread: by a __syncthreads (unless this thread initialised it), or for another block's barrier
// by a barrier.cluster.
Mbarrier& barrier_in(Launch& owner, uint32_t bar, const char* what) {
    Launch& l = launch_state();
    if (bar % 8 != 0) fail(format("%s: the mbarrier address %#x is not 8-byte aligned", what, bar).c_str());
    smem_at(owner, bar, 8, what);
    auto it = owner.mbarriers.find(bar);
    if (it == owner.mbarriers.end())
        fail(format("%s on shared memory at %#x of block rank %u of the cluster, which holds no mbarrier (mbarrier.init it "
                    "first)",
                    what, bar, owner.rank)
                 .c_str());
    Mbarrier& b = it->second;
    if (&owner != &l) {
        if (owner.live == 0)
            fail(format("%s on the mbarrier at %#x of block rank %u of the cluster, whose threads have all exited: its shared "
                        "memory is gone (a barrier.cluster before exiting keeps it)",
                        what, bar, owner.rank)
                     .c_str());
        if (b.init_cluster_generation == owner.cluster->generation)
            fail(format("%s on the mbarrier at %#x of block rank %u of the cluster, initialised there with no barrier.cluster "
                        "since (mbarrier.init, fence.mbarrier_init, then barrier.cluster.arrive and wait in every block must "
                        "come before another block uses it)",
                        what, bar, owner.rank)
                     .c_str());
    } else if (b.init_generation == l.block_generation && b.init_thread != thread_of(l)) {
        fail(format("%s on the mbarrier at %#x, which thread %d initialised with no __syncthreads since (mbarrier.init, "
                    "fence.mbarrier_init, then a barrier, must come before other threads use it)",
                    what, bar, b.init_thread)
                 .c_str());
    }
    return b;
}
Mbarrier& barrier(Launch& l, uint32_t bar, const char* what) { return barrier_in(l, bar, what); }

// Block `rank` of this thread's cluster, for `what`.
Launch& cta_of(Launch& l, uint32_t rank, const char* what) {
    if (rank >= l.cluster->ctas.size())
        fail(format("%s names block rank %u of a cluster of %zu blocks", what, rank, l.cluster->ctas.size()).c_str());
    return *l.cluster->ctas[rank];
}

// A phase completes once its arrivals are all in and its transaction bytes all delivered; the next
// one then expects `count` arrivals again.
void advance(Mbarrier& b) {
    if (b.pending == 0 && b.tx == 0) {
        ++b.phase;
        b.pending = b.count;
    }
}

// The 128-, 64- or 32-byte swizzle (CUTLASS's Swizzle<3|2|1, 4, 3>) of a shared-window address: bits
// 4 and up of the 16-byte chunk XORed with bits 7 and up. The hardware applies it to the absolute
// address, so a destination off the pattern's repeat (1024, 512, 256 bytes) shifts the pattern
// (CUDA programming guide, "TMA Swizzle"): what a wgmma then reads is not what its descriptor says.
uint32_t swizzled(uint32_t addr, int swizzle) { return addr ^ (addr >> 7 & ((1u << swizzle) - 1)) << 4; }

// The box's rows in shared memory: dense, but a swizzled box narrower than its swizzle span takes
// the whole span per row (the guide asks for shared memory "to accommodate the full swizzle width").
uint32_t row_bytes(const TensorMap& m) { return uint32_t(m.box[0]) * m.elem_bytes; }
uint32_t row_pitch(const TensorMap& m) { return std::max(row_bytes(m), swizzle_span(m.swizzle)); }

// The copy engine delivers one copy: the box from global memory (zeros where it leaves the
// tensor: OOB fill NONE), 16-byte chunk by chunk to their swizzled addresses, then its bytes, the
// whole box's, complete on its barrier. Everything else was checked at issue; a tx-count out of
// range is returned, as landing may run on the scheduler's stack, where fail() cannot.
std::string land(Launch& l, const TmaCopy& c) {
    const TensorMap& m = c.map;
    const uint32_t e = m.elem_bytes, per_chunk = 16 / e;
    const auto* base = reinterpret_cast<const unsigned char*>(uintptr_t(m.address));
    for (uint32_t r = 0; r < m.box[1]; ++r) {
        const int64_t y = int64_t(c.c1) + r;
        const bool row_inside = y >= 0 && uint64_t(y) < m.dim[1];
        for (uint32_t q = 0; q < row_bytes(m) / 16; ++q) {
            unsigned char* dst = l.smem + (swizzled(c.dst + r * row_pitch(m) + 16 * q, m.swizzle) - SMEM_WINDOW);
            const int64_t x0 = int64_t(c.c0) + int64_t(q) * per_chunk;
            const unsigned char* src = base + uint64_t(y) * m.stride[1];
            if (row_inside && x0 >= 0 && uint64_t(x0) + per_chunk <= m.dim[0]) {
                std::memcpy(dst, src + uint64_t(x0) * e, 16);
                continue;
            }
            for (uint32_t i = 0; i < per_chunk; ++i) {
                const int64_t x = x0 + i;
                if (row_inside && x >= 0 && uint64_t(x) < m.dim[0]) std::memcpy(dst + i * e, src + uint64_t(x) * e, e);
                else std::memset(dst + i * e, 0, e);
            }
        }
    }
    for (uint32_t ch : c.chunks) --l.landing[ch];
    ++l.events;
    Mbarrier& b = l.mbarriers.at(c.bar);  // barriers are never removed within a block
    const int64_t bytes = int64_t(row_bytes(m)) * m.box[1];
    if (b.tx - bytes < -LIMIT)
        return format("a tensor copy completing %lld bytes on the mbarrier at %#x takes its tx-count (%lld) below -(2^20 - 1): "
                      "more bytes were delivered than arrive.expect_tx announced",
                      (long long)bytes, c.bar, (long long)b.tx);
    b.tx -= bytes;
    advance(b);
    return "";
}

// Lands the copies in flight on `bar`, oldest first; "" or what went wrong.
std::string land_on(Launch& l, uint32_t bar) {
    for (size_t i = 0; i < l.tma.size();) {
        if (l.tma[i].bar != bar) {
            ++i;
            continue;
        }
        const TmaCopy c = std::move(l.tma[i]);
        l.tma.erase(l.tma.begin() + ptrdiff_t(i));
        std::string e = land(l, c);
        if (!e.empty()) return e;
    }
    return "";
}

}  // namespace

void mbar_init(uint32_t bar, uint32_t count) {
    Launch& l = launch_state();
    if (bar % 8 != 0) fail(format("mbarrier.init: the mbarrier address %#x is not 8-byte aligned", bar).c_str());
    smem_at(l, bar, 8, "mbarrier.init");
    if (count < 1 || count > LIMIT)
        fail(format("mbarrier.init at %#x with an expected arrival count of %u: it must lie in [1, 2^20 - 1]", bar, count).c_str());
    if (l.mbarriers.count(bar))
        fail(format("mbarrier.init at %#x on a live mbarrier (undefined without an mbarrier.inval first)", bar).c_str());
    if (l.landing[chunk_of(bar)])
        fail(format("mbarrier.init at %#x in shared memory an asynchronous copy is still writing", bar).c_str());
    Mbarrier b;
    b.count = b.pending = count;
    b.init_thread = thread_of(l);
    b.init_generation = l.block_generation;
    b.init_cluster_generation = l.cluster->generation;
    l.mbarriers[bar] = b;
    ++l.events;
}

namespace {

// One arrival (raising the tx-count by tx_bytes first) on the barrier at `bar` of block `owner`;
// on another block's, queued there (deliver_arrivals performs it later).
void arrive_on(Launch& owner, uint32_t bar, uint32_t tx_bytes, const char* what) {
    Mbarrier& b = barrier_in(owner, bar, what);
    if (&owner != &launch_state()) {
        owner.remote_arrivals.push_back(bar);
        ++owner.events;
        return;
    }
    // Pending arrivals at zero: the phase waits for transaction bytes only, and this arrival,
    // meant for a later phase, would take the count below zero (undefined on the GPU).
    if (b.pending == 0)
        fail(format("%s on the mbarrier at %#x beyond the %u arrivals its phase %u expects (the phase waits only for its "
                    "%lld pending transaction bytes)",
                    what, bar, b.count, b.phase, (long long)b.tx)
                 .c_str());
    // The expect-tx comes before the arrive-on (PTX ISA), so this arrival cannot complete the
    // phase before the bytes it announces are delivered.
    if (int64_t(tx_bytes) > LIMIT || b.tx + int64_t(tx_bytes) > LIMIT)
        fail(format("%s of %u bytes on the mbarrier at %#x takes its tx-count (%lld) above 2^20 - 1", what, tx_bytes, bar,
                    (long long)b.tx)
                 .c_str());
    b.tx += tx_bytes;
    --b.pending;
    ++owner.events;
    advance(b);
}

}  // namespace

void mbar_arrive(uint32_t bar, uint32_t tx_bytes) {
    Launch& l = launch_state();
    const char* what = tx_bytes ? "mbarrier.arrive.expect_tx" : "mbarrier.arrive";
    if (tx_bytes) need_sm90(l, what);
    arrive_on(l, bar, tx_bytes, what);
}

void mbar_arrive_cluster(uint32_t bar, uint32_t cta) {
    Launch& l = launch_state();
    const char* what = "mbarrier.arrive.shared::cluster (after mapa)";
    need_sm90(l, what);
    arrive_on(cta_of(l, cta, what), bar, 0, what);
}

uint32_t cluster_ctarank() {
    Launch& l = launch_state();
    need_sm90(l, "%cluster_ctarank");
    return l.rank;
}

uint32_t cluster_nctarank() {
    Launch& l = launch_state();
    need_sm90(l, "%cluster_nctarank");
    return uint32_t(l.cluster->ctas.size());
}

bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    Launch& l = launch_state();
    need_sm90(l, "mbarrier.try_wait");
    Fiber* f = l.cur;
    Mbarrier& b = barrier(l, bar, "mbarrier.try_wait.parity");
    parity &= 1;  // the operand's low bit names the phase
    // The phase of this parity is the current one, still open. The first poll reports it open and
    // lands nothing, as a GPU's try_wait may time out before the bytes arrive: a thread that reads
    // the tile after one failed poll instead of polling until true reads it before it landed. On
    // this thread's next poll the copies in flight on the barrier land, the latest a GPU could
    // deliver them with a thread waiting.
    const bool polled = f->waiting && f->wait_bar == bar && f->wait_parity == parity;
    if (b.phase % 2 == parity && polled) {
        std::string e = land_on(l, bar);
        if (e.empty()) e = deliver_arrivals(l, bar, false);
        if (!e.empty()) fail(e.c_str());
    }
    if (b.phase % 2 != parity) {
        if (polled) ++l.events;  // a wait ends: progress
        f->waiting = false;
        return true;
    }
    // Not complete: the thread lets the others run (it stays Ready, and comes back here to try
    // again), marked so that the scheduler can tell spinning from progress.
    f->waiting = f->spinning = true;
    f->wait_bar = bar;
    f->wait_parity = parity;
    yield();
    return false;
}

namespace {

// The copy `c` (its map checked, its box inside the tensor) issued into block `t`: its destination
// at c.dst there, its bytes completing on t's barrier at c.bar.
void issue_into(Launch& t, TmaCopy c);

}  // namespace

void tma_load_2d(uint32_t dst, const void* map, int c0, int c1, uint32_t bar, int mask) {
    Launch& l = launch_state();
    need_sm90(l, "cp.async.bulk.tensor");
    if (reinterpret_cast<uintptr_t>(map) % 64 != 0)
        fail(format("cp.async.bulk.tensor: the tensor map at %p is not 64-byte aligned", map).c_str());
    TmaCopy c;
    std::memcpy(&c.map, map, sizeof c.map);  // as it is now: the parameter may be gone when the copy lands
    const TensorMap& m = c.map;
    if (m.magic != TENSOR_MAP_MAGIC)
        fail("cp.async.bulk.tensor with a tensor map that cuTensorMapEncodeTiled never encoded (zeroed, corrupted, or not a "
             "CUtensorMap)");
    if (m.rank != 2)
        fail(format("cp.async.bulk.tensor.2d with a tensor map of rank %d: the instruction's dimension must be the map's rank", m.rank)
                 .c_str());
    if (m.interleave != 0 || m.oob_fill != 0 || m.element_stride[0] != 1 || m.element_stride[1] != 1)
        fail("cp.async.bulk.tensor: interleaved maps, element strides other than 1 and the NaN out-of-bounds fill are not emulated");
    if (dst % 128 != 0) fail(format("cp.async.bulk.tensor: the shared-memory destination %#x is not 128-byte aligned", dst).c_str());
    // The PTX ISA says a box's out-of-bound elements are filled, and CUTLASS's edge tiles count a
    // partial box's full bytes; for a box with no element inside, the count is undocumented, so
    // the kernels must not issue one (landing counts the full box, a guess that could hang a GPU).
    for (int d = 0; d < 2; ++d) {
        const int64_t lo = d == 0 ? c0 : c1;
        if (lo >= int64_t(m.dim[d]) || lo + int64_t(m.box[d]) <= 0)
            fail(format("cp.async.bulk.tensor: the box at (%d, %d) of %u × %u lies wholly outside the %llu × %llu tensor: how "
                        "many bytes such a copy completes on its mbarrier is not documented (do not issue it)",
                        c0, c1, m.box[0], m.box[1], (unsigned long long)m.dim[0], (unsigned long long)m.dim[1])
                     .c_str());
    }
    c.dst = dst;
    c.bar = bar;
    c.c0 = c0;
    c.c1 = c1;
    if (mask < 0) {
        issue_into(l, std::move(c));
        return;
    }
    const size_t blocks = l.cluster->ctas.size();
    if (mask == 0 || mask >> blocks != 0)
        fail(format("cp.async.bulk.tensor.multicast::cluster with the CTA mask %#x in a cluster of %zu blocks: it must name "
                    "some of the cluster's blocks and no others",
                    unsigned(mask), blocks)
                 .c_str());
    for (size_t r = 0; r < blocks; ++r)
        if (mask >> r & 1) issue_into(*l.cluster->ctas[r], c);
}

namespace {

void issue_into(Launch& t, TmaCopy c) {
    const TensorMap& m = c.map;
    const uint32_t dst = c.dst;
    barrier_in(t, c.bar, "cp.async.bulk.tensor");
    for (uint32_t r = 0; r < m.box[1]; ++r)
        for (uint32_t q = 0; q < row_bytes(m) / 16; ++q) {
            const uint32_t a = swizzled(dst + r * row_pitch(m) + 16 * q, m.swizzle);
            smem_at(t, a, 16, "a tensor copy's destination");
            const uint32_t ch = uint32_t(chunk_of(a));
            if (t.wgmma_reads[ch])
                fail(format("a tensor copy into shared memory at %#x that an in-flight wgmma.mma_async may still read (the stage "
                            "was released before the wgmma.wait_group that retires the wgmmas reading it)",
                            a)
                         .c_str());
            if (t.landing[ch])
                fail(format("a tensor copy into shared memory at %#x while an earlier asynchronous copy into it is still in "
                            "flight (the stage was refilled before its last fill landed and was consumed)",
                            a)
                         .c_str());
            c.chunks.push_back(ch);
        }
    std::vector<uint32_t> sorted = c.chunks;
    std::sort(sorted.begin(), sorted.end());
    for (const auto& [addr, b] : t.mbarriers)
        if (std::binary_search(sorted.begin(), sorted.end(), uint32_t(chunk_of(addr))))
            fail(format("a tensor copy into shared memory at %#x.. would overwrite the mbarrier at %#x", dst, addr).c_str());
    for (uint32_t ch : c.chunks) ++t.landing[ch];
    t.tma.push_back(std::move(c));
    ++t.events;
}

}  // namespace

std::string deliver_arrivals(Launch& l, uint32_t bar, bool all) {
    for (size_t i = 0; i < l.remote_arrivals.size();) {
        const uint32_t at = l.remote_arrivals[i];
        if (!all && at != bar) {
            ++i;
            continue;
        }
        l.remote_arrivals.erase(l.remote_arrivals.begin() + ptrdiff_t(i));
        Mbarrier& b = l.mbarriers.at(at);  // checked at the arrival; barriers are never removed
        if (b.pending == 0)
            return format("an mbarrier.arrive from another block of the cluster on the mbarrier at %#x of block rank %u beyond "
                          "the %u arrivals its phase %u expects",
                          at, l.rank, b.count, b.phase);
        --b.pending;
        ++l.events;
        advance(b);
    }
    return "";
}

bool deliver_all_arrivals(Launch& l) {
    const bool any = !l.remote_arrivals.empty();
    const std::string e = deliver_arrivals(l, 0, true);
    if (!e.empty() && l.error.empty()) l.error = format("kernel %s, block (%u,%u,%u): %s", l.name, l.bidx.x, l.bidx.y, l.bidx.z, e.c_str());
    return any;
}

bool land_all_copies(Launch& l) {
    const bool any = !l.tma.empty();
    while (!l.tma.empty() && l.error.empty()) {
        const TmaCopy c = std::move(l.tma.front());
        l.tma.erase(l.tma.begin());
        const std::string e = land(l, c);
        if (!e.empty())
            l.error = format("kernel %s, block (%u,%u,%u), the copy engine: %s", l.name, l.bidx.x, l.bidx.y, l.bidx.z, e.c_str());
    }
    return any;
}

std::string mbarrier_report(const Launch& l) {
    std::map<std::pair<uint32_t, uint32_t>, std::pair<int, int>> spins;  // (barrier, parity) -> (threads, the first)
    for (size_t i = 0; i < l.fibers.size(); ++i) {
        const Fiber& f = l.fibers[i];
        if (f.state != State::Ready || !f.spinning || !f.waiting) continue;  // (spinning only: at barrier.cluster)
        auto& s = spins[{f.wait_bar, f.wait_parity}];
        if (s.first++ == 0) s.second = int(i);
    }
    std::string r;
    for (const auto& [key, s] : spins) {
        const Mbarrier& b = l.mbarriers.at(key.first);
        r += format("; %d threads (thread %d the first) spin on the mbarrier at %#x for its phase of parity %u: its current "
                    "phase %u has %u of its %u arrivals and %lld transaction bytes pending%s",
                    s.first, s.second, key.first, key.second, b.phase, b.pending, b.count, (long long)b.tx,
                    b.tx >= 0         ? ""
                    : b.pending > 0 ? " (delivered before the arrive.expect_tx that announces them, as a peer block's multicast may be)"
                                    : " (more bytes delivered than arrive.expect_tx announced)");
    }
    return r;
}

}  // namespace emu
