//! The CUDA backend end to end without a GPU: tests/gpu-emu builds a fake libcuda (every kernel of
//! kernels/ compiled for the CPU by g++, its PTX instructions modelled, each CUDA thread a fiber)
//! and a fake libcuBLASLt, and the binary runs on them against the CPU reference.
//!
//! The selftest, six times (selftest.rs): an sm_80 of 108 SMs with the threads of each block run
//! in reverse order (narrow tiles, split K), one of 4 SMs in forward order (the wide mma.sync
//! tiles; the tiny GPT's forward and backward run only in the first), and the low-rank cases on an
//! sm_90a of 4 SMs in random order, on its default mainloop (TMA, both tiles), on the cp.async
//! wgmma one, on the ping-pong schedule with the merged weight (LOWRANK_MERGE_BASE=1) and in
//! clusters of two (multicast); between them every kernel must have run, and the
//! kernels the cases report are those the fake driver launched. Then a few steps of training (the
//! launchers, buffers and optimiser paths of the training loop) against the same run on the CPU
//! backend (training.rs), the memory plan against the emulated GPU's peak (memory_plan.rs),
//! `bench --smoke` (bench.rs: the bench's own code, before a GPU run depends on it), and the dense
//! layers' passes where cuBLASLt offers no algorithm for an epilogue (cublaslt.rs). Where g++ has
//! AddressSanitizer, the kernels are built with it, so every global-memory access outside its
//! allocation fails the run (the emulator's compute-sanitizer memcheck). What this cannot show:
//! speed, and memory-ordering faults of real hardware.

mod bench;
mod cublaslt;
mod emulator;
mod memory_plan;
mod selftest;
mod training;
