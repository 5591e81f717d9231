//! The canonical training example every record format is mapped onto.
//!
//! `load.dataset` turns raw rows (JSON objects, CSV rows, arrow rows) into
//! `Example`s according to the recipe's `format`; `template` renders an
//! `Example` into `Segment`s (see `crate::text::segment`).

use serde::{Deserialize, Serialize};

/// Who speaks a message. `Text` is used by the plain `text` format (one
/// trainable message, no roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Observation,
    Tool,
    Text,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Observation => "observation",
            Role::Tool => "tool",
            Role::Text => "text",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "user" | "human" => Role::User,
            "assistant" | "gpt" | "bot" => Role::Assistant,
            "observation" => Role::Observation,
            "tool" | "function" => Role::Tool,
            "text" => Role::Text,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// ChatGLM3 metadata (tool name on observation/tool turns); usually empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
}

/// One training example: a conversation. Single-turn formats (alpaca,
/// prompt_response, text_label) become one user + one assistant message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub messages: Vec<Message>,
    /// Extra columns kept for templates (e.g. alpaca `instruction`/`input`),
    /// and where the row came from (`"file:line"`) for error messages.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}
