//! `train`: LoRA (or full) fine-tuning with AdamW / 8-bit AdamW, schedules,
//! accumulation, clipping, eval, checkpoints and resume.

use super::{def, io, opt, req, CheckCtx, Estimate, EstimateCtx, Kind, ParamSpec, RunCtx, Ty};
use crate::model::lora::{LoraConfig, Targets};
use crate::train::batch::PadSide;
use crate::train::engine::{EngineModel, EngineOptim, Saved, TokenSamples};
use crate::train::{SaveStrategy, TrainConfig, TrainIo};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub struct Train;

/// The keys of a `train` step. Integers whose range `check` reports with its own message
/// (`r`, `batch_size`, `gradient_accumulation_steps`, `max_steps`) are read as i64.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    pub model: String,
    pub data: String,
    pub eval_data: Option<String>,
    pub method: Method,
    pub r: i64,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    #[serde(default, deserialize_with = "str_or_list")]
    pub target_modules: Option<Vec<String>>,
    pub target_regex: Option<String>,
    pub use_rslora: bool,
    pub modules_to_save: Option<Vec<String>>,
    pub init_adapter: Option<PathBuf>,
    pub optim: String,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub lr_scheduler: String,
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub num_epochs: f64,
    /// −1 = use `num_epochs`.
    pub max_steps: i64,
    pub batch_size: i64,
    pub gradient_accumulation_steps: i64,
    pub gradient_checkpointing: bool,
    pub group_by_length: bool,
    pub seed: u64,
    pub logging_steps: usize,
    pub eval_steps: Option<usize>,
    pub save_strategy: SaveKey,
    pub save_steps: usize,
    pub save_total_limit: Option<usize>,
    pub device: String,
    pub dtype: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Lora,
    Full,
}

/// `save_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveKey {
    No,
    Steps,
    Epoch,
}

/// A string or a list of strings, as a list.
fn str_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

pub static OPTIMS: &[&str] = &["adamw", "adamw_8bit", "paged_adamw_8bit"];
pub static SCHEDULES: &[&str] = &["constant", "constant_with_warmup", "linear", "cosine"];

