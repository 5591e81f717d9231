//! `recipe init MODEL_DIR DATA_PATH`: writes a commented LoRA recipe for a model dir and a
//! dataset. It detects the family (config.json), the dataset's record format from its columns,
//! a chat template (the model's own, else the family's built-in), PEFT's default LoRA targets
//! for the family, and the largest batch size (gradient checkpointing only if needed) whose
//! memory estimate, from the same plan `recipe plan` prints, fits 80% of this machine's memory.
//! The written recipe plans cleanly (checked before it is published).

use crate::diag::{render_all, Diagnostic};
use crate::plan::build_dag;
use crate::recipe::validate::check;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

pub const INIT_HELP: &str = "\
Examples:
  recipe init /models/Qwen2-7B-Instruct data/train.jsonl               writes Qwen2-7B-Instruct_lora.toml
  recipe init examples/quickstart/base examples/quickstart/instructions.jsonl -o my.toml
  recipe init /models/chatglm3-6b data/adgen.json --name adgen --force

Detected: the family (config.json), the record format from the dataset's columns (alpaca:
instruction/output; conversations/messages; prompt/response and common aliases such as
question/answer; text/label; text), the chat template (the model's own, else the family's
built-in), PEFT's default LoRA targets, and the largest batch_size (gradient checkpointing only
when needed) that fits 80% of this machine's memory by the memory plan. Edit the result freely;
`recipe explain train` lists every key.";

/// `recipe init`.
#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// A Hugging Face model dir (config.json, safetensors, tokenizer files).
    pub model: PathBuf,
    /// The training data: a JSON/JSONL/CSV/Parquet/Arrow file or a folder of them.
    pub data: PathBuf,
    /// Where to write the recipe [default: <NAME>.toml in the current dir].
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The recipe's name (outputs go to output/<NAME>/) [default: <model dir>_lora].
    #[arg(long)]
    pub name: Option<String>,
    /// Replace an existing recipe file.
    #[arg(long)]
    pub force: bool,
}

/// A record format and its `columns` mapping (role -> column) when the names differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    pub format: &'static str,
    pub columns: Vec<(&'static str, String)>,
}

/// The record format a dataset with these columns has, or an error listing them.
pub fn detect_format(cols: &[String]) -> std::result::Result<Detected, String> {
    let has = |c: &str| cols.iter().any(|x| x == c);
    let found = |role: &'static str, names: &[&str]| -> Option<(&'static str, String)> {
        names.iter().find(|n| has(n)).map(|n| (role, n.to_string()))
    };
    let renamed = |pairs: Vec<(&'static str, String)>| -> Vec<(&'static str, String)> {
        pairs
            .into_iter()
            .filter(|(role, col)| role != col)
            .collect()
    };
    if let Some(c) = found(
        "conversations",
        &["conversations", "messages", "conversation"],
    ) {
        return Ok(Detected {
            format: "conversations",
            columns: renamed(vec![c]),
        });
    }
    if has("instruction") && has("output") {
        return Ok(Detected {
            format: "alpaca",
            columns: Vec::new(),
        });
    }
    for (p, r) in [
        ("prompt", "response"),
        ("prompt", "completion"),
        ("prompt", "chosen"),
        ("question", "answer"),
        ("query", "response"),
        ("input", "output"),
        ("instruction", "response"),
        ("content", "summary"),
    ] {
        if has(p) && has(r) {
            let mut cols = vec![("prompt", p.to_string()), ("response", r.to_string())];
            cols.extend(found("system", &["system"]));
            return Ok(Detected {
                format: "prompt_response",
                columns: renamed(cols),
            });
        }
    }
    if has("text") && has("label") {
        return Ok(Detected {
            format: "text_label",
            columns: Vec::new(),
        });
    }
    if has("text") {
        return Ok(Detected {
            format: "text",
            columns: Vec::new(),
        });
    }
    Err(format!(
        "cannot tell the record format from its columns [{}]; expected instruction/output \
         (alpaca), conversations or messages, prompt/response (or question/answer, ...), \
         text/label or text. Write the load.dataset step's `format` and `columns` by hand \
         (recipe explain load.dataset)",
        cols.join(", ")
    ))
}

