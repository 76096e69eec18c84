// The emulator's execution model: a launch runs its blocks on a few OS threads (one per core), one
// block (or one thread-block cluster's blocks together) at a time each, and a block's CUDA threads
// as fibers (stackful coroutines) that run until
// they reach a barrier (__syncthreads, a warp-wide instruction such as a shuffle, ldmatrix or
// mma.sync, modelled in warp_ops.cpp, or a warpgroup-wide wgmma instruction, modelled in wgmma.cpp) or spin on an mbarrier
// whose phase is not complete (tma.cpp), so every barrier is honoured exactly and a missing one
// shows up as a wrong result when the fibers run in another order
// (LOWRANK_EMU_ORDER=forward|reverse|random). barrier.cluster spins like an mbarrier wait until
// every live thread of the cluster has arrived. A barrier that can never complete is reported as a
// deadlock, __trap() and bad shared-memory addresses as a launch failure: the fake driver then
// answers every later call with an error, as a real context does after a fault.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

// EMU_ASAN: the kernels run under AddressSanitizer (build.sh), this file itself uninstrumented, so
// ASan's own macros are no-ops here: its interface is called directly.
#if defined(EMU_ASAN)
#include <sanitizer/asan_interface.h>
#define EMU_UNPOISON(addr, size) __asan_unpoison_memory_region((addr), (size))
#else
#define EMU_UNPOISON(addr, size) ((void)(addr), (void)(size))
#endif

#include "emu.h"
#include "emulated_ptx.h"
#include "launch_state.h"
#include "runtime.h"