static PARAMS: &[ParamSpec] = &[
    req(
        "model",
        Ty::Step(&["load.model", "quantize"]),
        "frozen base: a load.model or quantize step",
    ),
    req(
        "data",
        Ty::Step(&["tokenize"]),
        "training data: a tokenize step",
    ),
    opt(
        "eval_data",
        Ty::Step(&["tokenize"]),
        "evaluation data (default: the test split of `data`, if any)",
    ),
    def(
        "method",
        Ty::Enum(&["lora", "full"]),
        "\"lora\"",
        "lora adapters, or full fine-tuning",
    ),
    // LoRA
    def("r", Ty::Int, "8", "LoRA rank"),
    def(
        "lora_alpha",
        Ty::Float,
        "16",
        "LoRA scale numerator: s = alpha / r (alpha / sqrt(r) with rsLoRA)",
    ),
    def(
        "lora_dropout",
        Ty::Float,
        "0.0",
        "dropout on the LoRA input",
    ),
    opt(
        "target_modules",
        Ty::StrOrList,
        "module names, or \"all-linear\" (default: the family's PEFT default)",
    ),
    opt(
        "target_regex",
        Ty::Str,
        "a full-match regex over module names, e.g. '.*\\.1.*query_key_value'",
    ),
    def(
        "use_rslora",
        Ty::Bool,
        "false",
        "rank-stabilised scale alpha / sqrt(r)",
    ),
    opt(
        "modules_to_save",
        Ty::StrList,
        "modules trained fully and saved with the adapter, e.g. [\"word_embeddings\"]",
    ),
    opt(
        "init_adapter",
        Ty::Path,
        "start from an existing PEFT adapter dir",
    ),
    // Optimisation
    def("optim", Ty::Enum(OPTIMS), "\"adamw\"", "optimizer"),
    def("learning_rate", Ty::Float, "5e-5", "peak learning rate"),
    def("weight_decay", Ty::Float, "0.0", "decoupled weight decay"),
    def("adam_beta1", Ty::Float, "0.9", "AdamW beta1"),
    def("adam_beta2", Ty::Float, "0.999", "AdamW beta2"),
    def("adam_epsilon", Ty::Float, "1e-8", "AdamW epsilon"),
    def(
        "lr_scheduler",
        Ty::Enum(SCHEDULES),
        "\"linear\"",
        "learning-rate schedule",
    ),
    def(
        "warmup_steps",
        Ty::Int,
        "0",
        "warmup steps (overrides warmup_ratio when > 0)",
    ),
    def(
        "warmup_ratio",
        Ty::Float,
        "0.0",
        "warmup as a fraction of all steps",
    ),
    def(
        "max_grad_norm",
        Ty::Float,
        "1.0",
        "global-norm gradient clipping (0 = off)",
    ),
    def(
        "num_epochs",
        Ty::Float,
        "1",
        "epochs (ignored when max_steps > 0)",
    ),
    def(
        "max_steps",
        Ty::Int,
        "-1",
        "optimizer steps; -1 = use num_epochs",
    ),
    def("batch_size", Ty::Int, "4", "examples per micro-batch"),
    def(
        "gradient_accumulation_steps",
        Ty::Int,
        "1",
        "micro-batches per optimizer step",
    ),
    def(
        "gradient_checkpointing",
        Ty::Bool,
        "false",
        "recompute layers in backward to save memory",
    ),
    def(
        "group_by_length",
        Ty::Bool,
        "false",
        "batch examples of similar length together",
    ),
    def(
        "seed",
        Ty::Int,
        "42",
        "seed for init, shuffling and dropout",
    ),
    // Logging, eval, checkpoints
    def(
        "logging_steps",
        Ty::Int,
        "10",
        "log loss/lr/grad-norm/tokens-per-s every N steps",
    ),
    opt(
        "eval_steps",
        Ty::Int,
        "evaluate the eval loss every N steps",
    ),
    def(
        "save_strategy",
        Ty::Enum(&["no", "steps", "epoch"]),
        "\"steps\"",
        "when to checkpoint",
    ),
    def(
        "save_steps",
        Ty::Int,
        "500",
        "checkpoint every N steps (save_strategy = \"steps\")",
    ),
    opt(
        "save_total_limit",
        Ty::Int,
        "keep only the newest N checkpoints",
    ),
    def("device", Ty::Str, "\"auto\"", "auto, cpu, cuda or cuda:N"),
    def(
        "dtype",
        Ty::Enum(crate::backend::DTYPES),
        "\"auto\"",
        "what matrix products compute in on CUDA: auto (bf16 on a GPU), bf16 (tensor cores, f32 accumulation) or f32; the CPU computes in f32",
    ),
];

