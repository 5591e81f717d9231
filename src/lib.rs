//! recipe: fine-tune large language models from declarative TOML recipes.
//!
//! Layers, top to bottom: `cli` → `recipe` (parse, include, vars, validate)
//! → `plan` (DAG, cache keys, estimates) → `run` (scheduler) → `steps`
//! (one file per kind) → libraries (`data`, `text`, `model`,
//! `backend`, `train`, `eval`, ...). `cache` stores every step's output by
//! content.
pub mod backend;
pub mod cache;
pub mod cli;
pub mod cuda;
pub mod data;
pub mod devtools;
pub mod diag;
pub mod eval;
pub mod export;
pub mod formats;
pub mod fuzzing;
pub mod gen_cli;
pub mod host_gemm;
pub mod init;
pub mod model;
pub mod optim;
pub mod plan;
pub mod quant;
pub mod recipe;
pub mod rng;
pub mod run;
pub mod serve;
pub mod steps;
pub mod text;
pub mod train;
pub mod util;
