//! Entry points for the fuzz targets (`fuzz/`, `cargo fuzz`) and their regression tests
//! (`tests/fuzz_regressions.rs`): each takes arbitrary bytes, feeds them to one input reader
//! the way `recipe` does, and must return (an error is fine) without panicking, hanging or
//! allocating without bound.
//!
//! Readers that take a path get the bytes as a file in a scratch folder of this process.

use std::path::{Path, PathBuf};

/// One fuzzed reader: its `cargo fuzz` target name, its entry point, and the repo files (paths
/// from the repo root) that seed its corpus. The jinja target's seeds are `tokenizer_config.json`
/// files whose `chat_template` is the seed ([`seed_bytes`]).
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: &'static [&'static str],
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "recipe_toml",
        run: recipe_toml,
        seeds: &[
            "recipes/quickstart.toml",
            "recipes/chatglm3_lora.toml",
            "recipes/chatglm3_qlora.toml",
            "recipes/common/chatglm3_data.toml",
        ],
    },
    Target {
        name: "data_jsonl",
        run: data_jsonl,
        seeds: &[
            "examples/data/chatglm3_conversations.jsonl",
            "examples/data/msra_ner_instruct.jsonl",
        ],
    },
    Target {
        name: "data_csv",
        run: data_csv,
        seeds: &[
            "examples/data/hotel_reviews.csv",
            "examples/data/qwen_sft_train.csv",
        ],
    },
    Target {
        name: "data_parquet",
        run: data_parquet,
        seeds: &[
            "tests/fixtures/data/advertise.parquet",
            "tests/fixtures/data/raft_dict/test/data-00000-of-00001.arrow",
        ],
    },
    Target {
        name: "safetensors_header",
        run: safetensors_header,
        seeds: &[
            "tests/fixtures/engine/llama/model.safetensors",
            "tests/fixtures/export/llama_nf4/base/model.safetensors",
        ],
    },
    Target {
        name: "torch_bin",
        run: torch_bin,
        seeds: &[
            "tests/fixtures/torch_bin/mixed.bin",
            "tests/fixtures/torch_bin/glm6b/pytorch_model-00001-of-00002.bin",
        ],
    },
    Target {
        name: "sentencepiece_model",
        run: sentencepiece_model,
        seeds: &[
            "tests/fixtures/text/llama/tokenizer.model",
            "tests/fixtures/text/glm3/tokenizer.model",
        ],
    },
    Target {
        name: "tokenizer_json",
        run: tokenizer_json,
        seeds: &[
            "tests/fixtures/text/bloom/tokenizer.json",
            "examples/quickstart/base/tokenizer.json",
        ],
    },
    Target {
        name: "jinja_template",
        run: jinja_template,
        seeds: &[
            "tests/fixtures/e2e/chatglm/tokenizer_config.json",
            "tests/fixtures/e2e/llama3/tokenizer_config.json",
            "tests/fixtures/e2e/qwen2/tokenizer_config.json",
        ],
    },
];

/// A seed's bytes as its target takes them (a chat template is read out of its JSON).
pub fn seed_bytes(target: &Target, file: &[u8]) -> Option<Vec<u8>> {
    if target.name != "jinja_template" {
        return Some(file.to_vec());
    }
    let v: serde_json::Value = serde_json::from_slice(file).ok()?;
    match v.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone().into_bytes()),
        serde_json::Value::Array(a) => {
            Some(a.first()?.get("template")?.as_str()?.as_bytes().to_vec())
        }
        _ => None,
    }
}

