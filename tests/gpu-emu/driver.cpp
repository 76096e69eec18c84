// A fake libcuda.so: the part of the CUDA driver API that cudarc calls for this project, over host
// memory and the kernel emulator (runtime.cpp). One device: an A100-like sm_80 (the launchers pick
// the mma.sync kernels), or with LOWRANK_EMU_ARCH=90 an H100-like sm_90a (they pick wgmma where the
// grid fills the GPU); LOWRANK_EMU_SMS sets its SM count, which the launchers' tile and split-K
// choices depend on. What a real driver refuses, this one refuses too, with a
// sentence on stderr: copies outside an allocation, launches over the dynamic shared memory the
// function was allowed, empty or oversized grids and blocks, functions missing from the module,
// tensor maps (cuTensorMapEncodeTiled, encoded for the TMA model: tensor_map.h) that break the
// documented requirements, cluster launches (cuLaunchKernelEx) off sm_90 or on a grid that is no
// whole number of clusters. After a failed launch every call fails, as on a real context after a
// fault.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "runtime.h"
#include "tensor_map.h"

namespace {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;

constexpr CUresult SUCCESS = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, INVALID_DEVICE = 101,
                   INVALID_HANDLE = 400, NOT_FOUND = 500, NOT_READY = 600, LAUNCH_FAILED = 719, NOT_SUPPORTED = 801;

constexpr int SMEM_DEFAULT = 48 * 1024;  // per block without opting in, on every GPU since Volta

// The emulated GPU: compute capability, opt-in shared memory per block and SM count of an A100 or
// an H100 (SXM).
struct Arch {
    int major;
    int smem_optin;
    int sms;
    const char* name;
};

// LOWRANK_EMU_ARCH's device, or null if the variable names none.
const Arch* arch() {
    static const Arch a100{8, 163 * 1024, 108, "sm_80"}, h100{9, 227 * 1024, 132, "sm_90a"};
    const char* s = std::getenv("LOWRANK_EMU_ARCH");
    if (!s || !*s || std::string(s) == "80") return &a100;
    if (std::string(s) == "90") return &h100;
    return nullptr;
}

struct Module {
    std::string image;  // the fatbin, to check that a function asked of it is in it
};
struct Function {
    std::string name;
    emu::Entry entry;
    int max_dynamic_smem = SMEM_DEFAULT;
};
struct Event {
    std::chrono::steady_clock::time_point at;
    bool recorded = false;
};

std::mutex mu;
bool initialised = false;
CUresult sticky = SUCCESS;  // the first launch failure, returned by every call after it
std::map<CUdeviceptr, size_t> allocations;
int dummy_context, dummy_stream;

// The emulated GPU's memory: 80 GiB, or LOWRANK_EMU_MEMORY bytes, so that a test can run a
// command on a GPU too small for it. An allocation past it fails as cuMemAlloc does.
size_t memory_limit() {
    static const size_t n = [] {
        const char* s = std::getenv("LOWRANK_EMU_MEMORY");
        return s ? size_t(std::strtoull(s, nullptr, 10)) : size_t(80) << 30;
    }();
    return n;
}
size_t allocated = 0;

// LOWRANK_EMU_PEAK=1: the most ever allocated at once, on stderr when the process exits.
struct PeakReport {
    size_t peak = 0;
    ~PeakReport() {
        if (std::getenv("LOWRANK_EMU_PEAK")) std::fprintf(stderr, "emulated GPU: peak device memory %zu bytes\n", peak);
    }
} peak_report;

CUresult report(CUresult rc, const std::string& what) {
    std::fprintf(stderr, "emulated GPU: %s\n", what.c_str());
    return rc;
}

// The allocation holding [p, p + n), if any.
bool inside_allocation(CUdeviceptr p, size_t n) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second;
}

CUresult check_range(CUdeviceptr p, size_t n, const char* op) {
    if (n == 0 || inside_allocation(p, n)) return SUCCESS;
    char at[32];
    std::snprintf(at, sizeof at, "%#llx", p);
    return report(INVALID_VALUE, std::string(op) + ": " + std::to_string(n) + " bytes at " + at + " are not inside one device allocation");
}

