//! CUDA backend pieces: device selection, run-time kernel compilation (NVRTC), kernel launchers,
//! CPU twins of every kernel, a self-test and benchmarks.
//!
//! Layout:
//! - [`device`]: `--device auto|cpu|cuda|cuda:N` and resolution against the machine.
//! - [`kernels`]: the embedded `kernels/*.cu` files and the functions each defines.
//! - [`nvrtc`]: compile for the device's arch, include-path discovery, on-disk cache.
//! - [`context`]: [`Gpu`] (context, stream, lazily loaded modules, cuBLAS handle).
//! - [`ops`]: one launcher per kernel, checking shapes and alignment (`// SAFETY:` notes).
//! - [`twins`]: the same math in plain Rust loops; the oracle for [`selftest`] and for tests.
//! - [`selftest`], [`bench`]: GPU-only runs (`recipe selftest --device cuda`, `recipe bench`).
//! - [`train_check`]: a tiny model trained on the CPU and on the GPU backend
//!   (`crate::backend::CudaBackend`), losses compared; the last part of the self-test.
//!
//! Precision: bf16 (or f32) storage, f32 arithmetic and accumulation everywhere.
//!
//! Testing without a GPU: the twins' unit tests (`cargo test --lib cuda::`), the NVRTC compile
//! test (`eval "$(.ci/nvrtc.sh)"; RECIPE_REQUIRE_NVRTC=1 cargo test --test cuda_compile`) and a
//! CPU emulation of the kernels themselves (`tests/reference/cuda_emu.py`). With a GPU:
//! `cargo run --release --example cuda_selftest -- selftest|bench` (see kernels/NOTES.md).
//!
//! ## Paged 8-bit AdamW (design)
//! The 8-bit optimizer state (u8 m, u8 v, f32 absmax per 256 elements: 2.03 bytes/param) lives on
//! the device when it fits. When the memory plan says it does not, the state is kept in
//! page-locked host memory and [`ops::adamw8bit::PagedAdamW8bit`] streams it through two device
//! staging buffers of `chunk` elements: copy chunk i+1 host→device on a copy stream while the
//! kernel updates chunk i on the compute stream, then copy chunk i back device→host
//! (`cuMemcpyAsync` on pinned memory, ordered by events). Parameters and gradients stay on the
//! device; only the state moves, 2×2.03 bytes/param per step over PCIe. This replaces bnb's
//! unified-memory paging (which relies on driver page faults) with explicit, predictable copies.

pub mod bench;
pub mod context;
pub mod device;
pub mod emu;
pub mod error;
pub mod kernels;
pub mod launch;
pub mod mem;
pub mod nvrtc;
pub mod ops;
pub mod selftest;
pub mod train_check;
pub mod twins;

pub use context::{Gpu, Traffic};
pub use mem::{AsDevView, AsDevViewMut, DevBuf, DevView, DevViewMut};
pub use device::{Device, DeviceRequest};
pub use error::{CudaError, Result};
