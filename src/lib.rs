//! recipe: fine-tune large language models from declarative TOML recipes.
pub mod cli;
pub mod data;
pub mod eval;
pub mod text;
