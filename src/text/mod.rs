//! Text side of a recipe: tokenizers (tokenizer.json or SentencePiece),
//! HF-compatible chat templates, templates -> segments, tokenization with
//! label masks, and the token-dataset file the trainer reads.
//!
//! Typical use:
//! ```ignore
//! let bundle = TokenizerBundle::from_dir(model_dir)?;
//! let template = Template::from_name_or_source("chatglm3", Some(recipe_dir))?;
//! let renderer = Renderer::new(template, Some(&bundle))?;
//! let stats = tokenize(examples, &renderer, &bundle, &opts, &out_dir.join("tokens.bin"))?;
//! let ds = TokenDataset::open(out_dir.join("tokens.bin"))?;
//! ```
pub mod dataset;
pub mod fast_bpe;
#[cfg(test)]
mod glm1_tests;
pub mod inspect;
pub mod jinja;
#[cfg(test)]
mod parity_tests;
pub mod segment;
pub mod sentencepiece;
pub mod template;
pub mod tokenize;
pub mod tokenizer;

pub use dataset::{RowRef, TokenDataset, TokenDatasetWriter, TokenRow, IGNORE};
pub use inspect::{inspect_text, row_json};
pub use jinja::{ChatContext, ChatTemplate};
pub use template::{render, MaskRule, Rendered, Renderer, Template};
pub use tokenize::{
    prompt_ids, tokenize, tokenize_example, tokenize_rows, OnEmpty, TokenizeOptions, TokenizeStats,
    TrainOn,
};
pub use tokenizer::{PaddingSide, TokenizerBundle};