int sms() {
    static const int n = [] {
        const char* s = std::getenv("LOWRANK_EMU_SMS");
        return s ? std::max(1, std::atoi(s)) : arch()->sms;
    }();
    return n;
}

// LOWRANK_EMU_TRACE=FILE: one line per kernel launch (its name) and per cuProfilerStart/Stop, for
// tests of which kernels a command launched and of what a profiler's capture would record.
void trace(const char* line) {
    if (const char* path = std::getenv("LOWRANK_EMU_TRACE")) {
        if (FILE* t = std::fopen(path, "a")) {
            std::fprintf(t, "%s\n", line);
            std::fclose(t);
        }
    }
}

#define GUARD()                                      \
    std::lock_guard<std::mutex> lock(mu);            \
    if (!initialised) return NOT_INITIALIZED;        \
    if (sticky != SUCCESS) return sticky

}  // namespace

extern "C" {

CUresult cuInit(unsigned) {
    std::lock_guard<std::mutex> lock(mu);
    if (!arch())
        return report(INVALID_VALUE, std::string("LOWRANK_EMU_ARCH=") + std::getenv("LOWRANK_EMU_ARCH") +
                                         " names no emulated GPU: use 80 (an A100-like sm_80, the default) or 90 (an H100-like sm_90a)");
    initialised = true;
    return SUCCESS;
}

CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return SUCCESS;
}

CUresult cuDeviceGetCount(int* n) {
    GUARD();
    *n = 1;
    return SUCCESS;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    GUARD();
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    GUARD();
    if (d != 0) return INVALID_DEVICE;
    std::snprintf(name, size_t(len), "Emulated GPU (CPU, %s, %d SMs)", arch()->name, sms());
    return SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    GUARD();
    if (d != 0) return INVALID_DEVICE;
    *bytes = memory_limit();
    return SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
    GUARD();
    *total = memory_limit();
    *free = *total - allocated;
    return SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice d) {
    GUARD();
    if (d != 0) return INVALID_DEVICE;
    switch (attribute) {
        case 1: *v = 1024; break;                                // max threads per block
        case 2: case 3: *v = 1024; break;                        // max block x, y
        case 4: *v = 64; break;                                  // max block z
        case 5: *v = 2147483647; break;                          // max grid x
        case 6: case 7: *v = 65535; break;                       // max grid y, z
        case 8: *v = SMEM_DEFAULT; break;                        // shared memory per block
        case 10: *v = 32; break;                                 // warp size
        case 13: *v = 1410000; break;                            // clock, kHz
        case 16: *v = sms(); break;                              // multiprocessors
        case 36: *v = 1593000; break;                            // memory clock, kHz
        case 37: *v = 5120; break;                               // bus width, bits
        case 38: *v = 40 << 20; break;                           // L2 bytes
        case 75: *v = arch()->major; break;                      // compute capability major
        case 76: *v = 0; break;                                  // minor
        case 97: *v = arch()->smem_optin; break;                 // shared memory per block, opt-in
        case 115: *v = 0; break;                                 // memory pools: no (plain cuMemAlloc)
        default: return report(NOT_SUPPORTED, "cuDeviceGetAttribute: attribute " + std::to_string(attribute) + " is not emulated");
    }
    return SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    GUARD();
    if (d != 0) return INVALID_DEVICE;
    *ctx = &dummy_context;
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return SUCCESS; }
CUresult cuCtxSetCurrent(void*) {
    GUARD();
    return SUCCESS;
}
CUresult cuCtxGetCurrent(void** ctx) {
    GUARD();
    *ctx = &dummy_context;
    return SUCCESS;
}
CUresult cuCtxSynchronize() {
    GUARD();
    return SUCCESS;
}

// Streams: one in-order queue that has always finished (every call runs synchronously).
CUresult cuStreamCreate(void** s, unsigned) {
    GUARD();
    *s = &dummy_stream;
    return SUCCESS;
}
CUresult cuStreamDestroy_v2(void*) { return SUCCESS; }
CUresult cuStreamSynchronize(void*) {
    GUARD();
    return SUCCESS;
}
CUresult cuStreamWaitEvent(void*, void*, unsigned) {
    GUARD();
    return SUCCESS;
}

