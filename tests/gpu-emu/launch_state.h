// The state of one kernel launch, shared by the execution model (runtime.cpp) and the models of
// Hopper's warpgroup MMA (wgmma.cpp) and of its mbarriers and tensor copies (tma.cpp): the block's
// fibers, warps and warpgroups, its dynamic shared memory and the asynchronous operations in flight
// on it.
#pragma once
#include <array>
#include <map>
#include <string>
#include <vector>

#include "emu.h"
#include "tensor_map.h"

namespace emu {

// The shared-window address of a block's dynamic shared memory: CUDA promises 16-byte alignment
// only, so a kernel that needs more (wgmma's 1024-byte swizzle pattern) must round up itself, and
// one that forgets shows it here.
constexpr uint32_t SMEM_WINDOW = 0x410;

enum class State { Ready, AtBlock, AtWarp, Done };

struct Copy {
    uint32_t dst;
    const void* src;
    bool pred;
};

struct Warp {
    WarpSlots slots;
    int arrived = 0, lanes = 0, op = 0;
};

// One wgmma.mma_async of a warpgroup, issued and not yet retired.
struct Wgmma {
    std::array<float*, 128> d;  // each thread's accumulators
    uint64_t desc_a, desc_b;
    int n;
    bool scale_d, trans_b;
    std::vector<float> product;  // A·B (64 × n) from shared memory as it was at issue
    std::vector<uint32_t> chunks;  // the 16-byte chunks of shared memory it reads
    int warp0 = 0;                 // the warp of the warpgroup its unit's first thread is in
    bool done = false;             // its group has completed: it reads shared memory no more
};

// The threads that issue wgmma instructions together: a warpgroup (four warps, 128 threads), or
// under LOWRANK_EMU_WGMMA=warp each warp on its own (wgmma_unit_threads). The operands of the
// instruction its threads are arriving at, its wgmmas in flight (the open batch, then the
// committed groups, oldest first), and how many groups it has committed and retired in all.
struct Warpgroup {
    int arrived = 0, op = 0;
    std::array<float*, 128> d;
    std::array<uint64_t, 128> a, b;
    std::array<uint32_t, 128> arg;
    bool fenced = false;  // a wgmma.fence since the last wait: the accumulators may be handed over
    std::vector<Wgmma> open;
    std::vector<std::vector<Wgmma>> committed;
    int committed_total = 0, retired_total = 0;
};
// 128, or 32 under LOWRANK_EMU_WGMMA=warp: the PTX ISA syncs wgmma's threads per warp only
// (`.sync`), so the warps of a warpgroup may issue its instructions at different times; a commit
// group completes, for the whole warpgroup, once every warp has committed it. The scheduler then
// also holds a warp back for rounds at a time (runtime.cpp), so that one can lag far behind.
int wgmma_unit_threads();

// An mbarrier of the block (PTX ISA, "mbarrier"): the arrivals each phase expects, those still
// pending and the transaction bytes still pending in the current phase (negative when a copy's
// complete_tx came before the arrive.expect_tx that announced it), and the phases completed so far
// (the current phase's parity is phase % 2).
struct Mbarrier {
    uint32_t count = 0, pending = 0, phase = 0;
    int64_t tx = 0;
    int init_thread = 0, init_generation = 0;  // who initialised it, and in which __syncthreads interval
    uint64_t init_cluster_generation = 0;      // and in which barrier.cluster interval
};

// A bulk tensor copy issued and not yet landed: the tensor map as it was at issue, the box's
// origin, the 16-byte chunks of shared memory it writes, the barrier its bytes complete on.
struct TmaCopy {
    TensorMap map;
    uint32_t dst, bar;
    int c0, c1;
    std::vector<uint32_t> chunks;
};

struct Fiber {
    void* sp = nullptr;  // the saved stack pointer while switched out
    State state = State::Ready;
    uint3_t tid{};
    int lane = 0, warp = 0;
    std::vector<std::vector<Copy>> committed;
    std::vector<Copy> open;
    // Its last mbarrier.try_wait failed (it yielded, still Ready): on which barrier and parity.
    // `spinning` says the last switch back to the scheduler was such a failed wait.
    bool waiting = false, spinning = false;
    uint32_t wait_bar = 0, wait_parity = 0;
    // barrier.cluster: arrived and not yet through the wait, and the cluster's phase it arrived in.
    bool cluster_arrived = false;
    uint64_t cluster_phase = 0;
};

struct Launch;

// The blocks of one cluster, run together on one OS thread (a launch without a cluster dimension
// is clusters of one): barrier.cluster's arrivals and completed phases, and each block's state,
// which a multicast copy or a remote mbarrier arrival reaches.
struct Cluster {
    std::vector<Launch*> ctas;
    int arrived = 0;
    uint64_t generation = 0;
};

struct Launch {
    const char* name;
    Entry entry;
    void** params;
    uint3_t grid, block, bidx;
    unsigned char* smem = nullptr;
    size_t smem_bytes = 0;
    // Per 16-byte chunk of dynamic shared memory: cp.asyncs and tensor copies issued into it and not
    // yet landed, and in-flight wgmmas reading it. Reading the one or writing the other is a race.
    std::vector<uint16_t> landing, wgmma_reads;
    // Per chunk: the barrier interval (block_generation) of its last ldmatrix read and the warp that
    // made it (−1: several warps). A cp.async into a chunk that another warp read in the same
    // interval races with that read (nothing orders the two), however this schedule ran them.
    std::vector<int> read_generation, read_warp;
    int major;  // the device's compute capability
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<Warpgroup> warpgroups;
    int live = 0, block_arrived = 0;
    int block_generation = 0;  // __syncthreads completed by the block so far
    // The block's mbarriers by shared-window address, and its tensor copies in flight, oldest first.
    std::map<uint32_t, Mbarrier> mbarriers;
    std::vector<TmaCopy> tma;
    // Arrivals on its mbarriers from other blocks of the cluster, by barrier address, oldest first:
    // not yet performed (the hardware gives a remote arrival no time bound but the releasing
    // barrier.cluster), so that another block's progress cannot hide an arrival counted late.
    std::vector<uint32_t> remote_arrivals;
    // Counts what changes another thread's view (an arrival, a copy issued or landed, a wait that
    // ends): a scheduler round in which it stays put and every thread that ran only spun on an
    // mbarrier has made no progress (runtime.cpp).
    uint64_t events = 0;
    void* sched = nullptr;  // the scheduler's saved stack pointer
    Fiber* cur = nullptr;
    std::string error;
    Cluster* cluster = nullptr;
    unsigned rank = 0;  // in the cluster (%cluster_ctarank)
};

// The launch running on this OS thread.
Launch& launch_state();
// Switches from the current fiber back to the scheduler.
void yield();
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// The bytes [addr, addr + n) of the block's dynamic shared memory, by shared-window address; the
// launch fails if they are not all inside it.
unsigned char* smem_at(const Launch& l, uint32_t addr, size_t n, const char* what);
// The index of the 16-byte chunk of dynamic shared memory holding addr.
size_t chunk_of(uint32_t addr);
// An asynchronous-copy race: `what` reads [addr, addr + n) while a cp.async or tensor copy into it
// is in flight.
void check_landed(const Launch& l, uint32_t addr, size_t n, const char* what);
uint16_t smem_u16(const Launch& l, uint32_t addr, const char* what);
// The copy engine, from the scheduler (tma.cpp): lands every tensor copy still in flight; returns
// whether there was any. A failure goes to l.error, as fail() cannot run outside a fiber.
bool land_all_copies(Launch& l);
// Performs the arrivals other blocks made on l's barriers (all, or bar's only); returns "" or what
// went wrong (an arrival beyond its phase's count), as this too may run outside a fiber.
std::string deliver_arrivals(Launch& l, uint32_t bar, bool all);
// All of them, a failure going to l.error (as land_all_copies); returns whether there were any.
bool deliver_all_arrivals(Launch& l);
// The threads spinning on mbarriers and the state of those barriers, for a deadlock report.
std::string mbarrier_report(const Launch& l);
// Completes barrier.cluster's phase once every live thread of the cluster has arrived (also called
// when a thread exits).
void cluster_try_complete(Cluster& c);

}  // namespace emu