/// The template for a family: the model's own chat template when it has one, else the
/// family's built-in, else a generic one. Returns (template, why).
fn pick_template(
    family: &str,
    format: &str,
    bundle: &crate::text::TokenizerBundle,
) -> (&'static str, &'static str) {
    if format == "text" {
        return ("plain", "raw text: no chat template");
    }
    if bundle.chat_template.is_some() {
        return ("model", "the model's own chat_template");
    }
    let has = |t: &str| bundle.tok.token_to_id(t).is_some();
    match family {
        "chatglm" if has("<|user|>") => ("chatglm3", "ChatGLM3's built-in format"),
        "chatglm" => ("chatglm", "ChatGLM2's built-in format"),
        "qwen" | "qwen2" | "qwen3" if has("<|im_start|>") => ("chatml", "Qwen's ChatML"),
        "llama" if has("<|start_header_id|>") => ("llama3", "Llama 3's format"),
        _ if format == "alpaca" => (
            "alpaca",
            "the Alpaca prompt; the model has no chat template",
        ),
        _ => (
            "human_assistant",
            "Human: ... Assistant: ...; the model has no chat template",
        ),
    }
}

/// `target` relative to the dir `base` (both made absolute, `.`/`..` folded); absolute when
/// they share nothing but the root (reads better than ../../..).
fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let (Ok(t), Ok(b)) = (std::path::absolute(target), std::path::absolute(base)) else {
        return target.to_path_buf();
    };
    fn fold(p: &Path) -> PathBuf {
        let mut v: Vec<Component> = Vec::new();
        for c in p.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir if matches!(v.last(), Some(Component::Normal(_))) => {
                    v.pop();
                }
                c => v.push(c),
            }
        }
        v.iter().collect()
    }
    let (t, b) = (fold(&t), fold(&b));
    if t.components().nth(1) != b.components().nth(1) {
        return t;
    }
    match crate::util::relative_path(&b, &t) {
        r if r.as_os_str().is_empty() => PathBuf::from("."),
        r => r,
    }
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

struct Choice {
    batch_size: usize,
    checkpointing: bool,
}

struct Facts {
    name: String,
    family: &'static str,
    model: String,
    data: String,
    format: Detected,
    columns_seen: Vec<String>,
    template: (&'static str, &'static str),
    targets: Vec<String>,
    max_length: usize,
}