// Switches fibers: saves the callee-saved registers and the FP control words on the current stack,
// stores its pointer in *from and resumes the stack `to`. (glibc's swapcontext also saves the signal
// mask, a system call per switch, which made it most of the emulator's time.) x86-64 System V only.
#if !defined(__x86_64__)
#error "the emulator's fiber switch (emu_switch) is written for x86-64 only"
#endif
extern "C" void emu_switch(void** from, void* to);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace emu {
namespace {

constexpr size_t STACK_BYTES = 64 * 1024;

thread_local Launch* L = nullptr;

std::map<std::string, Entry>& registry() {
    static std::map<std::string, Entry> r;
    return r;
}

}  // namespace

// Shared with the warpgroup model (launch_state.h).
Launch& launch_state() {
    if (!L) {
        std::fprintf(stderr, "emulated GPU: a device function ran outside a kernel launch\n");
        std::abort();
    }
    return *L;
}

void yield() {
    Launch& l = *L;
    emu_switch(&l.cur->sp, l.sched);
}

std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

unsigned char* smem_at(const Launch& l, uint32_t addr, size_t n, const char* what) {
    if (addr < SMEM_WINDOW || size_t(addr - SMEM_WINDOW) + n > l.smem_bytes)
        fail(format("%s at shared-memory address %#x lies outside the block's %zu bytes of dynamic shared memory (from %#x)", what, addr,
                    l.smem_bytes, SMEM_WINDOW)
                 .c_str());
    return l.smem + (addr - SMEM_WINDOW);
}

size_t chunk_of(uint32_t addr) { return (addr - SMEM_WINDOW) / 16; }

void check_landed(const Launch& l, uint32_t addr, size_t n, const char* what) {
    smem_at(l, addr, n, what);
    for (size_t c = chunk_of(addr); c <= chunk_of(uint32_t(addr + n - 1)); ++c)
        if (l.landing[c])
            fail(format("%s reads shared memory at %#x before an asynchronous copy into it has landed (a cp.async: that "
                        "thread's cp.async.wait_group, then a barrier, must come first; a tensor copy: a wait on its mbarrier)",
                        what, addr)
                     .c_str());
}

uint16_t smem_u16(const Launch& l, uint32_t addr, const char* what) {
    uint16_t v;
    std::memcpy(&v, smem_at(l, addr, 2, what), 2);
    return v;
}

namespace {

void release_block(Launch& l) {
    l.block_arrived = 0;
    ++l.block_generation;
    for (Fiber& f : l.fibers)
        if (f.state == State::AtBlock) f.state = State::Ready;
}

[[noreturn]] void fiber_main() {
    Launch& l = *L;
    l.entry(l.params);
    Fiber* f = l.cur;
    if (!l.warpgroups.empty()) {
        const Warpgroup& w = l.warpgroups[size_t(f - l.fibers.data()) / size_t(wgmma_unit_threads())];
        if (!w.open.empty() || !w.committed.empty())
            fail("a thread exited with wgmmas in flight (no wgmma.commit_group and wgmma.wait_group 0 after its last wgmma.mma_async)");
    }
    f->state = State::Done;
    --l.live;
    if (l.block_arrived > 0 && l.block_arrived == l.live) release_block(l);
    cluster_try_complete(*l.cluster);
    emu_switch(&f->sp, l.sched);  // never resumed
    std::abort();
}

// A fresh fiber's stack, laid out as emu_switch leaves a switched-out one: FP control words, six
// registers, then fiber_main as the return address, entered with the stack aligned as after a call.
void* fresh_stack(char* base, size_t bytes) {
    // ASan poisons an instrumented frame's redzones on entry and clears them on return. Every
    // kernel frame returns before its fiber finishes; the one frame that never returns is
    // fiber_main's, at the top, uninstrumented since build.sh leaves this file so: clearing the
    // top page is a precaution (the whole stack, 16 times the shadow writes, was a fifth of an
    // emulated model step). A failed block abandons deeper frames: run_blocks clears its stacks
    // whole then.
    EMU_UNPOISON(base + bytes - 4096, 4096);
    auto top = reinterpret_cast<uintptr_t>(base + bytes) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<uint64_t*>(top - 72);
    const uint32_t mxcsr = 0x1f80;
    const uint16_t fpucw = 0x037f;
    std::memcpy(sp, &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpucw, 2);
    for (int i = 1; i <= 6; ++i) sp[i] = 0;
    sp[7] = reinterpret_cast<uint64_t>(&fiber_main);
    sp[8] = 0;
    return sp;
}

std::string deadlock_report(const Launch& l) {
    int at_block = 0, done = 0;
    for (const Fiber& f : l.fibers) {
        at_block += f.state == State::AtBlock;
        done += f.state == State::Done;
    }
    std::string s = format("deadlock: %d threads wait at __syncthreads, %d have exited", at_block, done) + mbarrier_report(l);
    for (size_t w = 0; w < l.warps.size(); ++w)
        if (l.warps[w].arrived > 0)
            s += format("; warp %zu has %d of its %d lanes at a warp-wide instruction", w, l.warps[w].arrived, l.warps[w].lanes);
    for (size_t g = 0; g < l.warpgroups.size(); ++g)
        if (l.warpgroups[g].arrived > 0)
            s += format("; wgmma unit %zu has %d of its %d threads at a wgmma instruction", g, l.warpgroups[g].arrived,
                        wgmma_unit_threads());
    return s;
}

std::vector<char>& stacks(size_t n) {
    thread_local std::vector<char> pool;
    if (pool.size() < n * STACK_BYTES) pool.assign(n * STACK_BYTES, 0);
    return pool;
}

}  // namespace

const uint3_t& thread_idx() { return launch_state().cur->tid; }
const uint3_t& block_idx() { return launch_state().bidx; }
const uint3_t& block_dim() { return launch_state().block; }
const uint3_t& grid_dim() { return launch_state().grid; }
unsigned char* dynamic_smem() { return launch_state().smem; }
int lane_id() { return launch_state().cur->lane; }
WarpSlots& warp_slots() {
    Launch& l = launch_state();
    return l.warps[l.cur->warp].slots;
}

size_t smem_offset(const void* p) {
    const Launch& l = launch_state();
    const auto* c = static_cast<const unsigned char*>(p);
    if (c < l.smem || c > l.smem + l.smem_bytes)
        fail("a shared-memory address was taken of memory outside the block's dynamic shared memory");
    return SMEM_WINDOW + size_t(c - l.smem);
}

void fail(const char* what) {
    Launch& l = launch_state();
    const uint3_t& t = l.cur->tid;
    if (l.error.empty())
        l.error = format("kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s", l.name, l.bidx.x, l.bidx.y, l.bidx.z, t.x, t.y, t.z, what);
    emu_switch(&l.cur->sp, l.sched);  // never resumed
    std::abort();
}

void syncthreads() {
    Launch& l = launch_state();
    Fiber* f = l.cur;
    f->state = State::AtBlock;
    if (++l.block_arrived == l.live) release_block(l);
    if (f->state != State::Ready) yield();
}

void cluster_try_complete(Cluster& c) {
    int live = 0;
    for (const Launch* b : c.ctas) live += b->live;
    if (c.arrived == 0 || c.arrived < live) return;
    c.arrived = 0;
    ++c.generation;
    // barrier.cluster.arrive.release orders a thread's earlier remote arrivals before the phase.
    for (Launch* b : c.ctas) deliver_all_arrivals(*b);
    // Like a __syncthreads in each block: what any thread did before it is ordered before what
    // every thread does after.
    for (Launch* b : c.ctas) {
        ++b->block_generation;
        ++b->events;
    }
}

void cluster_arrive() {
    Launch& l = launch_state();
    if (l.major < 9) fail("barrier.cluster.arrive on an emulated sm_80: clusters exist on sm_90 and later only");
    Fiber* f = l.cur;
    if (f->cluster_arrived) fail("barrier.cluster.arrive twice with no barrier.cluster.wait between");
    f->cluster_arrived = true;
    f->cluster_phase = l.cluster->generation;
    ++l.cluster->arrived;
    ++l.events;
    cluster_try_complete(*l.cluster);
}

void cluster_wait() {
    Launch& l = launch_state();
    Fiber* f = l.cur;
    if (!f->cluster_arrived) fail("barrier.cluster.wait with no barrier.cluster.arrive before it");
    // Spins like an mbarrier wait: ready, yielding, counted as no progress until the phase
    // completes; a wait that ends is progress.
    bool spun = false;
    while (l.cluster->generation == f->cluster_phase) {
        f->spinning = spun = true;
        yield();
    }
    if (spun) ++l.events;
    f->cluster_arrived = false;
}

void register_kernel(const char* name, Entry entry) {
    if (!registry().emplace(name, entry).second) {
        std::fprintf(stderr, "emulated GPU: two kernels named %s\n", name);
        std::abort();
    }
}

Entry find_kernel(const char* name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second;
}

namespace {

// OS threads that run a grid's blocks (blocks never talk to each other within a launch: the kernels
// use no atomics and no grid-wide sync): LOWRANK_EMU_THREADS, else one per core. The calling thread
// is one of them; the others wait here between launches, each with its own fiber stacks, shared
// memory and `__shared__` variables (thread_local).
class Workers {
  public:
    static Workers& get() {
        static Workers* w = new Workers();  // never destroyed: its threads live as long as the process
        return *w;
    }
    size_t count() const { return threads_.size() + 1; }
    // Runs job(0) on this thread and job(1), job(2), ... on the others; returns when all are done.
    void run(const std::function<void(size_t)>& job) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            job_ = &job;
            pending_ = threads_.size();
            ++generation_;
        }
        start_.notify_all();
        job(0);
        std::unique_lock<std::mutex> lock(mu_);
        done_.wait(lock, [&] { return pending_ == 0; });
    }

  private:
    Workers() {
        const char* s = std::getenv("LOWRANK_EMU_THREADS");
        const int n = std::max(1, s ? std::atoi(s) : int(std::thread::hardware_concurrency()));
        for (int i = 1; i < n; ++i) threads_.emplace_back([this, i] { loop(size_t(i)); });
        for (std::thread& t : threads_) t.detach();
    }
    void loop(size_t index) {
        size_t seen = 0;
        for (;;) {
            std::unique_lock<std::mutex> lock(mu_);
            start_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
            const std::function<void(size_t)>* job = job_;
            lock.unlock();
            (*job)(index);
            lock.lock();
            if (--pending_ == 0) done_.notify_one();
        }
    }
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable start_, done_;
    const std::function<void(size_t)>* job_ = nullptr;
    size_t pending_ = 0, generation_ = 0;
};