impl Kind for Train {
    type Params = TrainParams;
    const KIND: &'static str = "train";
    const ABOUT: &'static str = "LoRA / QLoRA / full fine-tuning";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    fn check(&self, p: &TrainParams, c: &mut CheckCtx) {
        let (lr, wr, r, bs, ga) = (
            p.learning_rate,
            p.warmup_ratio,
            p.r,
            p.batch_size,
            p.gradient_accumulation_steps,
        );
        if !(lr > 0.0 && lr.is_finite()) {
            c.error("learning_rate", "must be positive").got = Some(lr.to_string());
        }
        if !(0.0..1.0).contains(&wr) {
            c.error("warmup_ratio", "must be in [0, 1)").got = Some(wr.to_string());
        }
        if r <= 0 {
            c.error("r", "LoRA rank must be positive").got = Some(r.to_string());
        } else if r > crate::model::lora::MAX_RANK as i64 {
            let d = c.error(
                "r",
                format!("LoRA rank above {}", crate::model::lora::MAX_RANK),
            );
            d.expected = Some(format!(
                "1..={} (usually 4 to 64)",
                crate::model::lora::MAX_RANK
            ));
            d.got = Some(r.to_string());
        }
        if bs <= 0 {
            c.error("batch_size", "must be positive").got = Some(bs.to_string());
        }
        if ga <= 0 {
            c.error("gradient_accumulation_steps", "must be positive")
                .got = Some(ga.to_string());
        }
        // 0 optimizer steps is never what was meant.
        let (epochs, max_steps) = (p.num_epochs, p.max_steps);
        if max_steps < -1 || max_steps == 0 {
            c.error(
                "max_steps",
                "must be a positive step count, or -1 to use num_epochs",
            )
            .got = Some(max_steps.to_string());
        } else if max_steps == -1 && !(epochs > 0.0 && epochs.is_finite()) {
            c.error("num_epochs", "must be positive (or set max_steps)")
                .got = Some(epochs.to_string());
        }
        let d = p.lora_dropout;
        if !(0.0..1.0).contains(&d) {
            c.error("lora_dropout", "must be in [0, 1)").got = Some(d.to_string());
        }
        if p.target_modules.is_some() && p.target_regex.is_some() {
            c.error(
                "target_regex",
                "give either target_modules or target_regex, not both",
            );
        }
        if let Some(re) = &p.target_regex {
            if let Err(e) = regex::Regex::new(re) {
                c.error("target_regex", format!("invalid regex: {e}"));
            }
        }
        {
            let dev = p.device.as_str();
            let ok = matches!(dev, "auto" | "cpu" | "cuda")
                || dev
                    .strip_prefix("cuda:")
                    .is_some_and(|n| n.parse::<u32>().is_ok());
            if !ok {
                c.error("device", "unknown device").expected =
                    Some("auto, cpu, cuda or cuda:N".into());
            }
        }
    }
    /// `target_modules` that match no linear module of the model (when its config.json
    /// describes a supported model; else preflight or the run reports it).
    fn check_inputs(&self, p: &TrainParams, e: &EstimateCtx, c: &mut CheckCtx) {
        if p.method == Method::Full || p.init_adapter.is_some() {
            return;
        }
        let names = p.target_modules.clone().unwrap_or_default();
        // Dotted entries match by suffix of full names: only plain names are checked here.
        if names.is_empty() || names.iter().any(|n| n == "all-linear" || n.contains('.')) {
            return;
        }
        let Some(arch) = e
            .upstream("model", "load.model")
            .and_then(|m| m.path("path"))
            .and_then(|d| crate::model::Arch::from_dir(&d).ok())
        else {
            return;
        };
        let modules = arch.module_names();
        if !names.iter().any(|n| modules.contains(n)) {
            let d = c.error("target_modules", "matches no linear module of the model");
            d.expected = Some(format!("some of: {}", modules.join(", ")));
            d.got = Some(format!("{names:?}"));
        }
    }
    fn estimate(&self, e: &EstimateCtx) -> Option<Estimate> {
        super::memory::train_estimate(e)
    }
    /// Writes the adapter (PEFT format) or the full model, metrics.jsonl,
    /// loss.png and train_report.json; checkpoints go to the work dir, so a
    /// killed run resumes where it stopped.
    fn run(&self, p: &TrainParams, ctx: &RunCtx) -> Result<()> {
        run(p, ctx)
    }
}

