//! [`CausalLm`] for the engine's [`Model`] (base, base + unmerged LoRA, or merged), plus the
//! helpers every generation front end needs: loading a model with an optional PEFT adapter
//! and collecting stop ids.
//!
//! Rows are left-padded into one batch and run with a KV cache: the prompt as one prefill
//! step, then one token per row per step ([`Model::forward_step_last`]). transformers gives a
//! left-padded row the positions cumsum(mask) − 1, and so does the KV cache for RoPE and ALiBi
//! (dynamic NTK RoPE needs them: its frequencies change between steps); the full forward counts
//! slots, which RoPE and ALiBi cannot tell apart otherwise. Learned absolute positions (GPT-2)
//! count slots everywhere, so those rows are batched by prompt length instead (no padding at
//! all). [`EngineLm::no_cache`] runs the full forward every step: the slow oracle the cached
//! path is tested against (except under dynamic NTK, see `model::cache`).

use super::generate::{left_pad, CausalLm};
use crate::formats::config::HfConfig;
use crate::model::{Batch, KvCache, LoadOptions, Model, Positions};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// One group of rows that share a padded batch (and a cache).
struct Group {
    /// Indices into the caller's rows.
    rows: Vec<usize>,
    cache: Option<KvCache>,
    /// No-cache path: the padded ids and mask so far, per row.
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u8>>,
}

/// A [`Model`] driven as a [`CausalLm`].
pub struct EngineLm<'m> {
    pub model: &'m Model,
    /// Id placed on left padding (any valid id: it is masked out).
    pub pad_id: u32,
    /// Tokens a row may still receive after its prompt (sizes the KV cache).
    pub max_new_tokens: usize,
    use_cache: bool,
    groups: Vec<Group>,
    rows: usize,
}

impl<'m> EngineLm<'m> {
    /// KV-cache generation for up to `max_new_tokens` new tokens per row.
    pub fn new(model: &'m Model, pad_id: u32, max_new_tokens: usize) -> Self {
        EngineLm {
            model,
            pad_id,
            max_new_tokens,
            use_cache: true,
            groups: Vec::new(),
            rows: 0,
        }
    }

    /// The slow oracle: a full forward over the whole sequence for every new token.
    pub fn no_cache(model: &'m Model, pad_id: u32, max_new_tokens: usize) -> Self {
        EngineLm {
            use_cache: false,
            ..Self::new(model, pad_id, max_new_tokens)
        }
    }

    /// Splits the rows into batches: one for relative-position families, one per prompt
    /// length for learned absolute positions.
    fn grouping(&self, batch_ids: &[Vec<u32>]) -> Vec<Vec<usize>> {
        if matches!(self.model.arch.positions, Positions::Learned { .. }) {
            let mut by_len: Vec<(usize, Vec<usize>)> = Vec::new();
            for (r, p) in batch_ids.iter().enumerate() {
                match by_len.iter_mut().find(|(l, _)| *l == p.len()) {
                    Some((_, v)) => v.push(r),
                    None => by_len.push((p.len(), vec![r])),
                }
            }
            by_len.into_iter().map(|(_, v)| v).collect()
        } else {
            vec![(0..batch_ids.len()).collect()]
        }
    }

    /// Runs `ids` [B, Tn] / `mask` after what the group holds; last-position logits [B, V].
    fn step(&self, g: &mut Group, ids: &[u32], mask: &[u8]) -> Result<Vec<f32>> {
        let b = g.rows.len();
        let tn = ids.len() / b;
        if let Some(cache) = &mut g.cache {
            return Ok(self.model.forward_step_last(cache, ids, mask)?);
        }
        for r in 0..b {
            g.ids[r].extend_from_slice(&ids[r * tn..(r + 1) * tn]);
            g.mask[r].extend_from_slice(&mask[r * tn..(r + 1) * tn]);
        }
        let t = g.ids[0].len();
        let batch = Batch {
            b,
            t,
            input_ids: g.ids.concat(),
            attention_mask: g.mask.concat(),
            labels: None,
            segments: None,
        };
        let out = self.model.forward(&batch)?;
        let v = self.model.arch.vocab;
        Ok((0..b)
            .flat_map(|r| out.logits[(r * t + t - 1) * v..(r * t + t) * v].to_vec())
            .collect())
    }

    /// Scatters a group's [B, V] logits into the caller's row order.
    fn scatter(&self, out: &mut [Vec<f32>], rows: &[usize], logits: &[f32]) {
        let v = self.model.arch.vocab;
        for (i, &r) in rows.iter().enumerate() {
            out[r] = logits[i * v..(i + 1) * v].to_vec();
        }
    }
}