fn render(f: &Facts, c: &Choice, fit_line: &str, file_name: &str) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "# {}: LoRA fine-tuning of {} ({} family) on {}.",
        f.name, f.model, f.family, f.data
    );
    let _ = writeln!(
        w,
        "# Written by `recipe init`; edit freely (`recipe explain <kind>` lists every key)."
    );
    let _ = writeln!(w, "#");
    let _ = writeln!(w, "# Run:");
    let _ = writeln!(
        w,
        "#   recipe plan {file_name}     # what will run, cache hits, memory"
    );
    let _ = writeln!(w, "#   recipe run {file_name}");
    let _ = writeln!(
        w,
        "# Outputs land in output/{}/ (adapter, eval metrics).",
        f.name
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "[recipe]\nname = {}", q(&f.name));
    let _ = writeln!(
        w,
        "description = {}",
        q(&format!("LoRA on {} ({})", f.model, f.data))
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "[vars]\noutput_dir = {}",
        q(&format!("output/{}", f.name))
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "# Family detected from config.json: {}.", f.family);
    let _ = writeln!(
        w,
        "[steps.base]\nkind = \"load.model\"\npath = {}",
        q(&f.model)
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "# Columns [{}] read as the `{}` record format.",
        f.columns_seen.join(", "),
        f.format.format
    );
    let _ = writeln!(
        w,
        "[steps.data]\nkind = \"load.dataset\"\npath = {}",
        q(&f.data)
    );
    let _ = writeln!(w, "format = {}", q(f.format.format));
    if !f.format.columns.is_empty() {
        let m: Vec<String> = f
            .format
            .columns
            .iter()
            .map(|(r, c)| format!("{r} = {}", q(c)))
            .collect();
        let _ = writeln!(w, "columns = {{ {} }}", m.join(", "));
    }
    let _ = writeln!(w, "test_size = 0.05   # held out for evaluation\nseed = 42");
    let _ = writeln!(w);
    let _ = writeln!(w, "# Template: {} ({}).", f.template.0, f.template.1);
    let _ = writeln!(
        w,
        "[steps.prompts]\nkind = \"template\"\ndata = \"data\"\nmodel = \"base\""
    );
    let _ = writeln!(w, "template = {}", q(f.template.0));
    let _ = writeln!(w);
    let train_on = if f.format.format == "text" {
        "all"
    } else {
        "completion"
    };
    let _ = writeln!(
        w,
        "[steps.tokens]\nkind = \"tokenize\"\ndata = \"prompts\"\nmodel = \"base\""
    );
    let _ = writeln!(
        w,
        "train_on = {}   # loss on the replies only (\"all\": every token)",
        q(train_on)
    );
    let _ = writeln!(w, "max_length = {}\nadd_eos = true", f.max_length);
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "# LoRA targets: PEFT's defaults for {} (\"all-linear\" trains every linear layer).",
        f.family
    );
    let _ = writeln!(w, "# batch_size / gradient_checkpointing: {fit_line}.");
    let _ = writeln!(
        w,
        "[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\""
    );
    let _ = writeln!(w, "r = 8\nlora_alpha = 16\nlora_dropout = 0.05");
    let t: Vec<String> = f.targets.iter().map(|t| q(t)).collect();
    let _ = writeln!(w, "target_modules = [{}]", t.join(", "));
    let _ = writeln!(
        w,
        "learning_rate = 2e-4\nlr_scheduler = \"cosine\"\nwarmup_ratio = 0.03\nnum_epochs = 3"
    );
    let _ = writeln!(
        w,
        "batch_size = {}\ngradient_accumulation_steps = 1",
        c.batch_size
    );
    let _ = writeln!(w, "gradient_checkpointing = {}", c.checkpointing);
    let _ = writeln!(
        w,
        "logging_steps = 10\noutput = \"${{output_dir}}/adapter\""
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "# Loss and perplexity on the held-out split, before (compare_base) and after."
    );
    let _ = writeln!(w, "[steps.eval]\nkind = \"evaluate\"\nmodel = \"base\"\nadapter = \"train\"\ndata = \"tokens\"");
    let _ = writeln!(
        w,
        "metrics = [\"loss\", \"perplexity\", \"token_accuracy\"]\ncompare_base = true"
    );
    let _ = writeln!(w, "output = \"${{output_dir}}/eval\"");
    s
}

/// Checks `file` as `recipe plan` does and returns the train step's estimated peak bytes;
/// recipe errors come back rendered.
fn plan_train_peak(file: &Path) -> Result<Option<u64>> {
    let (recipe, mut diags) = crate::recipe::load(file, &[]);
    let checked = check(recipe, true, &mut diags);
    let dag = build_dag(&checked, &mut diags);
    crate::plan::preflight(&checked, &mut diags);
    let errors: Vec<Diagnostic> = diags.into_iter().filter(Diagnostic::is_error).collect();
    if !errors.is_empty() || dag.is_none() {
        bail!("{}", render_all(&errors, &checked.recipe.sources, false));
    }
    Ok(crate::plan::estimate(&checked, "train").and_then(|e| e.peak_bytes))
}

