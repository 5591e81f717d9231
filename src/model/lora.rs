//! LoRA adapters: target matching as PEFT does it (module-name suffixes, a full regex, or
//! `all-linear`), PEFT-style init from a seed, `modules_to_save`, and a model's adapters to and
//! from a PEFT adapter dir ([`save_peft`], [`load_peft`]: which tensors of the `Model` go
//! where; the files themselves are read and written by `crate::formats::peft`).

use crate::formats::peft::{
    key, read_config, read_weights, weights_file, write_adapter, LoraModule, NewAdapter,
    ADAPTER_CONFIG, PREFIX,
};
use crate::formats::{FormatError, Tensor};
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
    Load(#[from] FormatError),
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

/// Attaches fresh adapters to every target linear (A kaiming-uniform, bound 1/√d_in; B = 0) and
/// makes `modules_to_save` fully trainable. Returns the adapted module names.
pub fn apply(model: &mut Model, cfg: &LoraConfig) -> Result<Vec<String>, LoraError> {
    if !(1..=MAX_RANK).contains(&cfg.r) {
        return Err(LoraError::Rank { r: cfg.r });
    }
    let re = cfg.targets.compile()?;
    let mut rng = crate::rng::SplitMix64(cfg.seed);
    let s = cfg.scale();
    let head_name = model.head.as_ref().map(|h| h.name.clone());
    let be = model.backend.clone();
    let mut adapted = Vec::new();
    let mut all = Vec::new();
    for l in model.linears_mut() {
        all.push(l.name.clone());
        if Some(&l.name) == head_name.as_ref() || !cfg.targets.matches(&l.name, re.as_ref()) {
            continue;
        }
        let bound = 1.0 / (l.d_in as f32).sqrt();
        let a: Vec<f32> = (0..cfg.r * l.d_in).map(|_| rng.uniform() * bound).collect();
        let b = vec![0.0; l.d_out * cfg.r];
        let mut lw = LoraWeights::new(&*be, cfg.r, s, &a, &b, l.d_in, l.d_out);
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
    let be = model.backend.clone();
    let be = &*be;
    if hit(&model.emb_name) {
        model.emb.set_trainable(be);
    }
    for n in model.norms_mut() {
        if hit(&n.name) {
            n.w.set_trainable(be);
            if let Some(b) = &mut n.b {
                b.set_trainable(be);
            }
        }
    }
    for l in model.linears_mut() {
        if hit(&l.name) {
            l.set_trainable(be).map_err(ModelError::Train)?;
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

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` in PEFT's format
/// (`formats::peft`): every adapter, and the trained modules_to_save whole.
pub fn save_peft(
    model: &Model,
    cfg: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<(), LoraError> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let be = &*model.backend;
    let hit = |n: &str| cfg.modules_to_save.iter().any(|t| n.ends_with(t.as_str()));
    if model.emb.grad.is_some() && hit(&model.emb_name) {
        tensors.push((
            key(&model.emb_name, "weight"),
            vec![model.arch.vocab, model.arch.hidden],
            be.download(&model.emb.value),
        ));
    }
    let layers = model.layers.iter().flat_map(|l| l.linears());
    for l in layers.chain(model.head.iter()) {
        if let Some(lw) = &l.lora {
            tensors.push((
                key(&l.name, "lora_A.weight"),
                vec![lw.r, l.d_in],
                be.download(&lw.a),
            ));
            tensors.push((
                key(&l.name, "lora_B.weight"),
                vec![l.d_out, lw.r],
                be.download(&lw.b),
            ));
        }
        if l.grad_w.is_some() && hit(&l.name) {
            if let LinearWeight::Dense(w) = &l.weight {
                let w = be.download(w);
                if l.conv1d {
                    let t = crate::util::transpose(&w, l.d_out, l.d_in);
                    tensors.push((key(&l.name, "weight"), vec![l.d_in, l.d_out], t));
                } else {
                    tensors.push((key(&l.name, "weight"), vec![l.d_out, l.d_in], w));
                }
            }
            if let Some(b) = &l.bias {
                tensors.push((key(&l.name, "bias"), vec![l.d_out], be.download(b)));
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
                key(&n.name, "weight"),
                vec![n.w.value.len()],
                be.download(&n.w.value),
            ));
            if let Some(b) = &n.b {
                tensors.push((
                    key(&n.name, "bias"),
                    vec![b.value.len()],
                    be.download(&b.value),
                ));
            }
        }
    }
    let views: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), &d[..]))
        .collect();
    let target_modules = match &cfg.targets {
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
    let adapter = NewAdapter {
        r: cfg.r,
        lora_alpha: cfg.alpha,
        lora_dropout: cfg.dropout,
        target_modules,
        fan_in_fan_out: model.arch.conv1d,
        use_rslora: cfg.use_rslora,
        modules_to_save: &cfg.modules_to_save,
        base_model_name_or_path: base_model,
    };
    write_adapter(dir, &adapter, &views)?;
    Ok(())
}

/// Reads a PEFT adapter directory (`formats::peft`), attaches its adapters (and
/// modules_to_save weights) to `model` and returns its config. The adapters are trainable
/// (gradients allocated). Config options this engine cannot train are refused before any
/// tensor is read; every tensor of the file must land on a module of `model`.
pub fn load_peft(model: &mut Model, dir: &Path) -> Result<LoraConfig, LoraError> {
    let p = dir.join(ADAPTER_CONFIG);
    let c = read_config(dir)?;
    let key_err = |k: &str, m: &str| ferr(&p, format!("key \"{k}\": {m}"));
    if c.peft_type != "LORA" {
        return Err(key_err("peft_type", "expected \"LORA\""));
    }
    if c.use_dora {
        return Err(key_err("use_dora", "DoRA is not supported"));
    }
    // Options that would change the math silently if ignored.
    if !c.rank_pattern.is_empty() {
        return Err(key_err(
            "rank_pattern",
            "per-module ranks/alphas are not supported",
        ));
    }
    if !c.alpha_pattern.is_empty() {
        return Err(key_err(
            "alpha_pattern",
            "per-module ranks/alphas are not supported",
        ));
    }
    if !c.layers_to_transform.is_null() {
        return Err(key_err("layers_to_transform", "is not supported"));
    }
    if c.bias != "none" || c.lora_bias {
        return Err(key_err("bias", "only \"none\" is supported"));
    }
    let r = c.r;
    if !(1..=MAX_RANK).contains(&r) {
        return Err(key_err("r", &format!("{r} is not in 1..={MAX_RANK}")));
    }
    let targets = match &c.target_modules {
        Value::String(s) if s == "all-linear" => Targets::AllLinear,
        Value::String(s) => Targets::Regex(s.clone()),
        Value::Array(a) => Targets::Names(
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        ),
        _ => return Err(key_err("target_modules", "expected a string or a list")),
    };
    let cfg = LoraConfig {
        r,
        alpha: c.lora_alpha as f32,
        dropout: c.lora_dropout as f32,
        targets,
        use_rslora: c.use_rslora,
        modules_to_save: c.modules_to_save.clone(),
        seed: 0,
    };
    let ad = read_weights(dir, c)?;
    let wp = weights_file(dir);
    let mut lora: indexmap::IndexMap<String, LoraModule> =
        ad.lora.into_iter().map(|m| (m.module.clone(), m)).collect();
    let mut replace = ad.replace;
    let s = cfg.scale();
    // The values of a saved tensor of `shape` (`name` as saved, for messages).
    let values = |name: String, t: &Tensor, shape: &[usize]| -> Result<Vec<f32>, LoraError> {
        if t.shape != shape {
            return Err(ferr(
                &wp,
                format!(
                    "tensor \"{name}\": expected shape {shape:?}, got {:?}",
                    t.shape
                ),
            ));
        }
        Ok(t.to_f32()?)
    };
    let mut take = |module: &str, part: &str, shape: &[usize]| {
        let name = format!("{module}.{part}");
        match replace.shift_remove(&name) {
            Some(t) => values(key(module, part), &t, shape).map(Some),
            None => Ok(None),
        }
    };
    let (v, h) = (model.arch.vocab, model.arch.hidden);
    let emb_name = model.emb_name.clone();
    let be = model.backend.clone();
    let be = &*be;
    if let Some(w) = take(&emb_name, "weight", &[v, h])? {
        model.emb.value = be.upload(&w);
        model.emb.set_trainable(be);
    }
    for l in model.linears_mut() {
        if let Some(m) = lora
            .get(&l.name)
            .filter(|m| !m.embedding && m.bias.is_none())
        {
            let a = values(key(&l.name, "lora_A.weight"), &m.a, &[r, l.d_in])?;
            let b = values(key(&l.name, "lora_B.weight"), &m.b, &[l.d_out, r])?;
            lora.shift_remove(&l.name);
            let mut lw = LoraWeights::new(be, r, s, &a, &b, l.d_in, l.d_out);
            lw.dropout = cfg.dropout;
            l.lora = Some(lw);
        }
        let shape = if l.conv1d {
            [l.d_in, l.d_out]
        } else {
            [l.d_out, l.d_in]
        };
        if let Some(w) = take(&l.name, "weight", &shape)? {
            let w = if l.conv1d {
                crate::util::transpose(&w, l.d_in, l.d_out)
            } else {
                w
            };
            l.weight = LinearWeight::Dense(be.upload(&w));
            if let Some(b) = take(&l.name, "bias", &[l.d_out])? {
                l.bias = Some(be.upload(&b));
            }
            l.set_trainable(be).map_err(ModelError::Train)?;
        }
    }
    for n in model.norms_mut() {
        let d = n.w.value.len();
        if let Some(w) = take(&n.name, "weight", &[d])? {
            n.w.value = be.upload(&w);
            n.w.set_trainable(be);
            if let (Some(b), Some(bv)) = (&mut n.b, take(&n.name, "bias", &[d])?) {
                b.value = be.upload(&bv);
                b.set_trainable(be);
            }
        }
    }
    let left = lora
        .values()
        .map(|m| {
            let part = match (m.embedding, m.bias.is_some()) {
                (true, _) => "lora_embedding_A",
                (false, true) => "lora_B.bias",
                (false, false) => "lora_A.weight",
            };
            key(&m.module, part)
        })
        .chain(replace.keys().map(|n| format!("{PREFIX}{n}")))
        .next();
    if let Some(left) = left {
        return Err(ferr(
            &wp,
            format!("tensor \"{left}\" matches no module of this model"),
        ));
    }
    Ok(cfg)
}

/// Merges every adapter into its dense base weight (W += s·B·A; a 16-bit base is widened to
/// f32 first) and removes the adapters.
pub fn merge(model: &mut Model) -> Result<(), LoraError> {
    let be = model.backend.clone();
    for l in model.linears_mut() {
        if let Some(lw) = l.lora.take() {
            if let LinearWeight::Quant(q) = &l.weight {
                if let Some(w) = be.quant_dense(q) {
                    l.weight = LinearWeight::Dense(w);
                }
            }
            match &mut l.weight {
                LinearWeight::Dense(w) => {
                    // Once per export: on the host, in the reference's order.
                    let mut host = be.download(w);
                    let (b, a) = (be.download(&lw.b), be.download(&lw.a));
                    model_matmul_acc(&mut host, &b, &a, l.d_out, l.d_in, lw.r, lw.scale);
                    *w = be.upload(&host);
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