CUresult cuEventCreate(void** e, unsigned) {
    GUARD();
    *e = new Event;
    return SUCCESS;
}
CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return SUCCESS;
}
CUresult cuEventRecord(void* e, void*) {
    GUARD();
    auto* ev = static_cast<Event*>(e);
    ev->at = std::chrono::steady_clock::now();
    ev->recorded = true;
    return SUCCESS;
}
CUresult cuEventQuery(void*) {
    GUARD();
    return SUCCESS;
}
CUresult cuEventSynchronize(void*) {
    GUARD();
    return SUCCESS;
}
CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    GUARD();
    auto *a = static_cast<Event*>(start), *b = static_cast<Event*>(end);
    if (!a->recorded || !b->recorded) return report(INVALID_HANDLE, "cuEventElapsedTime: an event was never recorded");
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) { return cuEventElapsedTime(ms, start, end); }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    GUARD();
    if (bytes == 0) return report(INVALID_VALUE, "cuMemAlloc: zero bytes");
    // 256-byte aligned like cudaMalloc, and exactly `bytes` long, so that under AddressSanitizer
    // (build.sh's LOWRANK_EMU_SANITIZE=address) a kernel's first byte past the end is caught; new
    // memory holds NaN bytes, as unset memory holds garbage.
    void* m = nullptr;
    if (bytes > memory_limit() - allocated) return OUT_OF_MEMORY;
    if (posix_memalign(&m, 256, bytes) != 0) return OUT_OF_MEMORY;
    allocated += bytes;
    peak_report.peak = std::max(peak_report.peak, allocated);
    std::memset(m, 0xff, bytes);
    *p = CUdeviceptr(m);
    allocations[*p] = bytes;
    return SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = allocations.find(p);
    if (it == allocations.end()) return report(INVALID_VALUE, "cuMemFree of a pointer that is not an allocation");
    allocated -= it->second;
    allocations.erase(it);
    std::free(reinterpret_cast<void*>(p));
    return SUCCESS;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return cuMemAlloc_v2(p, bytes); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    GUARD();
    if (CUresult rc = check_range(dst, n, "cuMemcpyHtoD")) return rc;
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    return SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    GUARD();
    if (CUresult rc = check_range(src, n, "cuMemcpyDtoH")) return rc;
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return SUCCESS;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    GUARD();
    if (CUresult rc = check_range(dst, n, "cuMemcpyDtoD (destination)")) return rc;
    if (CUresult rc = check_range(src, n, "cuMemcpyDtoD (source)")) return rc;
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    return SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void*) { return cuMemcpyHtoD_v2(dst, src, n); }
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void*) { return cuMemcpyDtoH_v2(dst, src, n); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void*) { return cuMemcpyDtoD_v2(dst, src, n); }

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    GUARD();
    if (CUresult rc = check_range(dst, n, "cuMemsetD8")) return rc;
    std::memset(reinterpret_cast<void*>(dst), v, n);
    return SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(dst, v, n); }

CUresult cuModuleLoadData(void** module, const void* image) {
    GUARD();
    // A fatbin starts with its header (magic 0xBA55ED50, version, header size, body size).
    uint32_t magic;
    std::memcpy(&magic, image, 4);
    if (magic != 0xBA55ED50u) return report(INVALID_VALUE, "cuModuleLoadData: the image is not a fatbin");
    uint64_t body;
    uint16_t header;
    std::memcpy(&header, static_cast<const char*>(image) + 6, 2);
    std::memcpy(&body, static_cast<const char*>(image) + 8, 8);
    *module = new Module{std::string(static_cast<const char*>(image), header + body)};
    return SUCCESS;
}
CUresult cuModuleUnload(void* module) {
    delete static_cast<Module*>(module);
    return SUCCESS;
}
CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    GUARD();
    const std::string& image = static_cast<Module*>(module)->image;
    if (image.find(std::string(name) + '\0') == std::string::npos)
        return report(NOT_FOUND, std::string("cuModuleGetFunction: ") + name + " is not in this module's fatbin");
    emu::Entry entry = emu::find_kernel(name);
    if (!entry) return report(NOT_FOUND, std::string("cuModuleGetFunction: ") + name + " is in the fatbin but the emulator did not compile it");
    *f = new Function{name, entry};
    return SUCCESS;
}