// One block's state, fresh: shared memory NaN bytes (as stale data would be on a GPU), no barriers,
// copies or wgmmas, every thread ready at the kernel's start on its stack in `stack`.
void reset_block(Launch& l, size_t b, char* stack) {
    const size_t threads = l.fibers.size();
    const uint3_t grid = l.grid, block = l.block;
    l.bidx = {unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (size_t(grid.x) * grid.y))};
    std::memset(l.smem, 0xff, l.smem_bytes);
    l.landing.assign(l.smem_bytes / 16 + 1, 0);
    l.wgmma_reads.assign(l.smem_bytes / 16 + 1, 0);
    l.read_generation.assign(l.smem_bytes / 16 + 1, -1);
    l.read_warp.assign(l.smem_bytes / 16 + 1, 0);
    l.live = int(threads);
    l.block_arrived = 0;
    l.block_generation = 0;
    l.mbarriers.clear();
    l.tma.clear();
    l.remote_arrivals.clear();
    l.error.clear();
    for (Warp& w : l.warps) w.arrived = 0;
    for (Warpgroup& g : l.warpgroups) g = Warpgroup{};
    for (size_t i = 0; i < threads; ++i) {
        Fiber& f = l.fibers[i];
        f.state = State::Ready;
        f.tid = {unsigned(i % block.x), unsigned(i / block.x % block.y), unsigned(i / (size_t(block.x) * block.y))};
        f.lane = int(i % 32);
        f.warp = int(i / 32);
        f.committed.clear();
        f.open.clear();
        f.waiting = f.spinning = false;
        f.cluster_arrived = false;
        f.sp = fresh_stack(stack + i * STACK_BYTES, STACK_BYTES);
    }
}