pub fn init_cmd(args: &InitArgs) -> i32 {
    match init(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn init(args: &InitArgs) -> Result<()> {
    let model_name = std::path::absolute(&args.model)?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{model_name}_lora"));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{name}.toml")));
    if out.exists() && !args.force {
        bail!(
            "`{}` exists; pass --force to replace it, or -o another file",
            out.display()
        );
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating `{}`", dir.display()))?;

    let cfg = crate::formats::config::HfConfig::read(&args.model)?;
    let fam = crate::model::Family::of(&cfg)?;
    let family = fam.name();
    let bundle = crate::text::TokenizerBundle::from_dir(&args.model)
        .with_context(|| format!("loading the tokenizer from `{}`", args.model.display()))?;
    let columns_seen = crate::data::load::peek_columns(&args.data)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading `{}`", args.data.display()))?;
    let format = detect_format(&columns_seen)
        .map_err(|e| anyhow::anyhow!("`{}`: {e}", args.data.display()))?;
    let template = pick_template(family, format.format, &bundle);
    let targets = fam
        .default_targets()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ctx = [
        "max_position_embeddings",
        "seq_length",
        "n_positions",
        "n_ctx",
    ]
    .iter()
    .find_map(|k| cfg.get(*k).and_then(|v| v.as_u64()))
    .unwrap_or(1024) as usize;
    let facts = Facts {
        name: name.clone(),
        family,
        model: relative_to(&args.model, &dir).display().to_string(),
        data: relative_to(&args.data, &dir).display().to_string(),
        format,
        columns_seen,
        template,
        targets,
        max_length: ctx.clamp(16, 1024),
    };
    let file_name = out.display().to_string();

    // Try batch sizes from large to small, without then with checkpointing; keep the first
    // whose planned peak fits. Candidates are planned from a scratch file beside the output.
    let total = crate::plan::machine_memory();
    let budget = total.map(|m| m / 10 * 8);
    let scratch = dir.join(format!(".{name}.recipe-init.toml"));
    let mut chosen = None;
    let mut last_err = None;
    'search: for checkpointing in [false, true] {
        for batch_size in [16, 8, 4, 2, 1] {
            let c = Choice {
                batch_size,
                checkpointing,
            };
            crate::util::write_atomic(&scratch, render(&facts, &c, "", &file_name).as_bytes())?;
            match plan_train_peak(&scratch) {
                Ok(peak) => {
                    let fits = match (peak, budget) {
                        (Some(p), Some(b)) => p <= b,
                        _ => batch_size == 4, // no estimate or unknown memory: the default
                    };
                    if fits {
                        chosen = Some((c, peak));
                        break 'search;
                    }
                    if chosen.is_none() && batch_size == 1 && checkpointing {
                        chosen = Some((c, peak)); // nothing fits: the smallest, with a warning
                    }
                }
                Err(e) => {
                    last_err = Some(e);
                    break 'search;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&scratch);
    if let Some(e) = last_err {
        return Err(e.context("the generated recipe does not plan (please report this)"));
    }
    let Some((c, peak)) = chosen else {
        bail!("no batch size could be planned")
    };
    let h = crate::util::human_bytes;
    let fit_line = match (peak, budget.zip(total)) {
        (Some(p), Some((b, t))) if p <= b => format!(
            "the memory plan estimates {} for training, within 80% of this machine's {}",
            h(p),
            h(t)
        ),
        (Some(p), Some((_, t))) => format!(
            "WARNING: even batch 1 with checkpointing is estimated at {}, above 80% of this \
             machine's {}; use quantize (QLoRA) or a GPU",
            h(p),
            h(t)
        ),
        _ => "defaults (no memory estimate for this model or machine)".to_string(),
    };
    let text = render(&facts, &c, &fit_line, &file_name);
    crate::util::write_atomic(&out, text.as_bytes())?;
    eprintln!(
        "wrote {file_name}: {} family; {} records; template {}; LoRA on [{}]; batch_size {}, \
         gradient checkpointing {}\n  {fit_line}\nnext: recipe plan {file_name} && recipe run {file_name}",
        facts.family,
        facts.format.format,
        facts.template.0,
        facts.targets.join(", "),
        c.batch_size,
        if c.checkpointing { "on" } else { "off" },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn record_formats_from_columns() {
        let d = |c: &[&str]| detect_format(&cols(c)).unwrap();
        assert_eq!(d(&["instruction", "input", "output"]).format, "alpaca");
        assert_eq!(
            d(&["messages", "id"]),
            Detected {
                format: "conversations",
                columns: vec![("conversations", "messages".into())]
            }
        );
        assert_eq!(
            d(&["question", "answer"]).columns,
            vec![("prompt", "question".into()), ("response", "answer".into())]
        );
        assert_eq!(d(&["prompt", "response"]).columns, vec![]);
        assert_eq!(d(&["text", "label"]).format, "text_label");
        assert_eq!(d(&["text", "meta"]).format, "text");
        assert_eq!(
            detect_format(&cols(&["a", "b"])).unwrap_err(),
            "cannot tell the record format from its columns [a, b]; expected instruction/output \
             (alpaca), conversations or messages, prompt/response (or question/answer, ...), \
             text/label or text. Write the load.dataset step's `format` and `columns` by hand \
             (recipe explain load.dataset)"
        );
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b/c"), Path::new("/a/d")),
            PathBuf::from("../b/c")
        );
        assert_eq!(
            relative_to(Path::new("/a/b"), Path::new("/a/b")),
            PathBuf::from(".")
        );
        assert_eq!(
            relative_to(Path::new("/a/./b/../c"), Path::new("/a")),
            PathBuf::from("c")
        );
    }
}