CUresult cuFuncSetAttribute(void* f, int attribute, int value) {
    GUARD();
    auto* fn = static_cast<Function*>(f);
    if (attribute != 8)  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        return report(NOT_SUPPORTED, "cuFuncSetAttribute: attribute " + std::to_string(attribute) + " is not emulated");
    if (value < 0 || value > arch()->smem_optin)
        return report(INVALID_VALUE, fn->name + ": " + std::to_string(value) + " bytes of dynamic shared memory exceed the device's " +
                                         std::to_string(arch()->smem_optin));
    fn->max_dynamic_smem = value;
    return SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int attribute, void* f) {
    GUARD();
    if (attribute != 8) return report(NOT_SUPPORTED, "cuFuncGetAttribute: attribute " + std::to_string(attribute) + " is not emulated");
    *v = static_cast<Function*>(f)->max_dynamic_smem;
    return SUCCESS;
}

}  // extern "C"

namespace {

// A launch of `fn` as the driver checks it, in clusters of `cluster` blocks along x (1: none).
CUresult launch(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, unsigned cluster,
                void** params, void** extra) {
    auto* fn = static_cast<Function*>(f);
    const std::string at = fn->name + " <<<(" + std::to_string(gx) + "," + std::to_string(gy) + "," + std::to_string(gz) + "), (" +
                           std::to_string(bx) + "," + std::to_string(by) + "," + std::to_string(bz) + "), " + std::to_string(smem) + ">>>" +
                           (cluster > 1 ? " in clusters of " + std::to_string(cluster) : "");
    if (extra) return report(NOT_SUPPORTED, at + ": the `extra` launch form is not emulated");
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) return report(INVALID_VALUE, at + ": an empty grid or block");
    if (gy > 65535 || gz > 65535 || gx > 2147483647u) return report(INVALID_VALUE, at + ": the grid exceeds the device's limits");
    if (size_t(bx) * by * bz > 1024 || bz > 64) return report(INVALID_VALUE, at + ": the block exceeds 1024 threads or the device's limits");
    if (int(smem) > fn->max_dynamic_smem)
        return report(INVALID_VALUE, at + ": dynamic shared memory over the function's limit of " + std::to_string(fn->max_dynamic_smem) +
                                         " bytes (set CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first)");
    if (cluster > 1 && arch()->major < 9) return report(NOT_SUPPORTED, at + ": thread block clusters need compute capability 9.0");
    if (gx % cluster != 0) return report(INVALID_VALUE, at + ": the grid is not a whole number of clusters");
    trace(fn->name.c_str());
    const std::string error = emu::launch(fn->name.c_str(), fn->entry, arch()->major, {gx, gy, gz}, {bx, by, bz}, cluster, smem, params);
    if (!error.empty()) {
        sticky = LAUNCH_FAILED;
        return report(LAUNCH_FAILED, error);
    }
    return SUCCESS;
}

// cuda.h's CUlaunchConfig and CUlaunchAttribute (an id, 4 bytes of padding, a 64-byte value);
// only the cluster dimension (id 4: x, y, z) is emulated, along x.
struct LaunchAttribute {
    int id;
    char pad[4];
    union {
        char bytes[64];
        struct {
            unsigned x, y, z;
        } cluster;
    } value;
};
struct LaunchConfig {
    unsigned gx, gy, gz, bx, by, bz, smem;
    void* stream;
    LaunchAttribute* attrs;
    unsigned n_attrs;
};
constexpr int LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4;