// Runs clusters first, first + step, ... of the grid (x fastest; a cluster is `cluster`
// consecutive blocks along x, all of them on this OS thread at once) until one fails or `stop` is
// set; returns the failing block's index and what went wrong, or (SIZE_MAX, "").
std::pair<size_t, std::string> run_blocks(const char* name, Entry entry, int major, uint3_t grid, uint3_t block, unsigned cluster,
                                          size_t smem_bytes, void** params, size_t first, size_t step, std::atomic<bool>& stop) {
    const size_t threads = size_t(block.x) * block.y * block.z;
    static const std::string order = [] {
        const char* o = std::getenv("LOWRANK_EMU_ORDER");
        return std::string(o ? o : "forward");
    }();
    static const bool reverse = order == "reverse", random = order == "random";
    std::vector<char>& stack = stacks(threads * cluster);
    std::vector<std::unique_ptr<unsigned char, decltype(&std::free)>> arenas;
    std::vector<Launch> ls(cluster);
    Cluster c;
    for (unsigned k = 0; k < cluster; ++k) {
        arenas.emplace_back(static_cast<unsigned char*>(std::aligned_alloc(128, (smem_bytes / 128 + 1) * 128)), &std::free);
        Launch& l = ls[k];
        l.name = name;
        l.entry = entry;
        l.params = params;
        l.major = major;
        l.grid = grid;
        l.block = block;
        l.smem = arenas.back().get();
        l.smem_bytes = smem_bytes;
        l.fibers.resize(threads);
        l.warps.resize((threads + 31) / 32);
        for (size_t w = 0; w < l.warps.size(); ++w) l.warps[w].lanes = int(std::min<size_t>(32, threads - 32 * w));
        if (threads % 128 == 0) l.warpgroups.resize(threads / size_t(wgmma_unit_threads()));
        l.cluster = &c;
        l.rank = k;
        c.ctas.push_back(&l);
    }
    std::vector<size_t> sequence(threads);
    // The order the scheduler visits the cluster's blocks in, each round: by rank, reversed, or
    // shuffled every round (the hardware runs them side by side, any one ahead).
    std::vector<size_t> ctas(cluster);
    for (unsigned k = 0; k < cluster; ++k) ctas[k] = reverse ? cluster - 1 - k : k;
    Launch* outer = L;
    const size_t clusters = size_t(grid.x) * grid.y * grid.z / cluster;
    auto failed = [&]() -> Launch* {
        for (Launch& l : ls)
            if (!l.error.empty()) return &l;
        return nullptr;
    };
    for (size_t g = first; g < clusters && !stop; g += step) {
        c.arrived = 0;
        c.generation = 0;
        for (unsigned k = 0; k < cluster; ++k) reset_block(ls[k], g * cluster + k, stack.data() + k * threads * STACK_BYTES);
        for (size_t i = 0; i < threads; ++i) sequence[i] = reverse ? threads - 1 - i : i;
        std::mt19937 rng{unsigned(g * cluster)};  // seeded by the block: the same order on any thread count
        if (random) std::shuffle(sequence.begin(), sequence.end(), rng);
        // Rounds over the ready fibers of the cluster's blocks. A fiber spinning on an mbarrier or
        // barrier.cluster stays ready, so a round has made progress only if some fiber ran from
        // anywhere but a failed wait, or the blocks' events (arrivals, copies, ended waits) moved;
        // a round without either would repeat forever. The copy engine then delivers what is in
        // flight, and if that was nothing, the cluster is deadlocked.
        auto live = [&] {
            int n = 0;
            for (const Launch& l : ls) n += l.live;
            return n;
        };
        auto events = [&] {
            uint64_t n = 0;
            for (const Launch& l : ls) n += l.events;
            return n;
        };
        // Under LOWRANK_EMU_WGMMA=warp some warps are held back for up to 64 rounds at a time, so
        // that a warp can fall far behind its warpgroup: half the time none, a quarter of the
        // time one (the same in each block), a quarter of the time each warp of each block with
        // probability 1/4 (several at once, in different warpgroups and blocks, lagging by
        // different amounts as their holds end together). Only a round that held none back can
        // call the blocks deadlocked.
        const bool lag = wgmma_unit_threads() < 128;
        std::vector<std::vector<bool>> held(ls.size(), std::vector<bool>(ls[0].warps.size()));
        int hold_rounds = 0;
        while (live() > 0 && !failed()) {
            bool progress = false, held_back = false;
            const uint64_t before = events();
            if (random) std::shuffle(ctas.begin(), ctas.end(), rng);
            if (lag && hold_rounds-- <= 0) {
                const unsigned mode = rng() % 4;
                const size_t one = rng() % held[0].size();
                for (std::vector<bool>& block : held)
                    for (size_t w = 0; w < block.size(); ++w)
                        block[w] = mode == 2 ? w == one : mode == 3 && rng() % 4 == 0;
                hold_rounds = int(rng() % 64);
            }
            for (size_t k : ctas) {
                Launch& l = ls[k];
                L = &l;
                for (size_t i : sequence) {
                    Fiber& f = l.fibers[i];
                    if (f.state != State::Ready) continue;
                    if (lag && held[k][f.warp]) {
                        held_back = true;
                        continue;
                    }
                    progress |= !f.spinning;
                    f.spinning = false;
                    l.cur = &f;
                    emu_switch(&l.sched, f.sp);
                    if (!l.error.empty()) break;
                }
                if (!l.error.empty()) break;
            }
            if (progress || events() != before || failed() || live() == 0 || held_back) continue;
            bool landed = false;
            for (Launch& l : ls) landed |= land_all_copies(l);
            if (landed) continue;
            // Then the arrivals other blocks made, which nothing else waits for.
            for (Launch& l : ls) landed |= deliver_all_arrivals(l);
            if (landed) continue;
            std::string report;
            for (const Launch& l : ls) {
                report += (cluster > 1 ? format(" [block rank %u] ", l.rank) : std::string()) + deadlock_report(l);
                int at_cluster = 0;
                for (const Fiber& f : l.fibers) at_cluster += f.state == State::Ready && f.cluster_arrived;
                if (at_cluster) report += format("; %d threads wait at barrier.cluster (%d of the cluster's %d live threads arrived)",
                                                 at_cluster, c.arrived, live());
            }
            ls[0].error = format("kernel %s, block (%u,%u,%u): %s", name, ls[0].bidx.x, ls[0].bidx.y, ls[0].bidx.z, report.c_str());
        }
        // Copies still in flight when the last thread exits are the copy engine's: they land.
        if (!failed())
            for (Launch& l : ls) land_all_copies(l);
        if (Launch* bad = failed()) {
            EMU_UNPOISON(stack.data(), threads * cluster * STACK_BYTES);
            stop = true;
            L = outer;
            return {g * cluster + bad->rank, bad->error};
        }
    }
    L = outer;
    return {SIZE_MAX, ""};
}

}  // namespace

std::string launch(const char* name, Entry entry, int major, uint3_t grid, uint3_t block, unsigned cluster, size_t smem_bytes,
                   void** params) {
    Workers& workers = Workers::get();
    const size_t clusters = size_t(grid.x) * grid.y * grid.z / cluster, step = std::min(workers.count(), clusters);
    std::atomic<bool> stop{false};
    std::vector<std::pair<size_t, std::string>> results(workers.count(), {SIZE_MAX, ""});
    auto job = [&](size_t w) {
        if (w < step) results[w] = run_blocks(name, entry, major, grid, block, cluster, smem_bytes, params, w, step, stop);
    };
    if (step == 1) job(0);
    else workers.run(job);
    // The failure of the lowest block (other threads may have stopped before reaching theirs).
    return std::min_element(results.begin(), results.end())->second;
}

}  // namespace emu
