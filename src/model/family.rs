//! The model families, one table: which config.json `model_type`s map onto each family, its name
//! in recipes and logs, PEFT's default LoRA targets, and the checkpoint names of its weights
//! (which are also the module names LoRA targets match). Everything else that needs a
//! per-family fact (the architecture in `arch`, the memory plan, `load.model`, train's default
//! targets) asks here.

use crate::formats::config::{ConfigError, HfConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    Llama,
    Qwen2,
    /// Qwen2's layout plus per-head q/k RMSNorm (`Arch::qk_norm`), no q/k/v bias.
    Qwen3,
    /// Gemma 3 text: LLaMA's names plus sandwich norms (`LayerNames::post_norms`), (1 + w)
    /// RMSNorms, GeGLU, local/global layers (`Arch::local_rope`).
    Gemma3,
    Qwen,
    ChatGlm,
    Bloom,
    Gpt2,
}

/// One row of the family table.
pub struct FamilyInfo {
    pub family: Family,
    /// The family's name in logs and `load.model`'s output.
    pub name: &'static str,
    /// config.json `model_type`s of this family.
    pub model_types: &'static [&'static str],
    /// PEFT's default `target_modules` for the family.
    pub default_targets: &'static [&'static str],
    /// llama.cpp's `general.architecture` for GGUF export of every model_type of the family
    /// (None: not exported). Mistral is `llama` there, as convert_hf_to_gguf.py writes it.
    pub gguf_arch: Option<&'static str>,
}

/// Every supported family.
pub static TABLE: &[FamilyInfo] = &[
    FamilyInfo {
        family: Family::Llama,
        name: "llama",
        model_types: &["llama", "mistral"],
        default_targets: &["q_proj", "v_proj"],
        gguf_arch: Some("llama"),
    },
    FamilyInfo {
        family: Family::Qwen2,
        name: "qwen2",
        model_types: &["qwen2"],
        default_targets: &["q_proj", "v_proj"],
        gguf_arch: Some("qwen2"),
    },
    FamilyInfo {
        family: Family::Qwen3,
        name: "qwen3",
        model_types: &["qwen3"],
        default_targets: &["q_proj", "v_proj"],
        gguf_arch: Some("qwen3"),
    },
    FamilyInfo {
        family: Family::Gemma3,
        name: "gemma3",
        model_types: &["gemma3_text"],
        default_targets: &["q_proj", "v_proj"],
        gguf_arch: None,
    },
    FamilyInfo {
        family: Family::Qwen,
        name: "qwen",
        model_types: &["qwen"],
        default_targets: &["c_attn"],
        gguf_arch: None,
    },
    FamilyInfo {
        family: Family::ChatGlm,
        name: "chatglm",
        model_types: &["chatglm"],
        default_targets: &["query_key_value"],
        gguf_arch: None,
    },
    FamilyInfo {
        family: Family::Bloom,
        name: "bloom",
        model_types: &["bloom"],
        default_targets: &["query_key_value"],
        gguf_arch: Some("bloom"),
    },
    FamilyInfo {
        family: Family::Gpt2,
        name: "gpt2",
        model_types: &["gpt2"],
        default_targets: &["c_attn"],
        gguf_arch: Some("gpt2"),
    },
];

