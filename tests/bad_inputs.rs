//! The bad-input corpus: recipes, model dirs, data, adapters and CLI flags
//! that must each end in one precise error (exact stderr, exact exit code),
//! never a panic, a hang or a deleted file. Add a case to `corpus()`;
//! `{dir}` in the expected text stands for the case's workspace.
//!
//! Outputs, panics and the cache, which need more than one command, have
//! their own tests below the corpus.

use std::path::{Path, PathBuf};

mod common;
use common::*;

const LLAMA: &str = r#"{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 128, "torch_dtype": "float32"}"#;

/// A workspace with a tiny model config and two data files (as in cli_runner.rs),
/// canonicalized so paths in messages are stable.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().canonicalize().unwrap();
    write(&root, "model/config.json", LLAMA);
    write(
        &root,
        "a.jsonl",
        "{\"text\": \"one\"}\n{\"text\": \"two\"}\n",
    );
    write(&root, "b.jsonl", "{\"text\": \"three\"}\n");
    (d, root)
}

/// A model and a dataset feeding a train step; cases append keys to `[steps.train]`.
const TRAIN: &str = "[steps.base]\nkind = \"load.model\"\npath = \"model\"\n\n\
[steps.data]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n\n\
[steps.prompts]\nkind = \"template\"\ndata = \"data\"\ntemplate = \"plain\"\n\n\
[steps.tokens]\nkind = \"tokenize\"\ndata = \"prompts\"\nmodel = \"base\"\n\n\
[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\n";

/// A model-only recipe, for the config.json cases.
const MODEL: &str = "[steps.base]\nkind = \"load.model\"\npath = \"model\"\n";

struct Case {
    name: &'static str,
    files: Vec<(String, String)>,
    /// `{fixtures}` stands for tests/fixtures.
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    code: i32,
    stderr: String,
}

