// cp.async for the emulator: 16-byte copies from global to shared memory, queued per thread and
// performed at the cp.async.wait_group that covers their group. A copy into a chunk another warp
// read by ldmatrix since the last __syncthreads (warp_ops.cpp records the reads), or that an
// in-flight wgmma reads, fails the launch. The copies read device memory: under
// LOWRANK_EMU_SANITIZE=address this file is instrumented (build.sh), so a source outside its
// allocation is reported.
#include <cstring>
#include <vector>

#include "emu.h"
#include "emulated_ptx.h"
#include "launch_state.h"
#include "runtime.h"

namespace emu {
namespace {

void perform(Launch& l, const std::vector<Copy>& group) {
    for (const Copy& c : group) {
        unsigned char* dst = smem_at(l, c.dst, 16, "a cp.async destination");
        --l.landing[chunk_of(c.dst)];
        if (c.pred) std::memcpy(dst, c.src, 16);
        else std::memset(dst, 0, 16);
    }
}

}  // namespace

void cp_async(uint32_t dst, const void* src, bool pred) {
    Launch& l = launch_state();
    if (dst % 16 != 0) fail(format("cp.async destination %#x is not 16-byte aligned", dst).c_str());
    smem_at(l, dst, 16, "a cp.async destination");
    if (l.wgmma_reads[chunk_of(dst)])
        fail(format("cp.async into shared memory at %#x that an in-flight wgmma.mma_async may still read (its "
                    "wgmma.wait_group, then a barrier, must come first)",
                    dst)
                 .c_str());
    const size_t c = chunk_of(dst);
    if (l.read_generation[c] == l.block_generation && l.read_warp[c] != l.cur->warp)
        fail(format("cp.async into shared memory at %#x that %s read by ldmatrix since the last __syncthreads (nothing "
                    "orders the read before the copy: a barrier between them must come first)",
                    dst, l.read_warp[c] < 0 ? "other warps" : format("warp %d", l.read_warp[c]).c_str())
                 .c_str());
    ++l.landing[c];
    if (pred && reinterpret_cast<uintptr_t>(src) % 16 != 0) fail("cp.async source is not 16-byte aligned");
    l.cur->open.push_back({dst, src, pred});
}

void cp_async_commit_group() {
    Fiber* f = launch_state().cur;
    f->committed.push_back(std::move(f->open));
    f->open.clear();
}

void cp_async_wait_group(int n) {
    Launch& l = launch_state();
    Fiber* f = l.cur;
    while (f->committed.size() > size_t(n)) {
        perform(l, f->committed.front());
        f->committed.erase(f->committed.begin());
    }
}

}  // namespace emu
