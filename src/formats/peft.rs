//! PEFT LoRA adapter dirs, the one reader and the one writer: `adapter_config.json` +
//! `adapter_model.safetensors`, read into per-module LoRA pairs (with their scale) and whole
//! tensors that replace base tensors (`modules_to_save`, saved embedding base layers, trained
//! biases). Merge reads with [`read_adapter`]; the training engine (`lora::load_peft`) reads
//! the config first ([`read_config`]), refuses what it cannot train, then [`read_weights`];
//! `lora::save_peft` writes with [`write_adapter`].
//!
//! Saved keys (adapter name already stripped by PEFT), with `M` a module of the base model:
//! - `base_model.model.M.lora_A.weight` [r, d_in], `...M.lora_B.weight` [d_out, r]
//! - `base_model.model.M.lora_embedding_A` [r, num_embeddings], `...lora_embedding_B` [dim, r]
//! - `base_model.model.M.lora_B.bias` [d_out] (lora_bias = true)
//! - `base_model.model.M.weight` (modules_to_save; older PEFT: `M.modules_to_save.weight`),
//!   `base_model.model.M.base_layer.weight` (saved embedding layers), `...M.bias` (bias = all)

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

use super::error::{FormatError, Result};
use super::read_json;
use super::safetensors::{read_file, write_f32, Tensor, Tensors};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// What peft < 0.7 saved by default (torch.save's zip; read through `torch_bin`).
pub const ADAPTER_WEIGHTS_BIN: &str = "adapter_model.bin";
pub const PREFIX: &str = "base_model.model.";

/// The fields of PEFT's `LoraConfig` that merging or training reads (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    #[serde(default = "lora")]
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub lora_dropout: f64,
    /// `none`, `all` or `lora_only`.
    #[serde(default = "none", deserialize_with = "null_as_none")]
    pub bias: String,
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default)]
    pub layers_to_transform: serde_json::Value,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// A list of names or one regex string, as PEFT stores it.
    #[serde(default)]
    pub target_modules: serde_json::Value,
    #[serde(default, deserialize_with = "null_as_default")]
    pub modules_to_save: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub rank_pattern: IndexMap<String, usize>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub alpha_pattern: IndexMap<String, f64>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
}

fn lora() -> String {
    "LORA".into()
}

fn none() -> String {
    "none".into()
}

fn null_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(none))
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A warning when the adapter in `adapter_dir` says it was trained on another base than
/// `base_dir` (`base_model_name_or_path`): same path (as written or canonical) or same last
/// path part (a hub id vs its local copy) counts as the same base. Shapes are checked where
/// the adapter is applied (a mismatch is an error naming the tensor); this is only the name.
pub fn other_base_warning(adapter_dir: &Path, base_dir: &Path) -> Option<String> {
    let cfg: AdapterConfig =
        serde_json::from_value(read_json(&adapter_dir.join(ADAPTER_CONFIG)).ok()?).ok()?;
    let named = cfg.base_model_name_or_path.filter(|n| !n.is_empty())?;
    let named_path = Path::new(&named);
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let last = |p: &Path| p.file_name().map(|n| n.to_os_string());
    let same = named_path == base_dir
        || canon(named_path).is_some_and(|c| Some(c) == canon(base_dir))
        || last(named_path).is_some_and(|n| Some(n) == last(base_dir));
    (!same).then(|| {
        format!(
            "the adapter in `{}` was trained on `{named}`, not on `{}`; its shapes fit, so it \
             is applied, but check that this is the base you meant",
            adapter_dir.display(),
            base_dir.display()
        )
    })
}