fn case(
    name: &'static str,
    files: &[(&str, &str)],
    args: &[&'static str],
    code: i32,
    stderr: &str,
) -> Case {
    Case {
        name,
        files: files
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        code,
        stderr: stderr.to_string(),
    }
}

/// `plan r.toml` on one recipe text.
fn plan(name: &'static str, recipe: &str, stderr: &str) -> Case {
    case(name, &[("r.toml", recipe)], &["plan", "r.toml"], 2, stderr)
}

/// `plan r.toml` on a model-only recipe with this config.json.
fn config(name: &'static str, cfg: &str, stderr: &str) -> Case {
    case(
        name,
        &[("r.toml", MODEL), ("model/config.json", cfg)],
        &["plan", "r.toml"],
        2,
        stderr,
    )
}

/// `merge` of the llama fixture with an adapter dir holding this adapter_config.json
/// and the fixture's weights (a file body `@fixtures/<path>` copies that fixture).
fn adapter(name: &'static str, cfg: &str, stderr: &str) -> Case {
    case(
        name,
        &[
            ("ad/adapter_config.json", cfg),
            (
                "ad/adapter_model.safetensors",
                "@fixtures/engine/llama/adapter/adapter_model.safetensors",
            ),
        ],
        &[
            "merge",
            "--model",
            "{fixtures}/engine/llama",
            "--adapter",
            "ad",
            "--out",
            "merged",
        ],
        1,
        stderr,
    )
}

fn train(name: &'static str, keys: &str, stderr: &str) -> Case {
    plan(name, &format!("{TRAIN}{keys}"), stderr)
}

fn corpus() -> Vec<Case> {
    let mut v = vec![
        // ---- recipe text ----
        plan(
            "toml_syntax_error_top_level",
            "[steps.a\nkind = \"load.dataset\"\n",
            "error: invalid TOML: unclosed table, expected `]`\n --> r.toml:1:9\n  |\n1 | [steps.a\n  |         ^\n\n1 error in recipe\n",
        ),
    ];
    v.extend([
        plan(
            "toml_syntax_error_later_line",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\nlimit = = 3\n",
            "error: invalid TOML: extra `=`, expected nothing\n --> r.toml:4:9\n  |\n4 | limit = = 3\n  |         ^\n\n1 error in recipe\n",
        ),
        plan(
            "toml_duplicate_key",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\npath = \"b.jsonl\"\n",
            "error: invalid TOML: duplicate key\n --> r.toml:4:1\n  |\n4 | path = \"b.jsonl\"\n  | ^^^^\n\n1 error in recipe\n",
        ),
        plan(
            "toml_integer_too_large",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\nlimit = 99999999999999999999\n",
            "error: invalid integer\n --> r.toml:4:9\n  |\n4 | limit = 99999999999999999999\n  |         ^^^^^^^^^^^^^^^^^^^^\n\n1 error in recipe\n",
        ),
        plan("empty_recipe", "", "error: the recipe has no steps\n = help: add a `[steps.<id>]` table with a `kind`\n\n1 error in recipe\n"),
        plan(
            "unknown_top_level_key",
            "[step.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
            "error: key `step`: unknown top-level key `step`\n --> r.toml:1:2\n  |\n1 | [step.a]\n  |  ^^^^\n  = expected: one of `recipe`, `vars`, `steps`, `include`\n  = got: `step`\n  = help: did you mean `steps`?\n\n1 error in recipe\n",
        ),
        plan("steps_not_a_table", "steps = 3\n", "error: key `steps`: wrong type\n --> r.toml:1:9\n  |\n1 | steps = 3\n  |         ^\n  = expected: a table\n  = got: integer 3\n\n1 error in recipe\n"),
        plan("step_not_a_table", "[steps]\na = 3\n", "error: step `a`, key `a`: wrong type\n --> r.toml:2:5\n  |\n2 | a = 3\n  |     ^\n  = expected: a table `[steps.<id>]`\n  = got: integer 3\n\n1 error in recipe\n"),
        plan("missing_kind", "[steps.a]\npath = \"a.jsonl\"\n", "error: step `a`, key `kind`: missing `kind`\n --> r.toml:1:8\n  |\n1 | [steps.a]\n  |        ^\n  = expected: one of load.dataset, load.model, template, tokenize, quantize, train, evaluate, merge, export, generate\n\n1 error in recipe\n"),
        plan("kind_not_a_string", "[steps.a]\nkind = 3\npath = \"a.jsonl\"\n", "error: step `a`, key `kind`: wrong type\n --> r.toml:2:8\n  |\n2 | kind = 3\n  |        ^\n  = expected: a string\n  = got: integer 3\n\n1 error in recipe\n"),
        plan(
            "step_id_is_a_path",
            "[steps.\"/some/dir/config\"]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
            "error: invalid step id \"/some/dir/config\"\n --> r.toml:1:8\n  |\n1 | [steps.\"/some/dir/config\"]\n  |        ^^^^^^^^^^^^^^^^^^\n  = expected: 1 to 128 letters, digits, `_`, `-` or `.`, not starting with `.`\n  = help: a step id names files in the cache; rename the step\n\n1 error in recipe\n",
        ),
        plan(
            "step_id_dot_dot",
            "[steps.\"..\"]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
            "error: invalid step id \"..\"\n --> r.toml:1:8\n  |\n1 | [steps.\"..\"]\n  |        ^^^^\n  = expected: 1 to 128 letters, digits, `_`, `-` or `.`, not starting with `.`\n  = help: a step id names files in the cache; rename the step\n\n1 error in recipe\n",
        ),
        plan(
            "step_id_hidden",
            "[steps.\".cache\"]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
            "error: invalid step id \".cache\"\n --> r.toml:1:8\n  |\n1 | [steps.\".cache\"]\n  |        ^^^^^^^^\n  = expected: 1 to 128 letters, digits, `_`, `-` or `.`, not starting with `.`\n  = help: a step id names files in the cache; rename the step\n\n1 error in recipe\n",
        ),
        plan(
            "step_id_with_space",
            "[steps.\"my data\"]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
            "error: invalid step id \"my data\"\n --> r.toml:1:8\n  |\n1 | [steps.\"my data\"]\n  |        ^^^^^^^^^\n  = expected: 1 to 128 letters, digits, `_`, `-` or `.`, not starting with `.`\n  = help: a step id names files in the cache; rename the step\n\n1 error in recipe\n",
        ),
        plan(
            "unknown_recipe_header_key",
            "[recipe]\nnmae = \"x\"\n[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
            "error: key `recipe.nmae`: unknown key `nmae` in [recipe]\n --> r.toml:2:1\n  |\n2 | nmae = \"x\"\n  | ^^^^\n  = expected: `name` or `description`\n\n1 error in recipe\n",
        ),
        plan(
            "recipe_name_not_a_string",
            "[recipe]\nname = 3\n[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
            "error: key `recipe.name`: wrong type\n --> r.toml:2:8\n  |\n2 | name = 3\n  |        ^\n  = expected: a string\n  = got: integer 3\n\n1 error in recipe\n",
        ),
        plan("include_missing_file", "include = [\"nope.toml\"]\n", "error: key `include`: included file `nope.toml` does not exist\n --> r.toml:1:12\n  |\n1 | include = [\"nope.toml\"]\n  |            ^^^^^^^^^^^\n\n1 error in recipe\n"),
        plan("include_itself", "include = [\"r.toml\"]\n", "error: key `include`: include cycle: `r.toml` includes itself\n --> r.toml:1:12\n  |\n1 | include = [\"r.toml\"]\n  |            ^^^^^^^^\n\n1 error in recipe\n"),
        plan("include_not_strings", "include = 3\n", "error: key `include`: wrong type\n --> r.toml:1:11\n  |\n1 | include = 3\n  |           ^\n  = expected: an array of file paths\n  = got: integer 3\n\n1 error in recipe\n"),
        case(
            "toml_syntax_error_in_include",
            &[("r.toml", "include = [\"common.toml\"]\n"), ("common.toml", "[steps.a]\nkind = \n")],
            &["plan", "r.toml"],
            2,
            "error: invalid TOML: string values must be quoted, expected literal string\n --> common.toml:2:8\n  |\n2 | kind = \n  |        ^\n\n1 error in recipe\n",
        ),
        plan(
            "unknown_var",
            "[vars]\nfile = \"a.jsonl\"\n[steps.a]\nkind = \"load.dataset\"\npath = \"${fiel}\"\n",
            "error: step `a`, key `path`: unknown var `fiel`\n --> r.toml:5:8\n  |\n5 | path = \"${fiel}\"\n  |        ^^^^^^^^^\n  = expected: one of `file`\n\n1 error in recipe\n",
        ),
        plan(
            "var_cycle",
            "[vars]\na = \"${b}/x\"\nb = \"${a}\"\n[steps.d]\nkind = \"load.dataset\"\npath = \"${a}\"\n",
            "error: key `vars.a`: var cycle: a -> b -> a\n --> r.toml:2:5\n  |\n2 | a = \"${b}/x\"\n  |     ^^^^^^^^\n  = help: a var cannot use its own value; remove one of these references\n\n1 error in recipe\n",
        ),
        plan(
            "var_uses_itself",
            "[vars]\na = \"x${a}\"\n[steps.d]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
            "error: key `vars.a`: var cycle: a -> a\n --> r.toml:2:5\n  |\n2 | a = \"x${a}\"\n  |     ^^^^^^^\n  = help: a var cannot use its own value; remove one of these references\n\n1 error in recipe\n",
        ),
        plan(
            "var_table_inside_string",
            "[vars]\nt = { x = 1 }\n[steps.d]\nkind = \"load.dataset\"\npath = \"a${t}.jsonl\"\n",
            "error: key `path`: var `t` is not a scalar and cannot be put inside a string\n --> r.toml:5:8\n  |\n5 | path = \"a${t}.jsonl\"\n  |        ^^^^^^^^^^^^^\n\n1 error in recipe\n",
        ),
        plan(
            "wrong_type",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\nlimit = \"many\"\n",
            "error: step `a`, key `limit`: wrong type\n --> r.toml:4:9\n  |\n4 | limit = \"many\"\n  |         ^^^^^^\n  = expected: an integer\n  = got: string \"many\"\n\n1 error in recipe\n",
        ),
        plan(
            "datetime_value",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\nlimit = 1979-05-27\n",
            "error: step `a`, key `limit`: wrong type\n --> r.toml:4:9\n  |\n4 | limit = 1979-05-27\n  |         ^^^^^^^^^^\n  = expected: an integer\n  = got: datetime 1979-05-27\n\n1 error in recipe\n",
        ),
        plan("missing_required_key", "[steps.a]\nkind = \"load.dataset\"\n", "error: step `a`, key `path`: missing required key `path`\n --> r.toml:1:8\n  |\n1 | [steps.a]\n  |        ^\n  = expected: a path (string) (a data file, a folder of shards, or a Hugging Face save_to_disk folder)\n\n1 error in recipe\n"),
        plan(
            "invalid_enum_value",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\nformat = \"alpacca\"\n",
            "error: step `a`, key `format`: invalid value \"alpacca\"\n --> r.toml:4:10\n  |\n4 | format = \"alpacca\"\n  |          ^^^^^^^^^\n  = expected: one of \"alpaca\", \"conversations\", \"text\", \"text_label\", \"prompt_response\", \"raw\"\n  = got: \"alpacca\"\n  = help: did you mean \"alpaca\"?\n\n1 error in recipe\n",
        ),
        plan(
            "after_itself",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\nafter = [\"a\"]\n",
            "error: step `a`: dependency cycle: a -> a\n --> r.toml:4:9\n  |\n4 | after = [\"a\"]\n  |         ^^^^^\n  = help: a step cannot depend on its own output; remove one of these references\n\n1 error in recipe\n",
        ),
        // ---- outputs ----
        plan(
            "output_is_recipe_dir",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\noutput = \".\"\n",
            "error: step `a`, key `output`: `{dir}` holds the recipe `{dir}/r.toml`\n --> r.toml:4:10\n  |\n4 | output = \".\"\n  |          ^^^\n  = help: an output must not hold the recipe or the step's inputs; choose a new path\n\n1 error in recipe\n",
        ),
        plan(
            "output_is_root",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\noutput = \"/\"\n",
            "error: step `a`, key `output`: `/` holds the recipe `{dir}/r.toml`\n --> r.toml:4:10\n  |\n4 | output = \"/\"\n  |          ^^^\n  = help: an output must not hold the recipe or the step's inputs; choose a new path\n\n1 error in recipe\n",
        ),
        case(
            "output_is_a_users_dir",
            &[
                ("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\noutput = \"notes\"\n"),
                ("notes/todo.txt", "mine\n"),
            ],
            &["plan", "r.toml"],
            2,
            "error: step `a`, key `output`: `{dir}/notes` already exists and was not written by recipe\n --> r.toml:4:10\n  |\n4 | output = \"notes\"\n  |          ^^^^^^^\n  = help: recipe only replaces an output it wrote (marked by `.recipe-output`); choose a path that does not exist, or remove this one\n\n1 error in recipe\n",
        ),
        plan(
            "output_is_a_file",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\noutput = \"b.jsonl\"\n",
            "error: step `a`, key `output`: `{dir}/b.jsonl` already exists and was not written by recipe\n --> r.toml:4:10\n  |\n4 | output = \"b.jsonl\"\n  |          ^^^^^^^^^\n  = help: recipe only replaces an output it wrote (marked by `.recipe-output`); choose a path that does not exist, or remove this one\n\n1 error in recipe\n",
        ),
        plan(
            "output_is_own_model_dir",
            "[steps.base]\nkind = \"load.model\"\npath = \"model\"\noutput = \"model\"\n",
            "error: step `base`, key `output`: `{dir}/model` is an input of this step\n --> r.toml:4:10\n  |\n4 | output = \"model\"\n  |          ^^^^^^^\n  = help: an output must not hold the recipe or the step's inputs; choose a new path\n\n1 error in recipe\n",
        ),
        plan(
            "two_steps_one_output",
            "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\noutput = \"out/x\"\n\
             [steps.b]\nkind = \"load.dataset\"\npath = \"b.jsonl\"\noutput = \"out/x\"\n",
            "error: step `b`, key `output`: `{dir}/out/x` is also the output of step `a`\n --> r.toml:8:10\n  |\n8 | output = \"out/x\"\n  |          ^^^^^^^\n\n1 error in recipe\n",
        ),
        // ---- train keys ----
        train("learning_rate_zero", "learning_rate = 0.0\n", "error: step `train`, key `learning_rate`: must be positive\n  --> r.toml:23:17\n   |\n23 | learning_rate = 0.0\n   |                 ^^^\n   = got: 0\n\n1 error in recipe\n"),
        train("learning_rate_nan", "learning_rate = nan\n", "error: step `train`, key `learning_rate`: wrong type\n  --> r.toml:23:17\n   |\n23 | learning_rate = nan\n   |                 ^^^\n   = expected: a number\n   = got: float NaN\n\n1 error in recipe\n"),
        train("rank_zero", "r = 0\n", "error: step `train`, key `r`: LoRA rank must be positive\n  --> r.toml:23:5\n   |\n23 | r = 0\n   |     ^\n   = got: 0\n\n1 error in recipe\n"),
        train("rank_i64_max", "r = 9223372036854775807\n", "error: step `train`, key `r`: LoRA rank above 4096\n  --> r.toml:23:5\n   |\n23 | r = 9223372036854775807\n   |     ^^^^^^^^^^^^^^^^^^^\n   = expected: 1..=4096 (usually 4 to 64)\n   = got: 9223372036854775807\n\n1 error in recipe\n"),
        train("rank_a_billion", "r = 1000000000\n", "error: step `train`, key `r`: LoRA rank above 4096\n  --> r.toml:23:5\n   |\n23 | r = 1000000000\n   |     ^^^^^^^^^^\n   = expected: 1..=4096 (usually 4 to 64)\n   = got: 1000000000\n\n1 error in recipe\n"),
        train("rank_float", "r = 1e9\n", "error: step `train`, key `r`: wrong type\n  --> r.toml:23:5\n   |\n23 | r = 1e9\n   |     ^^^\n   = expected: an integer\n   = got: float 1000000000\n\n1 error in recipe\n"),
        train("warmup_ratio_one", "warmup_ratio = 1.0\n", "error: step `train`, key `warmup_ratio`: must be in [0, 1)\n  --> r.toml:23:16\n   |\n23 | warmup_ratio = 1.0\n   |                ^^^\n   = got: 1\n\n1 error in recipe\n"),
        train("batch_size_negative", "batch_size = -2\n", "error: step `train`, key `batch_size`: must be positive\n  --> r.toml:23:14\n   |\n23 | batch_size = -2\n   |              ^^\n   = got: -2\n\n1 error in recipe\n"),
        train("train_device_banana", "device = \"banana\"\n", "error: step `train`, key `device`: unknown device\n  --> r.toml:23:10\n   |\n23 | device = \"banana\"\n   |          ^^^^^^^^\n   = expected: auto, cpu, cuda or cuda:N\n\n1 error in recipe\n"),
        plan(
            "train_model_wrong_kind",
            &TRAIN.replace("model = \"base\"\ndata = \"tokens\"", "model = \"data\"\ndata = \"tokens\""),
            "error: step `train`, key `model`: `data` is a `load.dataset` step\n  --> r.toml:21:9\n   |\n21 | model = \"data\"\n   |         ^^^^^^\n   = expected: the id of a load.model or quantize step\n   = got: a `load.dataset` step\n\n1 error in recipe\n",
        ),
        // Keys the typed params cannot take (silently clamped to 0 or wrapped before).
        train("logging_steps_negative", "logging_steps = -1\n", "error: step `train`, key `logging_steps`: must be >= 0\n  --> r.toml:23:17\n   |\n23 | logging_steps = -1\n   |                 ^^\n   = got: -1\n\n1 error in recipe\n"),
        train("seed_and_save_steps_negative", "seed = -1\nsave_steps = -5\n", "error: step `train`, key `save_steps`: must be >= 0\n  --> r.toml:24:14\n   |\n24 | save_steps = -5\n   |              ^^\n   = got: -5\n\nerror: step `train`, key `seed`: must be >= 0\n  --> r.toml:23:8\n   |\n23 | seed = -1\n   |        ^^\n   = got: -1\n\n2 errors in recipe\n"),
        plan(
            "evaluate_batch_size_zero",
            &format!("{TRAIN}[steps.eval]\nkind = \"evaluate\"\nmodel = \"base\"\ndata = \"tokens\"\nbatch_size = 0\n"),
            "error: step `eval`, key `batch_size`: must be positive\n  --> r.toml:27:14\n   |\n27 | batch_size = 0\n   |              ^\n   = got: 0\n\n1 error in recipe\n",
        ),
        plan(
            "evaluate_negative_counts",
            &format!("{TRAIN}[steps.eval]\nkind = \"evaluate\"\nmodel = \"base\"\ndata = \"tokens\"\nlimit = -3\nmax_new_tokens = -1\n"),
            "error: step `eval`, key `limit`: must be >= 0\n  --> r.toml:27:9\n   |\n27 | limit = -3\n   |         ^^\n   = got: -3\n\nerror: step `eval`, key `max_new_tokens`: must be >= 0\n  --> r.toml:28:18\n   |\n28 | max_new_tokens = -1\n   |                  ^^\n   = got: -1\n\n2 errors in recipe\n",
        ),
        plan(
            "generate_top_k_negative",
            &format!("{MODEL}[steps.gen]\nkind = \"generate\"\nmodel = \"base\"\nprompts = [\"hi\"]\ntop_k = -1\n"),
            "error: step `gen`, key `top_k`: must be >= 0\n --> r.toml:8:9\n  |\n8 | top_k = -1\n  |         ^^\n  = got: -1\n\n1 error in recipe\n",
        ),
        train("target_regex_invalid", "target_regex = \"(\"\n", "error: step `train`, key `target_regex`: invalid regex: regex parse error:\n    (\n    ^\nerror: unclosed group\n  --> r.toml:23:16\n   |\n23 | target_regex = \"(\"\n   |                ^^^\n\n1 error in recipe\n"),

        plan(
            "generate_device_banana",
            &format!("{MODEL}[steps.gen]\nkind = \"generate\"\nmodel = \"base\"\nprompts = [\"hi\"]\ndevice = \"banana\"\n"),
            "error: step `gen`, key `device`: invalid device 'banana': expected auto, cpu, cuda or cuda:N (N = GPU index, e.g. cuda:0)\n --> r.toml:8:10\n  |\n8 | device = \"banana\"\n  |          ^^^^^^^^\n\n1 error in recipe\n",
        ),
        plan(
            "generate_no_prompts",
            &format!("{MODEL}[steps.gen]\nkind = \"generate\"\nmodel = \"base\"\n"),
            "error: step `gen`, key `prompts`: give `prompts = [...]` or `data = \"<template step>\"`\n --> r.toml:4:8\n  |\n4 | [steps.gen]\n  |        ^^^\n\n1 error in recipe\n",
        ),
        // ---- model dirs (config.json) ----
        config(
            "config_zero_heads",
            r#"{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 0,
                "intermediate_size": 64, "vocab_size": 128}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"num_attention_heads\": must be at least 1\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_heads_do_not_divide",
            r#"{"model_type": "llama", "hidden_size": 30, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "vocab_size": 128}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"hidden_size\": 30 does not divide into num_attention_heads = 4 equal parts\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_kv_heads_do_not_divide",
            r#"{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 3, "intermediate_size": 64, "vocab_size": 128}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"num_key_value_heads\": 4 heads not divisible into 3 kv groups\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_zero_head_dim",
            r#"{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "head_dim": 0, "intermediate_size": 64, "vocab_size": 128}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"head_dim\": must be at least 1\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_zero_vocab",
            r#"{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "vocab_size": 0}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"vocab_size\": must be at least 1\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_gpt2_zero_heads",
            r#"{"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 0, "vocab_size": 128, "n_positions": 64}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"n_head\": must be at least 1\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_sizes_overflow",
            r#"{"model_type": "llama", "hidden_size": 4294967296, "num_hidden_layers": 4294967296,
                "num_attention_heads": 1, "intermediate_size": 4294967296, "vocab_size": 4294967296}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: the sizes describe more than 2^44 weights (hidden_size 4294967296, num_hidden_layers 4294967296, vocab_size 4294967296)\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_unsupported_model_type",
            r#"{"model_type": "mamba", "hidden_size": 32}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: unsupported model_type \"mamba\" (supported: llama, mistral, qwen2, qwen3, gemma3_text, qwen, chatglm, bloom, gpt2)\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        // load.model has no dtype or family key (nothing honoured them): a recipe that sets one
        // is told so, naming the key.
        case(
            "load_model_dtype_removed",
            &[
                ("r.toml", "[steps.base]\nkind = \"load.model\"\npath = \"model\"\ndtype = \"bf16\"\nfamily = \"llama\"\n"),
                ("model/config.json", r#"{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 128}"#),
            ],
            &["plan", "r.toml"],
            2,
            "error: step `base`, key `dtype`: unknown key\n --> r.toml:4:1\n  |\n4 | dtype = \"bf16\"\n  | ^^^^^\n  = expected: a key of `load.model` (see `recipe explain load.model`)\n  = got: `dtype`\n\n\
             error: step `base`, key `family`: unknown key\n --> r.toml:5:1\n  |\n5 | family = \"llama\"\n  | ^^^^^^\n  = expected: a key of `load.model` (see `recipe explain load.model`)\n  = got: `family`\n\n2 errors in recipe\n",
        ),
        config("config_not_json", "{\"model_type\": ", "error: step `base`, key `path`: {dir}/model/config.json: invalid JSON: EOF while parsing a value at line 1 column 15\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n"),
        config(
            "config_gpt2_embd_does_not_divide",
            r#"{"model_type": "gpt2", "n_embd": 30, "n_layer": 2, "n_head": 4, "vocab_size": 128, "n_positions": 64}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"n_embd\": 30 does not divide into n_head = 4 equal parts\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_bloom_does_not_divide",
            r#"{"model_type": "bloom", "hidden_size": 30, "n_layer": 2, "n_head": 4, "vocab_size": 128}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"hidden_size\": 30 does not divide into n_head = 4 equal parts\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_chatglm_zero_heads",
            r#"{"model_type": "chatglm", "hidden_size": 32, "num_layers": 2, "num_attention_heads": 0,
                "padded_vocab_size": 128, "ffn_hidden_size": 64}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"num_attention_heads\": must be at least 1\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_qwen_heads_do_not_divide",
            r#"{"model_type": "qwen", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 5,
                "intermediate_size": 128, "vocab_size": 128}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"hidden_size\": 32 does not divide into num_attention_heads = 5 equal parts\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        config(
            "config_negative_hidden",
            r#"{"model_type": "llama", "hidden_size": -32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 64, "vocab_size": 128}"#,
            "error: step `base`, key `path`: {dir}/model/config.json: key \"hidden_size\": expected an unsigned integer\n --> r.toml:3:8\n  |\n3 | path = \"model\"\n  |        ^^^^^^^\n\n1 error in recipe\n",
        ),
        // ---- command-line flags ----
        case(
            "set_unknown_var",
            &[("r.toml", "[vars]\nfile = \"a.jsonl\"\n[steps.a]\nkind = \"load.dataset\"\npath = \"${file}\"\n")],
            &["plan", "r.toml", "--set", "vars.fiel=b.jsonl"],
            2,
            "error: `--set`: unknown var `fiel`\n --> <command line>:1:7\n  |\n1 | --set vars.fiel=b.jsonl\n  |       ^^^^^^^^^\n  = expected: one of `file`\n\n1 error in recipe\n",
        ),
        case(
            "set_var_without_vars",
            &[("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n")],
            &["plan", "r.toml", "--set", "vars.lr=1"],
            2,
            "error: `--set`: unknown var `lr`\n --> <command line>:1:7\n  |\n1 | --set vars.lr=1\n  |       ^^^^^^^\n  = expected: a key of [vars] (the recipe has none)\n\n1 error in recipe\n",
        ),
        case(
            "set_without_equals",
            &[("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n")],
            &["plan", "r.toml", "--set", "steps.a.limit"],
            2,
            "error: `--set` needs KEY=VALUE\n --> <command line>:1:7\n  |\n1 | --set steps.a.limit\n  |       ^^^^^^^^^^^^^\n  = expected: e.g. `--set steps.train.max_steps=10` or `--set vars.lr=1e-4`\n  = got: `steps.a.limit`\n\n1 error in recipe\n",
        ),
        case(
            "set_bad_prefix",
            &[("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n")],
            &["plan", "r.toml", "--set", "step.a.limit=1"],
            2,
            "error: `--set` key must start with `vars.`, `steps.<id>.` or `recipe.`\n --> <command line>:1:7\n  |\n1 | --set step.a.limit=1\n  |       ^^^^^^^^^^^^\n  = got: `step.a.limit`\n\n1 error in recipe\n",
        ),
        case(
            "device_banana",
            &[("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n")],
            &["run", "r.toml", "--device", "banana"],
            2,
            "error: --device: invalid device 'banana': expected auto, cpu, cuda or cuda:N (N = GPU index, e.g. cuda:0)\n",
        ),
        case(
            "only_unknown_step",
            &[("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n")],
            &["run", "r.toml", "--only", "b"],
            1,
            "error: --only: no step named `b`\n",
        ),
        case(
            "until_unknown_step",
            &[("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n")],
            &["run", "r.toml", "--until", "b"],
            1,
            "error: --until: no step named `b`\n",
        ),
        case("recipe_file_missing", &[], &["plan", "nope.toml"], 2, "error: cannot read recipe `nope.toml`: No such file or directory (os error 2)\n\n1 error in recipe\n"),
        case(
            "inspect_split_escapes",
            &[("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n")],
            &["inspect", "r.toml", "--step", "a", "--split", "../../etc/passwd"],
            2,
            "error: --split `../../etc/passwd`: expected 1 to 128 letters, digits, `_`, `-` or `.`, not starting with `.`\n",
        ),
        case("explain_unknown_kind", &[], &["explain", "trian"], 2, "error: unknown step kind `trian`; known kinds: load.dataset, load.model, template, tokenize, quantize, train, evaluate, merge, export, generate\n"),
        case(
            "cache_gc_not_a_cache",
            &[("notes/todo.txt", "mine\n")],
            &["cache", "gc", "--cache-dir", "notes", "--max-size", "0B"],
            1,
            "error: `notes` is not a recipe cache (no CACHEDIR.TAG written by recipe); nothing removed\n",
        ),
        case("cache_ls_not_a_cache", &[], &["cache", "ls", "--cache-dir", "model"], 1, "error: `model` is not a recipe cache (no CACHEDIR.TAG written by recipe); nothing removed\n"),
        case(
            "cache_gc_bad_size",
            &[("c/CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n# created by recipe\n")],
            &["cache", "gc", "--cache-dir", "c", "--max-size", "lots"],
            1,
            "error: --max-size: not a size (e.g. 20GB, 500MB)\n",
        ),
        // ---- data rows (found when the step runs) ----
        case(
            "jsonl_row_not_json",
            &[
                ("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"bad.jsonl\"\n"),
                ("bad.jsonl", "{\"text\": \"one\"}\n{\"text\": \n"),
            ],
            &["run", "r.toml"],
            1,
            "a: failed\nerror: step `a` (load.dataset) failed: {dir}/bad.jsonl:2: invalid JSON at column 9: EOF while parsing a value\n",
        ),
        case(
            "jsonl_row_not_an_object",
            &[
                ("r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"bad.jsonl\"\n"),
                ("bad.jsonl", "{\"text\": \"one\"}\n[1, 2]\n"),
            ],
            &["run", "r.toml"],
            1,
            "a: failed\nerror: step `a` (load.dataset) failed: {dir}/bad.jsonl:2: expected a JSON object, got an array\n",
        ),
        // ---- adapters and merge flags ----
        case(
            "merge_base_has_no_weights",
            &[],
            &["merge", "--model", "model", "--adapter", "nope", "--out", "merged"],
            1,
            "error: model: no model.safetensors or model.safetensors.index.json (nor pytorch_model.bin or its index)\n",
        ),
        case(
            "merge_adapter_missing",
            &[],
            &["merge", "--model", "{fixtures}/engine/llama", "--adapter", "nope", "--out", "merged"],
            1,
            "error: nope: no adapter_config.json: not a PEFT adapter dir\n",
        ),
        case(
            "merge_out_exists",
            &[],
            &["merge", "--model", "model", "--adapter", "model", "--out", "model"],
            1,
            "error: --out `model` already exists\n",
        ),
        case(
            "merge_bad_dtype",
            &[],
            &["merge", "--model", "model", "--adapter", "a", "--out", "m", "--dtype", "f8"],
            1,
            "error: --dtype `f8`: expected auto, f32, bf16 or f16\n",
        ),
        case(
            "merge_bad_shard_size",
            &[],
            &["merge", "--model", "model", "--adapter", "a", "--out", "m", "--max-shard-size", "big"],
            1,
            "error: --max-shard-size `big`: not a size (e.g. 2GB)\n",
        ),
        adapter("adapter_config_not_json", "{\"r\": ", "error: ad/adapter_config.json: bad JSON: EOF while parsing a value at line 1 column 6\n"),
        adapter("adapter_not_lora", r#"{"peft_type": "IA3", "r": 4}"#, "error: ad/adapter_config.json: not a LoRA adapter config: missing field `lora_alpha`\n"),
        adapter(
            "adapter_rank_zero",
            r#"{"peft_type": "LORA", "r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}"#,
            "error: module `model.layers.0.mlp.down_proj`: lora_A has rank 4 but adapter_config gives r = 0\n",
        ),
        adapter(
            "adapter_rank_huge",
            r#"{"peft_type": "LORA", "r": 1099511627776, "lora_alpha": 8, "target_modules": ["q_proj"]}"#,
            "error: module `model.layers.0.mlp.down_proj`: lora_A has rank 4 but adapter_config gives r = 1099511627776\n",
        ),
        adapter(
            "adapter_dora",
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true, "target_modules": ["q_proj"]}"#,
            "error: ad/adapter_config.json: DoRA adapters (use_dora) cannot be merged yet\n",
        ),
        case(
            "adapter_without_weights",
            &[("ad/adapter_config.json", r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"#)],
            &["merge", "--model", "{fixtures}/engine/llama", "--adapter", "ad", "--out", "merged"],
            1,
            "error: ad: no adapter_model.safetensors (nor adapter_model.bin)\n",
        ),
    ]);
    let mut big = case(
        "memory_above_machine",
        &[
            ("r.toml", TRAIN),
            (
                "model/config.json",
                r#"{"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "intermediate_size": 11008, "vocab_size": 32000, "torch_dtype": "float32"}"#,
            ),
        ],
        &["run", "r.toml"],
        2,
        "error: step `train`: estimated memory 42.0 GiB is above this machine's 953.7 MiB\npass --allow-large to run anyway\n",
    );
    big.env.push(("RECIPE_TEST_MEMORY_BYTES", "1000000000"));
    v.push(big);
    // An absurd batch saturates the estimate instead of overflowing it.
    let mut batch = case(
        "batch_size_i64_max_memory",
        &[("r.toml", &format!("{TRAIN}batch_size = 9223372036854775807\n"))],
        &["run", "r.toml"],
        2,
        "error: step `train`: estimated memory 16777216.0 TiB is above this machine's 953.7 MiB\npass --allow-large to run anyway\n",
    );
    batch.env.push(("RECIPE_TEST_MEMORY_BYTES", "1000000000"));
    v.push(batch);

    // A chain of 100 includes stops at the depth limit, naming the file.
    let mut deep = case("include_chain_too_deep", &[], &["plan", "r.toml"], 2, "error: key `include`: include chain deeper than 64 files at `64.toml`\n --> i/63.toml:1:12\n  |\n1 | include = [\"64.toml\"]\n  |            ^^^^^^^^^\n  = help: includes nest too deeply; flatten the chain\n\n1 error in recipe\n");
    deep.files
        .push(("r.toml".into(), "include = [\"i/1.toml\"]\n".into()));
    for i in 1..100 {
        deep.files.push((
            format!("i/{i}.toml"),
            format!("include = [\"{}.toml\"]\n", i + 1),
        ));
    }
    deep.files.push(("i/100.toml".into(), MODEL.into()));
    v.push(deep);
    v
}

#[test]
fn corpus_cases_fail_with_exact_text() {
    let cases = corpus();
    let mut failures = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
        let (_d, root) = workspace();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for (f, body) in &c.files {
            match body.strip_prefix("@fixtures/") {
                Some(src) => {
                    std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
                    std::fs::copy(fixtures.join(src), root.join(f)).unwrap();
                }
                None => {
                    write(&root, f, body);
                }
            }
        }
        let mut cmd = bin();
        cmd.current_dir(&root);
        for a in &c.args {
            cmd.arg(a.replace("{fixtures}", &fixtures.display().to_string()));
        }
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("spawn recipe");
        let got = text(&o).1.replace(&root.display().to_string(), "{dir}");
        if o.status.code() != Some(c.code) || got != c.stderr {
            failures.push(format!(
                "--- case `{}`: exit {:?} (want {})\n{got:?}\n",
                c.name,
                o.status.code(),
                c.code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

const ONE_STEP: &str = "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n";

#[test]
fn output_is_replaced_only_when_this_step_wrote_it() {
    let (_d, root) = workspace();
    write(&root, "r.toml", &format!("{ONE_STEP}output = \"out/a\"\n"));
    for _ in 0..2 {
        let o = run(&root, &["run", "r.toml"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    }
    let marker = std::fs::read_to_string(root.join("out/a/.recipe-output")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&marker).unwrap();
    assert_eq!(m["step"], "a");
    assert_eq!(m["recipe"], "../../r.toml");
    assert!(root.join("out/a/stats.json").is_file());
    // No temporary or displaced copies are left beside it.
    let names: Vec<String> = std::fs::read_dir(root.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a"]);

    // Another step may not take it over...
    write(
        &root,
        "r.toml",
        "[steps.b]\nkind = \"load.dataset\"\npath = \"b.jsonl\"\noutput = \"out/a\"\n",
    );
    let o = run(&root, &["run", "r.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o).1.replace(&root.display().to_string(), "{dir}"),
        "error: step `b`, key `output`: `{dir}/out/a` is the output of step `a` of `{dir}/r.toml`\n \
         --> r.toml:4:10\n  |\n4 | output = \"out/a\"\n  |          ^^^^^^^\n  \
         = help: recipe only replaces an output it wrote (marked by `.recipe-output`); \
         choose a path that does not exist, or remove this one\n\n1 error in recipe\n"
    );
    // ...and a dir recipe did not write survives a run that names it.
    write(&root, "notes/todo.txt", "mine\n");
    write(&root, "r.toml", &format!("{ONE_STEP}output = \"notes\"\n"));
    let o = run(&root, &["run", "r.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(root.join("notes/todo.txt")).unwrap(),
        "mine\n"
    );
}

#[test]
fn output_dot_deletes_nothing() {
    let (_d, root) = workspace();
    write(&root, "r.toml", &format!("{ONE_STEP}output = \".\"\n"));
    let o = run(&root, &["run", "r.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(root.join("r.toml").is_file() && root.join("model/config.json").is_file());
    assert!(!root.join(".recipe").exists(), "nothing ran");
}

#[test]
fn panicking_step_ends_the_run_naming_the_step() {
    let (_d, root) = workspace();
    write(
        &root,
        "r.toml",
        &format!("{ONE_STEP}[steps.b]\nkind = \"load.dataset\"\npath = \"b.jsonl\"\n"),
    );
    let mut child = bin()
        .current_dir(&root)
        .args(["run", "r.toml", "--jobs", "1"])
        .env("RECIPE_TEST_PANIC_IN_STEP", "a")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() > 60 {
            child.kill().unwrap();
            panic!("`recipe run` hangs after a step panicked");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert_eq!(
        err.lines().last().unwrap(),
        "error: step `a` (load.dataset) failed: panicked (a bug in recipe): \
         test panic (RECIPE_TEST_PANIC_IN_STEP)",
        "{err}"
    );
    // Nothing half-written stays in the cache.
    let tmp = root.join(".recipe/cache/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

#[test]
fn cache_gc_removes_only_cache_entries() {
    let (_d, root) = workspace();
    write(&root, "r.toml", ONE_STEP);
    assert_eq!(run(&root, &["run", "r.toml"]).status.code(), Some(0));
    // A hand-made entry whose manifest names a dir outside the cache.
    write(&root, "victim/keep.txt", "keep\n");
    let fake = root.join(".recipe/cache/entries/fake");
    write(
        &fake,
        "manifest.json",
        &std::fs::read_to_string(
            std::fs::read_dir(root.join(".recipe/cache/entries"))
                .unwrap()
                .map(|e| e.unwrap().path().join("manifest.json"))
                .find(|p| p.is_file())
                .unwrap(),
        )
        .unwrap()
        .replacen("\"key\": \"", "\"key\": \"../../../victim\", \"x\": \"", 1),
    );
    let o = run(
        &root,
        &[
            "cache",
            "gc",
            "--cache-dir",
            ".recipe/cache",
            "--max-size",
            "0B",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(
        text(&o)
            .0
            .lines()
            .next()
            .unwrap()
            .split(',')
            .next()
            .unwrap(),
        "removed 1 entries"
    );
    assert!(root.join("victim/keep.txt").is_file());
    assert!(
        fake.join("manifest.json").is_file(),
        "not recipe's entry: left alone"
    );
}

#[test]
fn vars_may_use_vars_defined_later() {
    let (_d, root) = workspace();
    write(
        &root,
        "r.toml",
        "[vars]\nfile = \"${name}.jsonl\"\nname = \"a\"\n[steps.a]\nkind = \"load.dataset\"\npath = \"${file}\"\n",
    );
    let o = run(&root, &["plan", "r.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

#[test]
fn memory_check_covers_only_the_steps_asked_for() {
    let (_d, root) = workspace();
    write(&root, "r.toml", &format!("{TRAIN}batch_size = 100000000\n"));
    let run_with = |args: &[&str]| {
        bin()
            .current_dir(&root)
            .args(args)
            .env("RECIPE_TEST_MEMORY_BYTES", "1000000000")
            .output()
            .unwrap()
    };
    let o = run_with(&["run", "r.toml", "--until", "data"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert!(text(&o).1.contains("data: ran"), "{}", text(&o).1);
    // `plan` only warns.
    let o = run_with(&["plan", "r.toml"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        text(&o)
            .1
            .ends_with("is above this machine's 953.7 MiB; `recipe run` will need --allow-large\n"),
        "{}",
        text(&o).1
    );
}
