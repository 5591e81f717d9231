//! recipe: fine-tune large language models from declarative TOML recipes.
pub mod backend;
pub mod cli;
pub mod data;
pub mod lora;
pub mod model;
pub mod text;
