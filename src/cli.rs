//! Command-line interface. Exit codes: 0 ok, 1 run failure, 2 recipe error.

use crate::cache::{filehash::FileHasher, Cache};
use crate::diag::{render_all, Diagnostic};
use crate::plan::{build_dag, make_plan, render_json, render_text};
use crate::recipe::validate::{check, Checked};
use crate::run::{execute, fmt_secs, RunOptions};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

const ABOUT: &str = "Fine-tune large language models from declarative TOML recipes.";

const AFTER: &str = "\
Examples:
  recipe run recipes/quickstart.toml              run the quickstart on the CPU
  recipe plan recipes/chatglm3_lora.toml          dry run: schedule, cache hits, memory
  recipe run recipes/chatglm3_lora.toml --set steps.train.max_steps=10
  recipe run recipes/chatglm3_lora.toml --until tokens
  recipe explain train                            every key of a step kind
  recipe cache ls                                 what the cache holds

A recipe is a DAG of steps: [steps.<id>] tables with a `kind` and parameters;
a parameter naming another step's id (data = \"tokens\") is an edge. Every
step's output is cached by content, so unchanged steps never run twice.";

#[derive(Parser)]
#[command(name = "recipe", version, about = ABOUT, after_help = AFTER)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct RecipeArgs {
    /// The recipe file (TOML).
    file: PathBuf,
    /// Override a key: `vars.lr=1e-4`, `steps.train.max_steps=10` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Cache directory [default: .recipe/cache beside the recipe, or $RECIPE_CACHE].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a recipe: every step not already cached, independent steps in parallel.
    #[command(after_help = "\
Examples:
  recipe run recipes/quickstart.toml
  recipe run recipes/chatglm3_lora.toml --plan          same as `recipe plan`
  recipe run r.toml --set steps.train.max_steps=10 --jobs 2
  recipe run r.toml --until tokens                      the tokens step and what it needs
  recipe run r.toml --only train                        just train (inputs must be cached)")]
    Run {
        #[command(flatten)]
        r: RecipeArgs,
        /// Validate and print the plan without computing (CI dry run).
        #[arg(long)]
        plan: bool,
        /// Output format of --plan.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// How many independent steps may run at once.
        #[arg(long, short = 'j', default_value_t = 2)]
        jobs: usize,
        /// Run only this step; its inputs must be cached.
        #[arg(long, value_name = "STEP")]
        only: Option<String>,
        /// Run this step and the steps it depends on.
        #[arg(long, value_name = "STEP")]
        until: Option<String>,
        /// auto, cpu, cuda or cuda:N (steps with their own `device` key use that).
        #[arg(long, default_value = "auto")]
        device: String,
        /// Run even when a step's memory estimate is above this machine's memory.
        #[arg(long)]
        allow_large: bool,
    },
    /// Validate a recipe and print the schedule, cache hits and estimates.
    #[command(after_help = "\