fn run(p: &TrainParams, ctx: &RunCtx) -> Result<()> {
    let backend = ctx.backend(&p.device, &p.dtype)?;
    let minput = ctx.input("model")?;
    let dirs = io::model_dirs(minput)?;
    // Weights go to the step's device once, here (a 4-bit base stays 4-bit there).
    let mut model = load_model(minput.kind, &dirs.weights, backend)?;
    ctx.info(format!(
        "{} model from {} ({} layers, hidden {})",
        dirs.family,
        dirs.weights.display(),
        model.arch.layers,
        model.arch.hidden
    ));
    let bundle = crate::text::TokenizerBundle::from_dir(&dirs.tokenizer)
        .with_context(|| format!("loading the tokenizer from `{}`", dirs.tokenizer.display()))?;

    let saved = if p.method == Method::Full {
        model
            .set_full_trainable()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Saved::Full
    } else {
        let cfg = match &p.init_adapter {
            Some(dir) => crate::model::lora::load_peft(&mut model, dir)
                .map_err(|e| anyhow::anyhow!("init_adapter `{}`: {e}", dir.display()))?,
            None => {
                let cfg = lora_config(p, model.arch.family);
                let adapted = match crate::model::lora::apply(&mut model, &cfg) {
                    Ok(a) => a,
                    Err(crate::model::lora::LoraError::NoMatch { .. }) => {
                        let key = if p.target_regex.is_some() {
                            "target_regex"
                        } else {
                            "target_modules"
                        };
                        anyhow::bail!(
                            "key `{key}`: {} matches no linear module of this model; its linear \
                             modules are: {}",
                            match &cfg.targets {
                                Targets::Names(n) => format!("{n:?}"),
                                Targets::Regex(r) => format!("regex {r:?}"),
                                Targets::AllLinear => "\"all-linear\"".to_string(),
                            },
                            model.arch.module_names().join(", ")
                        )
                    }
                    Err(e) => anyhow::bail!("{e}"),
                };
                ctx.info(format!("LoRA r {} on {} modules", cfg.r, adapted.len()));
                cfg
            }
        };
        Saved::Lora {
            cfg,
            base_name: dirs.weights.display().to_string(),
        }
    };
    let n_train: usize = model.params_mut().iter().map(|p| p.value.len()).sum();
    ctx.info(format!("{n_train} trainable parameters"));

    let data = ctx.input("data")?;
    let train = TokenSamples(crate::text::TokenDataset::open(
        data.dir.join("train.tokens"),
    )?);
    let eval_path = match ctx.opt_input("eval_data") {
        Some(e) => Some(first_existing(&e.dir, &["test.tokens", "train.tokens"])),
        None => Some(data.dir.join("test.tokens")).filter(|p| p.is_file()),
    };
    let eval = match eval_path {
        Some(path) => Some(TokenSamples(crate::text::TokenDataset::open(&path)?)),
        None => None,
    };

    // `check` made batch_size and gradient_accumulation_steps positive.
    let cfg = TrainConfig {
        batch_size: p.batch_size.max(1) as usize,
        grad_accum: p.gradient_accumulation_steps.max(1) as usize,
        num_epochs: p.num_epochs,
        max_steps: p.max_steps,
        max_grad_norm: p.max_grad_norm,
        seed: p.seed,
        group_by_length: p.group_by_length,
        logging_steps: p.logging_steps,
        eval_steps: p.eval_steps,
        save: match p.save_strategy {
            SaveKey::No => SaveStrategy::No,
            SaveKey::Epoch => SaveStrategy::Epoch,
            SaveKey::Steps => SaveStrategy::Steps(p.save_steps),
        },
        save_total_limit: p.save_total_limit,
        pad_id: bundle.pad_id.or(bundle.eos_id).unwrap_or(0),
        pad_side: match bundle.padding_side {
            crate::text::PaddingSide::Left => PadSide::Left,
            crate::text::PaddingSide::Right => PadSide::Right,
        },
    };
    let total = cfg.total_steps(train.0.len());
    let warmup = match p.warmup_steps {
        0 => crate::optim::warmup_steps(total, p.warmup_ratio),
        n => n,
    };
    let kind = crate::optim::ScheduleKind::from_name(&p.lr_scheduler)
        .with_context(|| format!("unknown lr_scheduler `{}`", p.lr_scheduler))?;
    let schedule = crate::optim::Schedule::new(kind, total, warmup);
    let base_lr = p.learning_rate;
    let lr_at = move |step: usize| schedule.lr(step, base_lr);
    let sizes: Vec<usize> = model.params_mut().iter().map(|p| p.value.len()).collect();
    let okind = crate::optim::OptimKind::from_name(&p.optim).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ocfg = crate::optim::OptimConfig {
        betas: (p.adam_beta1, p.adam_beta2),
        eps: p.adam_epsilon,
        weight_decay: p.weight_decay,
        ..Default::default()
    };
    let mut optim = EngineOptim(crate::train::optimizer::Optimizer::new(
        model.backend.clone(),
        okind,
        &ocfg,
        &sizes,
    ));
    ctx.info(format!(
        "{} examples, {total} steps (batch {} × accumulation {}), warmup {warmup}, {} {}",
        train.0.len(),
        cfg.batch_size,
        cfg.grad_accum,
        p.optim,
        p.lr_scheduler
    ));
    let mut em = EngineModel {
        model,
        saved,
        checkpointing: p.gradient_checkpointing,
        copy_from: Some(dirs.tokenizer.clone()),
    };
    let log = |s: &str| ctx.info(s);
    let tio = TrainIo {
        work: ctx.work,
        out: ctx.out,
        log: &log,
        bar: Some(ctx.bar(total as u64, "train")),
        stop_after: kill_after(),
    };
    let report = crate::train::train(
        &mut em,
        &mut optim,
        &lr_at,
        &train,
        eval.as_ref()
            .map(|e| e as &dyn crate::train::batch::Samples),
        &cfg,
        &tio,
    )?;
    if report.steps < total {
        // Test hook: behave like a kill (no output published).
        ctx.info(format!(
            "stopping after step {} (RECIPE_TEST_KILL_AFTER_STEPS)",
            report.steps
        ));
        std::process::exit(137);
    }
    if let Ok(recs) = crate::eval::report::read_train_metrics(&ctx.out.join("metrics.jsonl")) {
        if let Err(e) =
            crate::eval::plot::plot_loss_curve(&recs, &ctx.out.join("loss.png"), 800, 500)
        {
            ctx.info(format!("warning: no loss plot: {e}"));
        }
    }
    if let Some(line) = em.model.backend.memory_line() {
        ctx.info(line);
    }
    ctx.info(format!(
        "done: {} steps, final loss {:.4}{}",
        report.steps,
        report.final_loss.unwrap_or(f64::NAN),
        report
            .eval_loss
            .map(|e| format!(", eval loss {e:.4}"))
            .unwrap_or_default()
    ));
    Ok(())
}

