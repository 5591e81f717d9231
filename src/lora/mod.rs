//! LoRA adapters: target matching as PEFT does it (module-name suffixes, a full regex, or
//! `all-linear`), PEFT-style init from a seed, `modules_to_save`, and PEFT adapter read/write
//! (adapter_config.json + adapter_model.safetensors, keys `base_model.model.<module>.lora_A.weight`).

use crate::model::load::{read_all, write_f32, LoadError};
use crate::model::{LinearWeight, LoraWeights, Model, ModelError};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("target_modules: regex {pattern:?}: {msg}")]
    Regex { pattern: String, msg: String },
    #[error(
        "target_modules {targets}: matches no linear layer of this model (first names: {examples})"
    )]
    NoMatch { targets: String, examples: String },
    #[error("r = {r}: LoRA rank must be in 1..={MAX_RANK}")]
    Rank { r: usize },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The largest LoRA rank accepted (recipes are checked against it at plan
/// time; `apply` checks again before allocating r × d floats).
pub const MAX_RANK: usize = 4096;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Targets {
    /// PEFT list: a module matches when its name equals an entry or ends with "." + entry.
    Names(Vec<String>),
    /// PEFT string: re.fullmatch against the full module name.
    Regex(String),
    /// Every linear layer except the output head.
    AllLinear,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    /// Dropout on the LoRA input during `forward_backward` (seeded by `TrainOptions::dropout_seed`).
    pub dropout: f32,
    pub targets: Targets,
    pub use_rslora: bool,
    /// Modules trained fully and saved whole (matched by name suffix, as PEFT).
    pub modules_to_save: Vec<String>,
    /// Seed for the A initialisation.
    pub seed: u64,
}

impl LoraConfig {
    /// s = alpha/r, or alpha/√r with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }
}

impl Targets {
    /// What a train step's keys ask for: `target_regex`, else `target_modules` ("all-linear"
    /// anywhere: every linear), else the family's PEFT default (`Family::default_targets`).
    /// The memory plan builds the same targets, so it counts the adapters training attaches.
    pub fn from_keys(
        target_modules: Vec<String>,
        target_regex: Option<&str>,
        family: crate::model::Family,
    ) -> Targets {
        if let Some(re) = target_regex {
            Targets::Regex(re.to_string())
        } else if target_modules.iter().any(|n| n == "all-linear") {
            Targets::AllLinear
        } else if target_modules.is_empty() {
            Targets::Names(
                family
                    .default_targets()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        } else {
            Targets::Names(target_modules)
        }
    }

    /// Whether the module `name` is a LoRA target (PEFT semantics).
    pub fn matches(&self, name: &str, re: Option<&regex::Regex>) -> bool {
        match self {
            Targets::Names(v) => v
                .iter()
                .any(|t| name == t || name.ends_with(&format!(".{t}"))),
            Targets::Regex(_) => re.is_some_and(|r| r.is_match(name)),
            Targets::AllLinear => true,
        }
    }
    /// The compiled full-match regex of `Regex` targets (what `matches` takes).
    pub fn compile(&self) -> Result<Option<regex::Regex>, LoraError> {
        match self {
            Targets::Regex(p) => regex::Regex::new(&format!("^(?:{p})$"))
                .map(Some)
                .map_err(|e| LoraError::Regex {
                    pattern: p.clone(),
                    msg: e.to_string(),
                }),
            _ => Ok(None),
        }
    }
}

/// The seeded generator for LoRA init (crate::rng).
pub use crate::rng::SplitMix64 as SplitMix;

/// Attaches fresh adapters to every target linear (A kaiming-uniform, bound 1/√d_in; B = 0) and
/// makes `modules_to_save` fully trainable. Returns the adapted module names.
pub fn apply(model: &mut Model, cfg: &LoraConfig) -> Result<Vec<String>, LoraError> {
    if !(1..=MAX_RANK).contains(&cfg.r) {
        return Err(LoraError::Rank { r: cfg.r });
    }
    let re = cfg.targets.compile()?;
    let mut rng = SplitMix(cfg.seed);
    let s = cfg.scale();
    let head_name = model.head.as_ref().map(|h| h.name.clone());
    let mut adapted = Vec::new();
    let mut all = Vec::new();
    for l in model.linears_mut() {
        all.push(l.name.clone());
        if Some(&l.name) == head_name.as_ref() || !cfg.targets.matches(&l.name, re.as_ref()) {
            continue;
        }
        let bound = 1.0 / (l.d_in as f32).sqrt();
        let a = (0..cfg.r * l.d_in).map(|_| rng.uniform() * bound).collect();
        let mut lw = LoraWeights::new(cfg.r, s, a, vec![0.0; l.d_out * cfg.r], l.d_in, l.d_out);
        lw.dropout = cfg.dropout;
        l.lora = Some(lw);
        adapted.push(l.name.clone());
    }
    if adapted.is_empty() {
        return Err(LoraError::NoMatch {
            targets: format!("{:?}", cfg.targets),
            examples: all.iter().take(4).cloned().collect::<Vec<_>>().join(", "),
        });
    }
    set_modules_to_save(model, &cfg.modules_to_save)?;
    Ok(adapted)
}

/// Makes the modules whose names end with one of `names` fully trainable.
pub fn set_modules_to_save(model: &mut Model, names: &[String]) -> Result<(), LoraError> {
    let hit = |n: &str| names.iter().any(|t| n.ends_with(t.as_str()));
    if hit(&model.emb_name) {
        model.emb.set_trainable();
    }
    for n in model.norms_mut() {
        if hit(&n.name) {
            n.w.set_trainable();
            if let Some(b) = &mut n.b {
                b.set_trainable();
            }
        }
    }
    for l in model.linears_mut() {
        if hit(&l.name) {
            l.set_trainable().map_err(ModelError::Train)?;
        }
    }
    Ok(())
}

fn ferr(p: &Path, msg: impl std::fmt::Display) -> LoraError {
    LoraError::File {
        path: p.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` in PEFT's format.
pub fn save_peft(
    model: &Model,
    cfg: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<(), LoraError> {
    std::fs::create_dir_all(dir).map_err(|e| ferr(dir, e))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let fan_in_fan_out = model.arch.conv1d;
    let hit = |n: &str| cfg.modules_to_save.iter().any(|t| n.ends_with(t.as_str()));
    let k = |n: &str, s: &str| format!("base_model.model.{n}.{s}");
    if model.emb.grad.is_some() && hit(&model.emb_name) {
        tensors.push((
            k(&model.emb_name, "weight"),
            vec![model.arch.vocab, model.arch.hidden],
            model.emb.value.clone(),
        ));
    }
    let layers = model.layers.iter().flat_map(|l| l.linears());
    for l in layers.chain(model.head.iter()) {
        if let Some(lw) = &l.lora {
            tensors.push((
                k(&l.name, "lora_A.weight"),
                vec![lw.r, l.d_in],
                lw.a.clone(),
            ));
            tensors.push((
                k(&l.name, "lora_B.weight"),
                vec![l.d_out, lw.r],
                lw.b.clone(),
            ));
        }
        if l.grad_w.is_some() && hit(&l.name) {
            if let LinearWeight::Dense(w) = &l.weight {
                if l.conv1d {
                    let mut t = vec![0.0; w.len()];
                    for o in 0..l.d_out {
                        for i in 0..l.d_in {
                            t[i * l.d_out + o] = w[o * l.d_in + i];
                        }
                    }
                    tensors.push((k(&l.name, "weight"), vec![l.d_in, l.d_out], t));
                } else {
                    tensors.push((k(&l.name, "weight"), vec![l.d_out, l.d_in], w.clone()));
                }
            }
            if let Some(b) = &l.bias {
                tensors.push((k(&l.name, "bias"), vec![l.d_out], b.clone()));
            }
        }
    }
    let mut norms: Vec<&crate::model::Norm> = model.emb_norm.iter().collect();
    for l in &model.layers {
        norms.push(&l.ln1);
        norms.push(&l.ln2);
    }
    norms.push(&model.final_norm);
    for n in norms {
        if n.w.grad.is_some() && hit(&n.name) {
            tensors.push((
                k(&n.name, "weight"),
                vec![n.w.value.len()],
                n.w.value.clone(),
            ));
            if let Some(b) = &n.b {
                tensors.push((k(&n.name, "bias"), vec![b.value.len()], b.value.clone()));
            }
        }
    }
    let views: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), &d[..]))
        .collect();
    write_f32(&dir.join("adapter_model.safetensors"), &views)?;
    let targets = match &cfg.targets {
        Targets::Names(v) => json!(v),
        Targets::Regex(r) => json!(r),
        Targets::AllLinear => {
            let mut v: Vec<String> = model
                .layers
                .iter()
                .flat_map(|l| l.linears())
                .filter(|l| l.lora.is_some())
                .map(|l| l.name.clone())
                .collect();
            v.dedup();
            json!(v)
        }
    };
    let c = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.r,
        "lora_alpha": if cfg.alpha.fract() == 0.0 { json!(cfg.alpha as i64) } else { json!(cfg.alpha) },
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "modules_to_save": if cfg.modules_to_save.is_empty() { Value::Null } else { json!(cfg.modules_to_save) },
        "base_model_name_or_path": base_model,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let p = dir.join("adapter_config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap_or_default())
        .map_err(|e| ferr(&p, e))?;
    Ok(())
}

/// Reads a PEFT adapter directory, attaches its adapters (and modules_to_save weights) to `model`
/// and returns its config. The adapters are trainable (gradients allocated).
pub fn load_peft(model: &mut Model, dir: &Path) -> Result<LoraConfig, LoraError> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| ferr(&p, e))?;
    let c: Value = serde_json::from_str(&text).map_err(|e| ferr(&p, e))?;
    let key_err = |k: &str, m: &str| ferr(&p, format!("key \"{k}\": {m}"));
    if c.get("peft_type").and_then(|v| v.as_str()) != Some("LORA") {
        return Err(key_err("peft_type", "expected \"LORA\""));
    }
    if c.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        return Err(key_err("use_dora", "DoRA is not supported"));
    }
    // Options that would change the math silently if ignored.
    for k in ["rank_pattern", "alpha_pattern"] {
        if c.get(k)
            .and_then(|v| v.as_object())
            .is_some_and(|m| !m.is_empty())
        {
            return Err(key_err(k, "per-module ranks/alphas are not supported"));
        }
    }
    if c.get("layers_to_transform").is_some_and(|v| !v.is_null()) {
        return Err(key_err("layers_to_transform", "is not supported"));
    }
    if c.get("bias")
        .and_then(|v| v.as_str())
        .is_some_and(|b| b != "none")
        || c.get("lora_bias").and_then(|v| v.as_bool()) == Some(true)
    {
        return Err(key_err("bias", "only \"none\" is supported"));
    }
    let r = c
        .get("r")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| key_err("r", "expected an integer"))?;
    if !(1..=MAX_RANK as u64).contains(&r) {
        return Err(key_err("r", &format!("{r} is not in 1..={MAX_RANK}")));
    }
    let r = r as usize;
    let alpha = c
        .get("lora_alpha")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| key_err("lora_alpha", "expected a number"))? as f32;
    let targets = match c.get("target_modules") {
        Some(Value::String(s)) if s == "all-linear" => Targets::AllLinear,
        Some(Value::String(s)) => Targets::Regex(s.clone()),
        Some(Value::Array(a)) => Targets::Names(
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        ),
        _ => return Err(key_err("target_modules", "expected a string or a list")),
    };
    let strs = |k: &str| -> Vec<String> {
        c.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cfg = LoraConfig {
        r,
        alpha,
        dropout: c
            .get("lora_dropout")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0) as f32,
        targets,
        use_rslora: c
            .get("use_rslora")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        modules_to_save: strs("modules_to_save"),
        seed: 0,
    };
    let wp = dir.join("adapter_model.safetensors");
    let mut t = read_all(&wp)?;
    let s = cfg.scale();
    let mut take = |name: &str, shape: &[usize]| -> Result<Option<Vec<f32>>, LoraError> {
        match t.remove(name) {
            Some((v, sh)) if sh == shape => Ok(Some(v)),
            Some((_, sh)) => Err(ferr(
                &wp,
                format!("tensor \"{name}\": expected shape {shape:?}, got {sh:?}"),
            )),
            None => Ok(None),
        }
    };
    let k = |n: &str, s: &str| format!("base_model.model.{n}.{s}");
    let (v, h) = (model.arch.vocab, model.arch.hidden);
    let emb_name = model.emb_name.clone();
    if let Some(w) = take(&k(&emb_name, "weight"), &[v, h])? {
        model.emb.value = w;
        model.emb.set_trainable();
    }
    for l in model.linears_mut() {
        let a = take(&k(&l.name, "lora_A.weight"), &[r, l.d_in])?;
        let b = take(&k(&l.name, "lora_B.weight"), &[l.d_out, r])?;
        if let (Some(a), Some(b)) = (a, b) {
            let mut lw = LoraWeights::new(r, s, a, b, l.d_in, l.d_out);
            lw.dropout = cfg.dropout;
            l.lora = Some(lw);
        }
        let shape = if l.conv1d {
            [l.d_in, l.d_out]
        } else {
            [l.d_out, l.d_in]
        };
        if let Some(w) = take(&k(&l.name, "weight"), &shape)? {
            let w = if l.conv1d {
                let mut o = vec![0.0; w.len()];
                for i in 0..l.d_in {
                    for j in 0..l.d_out {
                        o[j * l.d_in + i] = w[i * l.d_out + j];
                    }
                }
                o
            } else {
                w
            };
            l.weight = LinearWeight::Dense(w);
            if let Some(b) = take(&k(&l.name, "bias"), &[l.d_out])? {
                l.bias = Some(b);
            }
            l.set_trainable().map_err(ModelError::Train)?;
        }
    }
    for n in model.norms_mut() {
        let d = n.w.value.len();
        if let Some(w) = take(&k(&n.name, "weight"), &[d])? {
            n.w.value = w;
            n.w.set_trainable();
            if let (Some(b), Some(bv)) = (&mut n.b, take(&k(&n.name, "bias"), &[d])?) {
                b.value = bv;
                b.set_trainable();
            }
        }
    }
    if let Some(left) = t.keys().next() {
        return Err(ferr(
            &wp,
            format!("tensor \"{left}\" matches no module of this model"),
        ));
    }
    Ok(cfg)
}

/// Merges every adapter into its dense base weight (W += s·B·A) and removes the adapters.
pub fn merge(model: &mut Model) -> Result<(), LoraError> {
    for l in model.linears_mut() {
        if let Some(lw) = l.lora.take() {
            match &mut l.weight {
                LinearWeight::Dense(w) => {
                    model_matmul_acc(w, &lw.b, &lw.a, l.d_out, l.d_in, lw.r, lw.scale)
                }
                LinearWeight::Quant(_) => {
                    return Err(ModelError::Train(format!(
                        "{}: cannot merge into a quantized weight",
                        l.name
                    ))
                    .into())
                }
            }
        }
    }
    Ok(())
}

/// w[m,n] += s·b[m,k]·a[k,n]
fn model_matmul_acc(w: &mut [f32], b: &[f32], a: &[f32], m: usize, n: usize, k: usize, s: f32) {
    for i in 0..m {
        for p in 0..k {
            let bv = s * b[i * k + p];
            for j in 0..n {
                w[i * n + j] += bv * a[p * n + j];
            }
        }
    }
}