impl CausalLm for EngineLm<'_> {
    fn vocab(&self) -> usize {
        self.model.arch.vocab
    }

    fn prefill(&mut self, batch_ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if let Some(r) = batch_ids.iter().position(Vec::is_empty) {
            bail!("prompt {r} is empty: generation needs at least one prompt token");
        }
        self.rows = batch_ids.len();
        let mut out = vec![Vec::new(); self.rows];
        let mut groups = Vec::new();
        for rows in self.grouping(batch_ids) {
            let prompts: Vec<Vec<u32>> = rows.iter().map(|&r| batch_ids[r].clone()).collect();
            let padded = left_pad(&prompts, self.pad_id);
            let cap = padded.len + self.max_new_tokens;
            if let Positions::Learned { max } = self.model.arch.positions {
                if padded.len + self.max_new_tokens.saturating_sub(1) > max {
                    bail!(
                        "prompt of {} tokens + max_new_tokens {} exceeds the model's {max} positions",
                        padded.len,
                        self.max_new_tokens
                    );
                }
            }
            let mut g = Group {
                cache: self
                    .use_cache
                    .then(|| self.model.new_cache(rows.len(), cap)),
                ids: vec![Vec::new(); rows.len()],
                mask: vec![Vec::new(); rows.len()],
                rows,
            };
            let logits = self.step(&mut g, &padded.ids, &padded.attention_mask)?;
            self.scatter(&mut out, &g.rows, &logits);
            groups.push(g);
        }
        self.groups = groups;
        Ok(out)
    }

    fn decode(&mut self, next: &[u32], active: &[bool]) -> Result<Vec<Vec<f32>>> {
        if next.len() != self.rows {
            bail!("decode: {} tokens for {} rows", next.len(), self.rows);
        }
        let mut out = vec![Vec::new(); self.rows];
        let mut groups = std::mem::take(&mut self.groups);
        for g in &mut groups {
            // A finished group needs no compute (its logits are ignored).
            if !g
                .rows
                .iter()
                .any(|&r| active.get(r).copied().unwrap_or(true))
            {
                for &r in &g.rows {
                    out[r] = vec![0.0; self.model.arch.vocab];
                }
                continue;
            }
            let ids: Vec<u32> = g.rows.iter().map(|&r| next[r]).collect();
            let mask = vec![1u8; ids.len()];
            let logits = self.step(g, &ids, &mask)?;
            self.scatter(&mut out, &g.rows, &logits);
        }
        self.groups = groups;
        Ok(out)
    }
}

/// Ids that end generation: the tokenizer's stop ids (generation_config eos ids, eos, and for
/// ChatGLM3 <|user|> / <|observation|>), then the eos ids of the model dir's
/// generation_config.json and config.json. No duplicates, first occurrence kept.
pub fn stop_ids(model_dir: &Path, tokenizer_stop_ids: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let mut push = |ids: Vec<u32>| {
        for i in ids {
            if !out.contains(&i) {
                out.push(i);
            }
        }
    };
    push(tokenizer_stop_ids.to_vec());
    let read = std::fs::read(model_dir.join("generation_config.json")).ok();
    if let Some(v) = read.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
        push(crate::formats::config::ids(v.get("eos_token_id")));
    }
    if let Ok(c) = HfConfig::read(model_dir) {
        push(c.eos_ids());
    }
    out
}

/// The pad id for left padding: the tokenizer's pad, else eos, else the config's
/// pad_token_id, else 0 (masked out either way).
pub fn pad_id(model_dir: &Path, tokenizer_pad: Option<u32>, tokenizer_eos: Option<u32>) -> u32 {
    tokenizer_pad.or(tokenizer_eos).unwrap_or_else(|| {
        HfConfig::read(model_dir)
            .ok()
            .and_then(|c| c.pad_id())
            .unwrap_or(0)
    })
}

/// Where a train step (or a user) keeps a PEFT adapter: `dir` itself or `dir/adapter`.
pub fn adapter_dir(dir: &Path) -> Result<std::path::PathBuf> {
    for d in [dir.to_path_buf(), dir.join("adapter")] {
        if d.join("adapter_config.json").is_file() {
            return Ok(d);
        }
    }
    bail!(
        "`{}` holds no PEFT adapter (adapter_config.json + adapter_model.safetensors)",
        dir.display()
    )
}