impl AdapterConfig {
    /// PEFT's `get_pattern_key`: the first pattern `p` with `^(.*\.)?(p)$` matching `module`.
    fn pattern<'a, V>(patterns: &'a IndexMap<String, V>, module: &str) -> Result<Option<&'a V>> {
        for (p, v) in patterns {
            let re = regex::Regex::new(&format!(r"^(.*\.)?({p})$")).map_err(|e| {
                FormatError::Unsupported(format!("adapter pattern {p:?} is not a regex: {e}"))
            })?;
            if re.is_match(module) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The rank the config gives `module` (rank_pattern, else r).
    pub fn rank_for(&self, module: &str) -> Result<usize> {
        Ok(Self::pattern(&self.rank_pattern, module)?
            .copied()
            .unwrap_or(self.r))
    }

    /// s = alpha / r, or alpha / sqrt(r) with rsLoRA (alpha from alpha_pattern, else lora_alpha).
    pub fn scale_for(&self, module: &str, r: usize) -> Result<f32> {
        let alpha = Self::pattern(&self.alpha_pattern, module)?
            .copied()
            .unwrap_or(self.lora_alpha);
        let r = r as f64;
        Ok((if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }) as f32)
    }
}

/// One adapted module: ΔW = scale · B·A (transposed for Conv1D and embeddings).
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// Module name in the base model, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    /// [r, d_in] (embedding: [r, num_embeddings]).
    pub a: Tensor,
    /// [d_out, r] (embedding: [dim, r]).
    pub b: Tensor,
    /// lora_B's bias [d_out] (lora_bias = true): the base bias gains scale · bias.
    pub bias: Option<Tensor>,
    /// `lora_embedding_A/B`: ΔW = scale · (B·A)ᵀ for an embedding stored [num, dim].
    pub embedding: bool,
    pub r: usize,
    pub scale: f32,
}

#[derive(Debug)]
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// LoRA pairs in file order.
    pub lora: Vec<LoraModule>,
    /// Base tensor name -> its new value (modules_to_save, saved base layers, biases).
    pub replace: Tensors,
}

/// Read `adapter_config.json` of a PEFT adapter dir.
pub fn read_config(dir: &Path) -> Result<AdapterConfig> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    if !cfg_path.is_file() {
        return Err(FormatError::format(
            dir,
            format!("no {ADAPTER_CONFIG}: not a PEFT adapter dir"),
        ));
    }
    serde_json::from_value(read_json(&cfg_path)?)
        .map_err(|e| FormatError::format(&cfg_path, format!("not a LoRA adapter config: {e}")))
}

/// Read and check a PEFT LoRA adapter dir for merging (DoRA and other PEFT types refused).
pub fn read_adapter(dir: &Path) -> Result<Adapter> {
    let config = read_config(dir)?;
    let cfg_path = dir.join(ADAPTER_CONFIG);
    if !config.peft_type.eq_ignore_ascii_case("LORA") {
        return Err(FormatError::Unsupported(format!(
            "{}: peft_type {} is not supported (only LORA)",
            cfg_path.display(),
            config.peft_type
        )));
    }
    if config.use_dora {
        return Err(FormatError::Unsupported(format!(
            "{}: DoRA adapters (use_dora) cannot be merged yet",
            cfg_path.display()
        )));
    }
    read_weights(dir, config)
}

/// The adapter weights file of `dir`: `adapter_model.safetensors`, else `adapter_model.bin`
/// when only that exists (the safetensors path when neither does).
pub fn weights_file(dir: &Path) -> PathBuf {
    let st = dir.join(ADAPTER_WEIGHTS);
    let bin = dir.join(ADAPTER_WEIGHTS_BIN);
    if !st.is_file() && bin.is_file() {
        bin
    } else {
        st
    }
}

/// The tensors of a weights file in either format (`.bin`: PyTorch's zip, else safetensors).
pub fn read_any(path: &Path) -> Result<Tensors> {
    if path.extension().is_some_and(|e| e == "bin") {
        super::torch_bin::read_file(path)
    } else {
        read_file(path)
    }
}

