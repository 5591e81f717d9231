//! Developer tools for the CUDA path, outside the library core: the self-test (every kernel
//! against its CPU twin, then a tiny CPU-vs-CUDA training run), the benchmarks and that
//! training comparison, and the whole-model training benchmark. `recipe selftest` / `recipe bench`, `examples/cuda_selftest.rs` and
//! `tests/cuda_emulated.rs` call them; nothing in the engine does.

pub mod bench;
pub mod quant_bench;
pub mod selftest;
pub mod train_bench;
pub mod train_check;