/// Every supported `model_type`, comma-separated, in table order.
pub fn supported_model_types() -> String {
    TABLE
        .iter()
        .flat_map(|f| f.model_types.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checkpoint names (without `.weight` / `.bias`) of one layer's pieces; the same strings are the
/// module names PEFT targets.
#[derive(Debug, Clone)]
pub struct LayerNames {
    pub ln1: String,
    /// The norm before the MLP.
    pub ln2: String,
    /// Sandwich norms on the attention and MLP outputs before each residual add (Gemma 3).
    pub post_norms: Option<[String; 2]>,
    /// Separate: [q, k, v]; fused: [qkv].
    pub qkv: Vec<String>,
    pub o: String,
    /// SwiGLU separate: [gate, up]; fused or GELU: [fc].
    pub mlp_in: Vec<String>,
    pub mlp_out: String,
}

#[derive(Debug, Clone)]
pub struct Names {
    pub emb: String,
    pub pos_emb: Option<String>,
    pub emb_norm: Option<String>,
    pub final_norm: String,
    /// None when tied to `emb`.
    pub head: Option<String>,
}

impl Family {
    /// The family of a config.json's `model_type`, or the error naming every supported type.
    pub fn of(c: &HfConfig) -> Result<Family, ConfigError> {
        Family::of_model_type(&c.model_type).ok_or_else(|| ConfigError::Unsupported {
            path: c.path.clone(),
            got: c.model_type.clone(),
            supported: supported_model_types(),
        })
    }
    pub fn of_model_type(mt: &str) -> Option<Family> {
        TABLE
            .iter()
            .find(|f| f.model_types.contains(&mt))
            .map(|f| f.family)
    }
    pub fn info(self) -> &'static FamilyInfo {
        TABLE
            .iter()
            .find(|f| f.family == self)
            .expect("every family has a row in TABLE")
    }
    pub fn name(self) -> &'static str {
        self.info().name
    }
    pub fn default_targets(self) -> &'static [&'static str] {
        self.info().default_targets
    }

    /// Names of the embedding, final norm and head (`tied`: no head of its own).
    pub fn names(self, tied: bool) -> Names {
        let s = String::from;
        let head = (!tied).then(|| s("lm_head"));
        match self {
            Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Gemma3 => Names {
                emb: s("model.embed_tokens"),
                pos_emb: None,
                emb_norm: None,
                final_norm: s("model.norm"),
                head,
            },
            Family::Qwen => Names {
                emb: s("transformer.wte"),
                pos_emb: None,
                emb_norm: None,
                final_norm: s("transformer.ln_f"),
                head,
            },
            Family::ChatGlm => Names {
                emb: s("transformer.embedding.word_embeddings"),
                pos_emb: None,
                emb_norm: None,
                final_norm: s("transformer.encoder.final_layernorm"),
                head: Some(s("transformer.output_layer")),
            },
            Family::Bloom => Names {
                emb: s("transformer.word_embeddings"),
                pos_emb: None,
                emb_norm: Some(s("transformer.word_embeddings_layernorm")),
                final_norm: s("transformer.ln_f"),
                head,
            },
            Family::Gpt2 => Names {
                emb: s("transformer.wte"),
                pos_emb: Some(s("transformer.wpe")),
                emb_norm: None,
                final_norm: s("transformer.ln_f"),
                head,
            },
        }
    }

    /// Names of layer i's norms and linears.
    pub fn layer_names(self, i: usize) -> LayerNames {
        match self {
            Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Gemma3 => {
                let p = format!("model.layers.{i}");
                // Gemma 3's post_attention_layernorm is the attention's sandwich norm.
                let (ln2, post_norms) = if self == Family::Gemma3 {
                    (
                        format!("{p}.pre_feedforward_layernorm"),
                        Some([
                            format!("{p}.post_attention_layernorm"),
                            format!("{p}.post_feedforward_layernorm"),
                        ]),
                    )
                } else {
                    (format!("{p}.post_attention_layernorm"), None)
                };
                LayerNames {
                    ln1: format!("{p}.input_layernorm"),
                    ln2,
                    post_norms,
                    qkv: ["q", "k", "v"]
                        .iter()
                        .map(|x| format!("{p}.self_attn.{x}_proj"))
                        .collect(),
                    o: format!("{p}.self_attn.o_proj"),
                    mlp_in: vec![format!("{p}.mlp.gate_proj"), format!("{p}.mlp.up_proj")],
                    mlp_out: format!("{p}.mlp.down_proj"),
                }
            }
            Family::Qwen => {
                let p = format!("transformer.h.{i}");
                // modeling_qwen.py: c_proj(w1(x) * silu(w2(x))): w2 is the gate, w1 the up projection.
                LayerNames {
                    ln1: format!("{p}.ln_1"),
                    ln2: format!("{p}.ln_2"),
                    post_norms: None,
                    qkv: vec![format!("{p}.attn.c_attn")],
                    o: format!("{p}.attn.c_proj"),
                    mlp_in: vec![format!("{p}.mlp.w2"), format!("{p}.mlp.w1")],
                    mlp_out: format!("{p}.mlp.c_proj"),
                }
            }
            Family::ChatGlm | Family::Bloom => {
                let p = if self == Family::ChatGlm {
                    format!("transformer.encoder.layers.{i}")
                } else {
                    format!("transformer.h.{i}")
                };
                LayerNames {
                    ln1: format!("{p}.input_layernorm"),
                    ln2: format!("{p}.post_attention_layernorm"),
                    post_norms: None,
                    qkv: vec![format!("{p}.self_attention.query_key_value")],
                    o: format!("{p}.self_attention.dense"),
                    mlp_in: vec![format!("{p}.mlp.dense_h_to_4h")],
                    mlp_out: format!("{p}.mlp.dense_4h_to_h"),
                }
            }
            Family::Gpt2 => {
                let p = format!("transformer.h.{i}");
                LayerNames {
                    ln1: format!("{p}.ln_1"),
                    ln2: format!("{p}.ln_2"),
                    post_norms: None,
                    qkv: vec![format!("{p}.attn.c_attn")],
                    o: format!("{p}.attn.c_proj"),
                    mlp_in: vec![format!("{p}.mlp.c_fc")],
                    mlp_out: format!("{p}.mlp.c_proj"),
                }
            }
        }
    }

    /// Names of layer i's per-head q and k norms (Qwen3's and Gemma 3's `qk_norm`), weights
    /// [head_dim].
    pub fn qk_norm_names(self, i: usize) -> (String, String) {
        let p = format!("model.layers.{i}.self_attn");
        (format!("{p}.q_norm"), format!("{p}.k_norm"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_maps_model_types_and_defaults() {
        assert_eq!(
            supported_model_types(),
            "llama, mistral, qwen2, qwen3, gemma3_text, qwen, chatglm, bloom, gpt2"
        );
        assert_eq!(Family::of_model_type("mistral"), Some(Family::Llama));
        assert_eq!(Family::of_model_type("glm"), None);
        assert_eq!(Family::ChatGlm.default_targets(), ["query_key_value"]);
        assert_eq!(Family::Qwen.default_targets(), ["c_attn"]);
        assert_eq!(Family::Qwen3.name(), "qwen3");
        assert_eq!(Family::of_model_type("gemma3_text"), Some(Family::Gemma3));
        assert_eq!(Family::Gemma3.default_targets(), ["q_proj", "v_proj"]);
        for f in TABLE {
            assert_eq!(f.family.info().name, f.name);
        }
    }
}