/// A scratch folder for this process (files are overwritten per input).
fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("recipe-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Writes `data` to `name` in a fresh sub-folder `sub` of the scratch folder.
fn put(sub: &str, name: &str, data: &[u8]) -> PathBuf {
    let d = scratch().join(sub);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::create_dir_all(&d);
    let p = d.join(name);
    let _ = std::fs::write(&p, data);
    p
}

/// A recipe file: parse, includes, vars, validation, DAG and the rendered diagnostics
/// (what `recipe plan` does before it opens the cache).
pub fn recipe_toml(data: &[u8]) {
    let path = put("recipe", "recipe.toml", data);
    let (recipe, mut diags) = crate::recipe::load(&path, &[]);
    let checked = crate::recipe::validate::check(recipe, true, &mut diags);
    let _ = crate::plan::build_dag(&checked, &mut diags);
    crate::plan::preflight(&checked, &mut diags);
    let _ = crate::diag::render_all(&diags, &checked.recipe.sources, false);
}

/// Reads every row of an opened data file (bad rows are errors, never panics).
fn drain(rows: Result<crate::data::row::FileRows, crate::data::error::DataError>) {
    if let Ok(f) = rows {
        for r in f.rows.take(100_000) {
            let _ = r.map(|r| r.loc.to_string());
        }
    }
}

pub fn data_jsonl(data: &[u8]) {
    drain(crate::data::jsonl::open(&put("jsonl", "d.jsonl", data)));
    drain(crate::data::json::open(&put("json", "d.json", data)));
}

pub fn data_csv(data: &[u8]) {
    let opts = crate::data::csv_file::CsvOptions {
        delimiter: b',',
        empty_as_null: true,
    };
    drain(crate::data::csv_file::open(
        &put("csv", "d.csv", data),
        opts,
    ));
}

pub fn data_parquet(data: &[u8]) {
    let p = put("parquet", "d.parquet", data);
    let _ = crate::data::columnar::parquet_columns(&p);
    drain(crate::data::columnar::open_parquet(&p));
    drain(crate::data::columnar::open_arrow(&put(
        "arrow", "d.arrow", data,
    )));
}

/// A model dir whose only weight file is `data`: the header is parsed and every tensor decoded.
pub fn safetensors_header(data: &[u8]) {
    weight_dir("st", "model.safetensors", data);
}

/// A model dir `sub` whose only weight file is `file` = `data`, opened and (up to 64 tensors)
/// decoded as the loader does.
fn weight_dir(sub: &str, file: &str, data: &[u8]) {
    let p = put(sub, file, data);
    let dir: &Path = p.parent().unwrap_or(Path::new("."));
    if let Ok(files) = crate::formats::WeightFiles::open(dir) {
        let names: Vec<String> = files.names().map(str::to_string).collect();
        for n in names.iter().take(64) {
            let _ = files.get(n);
        }
    }
}

/// A model dir whose only weight file is `pytorch_model.bin` = `data`: the zip and the pickle are
/// parsed and every tensor decoded.
pub fn torch_bin(data: &[u8]) {
    weight_dir("bin", "pytorch_model.bin", data);
}

pub fn sentencepiece_model(data: &[u8]) {
    if let Ok(m) = crate::text::sentencepiece::SpModel::parse(data) {
        let _ = m.to_tokenizer_json();
    }
}

/// A tokenizer dir holding `tokenizer.json` = `data`: load it, then encode and decode a string.
pub fn tokenizer_json(data: &[u8]) {
    let p = put("tok", "tokenizer.json", data);
    let dir: &Path = p.parent().unwrap_or(Path::new("."));
    if let Ok(t) = crate::text::tokenizer::TokenizerBundle::from_dir(dir) {
        if let Ok(ids) = t.encode("Hello 世界\n  x") {
            let _ = t.decode(&ids, false);
        }
    }
}

/// A chat template (`data` as its source) rendered over a short conversation.
pub fn jinja_template(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = crate::text::jinja::ChatTemplate::new(src) else {
        return;
    };
    let messages = [
        serde_json::json!({"role": "system", "content": "be brief"}),
        serde_json::json!({"role": "user", "content": "hi"}),
        serde_json::json!({"role": "assistant", "content": "hello"}),
    ];
    let ctx = crate::text::jinja::ChatContext {
        add_generation_prompt: true,
        ..Default::default()
    };
    let _ = t.render(&messages, &ctx);
}