/// Attaches the PEFT adapter in `dir` (or `dir/adapter`) to `model`, unmerged. An adapter
/// that does not fit (a tensor whose shape or module name does not match) is an error naming
/// that tensor's module; an adapter with no LoRA tensor at all is an error too.
pub fn attach_adapter(model: &mut Model, dir: &Path) -> Result<()> {
    let d = adapter_dir(dir)?;
    let cfg = crate::model::lora::load_peft(model, &d).with_context(|| {
        format!(
            "adapter `{}` does not fit this base model (was it trained on another model?)",
            d.display()
        )
    })?;
    crate::export::check_finite_file(&crate::formats::peft::weights_file(&d))?;
    let n = model
        .linears_mut()
        .iter()
        .filter(|l| l.lora.is_some())
        .count();
    if n == 0 && cfg.modules_to_save.is_empty() {
        bail!(
            "adapter `{}`: no LoRA weights matched a module of this model",
            d.display()
        );
    }
    Ok(())
}

/// Loads the model in `weights` on the CPU and, if given, attaches a PEFT adapter
/// ([`load_model_on`]).
pub fn load_model(weights: &Path, adapter: Option<&Path>) -> Result<Model> {
    load_model_on(
        std::sync::Arc::new(crate::backend::CpuBackend),
        weights,
        adapter,
    )
}

