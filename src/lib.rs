//! recipe: fine-tune large language models from declarative TOML recipes.
pub mod cli;
pub mod cuda;
pub mod data;
pub mod text;
