// The emulator's CUtensorMap: what the fake driver's cuTensorMapEncodeTiled (driver.cpp) stores in
// the map's 128 opaque bytes and the TMA model (tma.cpp) reads back when a kernel copies with it. The
// layout is private to the emulator (a real driver's encoding is undocumented); the magic number
// makes a map the driver never encoded (zeroed, or bytes from elsewhere) fail the copy, as a garbage
// descriptor would fault on the GPU.
#pragma once
#include <cstdint>

namespace emu {

constexpr uint64_t TENSOR_MAP_MAGIC = 0x454d55544d415031ull;  // "EMUTMAP1"

struct TensorMap {
    uint64_t magic;
    uint64_t address;    // globalAddress
    uint64_t dim[5];     // globalDim, elements, innermost first
    uint64_t stride[5];  // bytes between consecutive indices of each dimension: stride[0] is the element size
    uint16_t box[5];     // boxDim, elements
    uint8_t element_stride[5];
    uint8_t rank, dtype, elem_bytes, interleave, swizzle, l2_promotion, oob_fill;
};
static_assert(sizeof(TensorMap) <= 128, "a CUtensorMap holds 128 bytes");

// CUtensorMapSwizzle: the span in bytes whose 16-byte chunks the swizzle permutes (0: none).
inline uint32_t swizzle_span(int swizzle) { return swizzle == 0 ? 0 : 16u << swizzle; }

}  // namespace emu
