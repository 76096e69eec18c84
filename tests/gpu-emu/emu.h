// CUDA's device-side language for g++: the kernels of kernels/*.cu compile unchanged against this
// header (build.sh includes it first) and run on the CPU, one fiber per CUDA thread (runtime.cpp).
// Shared memory is per block: static `__shared__` arrays become thread_local statics (the fibers of
// one block share an OS thread), dynamic shared memory is the block's arena.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "cuda_bf16.h"

namespace emu {
struct uint3_t {
    unsigned x, y, z;
};
struct Fiber;
const uint3_t& thread_idx();
const uint3_t& block_idx();
const uint3_t& block_dim();
const uint3_t& grid_dim();
unsigned char* dynamic_smem();
size_t smem_offset(const void* p);
void syncthreads();
[[noreturn]] void fail(const char* what);

// A warp-wide instruction: every lane deposits its operands in `in`, the last lane to arrive runs
// `all` for the whole warp, and each lane then takes its result from `out`.
struct WarpSlots {
    uint32_t in[32][12];
    uint32_t out[32][4];
};
int lane_id();
WarpSlots& warp_slots();
void warp_collective(int op, void (*all)(WarpSlots&));

template <class T>
T shfl_xor(T v, int mask) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    WarpSlots& s = warp_slots();
    const int lane = lane_id();
    std::memcpy(&s.in[lane][0], &v, 4);
    s.in[lane][1] = uint32_t(mask);
    warp_collective(1, [](WarpSlots& w) {
        for (int l = 0; l < 32; ++l) w.out[l][0] = w.in[l ^ int(w.in[l][1])][0];
    });
    T r;
    std::memcpy(&r, &s.out[lane][0], 4);
    return r;
}
}  // namespace emu

#ifndef __global__  // build.sh redefines it to find the entry points
#define __global__
#endif
#define __device__
#define __grid_constant__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))
#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define __syncthreads() ::emu::syncthreads()
#define __trap() ::emu::fail("__trap()")
#define __shfl_xor_sync(mask, v, lane_mask) ::emu::shfl_xor((v), (lane_mask))
#define __cvta_generic_to_shared(p) ::emu::smem_offset(p)

struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) { return a < b ? a : b; }
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// Every kernel of a file registers itself by name (build.sh appends the list), so the fake driver's
// cuModuleGetFunction finds it and cuLaunchKernel can unpack its parameters by their C++ types.
namespace emu {
using Entry = void (*)(void** params);
void register_kernel(const char* name, Entry entry);

template <auto F, class... A, size_t... I>
void call(void** params, std::index_sequence<I...>) {
    F(*static_cast<std::remove_cv_t<A>*>(params[I])...);
}
template <auto F, class... A>
Entry entry_of(void (*)(A...)) {
    return [](void** params) { call<F, A...>(params, std::index_sequence_for<A...>{}); };
}
struct Register {
    Register(const char* name, Entry e) { register_kernel(name, e); }
};
}  // namespace emu
#define EMU_REGISTER(name) static ::emu::Register emu_register_##name(#name, ::emu::entry_of<&name>(&name));