Examples:
  recipe plan recipes/chatglm3_lora.toml
  recipe plan recipes/chatglm3_lora.toml --format json
  recipe plan r.toml --set steps.base.path=/models/chatglm3-6b")]
    Plan {
        #[command(flatten)]
        r: RecipeArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// List step kinds, or every key of one kind with its type and default.
    Explain {
        /// A step kind, e.g. `train`.
        kind: Option<String>,
    },
    /// Inspect or prune the step cache.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
    /// Show tokenized examples of a step, trained tokens highlighted.
    #[command(after_help = "\
Examples:
  recipe inspect recipes/chatglm3_lora.toml --step tokens -n 2
  recipe inspect recipes/chatglm3_lora.toml --step tokens --format jsonl
  recipe inspect recipes/chatglm3_lora.toml --step prompts      segments of the template step

The step must be cached: run `recipe run FILE --until STEP` first.")]
    Inspect {
        #[command(flatten)]
        r: RecipeArgs,
        /// The tokenize (or template / load.dataset) step to show.
        #[arg(long)]
        step: String,
        /// Which split.
        #[arg(long, default_value = "train")]
        split: String,
        /// How many examples.
        #[arg(short = 'n', default_value_t = 3)]
        n: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: InspectFormat,
    },
    /// Summarise a training run: loss, lr, grad norm, tokens/s, eval metrics.
    #[command(
        after_help = "Examples:\n  recipe report output/quickstart/adapter\n  \
        recipe report output/a/adapter output/b/adapter --plot runs.png"
    )]
    Report {
        /// Train step output dirs (holding metrics.jsonl), or evaluate steps' (metrics.json).
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
        /// Rows of the table (evenly spaced over the run).
        #[arg(long, default_value_t = 20)]
        rows: usize,
        /// Also write a PNG overlaying the runs' loss curves (run k drawn as "k").
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Merge a PEFT adapter into its base and write a Hugging Face model dir.
    #[command(after_help = "\
Examples:
  recipe merge --model models/chatglm3-6b --adapter output/chatglm3_lora/adapter --out merged/
  recipe merge --model base/ --adapter adapter/ --out merged/ --dtype bf16 --max-shard-size 2GB
  recipe merge --model base/ --adapter adapter/ --out merged/ --gguf merged.gguf --gguf-dtype q8_0

An NF4 base (bitsandbytes layout) is dequantized first; the merge never writes into 4-bit.
The output dir must not exist (it is written under a temporary name, then renamed).")]
    Merge {
        /// The base model dir (config.json + safetensors).
        #[arg(long)]
        model: PathBuf,
        /// The PEFT adapter dir (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// Where to write the merged model.
        #[arg(long)]
        out: PathBuf,
        /// auto (the base's dtype), f32, bf16 or f16.
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Largest safetensors shard, e.g. 2GB.
        #[arg(long, default_value = "5GB")]
        max_shard_size: String,
        /// Also write the merged model as GGUF (llama.cpp / Ollama) here, a Modelfile beside it.
        #[arg(long)]
        gguf: Option<PathBuf>,
        /// Weight type of the GGUF file: f16, bf16, q8_0 or q4_0.
        #[arg(long, default_value = "f16")]
        gguf_dtype: String,
    },
    /// Generate a reply from a model (+ adapter), streamed to the terminal.
    #[command(after_help = crate::gen_cli::GENERATE_HELP)]
    Generate(crate::gen_cli::GenerateArgs),
    /// Chat with a model (+ adapter): multi-turn, the model's template, streamed replies.
    #[command(after_help = crate::gen_cli::CHAT_HELP)]
    Chat(crate::gen_cli::ChatArgs),
    /// Serve a model (+ adapter) over the OpenAI API: /v1/chat/completions (streaming),
    /// /v1/completions, /v1/models.
    #[command(after_help = crate::serve::SERVE_HELP)]
    Serve(crate::serve::ServeArgs),
    /// Write a commented LoRA recipe for a model dir and a dataset (family, record format,
    /// template, targets and a batch size that fits this machine are detected).
    #[command(after_help = crate::init::INIT_HELP)]
    Init(crate::init::InitArgs),
    /// Run the kernel self-test: every CUDA kernel against its CPU twin, then a tiny training
    /// run on the CPU and CUDA backends.
    #[command(after_help = "\
Examples:
  recipe selftest --device cuda        every kernel vs its CPU twin, PASS/FAIL with max errors,
                                       then a tiny LoRA training run on the CPU vs CUDA backend
  recipe selftest --device cuda:1

Without a CUDA driver, --device cuda is one clear error; --device auto falls back to the CPU,
where there are no kernels to test (the CPU twins are covered by `cargo test`).")]
    Selftest {
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Benchmarks: kernel timings against measured peaks (GPU).
    #[command(after_help = "\
Examples:
  recipe bench --device cuda           NF4 GEMM vs cuBLAS, NF4 dequant and GEMV, training
                                       attention (fused vs GEMMs), norms, RoPE, SwiGLU,
                                       cross-entropy, 8-bit AdamW against the measured bf16
                                       and copy peaks
  recipe bench --device cuda --json bench.json
                                       the same, also as JSON (rewritten after every row)
  recipe bench --device cuda --model llama-7b --json train.json
                                       QLoRA training speed of a whole LLaMA-7B-shaped model
                                       with random NF4 weights (seq 2048, batch 4, LoRA r 16 on
                                       all linear layers, paged 8-bit AdamW, checkpointing):
                                       3 warm-up + 10 timed steps; tokens/s, MFU, peak memory
  recipe bench --device cuda --model chatglm3-6b
                                       the same on ChatGLM3-6B's shape with
                                       recipes/chatglm3_qlora.toml's LoRA settings, seq 1024

Models: llama-7b, chatglm3-6b, tiny-llama, tiny-chatglm3 (the tiny ones for tests). With
RECIPE_CUDA_PROFILE=1 the report adds the per-op table (every op synchronized). Without a GPU,
RECIPE_TEST_EMULATED_CUDA=dry runs --model on the dry emulated device: nothing is computed, and
the peak device memory printed is what the allocator would hold on a GPU.
Side by side with transformers + peft (+ bitsandbytes) on the same GPU: kernels/gpu/run.sh,
described in kernels/NOTES.md.

CPU benchmarks are cargo examples: see BENCHMARKS.md.")]
    Bench {
        #[arg(long, default_value = "auto")]
        device: String,
        /// Also write the results as JSON to FILE (rewritten after every row or step).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Train a whole model of this shape instead of timing kernels.
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
        /// With --model: untimed steps first.
        #[arg(long, default_value_t = 3, value_name = "N")]
        warmup: usize,
        /// With --model: timed steps.
        #[arg(long, default_value_t = 10, value_name = "N")]
        steps: usize,
        /// With --model: fewer layers than the shape has (a quick look).
        #[arg(long, value_name = "N")]
        layers: Option<usize>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum InspectFormat {
    Text,
    Jsonl,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List entries, most recently used first.
    #[command(after_help = "Example:\n  recipe cache ls --cache-dir recipes/.recipe/cache")]
    Ls {
        #[arg(
            long,
            value_name = "DIR",
            default_value = ".recipe/cache",
            env = "RECIPE_CACHE"
        )]
        cache_dir: PathBuf,
    },
    /// Prune entries by age and total size (least recently used first).
    #[command(after_help = "Example:\n  recipe cache gc --max-size 20GB --older-than 14d")]
    Gc {
        #[arg(
            long,
            value_name = "DIR",
            default_value = ".recipe/cache",
            env = "RECIPE_CACHE"
        )]
        cache_dir: PathBuf,
        /// Keep the cache under this size, e.g. 20GB.
        #[arg(long)]
        max_size: Option<String>,
        /// Drop entries unused for this long, e.g. 14d, 12h.
        #[arg(long)]
        older_than: Option<String>,
    },
}

fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match cli.cmd {
        Cmd::Run {
            r,
            plan,
            format,
            jobs,
            only,
            until,
            device,
            allow_large,
        } => {
            if plan {
                cmd_plan(&r, format)
            } else {
                cmd_run(
                    &r,
                    RunOptions {
                        jobs,
                        only,
                        until,
                        device,
                        progress: std::io::stderr().is_terminal(),
                    },
                    allow_large,
                )
            }
        }
        Cmd::Plan { r, format } => cmd_plan(&r, format),
        Cmd::Explain { kind } => cmd_explain(kind.as_deref()),
        Cmd::Report {
            run_dirs,
            rows,
            plot,
        } => cmd_reports(&run_dirs, rows, plot.as_deref()),
        Cmd::Cache { cmd } => cmd_cache(cmd),
        Cmd::Inspect {
            r,
            step,
            split,
            n,
            format,
        } => cmd_inspect(&r, &step, &split, n, format),
        Cmd::Merge {
            model,
            adapter,
            out,
            dtype,
            max_shard_size,
            gguf,
            gguf_dtype,
        } => match crate::export::gguf::GgufDtype::parse(&gguf_dtype) {
            None if gguf.is_some() => fail(&format!(
                "--gguf-dtype `{gguf_dtype}`: expected f16, bf16, q8_0 or q4_0"
            )),
            dt => match cmd_merge(&model, &adapter, &out, &dtype, &max_shard_size) {
                0 => gguf
                    .zip(dt)
                    .map_or(0, |(g, dt)| cmd_merge_gguf(&out, &g, dt)),
                rc => rc,
            },
        },
        Cmd::Generate(a) => crate::gen_cli::generate_cmd(&a),
        Cmd::Chat(a) => crate::gen_cli::chat_cmd(&a),
        Cmd::Serve(a) => crate::serve::serve_cmd(&a),
        Cmd::Init(a) => crate::init::init_cmd(&a),
        Cmd::Selftest { device } => cmd_selftest(&device),
        Cmd::Bench {
            device,
            json,
            model: Some(model),
            warmup,
            steps,
            layers,
        } => cmd_train_bench(&device, json, &model, warmup, steps, layers),
        Cmd::Bench { device, json, .. } => cmd_bench(&device, json),
    }
}

