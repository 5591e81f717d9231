//! GGUF export end to end through the binary: an `export` step with `format = "gguf"` on the
//! tiny qwen2 model of tests/fixtures/e2e, and `recipe merge --gguf` on the llama export
//! fixture and on the Qwen3 / Mistral bases of tests/fixtures/bases (against the committed
//! tests/fixtures/gguf/bases_*.json). The files are re-read with
//! `recipe::export::gguf::read_gguf` (what transformers and gguf-py make of them is checked by
//! hand with tests/reference/gguf_check.py).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use recipe::export::gguf::{read_gguf, GgmlType, Value};
use recipe::export::HfModel;
use serde_json::Value as Json;

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

/// `d/base`: the model files of `src` (a 48-token vocab) with the tiny tokenizer.
fn tiny_base(d: &Path, src: &Path) {
    let base = d.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), base.join(f)).unwrap();
        }
    }
    std::fs::write(base.join("tokenizer.json"), tiny_tokenizer()).unwrap();
    std::fs::write(
        base.join("tokenizer_config.json"),
        "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"unk_token\": \"<unk>\"}",
    )
    .unwrap();
}

/// `recipe merge --model base --adapter ADAPTER --out merged --gguf GGUF --gguf-dtype DTYPE` in `d`.
fn merge_gguf(d: &Path, adapter: &Path, gguf: &str, dtype: &str) -> Output {
    let adapter = adapter.to_str().unwrap();
    recipe(
        &[
            "merge",
            "--model",
            "base",
            "--adapter",
            adapter,
            "--out",
            "merged",
            "--gguf",
            gguf,
            "--gguf-dtype",
            dtype,
        ],
        d,
    )
}

#[test]
fn merge_cli_writes_gguf_beside_the_merged_dir() {
    let d = tempfile::tempdir().unwrap();
    let fx = root().join("tests/fixtures/export/llama");
    tiny_base(d.path(), &fx.join("base"));
    let adapter = fx.join("adapter");
    let run = |dtype: &str| merge_gguf(d.path(), &adapter, "m.gguf", dtype);

    // A bad dtype fails before merging.
    let o = run("q4_k");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: --gguf-dtype `q4_k`: expected f16, bf16, q8_0 or q4_0\n"
    );
    assert!(!d.path().join("merged").exists());

    let o = run("bf16");
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

/// `recipe merge --gguf` on a tests/fixtures/bases model with its adapter; the file's summary
/// against tests/fixtures/gguf/bases_<case>_<dtype>.json (RECIPE_GGUF_BLESS=1 rewrites it).
fn merge_base_case(case: &str, dtype: &str, d: &Path) -> (Output, recipe::export::gguf::GgufFile) {
    let fx = root().join("tests/fixtures/bases").join(case);
    tiny_base(d, &fx);
    let o = merge_gguf(d, &fx.join("adapter"), "model.gguf", dtype);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let f = read_gguf(&d.join("model.gguf")).unwrap();
    let want_path = root().join(format!("tests/fixtures/gguf/bases_{case}_{dtype}.json"));
    let got = f.summary();
    if std::env::var("RECIPE_GGUF_BLESS").is_ok() {
        let mut s = serde_json::to_string_pretty(&got).unwrap();
        s.push('\n');
        std::fs::write(&want_path, s).unwrap();
    }
    let want: Json = serde_json::from_slice(&std::fs::read(&want_path).unwrap()).unwrap();
    assert_eq!(got, want, "{case} {dtype}");
    (o, f)
}

fn merged_f32(d: &Path, name: &str) -> Vec<f32> {
    let m = HfModel::load(&d.join("merged")).unwrap();
    m.tensors[name].to_f32().unwrap()
}

fn bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect()
}