// The cluster size a config asks for (1 without the attribute), or 0 after reporting why not.
unsigned cluster_of(const LaunchConfig* config, const char* what) {
    unsigned cluster = 1;
    for (unsigned i = 0; i < config->n_attrs; ++i) {
        const LaunchAttribute& a = config->attrs[i];
        if (a.id != LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION) {
            report(NOT_SUPPORTED, std::string(what) + ": launch attribute " + std::to_string(a.id) + " is not emulated");
            return 0;
        }
        const auto& d = a.value.cluster;
        if (d.y != 1 || d.z != 1 || d.x == 0 || d.x > 8) {
            report(d.x > 8 ? INVALID_VALUE : NOT_SUPPORTED,
                   std::string(what) + ": a cluster of " + std::to_string(d.x) + " × " + std::to_string(d.y) + " × " + std::to_string(d.z) +
                       " blocks (emulated: 1 to 8 along x, the portable limit)");
            return 0;
        }
        cluster = d.x;
    }
    return cluster;
}

}  // namespace

extern "C" {

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, void*,
                        void** params, void** extra) {
    GUARD();
    return launch(f, gx, gy, gz, bx, by, bz, smem, 1, params, extra);
}

CUresult cuLaunchKernelEx(const LaunchConfig* config, void* f, void** params, void** extra) {
    GUARD();
    const unsigned cluster = cluster_of(config, "cuLaunchKernelEx");
    if (cluster == 0) return NOT_SUPPORTED;
    return launch(f, config->gx, config->gy, config->gz, config->bx, config->by, config->bz, config->smem, cluster, params, extra);
}

// As many clusters as the SMs hold one block each of (every block of the TMA kernels fills an SM):
// a real GPU may fit fewer, as a cluster's blocks must share a GPC.
CUresult cuOccupancyMaxActiveClusters(int* n, void* f, const LaunchConfig* config) {
    GUARD();
    const unsigned cluster = cluster_of(config, "cuOccupancyMaxActiveClusters");
    if (cluster == 0) return NOT_SUPPORTED;
    if (int(config->smem) > static_cast<Function*>(f)->max_dynamic_smem)
        return report(INVALID_VALUE, "cuOccupancyMaxActiveClusters: dynamic shared memory over the function's limit");
    *n = sms() / int(cluster);
    return SUCCESS;
}

// The element size of each CUtensorMapDataType (UINT8 .. TFLOAT32_FTZ); 13..15 are the packed
// 16U4 / 16U6 types, not emulated.
constexpr uint8_t TENSOR_ELEMENT_BYTES[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2, 4, 4, 4};