fn fail(msg: &str) -> i32 {
    eprintln!("error: {msg}");
    1
}

/// Load, validate, and build the DAG. Prints diagnostics; `Err(2)` on errors.
fn prepare(
    r: &RecipeArgs,
    plan_only: bool,
) -> Result<(Checked, crate::plan::Dag, Vec<Diagnostic>), i32> {
    let (recipe, mut diags) = crate::recipe::load(&r.file, &r.sets);
    let color = color_enabled();
    let checked = check(recipe, plan_only, &mut diags);
    let dag = build_dag(&checked, &mut diags);
    crate::plan::preflight(&checked, &mut diags);
    let (errors, warnings): (Vec<_>, Vec<_>) = diags.into_iter().partition(Diagnostic::is_error);
    let srcs = &checked.recipe.sources;
    if !errors.is_empty() {
        let mut all = errors;
        all.extend(warnings);
        eprint!("{}", render_all(&all, srcs, color));
        return Err(2);
    }
    for w in &warnings {
        eprint!("{}", w.render(srcs, color));
    }
    match dag {
        Some(d) => Ok((checked, d, warnings)),
        None => Err(2),
    }
}

fn open_cache(r: &RecipeArgs, checked: &Checked) -> Result<Cache, i32> {
    let root = crate::cache::default_root(&checked.recipe.dir, r.cache_dir.as_deref());
    Cache::open(&root).map_err(|e| {
        eprintln!("error: {e:#}");
        1
    })
}

fn cmd_plan(r: &RecipeArgs, format: Format) -> i32 {
    let (checked, dag, warnings) = match prepare(r, true) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let cache = match open_cache(r, &checked) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let hasher = FileHasher::open(&cache.root);
    let plan = match make_plan(&checked, &dag, &cache, &hasher) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    for line in crate::plan::above_machine_memory(&plan, None) {
        eprintln!("warning: {line}; `recipe run` will need --allow-large");
    }
    match format {
        Format::Text => print!(
            "{}",
            render_text(
                &checked,
                &plan,
                &cache,
                std::io::stdout().is_terminal() && color_enabled()
            )
        ),
        Format::Json => {
            let ws: Vec<String> = warnings
                .iter()
                .map(|w| {
                    w.render(&checked.recipe.sources, false)
                        .trim_end()
                        .to_string()
                })
                .collect();
            println!("{}", render_json(&checked, &plan, &cache, &ws))
        }
    }
    0
}