/// Qwen3 as llama.cpp's `qwen3`: per-head q/k norms as `attn_q_norm` / `attn_k_norm` (f32),
/// head_dim 8 with 4 heads on hidden 16 as key/value_length, q rows not permuted, tied head.
#[test]
fn merge_cli_writes_qwen3_gguf_with_qk_norms() {
    let d = tempfile::tempdir().unwrap();
    let (o, f) = merge_base_case("qwen3", "bf16", d.path());
    let err = stderr(&o);
    assert!(
        err.contains("wrote model.gguf (qwen3, bf16, 24 tensors, "),
        "{err}"
    );
    assert!(!err.contains("note:"), "{err}");
    let u = |k: &str| f.get(k).and_then(Value::as_u64);
    assert_eq!(
        f.get("general.architecture"),
        Some(&Value::Str("qwen3".into()))
    );
    assert_eq!(u("qwen3.embedding_length"), Some(16));
    assert_eq!(u("qwen3.attention.head_count"), Some(4));
    assert_eq!(u("qwen3.attention.head_count_kv"), Some(2));
    assert_eq!(u("qwen3.attention.key_length"), Some(8));
    assert_eq!(u("qwen3.attention.value_length"), Some(8));
    assert_eq!(u("qwen3.feed_forward_length"), Some(32));
    assert_eq!(f.get("qwen3.rope.freq_base"), Some(&Value::F32(1000.0)));
    assert_eq!(f.get("qwen3.rope.dimension_count"), None);
    assert_eq!(
        f.get("tokenizer.ggml.pre"),
        Some(&Value::Str("qwen2".into()))
    );
    for (name, dims, ty) in [
        ("blk.0.attn_q_norm.weight", vec![8], GgmlType::F32),
        ("blk.1.attn_k_norm.weight", vec![8], GgmlType::F32),
        ("blk.0.attn_q.weight", vec![16, 32], GgmlType::Bf16),
        ("blk.0.attn_k.weight", vec![16, 16], GgmlType::Bf16),
        ("blk.1.attn_output.weight", vec![32, 16], GgmlType::Bf16),
    ] {
        let t = f.tensor(name).unwrap();
        assert_eq!((t.dims.clone(), t.ty), (dims, ty as u32), "{name}");
    }
    assert!(f.tensor("output.weight").is_none(), "tied head");
    assert_eq!(
        f.tensor_f32("blk.1.attn_q_norm.weight").unwrap(),
        merged_f32(d.path(), "model.layers.1.self_attn.q_norm.weight")
    );
    // The adapter's q_proj delta is in, rows in the source order (NEOX rotary: no permute).
    assert_eq!(
        f.tensor_f32("blk.0.attn_q.weight").unwrap(),
        bf16(&merged_f32(
            d.path(),
            "model.layers.0.self_attn.q_proj.weight"
        ))
    );
}

/// Mistral as llama.cpp's `llama` (what convert_hf_to_gguf.py writes): q/k rows permuted, its
/// own head, and a note that the sliding window is not in the file.
#[test]
fn merge_cli_writes_mistral_gguf_as_llama() {
    let d = tempfile::tempdir().unwrap();
    let (o, f) = merge_base_case("mistral", "f16", d.path());
    let err = stderr(&o);
    assert!(
        err.contains("wrote model.gguf (llama, f16, 21 tensors, "),
        "{err}"
    );
    assert!(
        err.contains(
            "note: the sliding window (4 positions, layers 0, 1) is not in the GGUF file: \
             llama.cpp attends to every position, so it matches this model on inputs up to 4 \
             tokens\n"
        ),
        "{err}"
    );
    let u = |k: &str| f.get(k).and_then(Value::as_u64);
    assert_eq!(
        f.get("general.architecture"),
        Some(&Value::Str("llama".into()))
    );
    assert_eq!(u("llama.attention.head_count"), Some(2));
    assert_eq!(u("llama.attention.head_count_kv"), Some(1));
    assert_eq!(u("llama.rope.dimension_count"), Some(8));
    assert_eq!(u("llama.attention.key_length"), None);
    assert_eq!(
        f.tensor("output.weight").map(|t| t.dims.clone()),
        Some(vec![16, 48])
    );
    // head_dim 8: the file's row 1 of head 0 is source row 4, 16 columns.
    let q = f.tensor_f32("blk.0.attn_q.weight").unwrap();
    let sq = merged_f32(d.path(), "model.layers.0.self_attn.q_proj.weight");
    let f16 = |x: f32| half::f16::from_f32(x).to_f32();
    assert_eq!(
        q[16..32],
        sq[4 * 16..5 * 16]
            .iter()
            .map(|x| f16(*x))
            .collect::<Vec<_>>()[..]
    );
}

/// Writes the Qwen3 and Mistral bases in every dtype for tests/reference/gguf_check.py:
/// RECIPE_GGUF_CHECK_DIR=/tmp/g cargo test --test gguf_export -- --ignored
/// (each `bases_<case>_<dtype>/` holds `merged/` and `model.gguf`).
#[test]
#[ignore]
fn write_bases_for_the_python_check() {
    let Ok(root_dir) = std::env::var("RECIPE_GGUF_CHECK_DIR") else {
        return;
    };
    for case in ["qwen3", "mistral"] {
        let fx = root().join("tests/fixtures/bases").join(case);
        for dtype in ["f16", "bf16", "q8_0", "q4_0"] {
            let d = Path::new(&root_dir).join(format!("bases_{case}_{dtype}"));
            tiny_base(&d, &fx);
            let o = merge_gguf(&d, &fx.join("adapter"), "model.gguf", dtype);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        }
    }
}
