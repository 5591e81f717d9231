//! What `template` produces: a sequence of segments, each plain text or one
//! special token, tagged with the role it belongs to and whether its tokens
//! are trained (labels = ids) or masked (labels = -100).

use crate::data::example::Role;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Piece {
    /// Encoded by the tokenizer (segment by segment, as ChatGLM3 does).
    Text(String),
    /// Exactly one token, looked up by its content (e.g. "<|user|>", "[gMASK]").
    Special(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub piece: Piece,
    pub role: Role,
    pub trainable: bool,
}
