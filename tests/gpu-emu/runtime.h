// What the fake driver (driver.cpp) needs of the execution model (runtime.cpp).
#pragma once
#include <string>

#include "emu.h"

namespace emu {
// The kernel registered under `name`, or null.
Entry find_kernel(const char* name);
// Runs a whole grid on a device of compute capability `major`.x, in clusters of `cluster` blocks
// along x (1: none; grid.x a multiple of it); returns "" or what went wrong (deadlock, __trap, bad
// shared-memory address, an instruction the device does not have).
std::string launch(const char* name, Entry entry, int major, uint3_t grid, uint3_t block, unsigned cluster, size_t smem_bytes,
                   void** params);
}  // namespace emu
