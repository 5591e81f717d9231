//! GGUF export end to end through the binary: an `export` step with `format = "gguf"` on the
//! tiny qwen2 model of tests/fixtures/e2e, and `recipe merge --gguf` on the llama export
//! fixture. The files are re-read with `recipe::export::gguf::read_gguf` (what transformers and
//! gguf-py make of them is checked by hand with tests/reference/gguf_check.py).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use recipe::export::gguf::{read_gguf, GgmlType, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn recipe(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recipe"))
        .current_dir(cwd)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn export_step_writes_gguf_and_modelfile() {
    let d = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/e2e/qwen2");
    let out = d.path().join("out");
    let toml = format!(
        "[recipe]\nname = \"gguf\"\n\n[steps.base]\nkind = \"load.model\"\npath = \"{}\"\n\n\
         [steps.export]\nkind = \"export\"\nmodel = \"base\"\nformat = \"gguf\"\n\
         gguf_dtype = \"q8_0\"\noutput = \"{}\"\n",
        model.display(),
        out.display()
    );
    std::fs::write(d.path().join("r.toml"), toml).unwrap();
    let o = recipe(
        &[
            "run",
            "r.toml",
            "--cache-dir",
            d.path().join("cache").to_str().unwrap(),
        ],
        d.path(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("wrote model.gguf (qwen2, q8_0, 26 tensors, "),
        "{err}"
    );
    assert!(
        err.contains("verify: re-read model.gguf: 24 metadata keys, 26 tensors"),
        "{err}"
    );

    let f = read_gguf(&out.join("model.gguf")).unwrap();
    assert_eq!(
        f.get("general.architecture"),
        Some(&Value::Str("qwen2".into()))
    );
    assert_eq!(f.get("general.name"), Some(&Value::Str("qwen2".into())));
    assert_eq!(f.get("general.file_type"), Some(&Value::U32(7)));
    assert_eq!(f.get("qwen2.block_count"), Some(&Value::U32(2)));
    assert_eq!(f.get("qwen2.attention.head_count_kv"), Some(&Value::U32(2)));
    assert_eq!(
        f.get("tokenizer.ggml.model"),
        Some(&Value::Str("gpt2".into()))
    );
    assert_eq!(f.get("tokenizer.ggml.eos_token_id"), Some(&Value::U32(0)));
    let Some(Value::Str(t)) = f.get("tokenizer.chat_template") else {
        panic!("no chat template")
    };
    assert!(t.starts_with("{% for message in messages %}"), "{t}");
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.dims.clone(), q.ty),
        (vec![32, 32], GgmlType::Q8_0 as u32)
    );
    let b = f.tensor("blk.0.attn_q.bias").unwrap();
    assert_eq!(b.ty, GgmlType::F32 as u32);
    assert!(
        f.tensor("output.weight").is_none(),
        "tied head: no output tensor"
    );

    let mf = std::fs::read_to_string(out.join("Modelfile")).unwrap();
    assert!(mf.contains("\nFROM ./model.gguf\nTEMPLATE \"\"\"{{- range .Messages }}<|im_start|>"));
    assert!(mf.ends_with("PARAMETER stop \"<|im_end|>\"\nPARAMETER stop \"<|endoftext|>\"\n"));
}

/// A 48-token BPE tokenizer.json for the llama export fixture (which ships none).
fn tiny_tokenizer() -> String {
    let vocab: Vec<String> = (0..48)
        .map(|i| match i {
            0 => "\"<unk>\": 0".to_string(),
            1 => "\"<s>\": 1".to_string(),
            2 => "\"</s>\": 2".to_string(),
            i => format!("\"t{i}\": {i}"),
        })
        .collect();
    format!(
        "{{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [], \
         \"normalizer\": null, \"pre_tokenizer\": null, \"post_processor\": null, \"decoder\": null, \
         \"model\": {{\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {{{}}}, \"merges\": []}}}}",
        vocab.join(", ")
    )
}

#[test]
fn merge_cli_writes_gguf_beside_the_merged_dir() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    std::fs::create_dir(&base).unwrap();
    let fx = root().join("tests/fixtures/export/llama");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fx.join("base").join(f), base.join(f)).unwrap();
    }
    std::fs::write(base.join("tokenizer.json"), tiny_tokenizer()).unwrap();
    std::fs::write(
        base.join("tokenizer_config.json"),
        "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"unk_token\": \"<unk>\"}",
    )
    .unwrap();
    let adapter = fx.join("adapter");
    let args = |dtype: &str| -> Vec<String> {
        [
            "merge",
            "--model",
            "base",
            "--adapter",
            adapter.to_str().unwrap(),
            "--out",
            "merged",
            "--gguf",
            "m.gguf",
            "--gguf-dtype",
            dtype,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: Vec<String>| recipe(&a.iter().map(String::as_str).collect::<Vec<_>>(), d.path());

    // A bad dtype fails before merging.
    let o = run(args("q4_k"));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: --gguf-dtype `q4_k`: expected f16, bf16, q8_0 or q4_0\n"
    );
    assert!(!d.path().join("merged").exists());

    let o = run(args("bf16"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("wrote m.gguf (llama, bf16, 21 tensors, "),
        "{err}"
    );
    let f = read_gguf(&d.path().join("m.gguf")).unwrap();
    assert_eq!(f.get("general.name"), Some(&Value::Str("merged".into())));
    assert_eq!(f.get("llama.attention.head_count_kv"), Some(&Value::U32(1)));
    assert_eq!(f.get("tokenizer.ggml.bos_token_id"), Some(&Value::U32(1)));
    // Untied head: llama writes `output.weight`.
    let o = f.tensor("output.weight").unwrap();
    assert_eq!(
        (o.dims.clone(), o.ty),
        (vec![16, 48], GgmlType::Bf16 as u32)
    );
    let mf = std::fs::read_to_string(d.path().join("Modelfile")).unwrap();
    assert!(
        mf.contains("\nFROM ./m.gguf\n# TEMPLATE: the model has no chat template"),
        "{mf}"
    );
    assert!(mf.ends_with("PARAMETER stop \"</s>\"\n"), "{mf}");
}
