//! `recipe init MODEL DATA`: the written recipe detects what it should and plans cleanly.

mod common;

use common::{root, run, text, write};

#[test]
fn init_writes_a_recipe_that_plans() {
    let d = tempfile::tempdir().unwrap();
    let base = root().join("examples/quickstart/base");
    let data = root().join("examples/quickstart/instructions.jsonl");
    let (b, dt) = (base.display().to_string(), data.display().to_string());
    let o = run(
        d.path(),
        &["init", &b, &dt, "-o", "r/q.toml", "--name", "q"],
    );
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.starts_with("wrote r/q.toml: llama family; alpaca records; template alpaca; LoRA on [q_proj, v_proj]; batch_size 16, gradient checkpointing off\n"), "{err}");
    let r = std::fs::read_to_string(d.path().join("r/q.toml")).unwrap();
    // The model path, relative to the recipe's dir (or absolute), leads to the model.
    let path_line = r.lines().find(|l| l.starts_with("path = ")).unwrap();
    let rel: String = toml::from_str::<toml::Value>(path_line).unwrap()["path"]
        .as_str()
        .unwrap()
        .into();
    assert_eq!(
        d.path().join("r").join(rel).canonicalize().unwrap(),
        base.canonicalize().unwrap()
    );
    for line in [
        "format = \"alpaca\"",
        "template = \"alpaca\"",
        "target_modules = [\"q_proj\", \"v_proj\"]",
        "max_length = 256",
        "batch_size = 16",
        "gradient_checkpointing = false",
        "# Columns [instruction, input, output] read as the `alpaca` record format.",
    ] {
        assert!(
            r.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in\n{r}"
        );
    }
    let o = run(d.path(), &["plan", "r/q.toml"]);
    assert!(o.status.success(), "{:?}", text(&o));
    // Nothing scratch is left beside it, and an existing file is not replaced without --force.
    let names: Vec<_> = std::fs::read_dir(d.path().join("r"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}"); // q.toml and the plan's .recipe cache
    let o = run(d.path(), &["init", &b, &dt, "-o", "r/q.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o).1,
        "error: `r/q.toml` exists; pass --force to replace it, or -o another file\n"
    );
    // On a machine too small for anything: batch 1 with checkpointing, and a warning.
    let o = common::bin()
        .current_dir(d.path())
        .env("RECIPE_TEST_MEMORY_BYTES", "1000000")
        .args(["init", &b, &dt, "-o", "r/q.toml", "--force"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let r = std::fs::read_to_string(d.path().join("r/q.toml")).unwrap();
    assert!(r.contains("batch_size = 1\n"), "{r}");
    assert!(r.contains("gradient_checkpointing = true\n"), "{r}");
    assert!(r.contains("# batch_size / gradient_checkpointing: WARNING: even batch 1 with checkpointing is estimated at "), "{r}");
}

#[test]
fn init_reads_other_record_formats() {
    let d = tempfile::tempdir().unwrap();
    let base = root()
        .join("examples/quickstart/base")
        .display()
        .to_string();
    write(
        d.path(),
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n",
    );
    write(d.path(), "qa.csv", "question,answer\nWhat?,That.\n");
    write(d.path(), "odd.jsonl", "{\"a\": 1, \"b\": 2}\n");
    let o = run(d.path(), &["init", &base, "chat.jsonl", "-o", "chat.toml"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let r = std::fs::read_to_string(d.path().join("chat.toml")).unwrap();
    assert!(
        r.contains("format = \"conversations\"\ncolumns = { conversations = \"messages\" }\n"),
        "{r}"
    );
    assert!(r.contains("template = \"human_assistant\"\n"), "{r}");
    assert!(r.contains("path = \"chat.jsonl\"\n"), "{r}");
    let o = run(d.path(), &["init", &base, "qa.csv", "-o", "qa.toml"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let r = std::fs::read_to_string(d.path().join("qa.toml")).unwrap();
    assert!(r.contains("format = \"prompt_response\"\ncolumns = { prompt = \"question\", response = \"answer\" }\n"), "{r}");
    assert!(run(d.path(), &["plan", "qa.toml"]).status.success());
    let o = run(d.path(), &["init", &base, "odd.jsonl", "-o", "odd.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o).1,
        "error: `odd.jsonl`: cannot tell the record format from its columns [a, b]; expected \
         instruction/output (alpaca), conversations or messages, prompt/response (or \
         question/answer, ...), text/label or text. Write the load.dataset step's `format` and \
         `columns` by hand (recipe explain load.dataset)\n"
    );
    assert!(!d.path().join("odd.toml").exists());
}