fn cmd_run(r: &RecipeArgs, opts: RunOptions, allow_large: bool) -> i32 {
    let t0 = Instant::now();
    // Bad flags fail before any step runs.
    if let Err(e) = opts.device.parse::<crate::cuda::device::DeviceRequest>() {
        eprintln!("error: --device: {e}");
        return 2;
    }
    let (checked, dag, _) = match prepare(r, false) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let cache = match open_cache(r, &checked) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let hasher = FileHasher::open(&cache.root);
    let plan = match make_plan(&checked, &dag, &cache, &hasher) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let chosen = crate::run::selection(&checked, &plan, &opts).ok();
    let too_large = crate::plan::above_machine_memory(&plan, chosen.as_deref());
    if !too_large.is_empty() && !allow_large {
        for line in &too_large {
            eprintln!("error: {line}");
        }
        eprintln!("pass --allow-large to run anyway");
        return 2;
    }
    match execute(&checked, &plan, &cache, &opts) {
        Ok(s) => {
            eprintln!(
                "done: {} ran, {} cached in {}",
                s.ran.len(),
                s.cached.len(),
                fmt_secs(t0.elapsed().as_secs_f64())
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn cmd_explain(kind: Option<&str>) -> i32 {
    match kind {
        None => {
            println!("step kinds (recipe explain KIND shows every key):");
            for s in crate::steps::KINDS {
                println!("  {:<14} {}", s.kind(), s.about());
            }
            0
        }
        Some(k) => {
            let Some(s) = crate::steps::find(k) else {
                eprintln!(
                    "error: unknown step kind `{k}`; known kinds: {}",
                    crate::steps::kind_names().join(", ")
                );
                return 2;
            };
            println!("{} — {}\n", s.kind(), s.about());
            for p in s.params().iter().chain(crate::steps::COMMON) {
                let d = match (p.required, p.default) {
                    (true, _) => "required".to_string(),
                    (false, Some(d)) => format!("default {d}"),
                    (false, None) => "optional".to_string(),
                };
                println!(
                    "  {:<28} {:<16} {}\n  {:<28} {}",
                    p.name,
                    d,
                    p.ty.describe(),
                    "",
                    p.doc
                );
            }
            0
        }
    }
}

fn cmd_cache(cmd: CacheCmd) -> i32 {
    match cmd {
        CacheCmd::Ls { cache_dir } => {
            let cache = match Cache::open_existing(&cache_dir) {
                Ok(c) => c,
                Err(e) => return fail(&format!("{e:#}")),
            };
            let entries = cache.list();
            let total: u64 = entries.iter().map(|(m, _)| m.size_bytes).sum();
            println!(
                "{:<12} {:<14} {:<16} {:>10} {:>9}  recipe",
                "key", "kind", "step", "size", "wall"
            );
            for (m, _) in &entries {
                println!(
                    "{:<12} {:<14} {:<16} {:>10} {:>9}  {}",
                    &m.key[..12.min(m.key.len())],
                    m.kind,
                    m.step,
                    crate::util::human_bytes(m.size_bytes),
                    fmt_secs(m.wall_secs),
                    m.recipe
                );
            }
            println!(
                "{} entries, {}",
                entries.len(),
                crate::util::human_bytes(total)
            );
            0
        }
        CacheCmd::Gc {
            cache_dir,
            max_size,
            older_than,
        } => {
            let cache = match Cache::open_existing(&cache_dir) {
                Ok(c) => c,
                Err(e) => return fail(&format!("{e:#}")),
            };
            let max = match max_size.as_deref().map(crate::util::parse_size) {
                Some(None) => return fail("--max-size: not a size (e.g. 20GB, 500MB)"),
                Some(Some(v)) => Some(v),
                None => None,
            };
            let age = match older_than.as_deref().map(crate::util::parse_duration) {
                Some(None) => return fail("--older-than: not a duration (e.g. 14d, 12h)"),
                Some(Some(v)) => Some(v),
                None => None,
            };
            match cache.gc(max, age) {
                Ok((n, bytes)) => {
                    println!(
                        "removed {n} entries, freed {}",
                        crate::util::human_bytes(bytes)
                    );
                    0
                }
                Err(e) => fail(&format!("{e:#}")),
            }
        }
    }
}

/// `recipe report A [B ...] [--plot PNG]`: each run's report (headed "run k: DIR" when
/// there are several), then the overlay plot of their metrics.jsonl.
fn cmd_reports(dirs: &[PathBuf], rows: usize, plot: Option<&Path>) -> i32 {
    for (k, dir) in dirs.iter().enumerate() {
        if dirs.len() > 1 {
            println!(
                "{}run {}: {}",
                if k > 0 { "\n" } else { "" },
                k + 1,
                dir.display()
            );
        }
        let rc = cmd_report(dir, rows);
        if rc != 0 {
            return rc;
        }
    }
    let Some(png) = plot else { return 0 };
    let mut runs = Vec::new();
    for dir in dirs {
        match crate::eval::report::read_train_metrics(&dir.join("metrics.jsonl")) {
            Ok(r) => runs.push(r),
            Err(e) => return fail(&format!("--plot: {e}")),
        }
    }
    match crate::eval::plot::plot_overlay(&runs, png, 800, 500) {
        Ok(()) => {
            eprintln!("wrote {}", png.display());
            0
        }
        Err(e) => fail(&format!("{e}")),
    }
}

fn cmd_report(dir: &Path, rows: usize) -> i32 {
    let mut shown = false;
    let m = dir.join("metrics.jsonl");
    if m.is_file() {
        match crate::eval::report::read_train_metrics(&m) {
            Ok(recs) => {
                print!("{}", crate::eval::report::render_train_summary(&recs, rows));
                shown = true;
            }
            Err(e) => return fail(&format!("{e}")),
        }
    }
    let j = dir.join("metrics.json");
    if j.is_file() {
        match std::fs::read_to_string(&j) {
            Ok(t) => {
                println!("{}", t.trim_end());
                shown = true;
            }
            Err(e) => return fail(&format!("cannot read `{}`: {e}", j.display())),
        }
    }
    if !shown {
        return fail(&format!(
            "`{}` has no metrics.jsonl (train) or metrics.json (evaluate)",
            dir.display()
        ));
    }
    0
}

fn cmd_inspect(r: &RecipeArgs, step: &str, split: &str, n: usize, format: InspectFormat) -> i32 {
    // The split names a file in the cache entry.
    if !crate::recipe::is_safe_name(split) {
        eprintln!(
            "error: --split `{split}`: expected {}",
            crate::recipe::SAFE_NAME
        );
        return 2;
    }
    let (checked, dag, _) = match prepare(r, false) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let cache = match open_cache(r, &checked) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let plan = match make_plan(&checked, &dag, &cache, &FileHasher::open(&cache.root)) {
        Ok(p) => p,
        Err(e) => return fail(&format!("{e:#}")),
    };
    let Some(ps) = plan.get(step) else {
        return fail(&format!("no step named `{step}` in `{}`", r.file.display()));
    };
    let dir = match cache.lookup(&ps.key) {
        Some(d) => d,
        // A data step is cheap: run it and what it needs first, as `run --until` would.
        None if matches!(ps.kind, "load.dataset" | "template" | "tokenize") => {
            eprintln!(
                "step `{step}` is not cached ({}): running it first",
                ps.reason
            );
            let opts = RunOptions {
                jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
                only: None,
                until: Some(step.to_string()),
                device: "cpu".into(),
                progress: std::io::stderr().is_terminal(),
            };
            if let Err(e) = execute(&checked, &plan, &cache, &opts) {
                return fail(&format!("{e:#}"));
            }
            match cache.lookup(&ps.key) {
                Some(d) => d,
                None => return fail(&format!("step `{step}` ran but left no cache entry")),
            }
        }
        None => {
            return fail(&format!(
                "step `{step}` is not cached ({}); run `recipe run {} --until {step}` first",
                ps.reason,
                r.file.display()
            ))
        }
    };
    let result = (|| -> anyhow::Result<()> {
        match ps.kind {
            "tokenize" => {
                let path = dir.join(format!("{split}.tokens"));
                let ds = crate::text::TokenDataset::open(&path)?;
                let model = checked.steps[step]
                    .refs
                    .get("model")
                    .and_then(|m| plan.get(m));
                let bundle = match model.and_then(|m| cache.lookup(&m.key)) {
                    Some(mdir) => {
                        let input = crate::steps::InputRef {
                            step: String::new(),
                            kind: "load.model",
                            dir: mdir,
                            params: Default::default(),
                        };
                        let dirs = crate::steps::io::model_dirs(&input)?;
                        Some(crate::text::TokenizerBundle::from_dir(&dirs.tokenizer)?)
                    }
                    None => None,
                };
                let color = std::io::stdout().is_terminal() && color_enabled();
                for i in 0..n.min(ds.len()) {
                    let row = ds.get(i);
                    match (format, &bundle) {
                        (InspectFormat::Jsonl, _) | (_, None) => {
                            println!("{}", crate::text::row_json(&row))
                        }
                        (InspectFormat::Text, Some(b)) => {
                            println!("--- example {i}");
                            println!("{}", crate::text::inspect_text(b, &row, color)?);
                        }
                    }
                }
            }
            _ => {
                let seg = dir.join(format!("{split}.segments.jsonl"));
                let plain = dir.join(format!("{split}.jsonl"));
                let path = if seg.is_file() { seg } else { plain };
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    anyhow::anyhow!("step `{step}` has no `{}`: {e}", path.display())
                })?;
                for line in text.lines().take(n) {
                    println!("{line}");
                }
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => 0,
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// `auto|cpu|cuda[:N]` -> the CUDA ordinal to use, or an exit code.
fn cuda_ordinal(spec: &str) -> Result<usize, i32> {
    match crate::cuda::Device::resolve(spec) {
        Ok((crate::cuda::Device::Cuda(n), line)) => {
            eprintln!("{line}");
            Ok(n)
        }
        Ok((crate::cuda::Device::Cpu, line)) => {
            eprintln!("{line}");
            eprintln!(
                "nothing to do on the CPU: the CUDA kernels' CPU twins are tested by `cargo test`"
            );
            Err(0)
        }
        Err(e) => Err(fail(&format!("{e:#}"))),
    }
}

fn cmd_selftest(device: &str) -> i32 {
    let n = match cuda_ordinal(device) {
        Ok(n) => n,
        Err(c) => return c,
    };
    match crate::devtools::selftest::selftest(n, &mut std::io::stdout()) {
        Ok(r) if r.passed() => 0,
        Ok(_) => fail("selftest: some kernels FAILED (see above)"),
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn cmd_bench(device: &str, json: Option<PathBuf>) -> i32 {
    let n = match cuda_ordinal(device) {
        Ok(n) => n,
        Err(c) => return c,
    };
    let o = crate::devtools::bench::BenchOptions {
        json,
        ..Default::default()
    };
    match crate::devtools::bench::bench(n, &mut std::io::stdout(), &o) {
        Ok(r) if r.failed.is_empty() => 0,
        Ok(r) => fail(&format!("{} row group(s) failed (above)", r.failed.len())),
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn cmd_train_bench(
    device: &str,
    json: Option<PathBuf>,
    model: &str,
    warmup: usize,
    steps: usize,
    layers: Option<usize>,
) -> i32 {
    use crate::devtools::train_bench as tb;
    let run = || -> anyhow::Result<()> {
        let mut shape = tb::shape(model)?;
        match layers {
            Some(0) => anyhow::bail!("--layers 0: a model needs at least one layer"),
            Some(l) => shape.layers = l,
            None => {}
        }
        if steps == 0 {
            anyhow::bail!("--steps 0: nothing would be timed");
        }
        let (be, line) = crate::backend::open_cuda(device, "auto")?;
        eprintln!("{line}");
        let o = tb::TrainBenchOptions {
            shape,
            warmup,
            steps,
            json,
            no_peak: false,
        };
        tb::train_bench(be, &mut std::io::stdout(), &o).map(|_| ())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// `recipe merge --gguf FILE`: the merged dir `out` as GGUF (+ Modelfile beside FILE).
fn cmd_merge_gguf(out: &Path, file: &Path, dt: crate::export::gguf::GgufDtype) -> i32 {
    let r = crate::export::HfModel::load(out)
        .and_then(|m| crate::export::gguf::export_gguf(&m, out, file, dt));
    match r {
        Ok(r) => {
            eprintln!(
                "wrote {} ({}, {}, {} tensors, {}) and {}",
                file.display(),
                r.arch,
                dt.name(),
                r.tensors,
                crate::util::human_bytes(r.bytes),
                r.modelfile.display()
            );
            for n in &r.notes {
                eprintln!("note: {n}");
            }
            0
        }
        Err(err) => fail(&format!("--gguf `{}`: {err}", file.display())),
    }
}

fn cmd_merge(model: &Path, adapter: &Path, out: &Path, dtype: &str, shard: &str) -> i32 {
    let Some(dt) = crate::export::OutDtype::parse(dtype) else {
        return fail(&format!(
            "--dtype `{dtype}`: expected auto, f32, bf16 or f16"
        ));
    };
    let Some(max) = crate::util::parse_size(shard) else {
        return fail(&format!(
            "--max-shard-size `{shard}`: not a size (e.g. 2GB)"
        ));
    };
    if out.exists() {
        return fail(&format!("--out `{}` already exists", out.display()));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.tmp.{}",
        out.file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    match crate::export::merge_and_export(model, adapter, &tmp, dt, max) {
        Ok((m, e)) => {
            if let Err(err) = std::fs::rename(&tmp, out) {
                return fail(&format!("cannot write `{}`: {err}", out.display()));
            }
            eprintln!(
                "merged {} weights ({} replaced, {} dequantized) into {}: {} shard(s), {}",
                m.merged.len(),
                m.replaced.len(),
                m.dequantized.len(),
                out.display(),
                e.shards,
                crate::util::human_bytes(e.total_size)
            );
            0
        }
        Err(err) => {
            let _ = std::fs::remove_dir_all(&tmp);
            fail(&format!("{err}"))
        }
    }
}