/// Read `adapter_model.safetensors` of `dir` (whose config is `config`), or the
/// `adapter_model.bin` older peft versions save, sorted into LoRA pairs (ranks checked against
/// the config) and whole tensors.
pub fn read_weights(dir: &Path, config: AdapterConfig) -> Result<Adapter> {
    let weights = weights_file(dir);
    if !weights.is_file() {
        return Err(FormatError::format(
            dir,
            format!("no {ADAPTER_WEIGHTS} (nor {ADAPTER_WEIGHTS_BIN})"),
        ));
    }
    let tensors = read_any(&weights)?;

    // module -> (A, B, bias, embedding)
    let mut pairs: IndexMap<String, [Option<Tensor>; 3]> = IndexMap::new();
    let mut embedding = std::collections::HashSet::new();
    let mut replace = Tensors::new();
    for (key, t) in tensors {
        let name = key.strip_prefix(PREFIX).unwrap_or(&key);
        let bad = |msg: &str| FormatError::format(&weights, format!("tensor `{key}`: {msg}"));
        let lora_part = [
            (".lora_A.weight", 0, false),
            (".lora_B.weight", 1, false),
            (".lora_B.bias", 2, false),
            (".lora_embedding_A", 0, true),
            (".lora_embedding_B", 1, true),
        ]
        .into_iter()
        .find_map(|(suffix, slot, emb)| name.strip_suffix(suffix).map(|m| (m, slot, emb)));
        if let Some((module, slot, emb)) = lora_part {
            if emb {
                embedding.insert(module.to_string());
            }
            if !t.is_float() {
                return Err(bad("LoRA weights must be float"));
            }
            pairs.entry(module.to_string()).or_default()[slot] = Some(t);
        } else if name.contains("lora_magnitude_vector") {
            return Err(FormatError::Unsupported(format!(
                "{}: `{key}`: DoRA adapters cannot be merged yet",
                weights.display()
            )));
        } else if name.contains(".lora_") {
            return Err(bad("unknown LoRA tensor (expected lora_A/lora_B weights)"));
        } else {
            // A whole tensor for the base: strip the wrappers PEFT may leave in its name.
            let base_name = name
                .replace(".modules_to_save.default.", ".")
                .replace(".modules_to_save.", ".")
                .replace(".base_layer.", ".");
            replace.insert(base_name, t);
        }
    }

    let mut lora = Vec::new();
    for (module, [a, b, bias]) in pairs {
        let missing =
            |what: &str| FormatError::format(&weights, format!("module `{module}` has no {what}"));
        let a = a.ok_or_else(|| missing("lora_A"))?;
        let b = b.ok_or_else(|| missing("lora_B"))?;
        if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[0] != b.shape[1] {
            return Err(FormatError::mismatch(
                &module,
                format!(
                    "lora_A is {:?} and lora_B is {:?}: expected [r, d_in] and [d_out, r]",
                    a.shape, b.shape
                ),
            ));
        }
        let r = a.shape[0];
        let want_r = config.rank_for(&module)?;
        if r != want_r {
            return Err(FormatError::mismatch(
                &module,
                format!("lora_A has rank {r} but adapter_config gives r = {want_r}"),
            ));
        }
        let scale = config.scale_for(&module, r)?;
        let embedding = embedding.contains(&module);
        lora.push(LoraModule {
            module,
            a,
            b,
            bias,
            embedding,
            r,
            scale,
        });
    }
    Ok(Adapter {
        dir: dir.to_path_buf(),
        config,
        lora,
        replace,
    })
}

/// The saved name of a module's tensor: `base_model.model.<module>.<part>`.
pub fn key(module: &str, part: &str) -> String {
    format!("{PREFIX}{module}.{part}")
}

/// What [`write_adapter`] records in `adapter_config.json` (a LoRA adapter for causal LM).
#[derive(Debug, Clone)]
pub struct NewAdapter<'a> {
    pub r: usize,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    /// A list of module names, or one regex string.
    pub target_modules: serde_json::Value,
    pub fan_in_fan_out: bool,
    pub use_rslora: bool,
    pub modules_to_save: &'a [String],
    pub base_model_name_or_path: &'a str,
}

impl NewAdapter<'_> {
    /// `adapter_config.json` as PEFT writes it (an integral alpha as an integer).
    pub fn config_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let alpha = self.lora_alpha;
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": if alpha.fract() == 0.0 { json!(alpha as i64) } else { json!(alpha) },
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": self.fan_in_fan_out,
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "modules_to_save": if self.modules_to_save.is_empty() { Value::Null } else { json!(self.modules_to_save) },
            "base_model_name_or_path": self.base_model_name_or_path,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }
}