/// Loads the model in `weights` with its weights on `backend` (a 4-bit bitsandbytes dir keeps
/// its weights in 4 bits) and, if given, attaches a PEFT adapter.
pub fn load_model_on(
    backend: std::sync::Arc<dyn crate::backend::Backend>,
    weights: &Path,
    adapter: Option<&Path>,
) -> Result<Model> {
    let opts = LoadOptions {
        backend: Some(backend),
        keep_16bit: true,
        ..Default::default()
    };
    let mut model = if crate::model::quantized::is_quantized_dir(weights) {
        crate::model::quantized::load_quantized_model(weights, &opts).map_err(|e| {
            anyhow::anyhow!("loading the 4-bit model in `{}`: {e}", weights.display())
        })?
    } else {
        Model::load(weights, &opts)
            .with_context(|| format!("loading the model in `{}`", weights.display()))?
    };
    crate::export::check_finite_dir(weights)?;
    if let Some(a) = adapter {
        attach_adapter(&mut model, a)?;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::generate::{generate, FinishReason, GenConfig, Generation};

    fn fixture_dir(fam: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/engine")
            .join(fam)
    }

    fn fixtures() -> Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gen/greedy.json");
        serde_json::from_slice(&std::fs::read(p).expect("greedy.json")).expect("json")
    }

    fn ids(v: &Value) -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    }

    fn gens(v: &Value, eos: u32) -> Vec<Generation> {
        v.as_array()
            .expect("rows")
            .iter()
            .map(|r| Generation {
                tokens: ids(&r["tokens"]),
                finish: if r["finish"] == "stop" {
                    FinishReason::Stop(eos)
                } else {
                    FinishReason::Length
                },
            })
            .collect()
    }

    fn run(model: &Model, prompts: &[Vec<u32>], cfg: &GenConfig, cache: bool) -> Vec<Generation> {
        let mut lm = if cache {
            EngineLm::new(model, 0, cfg.max_new_tokens)
        } else {
            EngineLm::no_cache(model, 0, cfg.max_new_tokens)
        };
        generate(&mut lm, prompts, cfg, |_, _| {}).expect("generate")
    }

    /// Greedy tokens of every family (base, and with the PEFT adapter where PEFT loads it
    /// directly) equal transformers' `generate`, each prompt alone and as one left-padded
    /// batch; the KV-cache and no-cache paths agree. Exact token equality (greedy argmax).
    #[test]
    fn greedy_matches_transformers_every_family() {
        let fx = fixtures();
        let prompts: Vec<Vec<u32>> = fx["prompts"]
            .as_array()
            .expect("p")
            .iter()
            .map(ids)
            .collect();
        let eos = fx["eos"].as_u64().expect("eos") as u32;
        let cfg = GenConfig {
            max_new_tokens: fx["max_new_tokens"].as_u64().expect("n") as usize,
            stop_ids: vec![eos],
            ..Default::default()
        };
        for (fam, entry) in fx["families"].as_object().expect("families") {
            for (variant, want) in entry.as_object().expect("variants") {
                let dir = fixture_dir(fam);
                let adapter = (variant == "adapter").then(|| dir.join("adapter"));
                let model = load_model(&dir, adapter.as_deref()).expect("load");
                let what = format!("{fam}/{variant}");
                let single: Vec<Generation> = prompts
                    .iter()
                    .map(|p| run(&model, std::slice::from_ref(p), &cfg, true).remove(0))
                    .collect();
                assert_eq!(single, gens(&want["single"], eos), "{what}: single prompts");
                let batch = run(&model, &prompts, &cfg, true);
                assert_eq!(
                    batch,
                    gens(&want["batch"], eos),
                    "{what}: left-padded batch"
                );
                let slow = run(&model, &prompts, &cfg, false);
                assert_eq!(slow, batch, "{what}: no-cache path");
            }
        }
    }

    /// The cached prefill/decode logits equal the full forward's last-position logits at every
    /// step (abs 1e-4 + rel 1e-4), for a ragged batch of every family; and a merged adapter
    /// generates what the unmerged one does.
    #[test]
    fn cached_logits_match_full_forward_and_merge() {
        let prompts = vec![vec![3, 9, 27, 4, 15], vec![8, 31], vec![12, 5, 40]];
        for fam in ["llama", "qwen2", "gpt2", "bloom", "chatglm", "qwen"] {
            let dir = fixture_dir(fam);
            let model = load_model(&dir, Some(&dir.join("adapter"))).expect("load");
            let mut fast = EngineLm::new(&model, 0, 6);
            let mut slow = EngineLm::no_cache(&model, 0, 6);
            let mut a = fast.prefill(&prompts).expect("prefill");
            let mut b = slow.prefill(&prompts).expect("prefill");
            for step in 0..6 {
                for (r, (x, y)) in a.iter().zip(&b).enumerate() {
                    for (i, (p, q)) in x.iter().zip(y).enumerate() {
                        assert!(
                            (p - q).abs() <= 1e-4 + 1e-4 * q.abs(),
                            "{fam} step {step} row {r} logit {i}: cached {p} full {q}"
                        );
                    }
                }
                let next: Vec<u32> = (0..3)
                    .map(|r| ((step * 7 + r * 5) % 40 + 3) as u32)
                    .collect();
                a = fast.decode(&next, &[true; 3]).expect("decode");
                b = slow.decode(&next, &[true; 3]).expect("decode");
            }
            let cfg = GenConfig {
                max_new_tokens: 6,
                ..Default::default()
            };
            let unmerged = run(&model, &prompts, &cfg, true);
            let mut merged = load_model(&dir, Some(&dir.join("adapter"))).expect("load");
            crate::model::lora::merge(&mut merged).expect("merge");
            assert_eq!(
                run(&merged, &prompts, &cfg, true),
                unmerged,
                "{fam}: merged"
            );
        }
    }

    #[test]
    fn stop_ids_end_rows() {
        // llama base, prompt 0 greedily gives [1, 26, 1, 1, ...]: stopping on 26 keeps [1].
        let fx = fixtures();
        let p0 = ids(&fx["prompts"][0]);
        let model = load_model(&fixture_dir("llama"), None).expect("load");
        let cfg = GenConfig {
            max_new_tokens: 8,
            stop_ids: vec![26],
            ..Default::default()
        };
        let g = run(&model, &[p0], &cfg, true);
        assert_eq!(g[0].tokens, [1]);
        assert_eq!(g[0].finish, FinishReason::Stop(26));
        // Config eos (2) and pad are read from config.json.
        let dir = fixture_dir("llama");
        assert_eq!(stop_ids(&dir, &[7]), [7, 2]);
        assert_eq!(pad_id(&dir, None, None), 0);
    }

    #[test]
    fn mismatched_adapter_names_the_module() {
        // The qwen2 adapter (hidden 16, MQA k/v 4 wide) on the llama model: k_proj is 8 wide.
        let mut m = Model::load(&fixture_dir("llama"), &LoadOptions::default()).expect("load");
        let err = attach_adapter(&mut m, &fixture_dir("qwen2").join("adapter")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("does not fit this base model"), "{msg}");
        assert!(
            msg.contains("model.layers.1.self_attn.k_proj.lora_B.weight"),
            "{msg}"
        );
        // A family with other module names: the first unknown tensor is named.
        let mut m = Model::load(&fixture_dir("llama"), &LoadOptions::default()).expect("load");
        let err = attach_adapter(&mut m, &fixture_dir("bloom").join("adapter")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("matches no module of this model"), "{msg}");
        assert!(
            msg.contains("query_key_value") || msg.contains("dense"),
            "{msg}"
        );
        let err = attach_adapter(&mut m, &fixture_dir("nope")).unwrap_err();
        assert!(format!("{err:#}").contains("holds no PEFT adapter"));
    }
}
