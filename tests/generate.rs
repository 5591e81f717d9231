//! The `generate` and `evaluate` steps through the `recipe` binary on the tiny quickstart
//! model: outputs exist and equal the library's greedy generation.

use std::path::Path;
use std::process::Command;

const RECIPE: &str = r#"
[steps.base]
kind = "load.model"
path = "base"

[steps.data]
kind = "load.dataset"
path = "instructions.jsonl"
format = "alpaca"
test_size = 0.25
seed = 7

[steps.prompts]
kind = "template"
data = "data"
template = "human_assistant"

[steps.tokens]
kind = "tokenize"
data = "prompts"
model = "base"
max_length = 64
add_eos = true

[steps.eval]
kind = "evaluate"
model = "base"
data = "tokens"
prompts = "prompts"
metrics = ["loss", "perplexity", "token_accuracy", "exact_match", "bleu", "rouge"]
max_new_tokens = 6
limit = 4
output = "eval"

[steps.answer]
kind = "generate"
model = "base"
prompts = ["What is the capital of Italy?", "What does a duck say?"]
template = "human_assistant"
max_new_tokens = 6
num_return_sequences = 2
output = "answer"

[steps.from_data]
kind = "generate"
model = "base"
data = "prompts"
max_new_tokens = 3
output = "from_data"
"#;

#[test]
fn generate_and_evaluate_steps_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().expect("tmp");
    let base = d.path().join("base");
    std::fs::create_dir_all(&base).expect("mkdir");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(
            root.join("examples/quickstart/base-init").join(f),
            base.join(f),
        )
        .expect("copy");
    }
    std::fs::copy(
        root.join("examples/quickstart/instructions.jsonl"),
        d.path().join("instructions.jsonl"),
    )
    .expect("copy");
    std::fs::write(d.path().join("r.toml"), RECIPE).expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_recipe"))
        .current_dir(d.path())
        .env("NO_COLOR", "1")
        .env_remove("RECIPE_CACHE")
        .args(["run", "r.toml"])
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");

    // generate: 2 prompts x 2 sequences, greedy => equal pairs, equal to the library's output.
    let s = recipe::eval::session::Session::open(&base, None, None, "human_assistant")
        .expect("session");
    let gens: Vec<serde_json::Value> =
        std::fs::read_to_string(d.path().join("answer/generations.jsonl"))
            .expect("generations")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
    assert_eq!(gens.len(), 4);
    let cfg = recipe::eval::GenConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    for (i, q) in ["What is the capital of Italy?", "What does a duck say?"]
        .iter()
        .enumerate()
    {
        let ids = s.prompt(None, q).expect("prompt");
        let g = s.generate(&[ids], &cfg, |_, _| {}).expect("gen");
        for k in 0..2 {
            let row = &gens[2 * i + k];
            assert_eq!(row["index"], i);
            assert_eq!(row["tokens"], serde_json::json!(g[0].tokens), "{row}");
            assert_eq!(
                row["generation"],
                serde_json::json!(s.decode(&g[0].tokens).expect("decode"))
            );
        }
        assert!(err.contains(&format!("[answer] [{i}] ")), "{err}");
    }
    // generate from a template step: its 15 test examples.
    let n = std::fs::read_to_string(d.path().join("from_data/generations.jsonl"))
        .expect("gens")
        .lines()
        .count();
    assert_eq!(n, 15);

    // evaluate: every metric asked, 4 predictions.
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.path().join("eval/metrics.json")).expect("metrics"),
    )
    .expect("json");
    for k in [
        "loss",
        "perplexity",
        "token_accuracy",
        "exact_match",
        "bleu-4",
        "rouge-1",
        "rouge-2",
        "rouge-l",
    ] {
        assert!(m[k].is_number(), "{k}: {m}");
    }
    let loss = m["loss"].as_f64().expect("loss");
    assert!((m["perplexity"].as_f64().expect("ppl") - loss.exp()).abs() < 1e-6 * loss.exp());
    let preds = std::fs::read_to_string(d.path().join("eval/predictions.jsonl")).expect("preds");
    assert_eq!(preds.lines().count(), 4);
}