/// Writes `dir/adapter_model.safetensors` (f32 tensors under their saved names, see [`key`])
/// and `dir/adapter_config.json`.
pub fn write_adapter(
    dir: &Path,
    adapter: &NewAdapter,
    tensors: &[(String, Vec<usize>, &[f32])],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| FormatError::format(dir, e.to_string()))?;
    write_f32(&dir.join(ADAPTER_WEIGHTS), tensors)?;
    let p = dir.join(ADAPTER_CONFIG);
    let text = serde_json::to_string_pretty(&adapter.config_json()).unwrap_or_default();
    std::fs::write(&p, text).map_err(|e| FormatError::format(&p, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testutil::fixture;

    #[test]
    fn reads_rslora_patterns_embedding_and_saved_layers() {
        let ad = read_adapter(&fixture("llama_rs/adapter")).unwrap();
        assert!(ad.config.use_rslora);
        let by = |m: &str| ad.lora.iter().find(|l| l.module == m).unwrap();
        // q_proj: rank_pattern 2, alpha 8 -> 8/sqrt(2); v_proj: alpha_pattern 16, r 4 -> 8.
        assert_eq!(by("model.layers.0.self_attn.q_proj").r, 2);
        assert_eq!(
            by("model.layers.1.self_attn.q_proj").scale,
            (8.0 / 2f64.sqrt()) as f32
        );
        assert_eq!(by("model.layers.0.self_attn.v_proj").scale, 8.0);
        let emb = by("model.embed_tokens");
        assert!(emb.embedding);
        assert_eq!(
            (emb.scale, emb.a.shape.clone(), emb.b.shape.clone()),
            (4.0, vec![4, 48], vec![16, 4])
        );
        assert_eq!(ad.lora.len(), 5);
        assert_eq!(
            ad.replace.keys().collect::<Vec<_>>(),
            vec!["model.embed_tokens.weight"]
        );
    }

    #[test]
    fn reads_modules_to_save_and_fan_in_fan_out() {
        let ad = read_adapter(&fixture("bloom/adapter")).unwrap();
        assert_eq!(ad.config.modules_to_save, vec!["word_embeddings"]);
        assert_eq!(
            ad.replace.keys().collect::<Vec<_>>(),
            vec!["transformer.word_embeddings.weight"]
        );
        assert_eq!(ad.lora[0].scale, 2.0);
        let ad = read_adapter(&fixture("gpt2/adapter")).unwrap();
        assert!(ad.config.fan_in_fan_out);
        assert_eq!(ad.lora[0].module, "transformer.h.0.attn.c_attn");
        assert_eq!(ad.lora[0].scale, 4.0);
    }

    #[test]
    fn missing_or_bin_adapter_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_adapter(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("no adapter_config.json: not a PEFT adapter dir"),
            "{e}"
        );
        std::fs::copy(
            fixture("llama/adapter/adapter_config.json"),
            dir.path().join(ADAPTER_CONFIG),
        )
        .unwrap();
        let e = read_adapter(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("no adapter_model.safetensors (nor adapter_model.bin)"),
            "{e}"
        );
        std::fs::write(dir.path().join("adapter_model.bin"), b"x").unwrap();
        let e = read_adapter(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "adapter_model.bin: not a zip file (no end of central directory): a truncated \
                 download?"
            ),
            "{e}"
        );
    }

    /// An adapter saved by peft < 0.7 (`adapter_model.bin`, torch.save's zip) reads as the same
    /// adapter as its safetensors copy (tests/reference/torch_bin_make_fixtures.py).
    #[test]
    fn bin_adapter_reads_as_its_safetensors_copy() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let bin = read_adapter(&root.join("torch_bin/adapter")).unwrap();
        let st = read_adapter(&root.join("engine/llama/adapter")).unwrap();
        assert_eq!(format!("{:?}", bin.config), format!("{:?}", st.config));
        assert_eq!(bin.lora.len(), st.lora.len());
        assert!(!bin.lora.is_empty());
        for (b, s) in bin.lora.iter().zip(&st.lora) {
            assert_eq!((&b.module, b.r, b.scale), (&s.module, s.r, s.scale));
            assert_eq!(b.a.bytes(), s.a.bytes(), "{} A", b.module);
            assert_eq!(b.b.bytes(), s.b.bytes(), "{} B", b.module);
        }
        assert_eq!(bin.replace.len(), st.replace.len());
    }
}
