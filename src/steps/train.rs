//! `train`: LoRA (or full) fine-tuning with AdamW / 8-bit AdamW, schedules,
//! accumulation, clipping, eval, checkpoints and resume.

use super::{def, opt, req, CheckCtx, Estimate, EstimateCtx, ParamSpec, Step, Ty};

pub struct Train;

pub static OPTIMS: &[&str] = &["adamw", "adamw_8bit", "paged_adamw_8bit"];
pub static SCHEDULES: &[&str] = &["constant", "constant_with_warmup", "linear", "cosine"];

static PARAMS: &[ParamSpec] = &[
    req("model", Ty::Step(&["load.model", "quantize"]), "frozen base: a load.model or quantize step"),
    req("data", Ty::Step(&["tokenize"]), "training data: a tokenize step"),
    opt("eval_data", Ty::Step(&["tokenize"]), "evaluation data (default: the test split of `data`, if any)"),
    def("method", Ty::Enum(&["lora", "full"]), "\"lora\"", "lora adapters, or full fine-tuning"),
    // LoRA
    def("r", Ty::Int, "8", "LoRA rank"),
    def("lora_alpha", Ty::Float, "16", "LoRA scale numerator: s = alpha / r (alpha / sqrt(r) with rsLoRA)"),
    def("lora_dropout", Ty::Float, "0.0", "dropout on the LoRA input"),
    opt("target_modules", Ty::StrOrList, "module names, or \"all-linear\" (default: the family's PEFT default)"),
    opt("target_regex", Ty::Str, "a full-match regex over module names, e.g. '.*\\.1.*query_key_value'"),
    def("use_rslora", Ty::Bool, "false", "rank-stabilised scale alpha / sqrt(r)"),
    opt("modules_to_save", Ty::StrList, "modules trained fully and saved with the adapter, e.g. [\"word_embeddings\"]"),
    opt("init_adapter", Ty::Path, "start from an existing PEFT adapter dir"),
    // Optimisation
    def("optim", Ty::Enum(OPTIMS), "\"adamw\"", "optimizer"),
    def("learning_rate", Ty::Float, "5e-5", "peak learning rate"),
    def("weight_decay", Ty::Float, "0.0", "decoupled weight decay"),
    def("adam_beta1", Ty::Float, "0.9", "AdamW beta1"),
    def("adam_beta2", Ty::Float, "0.999", "AdamW beta2"),
    def("adam_epsilon", Ty::Float, "1e-8", "AdamW epsilon"),
    def("lr_scheduler", Ty::Enum(SCHEDULES), "\"linear\"", "learning-rate schedule"),
    def("warmup_steps", Ty::Int, "0", "warmup steps (overrides warmup_ratio when > 0)"),
    def("warmup_ratio", Ty::Float, "0.0", "warmup as a fraction of all steps"),
    def("max_grad_norm", Ty::Float, "1.0", "global-norm gradient clipping (0 = off)"),
    def("num_epochs", Ty::Float, "1", "epochs (ignored when max_steps > 0)"),
    def("max_steps", Ty::Int, "-1", "optimizer steps; -1 = use num_epochs"),
    def("batch_size", Ty::Int, "4", "examples per micro-batch"),
    def("gradient_accumulation_steps", Ty::Int, "1", "micro-batches per optimizer step"),
    def("gradient_checkpointing", Ty::Bool, "false", "recompute layers in backward to save memory"),
    def("group_by_length", Ty::Bool, "false", "batch examples of similar length together"),
    def("seed", Ty::Int, "42", "seed for init, shuffling and dropout"),
    // Logging, eval, checkpoints
    def("logging_steps", Ty::Int, "10", "log loss/lr/grad-norm/tokens-per-s every N steps"),
    opt("eval_steps", Ty::Int, "evaluate the eval loss every N steps"),
    def("save_strategy", Ty::Enum(&["no", "steps", "epoch"]), "\"steps\"", "when to checkpoint"),
    def("save_steps", Ty::Int, "500", "checkpoint every N steps (save_strategy = \"steps\")"),
    opt("save_total_limit", Ty::Int, "keep only the newest N checkpoints"),
    def("device", Ty::Str, "\"auto\"", "auto, cpu, cuda or cuda:N"),
];

impl Step for Train {
    fn kind(&self) -> &'static str {
        "train"
    }
    fn about(&self) -> &'static str {
        "LoRA / QLoRA / full fine-tuning"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn format_version(&self) -> u32 {
        1
    }
    fn check(&self, c: &mut CheckCtx) {
        let p = c.params;
        let (lr, wr, r, bs, ga) = (
            p.f64("learning_rate"),
            p.f64("warmup_ratio"),
            p.i64("r"),
            p.i64("batch_size"),
            p.i64("gradient_accumulation_steps"),
        );
        if lr <= 0.0 {
            c.error("learning_rate", "must be positive").got = Some(lr.to_string());
        }
        if !(0.0..1.0).contains(&wr) {
            c.error("warmup_ratio", "must be in [0, 1)").got = Some(wr.to_string());
        }
        if r <= 0 {
            c.error("r", "LoRA rank must be positive").got = Some(r.to_string());
        }
        if bs <= 0 {
            c.error("batch_size", "must be positive").got = Some(bs.to_string());
        }
        if ga <= 0 {
            c.error("gradient_accumulation_steps", "must be positive").got = Some(ga.to_string());
        }
        let d = p.f64("lora_dropout");
        if !(0.0..1.0).contains(&d) {
            c.error("lora_dropout", "must be in [0, 1)").got = Some(d.to_string());
        }
        if p.get("target_modules").is_some() && p.get("target_regex").is_some() {
            c.error("target_regex", "give either target_modules or target_regex, not both");
        }
        if let Some(re) = p.opt_str("target_regex") {
            if let Err(e) = regex::Regex::new(re) {
                c.error("target_regex", format!("invalid regex: {e}"));
            }
        }
        if let Some(dev) = p.opt_str("device") {
            let ok = matches!(dev, "auto" | "cpu" | "cuda")
                || dev.strip_prefix("cuda:").is_some_and(|n| n.parse::<u32>().is_ok());
            if !ok {
                c.error("device", "unknown device").expected = Some("auto, cpu, cuda or cuda:N".into());
            }
        }
    }
    fn estimate(&self, e: &EstimateCtx) -> Option<Estimate> {
        crate::plan::memory::train_estimate(e)
    }
}
