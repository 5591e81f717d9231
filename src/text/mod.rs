//! Text side of a recipe: tokenizers (tokenizer.json or SentencePiece),
//! HF-compatible chat templates, templates -> segments, tokenization with
//! label masks, and the token-dataset file the trainer reads.
pub mod jinja;
pub mod segment;
pub mod sentencepiece;
pub mod template;
pub mod tokenizer;

pub use tokenizer::{PaddingSide, TokenizerBundle};
