//! CUDA backend pieces: the device layer (a real GPU or an emulated one), run-time kernel
//! compilation, kernel launchers, CPU twins of every kernel (the self-test, benchmarks and the
//! CPU-vs-CUDA training check live in `crate::devtools`).
//!
//! Layout:
//! - [`device`]: `--device auto|cpu|cuda|cuda:N` and resolution against the machine.
//! - [`kernels`]: the embedded `kernels/*.cu` files and the functions each defines.
//! - [`context`]: [`Gpu`], one device with two implementations: a real GPU (cudarc context,
//!   stream, NVRTC-compiled modules, cuBLAS) or the emulated device ([`Gpu::emulated`]). Both
//!   allocate, copy (host<->device bytes counted in [`Traffic`]), load and launch kernels. On a
//!   GPU a host→device copy of up to 64 MiB (the batch) goes through a page-locked staging
//!   buffer (asynchronous, full PCIe speed), waiting only for the previous staged copy.
//! - [`mem`]: [`DevBuf`] (a device allocation) and its [`DevView`] / [`DevViewMut`] windows; the
//!   launchers take these, never cudarc types, so they run on either device.
//! - [`pool`]: the caching allocator every `DevBuf` comes from (no driver allocation in a
//!   training loop after its first step).
//! - [`launch`]: a loaded [`launch::Kernel`] and its argument builder
//!   (`gpu.launch_builder(&f).arg(..)`, then `unsafe { b.launch(cfg) }`).
//! - [`nvrtc`]: compile for the device's arch, include-path discovery, on-disk cache.
//! - [`emu`]: the emulated device: each `kernels/*.cu` compiled for the host with g++
//!   (`-include kernels/emu/cuda_emu.h`, one fiber per CUDA thread, barriers, shuffles and
//!   mma.sync emulated, vector types with their CUDA alignment), launched through generated C
//!   shims loaded with libloading; device memory is aligned host memory.
//! - [`ops`]: one launcher per kernel, checking shapes and alignment (`// SAFETY:` notes);
//!   `ops::blas` is cuBLAS on a GPU and a reference GEMM with the same transposes, leading
//!   dimensions and strides on the emulated device.
//! - [`twins`]: the same math in plain Rust loops; the oracle for the self-test and for tests.
//! - `crate::devtools::{selftest, bench}`: `recipe selftest --device cuda` runs the kernel families
//!   (`selftest::kernel_families`, which also run on the emulated device) then the training
//!   comparison; `recipe bench` needs a real GPU (events).
//! - `crate::devtools::train_check`: a tiny model trained on the CPU and through `crate::backend::CudaBackend`,
//!   losses compared; the last part of the self-test.
//!
//! Precision: kernels store bf16 or f32 and compute and accumulate in f32. The backend's bf16
//! compute mode (`crate::backend::Precision`) runs matrix products on bf16 operands with f32
//! accumulation (cuBLAS gemmEx) and keeps the layer activations bf16 (`crate::backend::cuda`).
//!
//! Testing without a GPU: `cargo test --test cuda_emulated` runs every launcher on the emulated
//! device against its twin, the `CudaBackend` ops against the `CpuBackend`, LoRA and QLoRA
//! training on tiny LLaMA / ChatGLM models against the CPU, KV-cache generation, and the traffic
//! bound of one training step (needs g++ with C++20; CI sets `RECIPE_REQUIRE_EMU=1` so a missing
//! compiler fails instead of skipping). Also the twins' unit tests (`cargo test --lib cuda::`) and
//! the NVRTC compile test (`eval "$(.ci/nvrtc.sh)"; RECIPE_REQUIRE_NVRTC=1 cargo test --test
//! cuda_compile`). What only a GPU shows: timing, races between blocks, the real driver and
//! compiler. With a GPU: `cargo run --release --example cuda_selftest -- selftest|bench` (see
//! kernels/NOTES.md).
//!
//! ## Paged 8-bit AdamW: what runs
//! `CudaBackend` keeps the 8-bit optimizer state (u8 m, u8 v, f32 absmax per 256 elements: 2.03
//! bytes/param) on the device for both `adamw_8bit` and `paged_adamw_8bit`: "paged" changes
//! nothing there yet. A streaming driver exists ([`ops::adamw8bit::PagedAdamW8bit`]: state in
//! page-locked host memory, chunks copied through two device staging buffers on a copy stream
//! while the kernel updates the previous chunk), but only the self-test and `recipe bench` use it;
//! wiring it to the memory plan (state that does not fit goes to the host) is future work.

pub mod context;
pub mod device;
pub mod emu;
pub mod error;
pub mod kernels;
pub mod launch;
pub mod mem;
pub mod nvrtc;
pub mod ops;
pub mod pool;
pub mod twins;

pub use context::{Gpu, Traffic};
pub use device::{Device, DeviceRequest};
pub use error::{device_error, CudaError, Result};
pub use mem::{AsDevView, AsDevViewMut, DevBuf, DevView, DevViewMut};
pub use pool::PoolStats;