/// Test hook: `RECIPE_TEST_KILL_AFTER_STEPS=N` makes the run exit like a
/// killed process after N optimizer steps (checkpoints already written stay).
fn kill_after() -> Option<usize> {
    std::env::var("RECIPE_TEST_KILL_AFTER_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn first_existing(dir: &Path, names: &[&str]) -> std::path::PathBuf {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join(names[0]))
}

/// The frozen base on `backend`: dense weights, or a quantize step's 4-bit model.
fn load_model(
    kind: &str,
    dir: &Path,
    backend: std::sync::Arc<dyn crate::backend::Backend>,
) -> Result<crate::model::Model> {
    // A 16-bit base stays 16-bit (frozen); weights made trainable are widened then.
    let opts = crate::model::LoadOptions {
        backend: Some(backend),
        keep_16bit: true,
        ..Default::default()
    };
    if kind == "quantize" {
        return crate::steps::quantize::load(dir, &opts);
    }
    crate::model::Model::load(dir, &opts)
        .map_err(|e| anyhow::anyhow!("loading `{}`: {e}", dir.display()))
}

fn lora_config(p: &TrainParams, family: crate::model::Family) -> LoraConfig {
    let names = p.target_modules.clone().unwrap_or_default();
    let targets = Targets::from_keys(names, p.target_regex.as_deref(), family);
    LoraConfig {
        r: p.r.max(1) as usize,
        alpha: p.lora_alpha as f32,
        dropout: p.lora_dropout as f32,
        targets,
        use_rslora: p.use_rslora,
        modules_to_save: p.modules_to_save.clone().unwrap_or_default(),
        seed: p.seed,
    }
}