CUresult cuTensorMapEncodeTiled(void* tensorMap, int dataType, uint32_t rank, void* globalAddress, const uint64_t* globalDim,
                                const uint64_t* globalStrides, const uint32_t* boxDim, const uint32_t* elementStrides, int interleave,
                                int swizzle, int l2Promotion, int oobFill) {
    {
        std::lock_guard<std::mutex> lock(mu);
        if (!initialised) return NOT_INITIALIZED;
    }
    // The requirements of the driver API's reference (cuTensorMapEncodeTiled), in its order.
    auto bad = [](const std::string& what) { return report(INVALID_VALUE, "cuTensorMapEncodeTiled: " + what); };
    const auto addr = reinterpret_cast<uintptr_t>(globalAddress);
    if (!tensorMap || reinterpret_cast<uintptr_t>(tensorMap) % 64 != 0) return bad("the tensor map's address must be 64-byte aligned");
    if (dataType >= 13 && dataType <= 15)
        return report(NOT_SUPPORTED, "cuTensorMapEncodeTiled: the packed 16U4 / 16U6 data types are not emulated");
    if (dataType < 0 || dataType > 15) return bad("data type " + std::to_string(dataType) + " is not a CUtensorMapDataType");
    if (interleave < 0 || interleave > 2) return bad("interleave " + std::to_string(interleave) + " is not a CUtensorMapInterleave");
    if (swizzle < 0 || swizzle > 3)
        return bad("swizzle " + std::to_string(swizzle) + " is not NONE, 32B, 64B or 128B (the newer atom modes are not emulated)");
    if (l2Promotion < 0 || l2Promotion > 3) return bad("l2Promotion " + std::to_string(l2Promotion) + " is not a CUtensorMapL2promotion");
    if (oobFill < 0 || oobFill > 1) return bad("oobFill " + std::to_string(oobFill) + " is not a CUtensorMapFloatOOBfill");
    const uint32_t elem = TENSOR_ELEMENT_BYTES[dataType], align = interleave == 2 ? 32 : 16;
    if (rank < 1 || rank > 5) return bad("tensorRank " + std::to_string(rank) + " is not in [1, 5]");
    if (interleave != 0 && rank < 3) return bad("an interleaved layout needs tensorRank >= 3");
    if (!globalAddress || addr % align != 0) return bad("globalAddress must be " + std::to_string(align) + "-byte aligned");
    for (uint32_t i = 0; i < rank; ++i)
        if (globalDim[i] == 0 || globalDim[i] > (uint64_t(1) << 32))
            return bad("globalDim[" + std::to_string(i) + "] = " + std::to_string(globalDim[i]) + " is not in [1, 2^32]");
    for (uint32_t i = 0; i + 1 < rank; ++i)
        if (globalStrides[i] % align != 0 || globalStrides[i] >= (uint64_t(1) << 40))
            return bad("globalStrides[" + std::to_string(i) + "] = " + std::to_string(globalStrides[i]) + " is not a multiple of " +
                       std::to_string(align) + " below 2^40");
    for (uint32_t i = 0; i < rank; ++i)
        if (boxDim[i] == 0 || boxDim[i] > 256)
            return bad("boxDim[" + std::to_string(i) + "] = " + std::to_string(boxDim[i]) + " is not in [1, 256]");
    const uint64_t inner = uint64_t(boxDim[0]) * elem;
    if (interleave == 0 && inner % 16 != 0)
        return bad("the inner box dimension, boxDim[0] × the element size = " + std::to_string(inner) + " bytes, is not a multiple of 16");
    for (uint32_t i = 0; i < rank; ++i)
        if (elementStrides[i] == 0 || elementStrides[i] > 8)
            return bad("elementStrides[" + std::to_string(i) + "] = " + std::to_string(elementStrides[i]) + " is not in [1, 8]");
    if (interleave == 2 && swizzle != 1) return bad("CU_TENSOR_MAP_INTERLEAVE_32B needs CU_TENSOR_MAP_SWIZZLE_32B");
    if (interleave == 0 && swizzle != 0 && inner > emu::swizzle_span(swizzle))
        return bad("the inner box dimension of " + std::to_string(inner) + " bytes exceeds the " + std::to_string(emu::swizzle_span(swizzle)) +
                   "-byte swizzle span");
    if (oobFill == 1 && dataType < 6)  // UINT8 .. INT64
        return bad("CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA needs a floating-point data type");
    emu::TensorMap m{};
    m.magic = emu::TENSOR_MAP_MAGIC;
    m.address = addr;
    m.stride[0] = elem;
    for (uint32_t i = 0; i < rank; ++i) {
        m.dim[i] = globalDim[i];
        if (i > 0) m.stride[i] = globalStrides[i - 1];
        m.box[i] = uint16_t(boxDim[i]);
        m.element_stride[i] = uint8_t(elementStrides[i]);
    }
    m.rank = uint8_t(rank);
    m.dtype = uint8_t(dataType);
    m.elem_bytes = uint8_t(elem);
    m.interleave = uint8_t(interleave);
    m.swizzle = uint8_t(swizzle);
    m.l2_promotion = uint8_t(l2Promotion);
    m.oob_fill = uint8_t(oobFill);
    std::memset(tensorMap, 0, 128);
    std::memcpy(tensorMap, &m, sizeof m);
    return SUCCESS;
}

CUresult cuGetErrorName(CUresult rc, const char** s) {
    switch (rc) {
        case SUCCESS: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case NOT_READY: *s = "CUDA_ERROR_NOT_READY"; break;
        case LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; return INVALID_VALUE;
    }
    return SUCCESS;
}
CUresult cuGetErrorString(CUresult rc, const char** s) { return cuGetErrorName(rc, s); }

CUresult cuProfilerStart() {
    trace("cuProfilerStart");
    return SUCCESS;
}
CUresult cuProfilerStop() {
    trace("cuProfilerStop");
    return SUCCESS;
}

}  // extern "C"
