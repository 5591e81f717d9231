//! The dataset library behind the `load.dataset` step.
//!
//! Readers (`json`, `jsonl`, `csv_file`, `columnar` for Parquet/Arrow) produce `Row`s with a
//! `Location`; `source` resolves a path (file, folder of shards, HF `save_to_disk` folder) into
//! files; `transform` renames/selects/filters; `format` maps rows onto `Example`s; `rng` is
//! NumPy's generator so splits match HF `train_test_split`; `load` ties it together.
//!
//! Entry points: [`load::load`], [`load::check`], [`load::read_examples`].
pub mod arrow_json;
pub mod columnar;
pub mod csv_file;
pub mod error;
pub mod example;
pub mod format;
pub mod json;
pub mod jsonl;
pub mod load;
pub mod rng;
pub mod row;
pub mod source;
#[cfg(test)]
mod testutil;
pub mod transform;

pub use error::DataError;
pub use format::RecordFormat;
pub use load::{check, input_files, load, read_examples, LoadReport, LoadSpec, OnError, TestSize};
pub use source::FileFormat;
