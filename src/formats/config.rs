//! `config.json` of a Hugging Face model dir, parsed once into [`HfConfig`]: its `model_type`,
//! special token ids (bos / eos / pad), storage dtype, embedding tying, and typed getters for the
//! per-family keys. `model::arch::Arch::from_config` turns it into the architecture and
//! `model::family::Family::of` into the family; nothing else reads config.json for those.
//!
//! This module knows the file, not the models: it does not depend on `model`.

use serde_json::{Map, Value};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: unsupported model_type \"{got}\" (supported: {supported})")]
    Unsupported {
        path: String,
        got: String,
        supported: String,
    },
    #[error("{path}: key \"{key}\": {msg}")]
    Key {
        path: String,
        key: String,
        msg: String,
    },
}

/// A parsed config.json. `path` names the file in errors.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub path: String,
    /// `model_type` ("" when missing or not a string).
    pub model_type: String,
    /// The whole object (empty when the file is JSON but not an object).
    pub raw: Map<String, Value>,
}

impl HfConfig {
    /// Reads `<dir>/config.json`.
    pub fn read(dir: &Path) -> Result<HfConfig, ConfigError> {
        let path = dir.join("config.json");
        let p = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, &p)
    }

    /// Parses a config.json text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &str) -> Result<HfConfig, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            path: path.into(),
            source,
        })?;
        let raw = match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok(HfConfig {
            path: path.into(),
            model_type,
            raw,
        })
    }

    /// The key's value, None when missing or null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// An error about `key` of this file.
    pub fn key_error(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::Key {
            path: self.path.clone(),
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// A required unsigned integer.
    pub fn uint(&self, key: &str) -> Result<usize, ConfigError> {
        self.get(key)
            .ok_or_else(|| self.key_error(key, "missing"))?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| self.key_error(key, "expected an unsigned integer"))
    }
    /// An unsigned integer, `d` when missing or null.
    pub fn uint_or(&self, key: &str, d: usize) -> Result<usize, ConfigError> {
        if self.has(key) {
            self.uint(key)
        } else {
            Ok(d)
        }
    }
    /// A count other sizes are divided by: 0 is a config error here, not a division by zero
    /// later.
    pub fn count(&self, key: &str) -> Result<usize, ConfigError> {
        match self.uint(key)? {
            0 => Err(self.key_error(key, "must be at least 1")),
            n => Ok(n),
        }
    }
    /// A number, `d` when missing or not a number.
    pub fn float_or(&self, key: &str, d: f64) -> f64 {
        self.get(key).and_then(Value::as_f64).unwrap_or(d)
    }
    pub fn opt_float(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }
    /// A boolean, `d` when missing or not a boolean.
    pub fn bool_or(&self, key: &str, d: bool) -> bool {
        self.get(key).and_then(Value::as_bool).unwrap_or(d)
    }

    /// `eos_token_id`: a number or a list (every id, in order).
    pub fn eos_ids(&self) -> Vec<u32> {
        ids(self.get("eos_token_id"))
    }
    /// The first `eos_token_id`.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_ids().first().copied()
    }
    pub fn bos_id(&self) -> Option<u32> {
        ids(self.get("bos_token_id")).first().copied()
    }
    pub fn pad_id(&self) -> Option<u32> {
        ids(self.get("pad_token_id")).first().copied()
    }

    /// The storage dtype as transformers names it (`torch_dtype`, or `dtype` since
    /// transformers 5), e.g. "bfloat16".
    pub fn dtype(&self) -> Option<&str> {
        self.get("torch_dtype")
            .or_else(|| self.get("dtype"))
            .and_then(Value::as_str)
    }
    /// Bytes per stored weight of `dtype()` (2 unless float32: HF checkpoints default to half).
    pub fn dtype_bytes(&self) -> u64 {
        match self.dtype() {
            Some("float32") => 4,
            _ => 2,
        }
    }

    /// Whether lm_head is the input embedding: `tie_word_embeddings`, or transformers' default
    /// for the model_type when the key is missing ([`ties_embeddings_by_default`]).
    pub fn ties_embeddings(&self) -> bool {
        self.bool_or(
            "tie_word_embeddings",
            ties_embeddings_by_default(&self.model_type),
        )
    }
}

/// transformers' `tie_word_embeddings` when config.json omits it: false where the model's config
/// class says so (LLaMA, Mistral, Qwen v1/2/3, ChatGLM's separate output layer), else
/// PretrainedConfig's true (BLOOM, GPT-2, ...). The one rule the engine, merge, export and GGUF
/// use.
pub fn ties_embeddings_by_default(model_type: &str) -> bool {
    !matches!(
        model_type,
        "llama" | "mistral" | "qwen2" | "qwen3" | "qwen" | "chatglm"
    )
}

/// Token ids of a config value: a number or a list of numbers.
pub fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config without `tie_word_embeddings` gets transformers' default for its model_type,
    /// the same from HfConfig (engine) and from the raw JSON (merge, export, GGUF).
    #[test]
    fn tied_embeddings_default_per_model_type() {
        for (mt, key, want) in [
            ("llama", "", false),
            ("qwen2", "", false),
            ("gpt2", "", true),
            ("bloom", "", true),
            ("llama", r#","tie_word_embeddings":true"#, true),
            ("gpt2", r#","tie_word_embeddings":false"#, false),
        ] {
            let text = format!(r#"{{"model_type":"{mt}"{key}}}"#);
            let c = HfConfig::parse(&text, "c").unwrap();
            assert_eq!(c.ties_embeddings(), want, "{text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(crate::formats::hf_dir::ties_embeddings(&v), want, "{text}");
        }
    }

    #[test]
    fn special_ids_dtype_and_errors() {
        let c = HfConfig::parse(
            r#"{"model_type":"llama","eos_token_id":[2,7],"bos_token_id":1,"pad_token_id":null,
                "torch_dtype":"bfloat16","hidden_size":0,"n":"x"}"#,
            "m/config.json",
        )
        .unwrap();
        assert_eq!(c.model_type, "llama");
        assert_eq!((c.eos_ids(), c.eos_id()), (vec![2, 7], Some(2)));
        assert_eq!((c.bos_id(), c.pad_id()), (Some(1), None));
        assert_eq!((c.dtype(), c.dtype_bytes()), (Some("bfloat16"), 2));
        assert_eq!(
            c.count("hidden_size").unwrap_err().to_string(),
            "m/config.json: key \"hidden_size\": must be at least 1"
        );
        assert_eq!(
            c.uint("n").unwrap_err().to_string(),
            "m/config.json: key \"n\": expected an unsigned integer"
        );
        assert_eq!(c.uint_or("pad_token_id", 5).unwrap(), 5);
        // Not an object: no model_type.
        assert_eq!(HfConfig::parse("[1]", "c").unwrap().model_type, "");
        assert!(HfConfig::parse("{", "c")
            .unwrap_err()
            .to_string()
            .starts_with("c: invalid JSON: "));
    }
}
