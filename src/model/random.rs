//! A random LLaMA-shaped checkpoint dir (config.json + f32 model.safetensors), for the
//! benchmarks and the CUDA self-check, which need a model of a given shape and no fixture.

use std::path::Path;

use crate::formats::safetensors::write_f32;

/// The shape of the checkpoint (LLaMA names; untied head; RMSNorm weights are ones).
#[derive(Debug, Clone, Copy)]
pub struct RandomLlama {
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

impl RandomLlama {
    /// The checkpoint's config.json.
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "torch_dtype": "float32",
        })
    }

    /// Writes `dir` (created if needed). `init(len)` gives the values of each embedding and
    /// linear weight, called in this order: embed_tokens, lm_head, then for each layer q, k, v,
    /// o, gate, up, down. Returns the number of parameters.
    pub fn write(
        &self,
        dir: &Path,
        mut init: impl FnMut(usize) -> Vec<f32>,
    ) -> anyhow::Result<usize> {
        let &RandomLlama {
            hidden: h,
            ffn: f,
            vocab: v,
            ..
        } = self;
        std::fs::create_dir_all(dir)?;
        let config = self.config();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        let kv = h / self.heads * self.kv_heads;
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![v, h]),
            ("lm_head.weight".into(), vec![v, h]),
        ];
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            for (m, rows) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)] {
                shapes.push((format!("{p}.self_attn.{m}.weight"), vec![rows, h]));
            }
            shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
            shapes.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
            shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
        }
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = shapes
            .into_iter()
            .map(|(n, s)| {
                let data = init(s.iter().product());
                (n, s, data)
            })
            .collect();
        for i in 0..self.layers {
            for ln in ["input_layernorm", "post_attention_layernorm"] {
                tensors.push((
                    format!("model.layers.{i}.{ln}.weight"),
                    vec![h],
                    vec![1.0; h],
                ));
            }
        }
        tensors.push(("model.norm.weight".into(), vec![h], vec![1.0; h]));
        let params = tensors.iter().map(|t| t.2.len()).sum();
        let views: Vec<(String, Vec<usize>, &[f32])> = tensors
            .iter()
            .map(|(n, s, d)| (n.clone(), s.clone(), &d[..]))
            .collect();
        write_f32(&dir.join("model.safetensors"), &views)?;
        Ok(params)
    }
}
