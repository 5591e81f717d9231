//! End-to-end tests against peft / transformers / bitsandbytes outputs recorded by
//! tests/reference/export_make_fixtures.py (tiny random llama, gpt2, bloom models).

use std::path::Path;

use safetensors::Dtype;

use super::testutil::fixture;
use super::*;
use crate::formats::hf_dir::read_config;
use crate::formats::peft::{read_adapter, Adapter, AdapterConfig, LoraModule};
use crate::formats::safetensors::{read_dir, read_file, INDEX_FILE};
use crate::formats::{Tensor, Tensors};

const CASES: [(&str, &str); 4] = [
    ("llama", "llama"),
    ("llama_rs", "llama"),
    ("gpt2", "gpt2"),
    ("bloom", "bloom"),
];

fn merged(case: &str, base: &str, dtype: OutDtype) -> Merged {
    merge_adapter(
        &fixture(&format!("{base}/base")),
        &fixture(&format!("{case}/adapter")),
        &MergeOptions {
            dtype,
            requantize: false,
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.to_f32()
        .unwrap()
        .iter()
        .zip(b.to_f32().unwrap())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Our merged tensors equal peft's `merge_and_unload()` state dict (max |diff| ≤ 1e-6), for
/// nn.Linear q/v (llama), rsLoRA + rank/alpha patterns + embedding LoRA (llama_rs), Conv1D with
/// fan_in_fan_out (gpt2), and modules_to_save (bloom).
#[test]
fn merge_matches_peft_merge_and_unload() {
    for (case, base) in CASES {
        let m = merged(case, base, OutDtype::Auto);
        let want = read_file(&fixture(&format!("{case}/expected.safetensors"))).unwrap();
        let mut names: Vec<&String> = m.model.tensors.keys().collect();
        let mut want_names: Vec<&String> = want
            .keys()
            .filter(|k| *k != "logits" && *k != "input_ids")
            .collect();
        names.sort();
        want_names.sort();
        assert_eq!(names, want_names, "{case}");
        let mut worst = 0f32;
        for n in names {
            // 1e-6 absolute, relative for values above 1 (the embedding LoRA's delta is ~10:
            // torch may fuse multiply-adds in B·A, we do not).
            let scale = want[n]
                .to_f32()
                .unwrap()
                .iter()
                .fold(1f32, |m, x| m.max(x.abs()));
            let d = max_abs_diff(&m.model.tensors[n], &want[n]);
            assert!(
                d <= 1e-6 * scale,
                "{case}: {n}: max abs diff {d} (max |value| {scale})"
            );
            worst = worst.max(d);
        }
        // The adapter really changed something (nonzero lora_B).
        let base_t = read_dir(&fixture(&format!("{base}/base"))).unwrap();
        let changed = m
            .report
            .merged
            .iter()
            .chain(&m.report.replaced)
            .filter(|n| max_abs_diff(&base_t[*n], &want[*n]) > 1e-3)
            .count();
        assert!(changed >= 2, "{case}: only {changed} tensors changed");
        // peft unties bloom's embeddings (modules_to_save on word_embeddings); gpt2 stays tied.
        assert_eq!(m.report.untied, case == "bloom", "{case}");
        if case == "bloom" {
            assert_eq!(m.model.config["tie_word_embeddings"], false);
        }
        eprintln!(
            "{case}: {} merged, {} replaced, worst diff {worst:e}",
            m.report.merged.len(),
            m.report.replaced.len()
        );
    }
}

/// GPT-2's c_attn is stored [in, out]: the delta is transposed; without fan_in_fan_out the
/// error says so.
#[test]
fn conv1d_needs_fan_in_fan_out() {
    let m = merged("gpt2", "gpt2", OutDtype::Auto);
    assert_eq!(
        m.model.tensors["transformer.h.0.attn.c_attn.weight"].shape,
        vec![16, 48]
    );
    let mut ad = read_adapter(&fixture("gpt2/adapter")).unwrap();
    ad.config.fan_in_fan_out = false;
    let mut model = HfModel::load(&fixture("gpt2/base")).unwrap();
    let e = merge_into(&mut model, &ad, &MergeOptions::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "module `transformer.h.0.attn.c_attn`: lora_A is [r, d_in] = [4, 16] and lora_B is [d_out, r] = [48, 4], \
         so the base weight should be [48, 16], but the base weight is [16, 48]; \
         is this a Conv1D weight (GPT-2 style) that needs fan_in_fan_out = true?"
    );
}

/// Hand-computed: A = [1 2 3], B = [1; 10], s = alpha/r = 2, base zeros [3, 2] (Conv1D).
#[test]
fn transposed_delta_by_hand() {
    let a = Tensor::from_f32(Dtype::F32, vec![1, 3], &[1.0, 2.0, 3.0]).unwrap();
    let b = Tensor::from_f32(Dtype::F32, vec![2, 1], &[1.0, 10.0]).unwrap();
    let m = LoraModule {
        module: "c".into(),
        a,
        b,
        bias: None,
        embedding: false,
        r: 1,
        scale: 2.0,
    };
    let cfg: AdapterConfig =
        serde_json::from_str(r#"{"r": 1, "lora_alpha": 2, "fan_in_fan_out": true}"#).unwrap();
    let ad = Adapter {
        dir: "x".into(),
        config: cfg,
        lora: vec![m],
        replace: Tensors::new(),
    };
    let mut model = HfModel {
        dir: "x".into(),
        config: serde_json::json!({}),
        tensors: Tensors::new(),
    };
    model.tensors.insert(
        "c.weight".into(),
        Tensor::from_f32(Dtype::BF16, vec![3, 2], &[0.0; 6]).unwrap(),
    );
    merge_into(
        &mut model,
        &ad,
        &MergeOptions {
            dtype: OutDtype::F32,
            requantize: false,
        },
    )
    .unwrap();
    let w = &model.tensors["c.weight"];
    assert_eq!(w.dtype, Dtype::F32);
    assert_eq!(w.to_f32().unwrap(), vec![2.0, 20.0, 4.0, 40.0, 6.0, 60.0]);
}

#[test]
fn mismatched_adapters_name_the_module() {
    // A llama adapter on a gpt2 base: no such module.
    let merge_err = |base: &str, adapter: &str| {
        let opts = MergeOptions::default();
        merge_adapter(&fixture(base), &fixture(adapter), &opts)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        merge_err("gpt2/base", "llama/adapter"),
        "module `model.layers.0.self_attn.q_proj`: the adapter has a LoRA for it but the base model has no tensor \
         `model.layers.0.self_attn.q_proj.weight`"
    );
    // Wrong shape.
    let ad = read_adapter(&fixture("llama/adapter")).unwrap();
    let mut model = HfModel::load(&fixture("llama/base")).unwrap();
    let w = Tensor::from_f32(Dtype::F32, vec![8, 12], &[0.0; 96]).unwrap();
    model
        .tensors
        .insert("model.layers.1.self_attn.v_proj.weight".into(), w);
    let e = merge_into(&mut model, &ad, &MergeOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "module `model.layers.1.self_attn.v_proj`: lora_A is [r, d_in] = [4, 16] and lora_B is [d_out, r] = [8, 4], \
         so the base weight should be [8, 16], but the base weight is [8, 12]"
    );
    // modules_to_save for a tensor the base lacks.
    assert_eq!(
        merge_err("llama/base", "bloom/adapter"),
        "module `transformer.word_embeddings.weight`: the adapter saves this tensor (modules_to_save) but the base model has no such tensor"
    );
}

/// A sharded export: transformers' names, an index with total_size and a complete weight map,
/// and reloading gives back the same bytes.
#[test]
fn sharded_export_has_index_and_reloads() {
    let m = merged("llama", "llama", OutDtype::Auto);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("export");
    let base = fixture("llama/base");
    let opts = ExportOptions {
        max_shard_size: 5000,
        dtype: OutDtype::Auto,
    };
    let rep = write_hf_dir(&m.model, &[&base], &dir, &opts).unwrap();
    assert!(rep.shards >= 3, "{rep:?}");
    let n = rep.shards;
    for s in 1..=n {
        let f = dir.join(format!("model-{s:05}-of-{n:05}.safetensors"));
        let t = read_file(&f).unwrap();
        let bytes: usize = t.values().map(|t| t.bytes().len()).sum();
        assert!(bytes <= 5000 || t.len() == 1, "{f:?}: {bytes}");
    }
    assert!(!dir.join("model.safetensors").exists());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap()).unwrap();
    let total: usize = m.model.tensors.values().map(|t| t.bytes().len()).sum();
    assert_eq!(index["metadata"]["total_size"], total as u64);
    assert_eq!(rep.total_size, total as u64);
    let wm = index["weight_map"].as_object().unwrap();
    assert_eq!(wm.len(), m.model.tensors.len());
    assert!(wm["lm_head.weight"]
        .as_str()
        .unwrap()
        .ends_with(&format!("-of-{n:05}.safetensors")));
    let back = read_dir(&dir).unwrap();
    assert_eq!(back.len(), m.model.tensors.len());
    for (k, t) in &m.model.tensors {
        assert_eq!(back[k].bytes(), t.bytes(), "{k}");
        assert_eq!(back[k].shape, t.shape, "{k}");
    }
    // config, generation config and tokenizer files come along; llama is untied: lm_head kept.
    let cfg = read_config(&dir).unwrap();
    assert_eq!(cfg["dtype"], "float32");
    assert!(dir.join("generation_config.json").is_file());
    assert_eq!(
        std::fs::read(dir.join("tokenizer_config.json")).unwrap(),
        std::fs::read(base.join("tokenizer_config.json")).unwrap()
    );
    assert!(rep.skipped.is_empty());
    // The output dir must be empty.
    let e = write_hf_dir(&m.model, &[&base], &dir, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("the output dir is not empty"), "{e}");
}

/// Tied embeddings: lm_head is not written; one file with {"format": "pt"} metadata; a
/// generation config is made from the config when no source has one.
#[test]
fn single_file_export_of_tied_model() {
    let mut m = merged("gpt2", "gpt2", OutDtype::Auto);
    let emb = m.model.tensors["transformer.wte.weight"].clone();
    m.model.tensors.insert("lm_head.weight".into(), emb);
    let out = tempfile::tempdir().unwrap();
    let rep = write_hf_dir(&m.model, &[], out.path(), &ExportOptions::default()).unwrap();
    assert_eq!(rep.shards, 1);
    assert_eq!(rep.skipped, vec!["lm_head.weight"]);
    assert!(!out.path().join(INDEX_FILE).exists());
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    assert!(!meta.tensors().contains_key("lm_head.weight"));
    let gen: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("generation_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        gen,
        serde_json::json!({"_from_model_config": true, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "5.23.0"})
    );
    assert!(!out.path().join("tokenizer_config.json").exists());
}

/// bf16: merging into bf16 rounds once (nearest even) from the f32 result; a bf16 export
/// reloads and re-exports byte for byte.
#[test]
fn bf16_export_round_trip_is_exact() {
    let f32m = merged("llama", "llama", OutDtype::Auto);
    let bf = merged("llama", "llama", OutDtype::BF16);
    let name = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(bf.model.tensors[name].dtype, Dtype::BF16);
    assert_eq!(
        bf.model.tensors[name].bytes(),
        f32m.model.tensors[name]
            .to_dtype(Dtype::BF16)
            .unwrap()
            .bytes()
    );
    let out = tempfile::tempdir().unwrap();
    let (d1, d2) = (out.path().join("a"), out.path().join("b"));
    let opts = ExportOptions {
        dtype: OutDtype::BF16,
        ..Default::default()
    };
    let rep = write_hf_dir(&bf.model, &[], &d1, &opts).unwrap();
    assert_eq!(rep.dtype, Some(Dtype::BF16));
    assert_eq!(read_config(&d1).unwrap()["dtype"], "bfloat16");
    let back = HfModel::load(&d1).unwrap();
    assert!(back.tensors.values().all(|t| t.dtype == Dtype::BF16));
    for (k, t) in &f32m.model.tensors {
        assert_eq!(
            back.tensors[k].bytes(),
            t.to_dtype(Dtype::BF16).unwrap().bytes(),
            "{k}"
        );
    }
    write_hf_dir(&back, &[], &d2, &ExportOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(d1.join("model.safetensors")).unwrap(),
        std::fs::read(d2.join("model.safetensors")).unwrap()
    );
}

/// NF4 base (transformers-saved, double quant, compute dtype bf16): dequantized to bf16, merged
/// in f32, rounded to bf16; quantization_config is dropped.
#[test]
fn nf4_base_is_dequantized_then_merged() {
    let m = merged("llama", "llama_nf4", OutDtype::Auto);
    assert_eq!(m.report.dequantized.len(), 14);
    assert!(m.model.config.get("quantization_config").is_none());
    let want = read_file(&fixture("llama_nf4/expected.safetensors")).unwrap();
    let mut off_by_one_ulp = 0;
    for n in &m.report.dequantized {
        let got = &m.model.tensors[n];
        assert_eq!(got.dtype, Dtype::BF16, "{n}");
        let key = if m.report.merged.contains(n) {
            format!("merged.{n}")
        } else {
            format!("dequant.{n}")
        };
        for (x, y) in got
            .to_f32()
            .unwrap()
            .iter()
            .zip(want[&key].to_f32().unwrap())
        {
            // peft's and our B·A may sum in different orders: allow one bf16 ulp, count them.
            if *x != y {
                assert!((x - y).abs() <= y.abs() * 2f32.powi(-7), "{n}: {x} vs {y}");
                off_by_one_ulp += 1;
            }
        }
    }
    assert!(
        off_by_one_ulp <= 2,
        "{off_by_one_ulp} values differ by one bf16 ulp"
    );
    let out = tempfile::tempdir().unwrap();
    let rep = write_hf_dir(
        &m.model,
        &[&fixture("llama_nf4/base")],
        out.path(),
        &ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(rep.dtype, Some(Dtype::BF16));
    let cfg = read_config(out.path()).unwrap();
    assert!(cfg.get("quantization_config").is_none());
    assert_eq!(cfg["dtype"], "bfloat16");
}

/// Writes our exports of every fixture case into $RECIPE_EXPORT_CHECK_DIR for
/// `export_make_fixtures.py --check-export DIR` (transformers loads them and compares logits).
#[test]
#[ignore]
fn write_fixture_exports() {
    let Ok(dir) = std::env::var("RECIPE_EXPORT_CHECK_DIR") else {
        return;
    };
    let cases = CASES.iter().map(|(c, b)| (*c, *c, *b, false));
    let nf4 = [
        ("llama_nf4", "llama", "llama_nf4", false),
        ("llama_nf4_requant", "llama", "llama_nf4", true),
    ];
    for (case, adapter, base, requantize) in cases.chain(nf4) {
        let base_dir = fixture(&format!("{base}/base"));
        let opts = MergeOptions {
            dtype: OutDtype::Auto,
            requantize,
        };
        let m = merge_adapter(&base_dir, &fixture(&format!("{adapter}/adapter")), &opts).unwrap();
        let max_shard_size = if case == "llama" { 6000 } else { 5_000_000_000 };
        let opts = ExportOptions {
            max_shard_size,
            ..Default::default()
        };
        let rep = write_hf_dir(&m.model, &[&base_dir], &Path::new(&dir).join(case), &opts).unwrap();
        eprintln!("{case}: {rep:?}");
    }
}

/// One call: merge in f16 and export; every float tensor is f16 and equals the f32 merge
/// rounded once.
#[test]
fn merge_and_export_in_f16() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("m");
    let (m, e) = merge_and_export(
        &fixture("gpt2/base"),
        &fixture("gpt2/adapter"),
        &dir,
        OutDtype::F16,
        1 << 30,
    )
    .unwrap();
    assert_eq!((m.merged.len(), e.dtype), (2, Some(Dtype::F16)));
    assert_eq!(read_config(&dir).unwrap()["dtype"], "float16");
    let back = read_dir(&dir).unwrap();
    let f32m = merged("gpt2", "gpt2", OutDtype::Auto);
    assert_eq!(back.len(), f32m.model.tensors.len());
    for (k, t) in &f32m.model.tensors {
        assert_eq!(
            back[k].bytes(),
            t.to_dtype(Dtype::F16).unwrap().bytes(),
            "{k}"
        );
    }
}

/// Broken weight dirs are named with what is wrong.
#[test]
fn weight_dir_errors() {
    let out = tempfile::tempdir().unwrap();
    let d = out.path();
    let e = read_dir(d).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "no model.safetensors or model.safetensors.index.json \
             (nor pytorch_model.bin or its index)"
        ),
        "{e}"
    );
    std::fs::write(d.join("pytorch_model.bin"), b"x").unwrap();
    let e = read_dir(d).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "pytorch_model.bin: not a zip file (no end of central directory): a truncated download?"
        ),
        "{e}"
    );
    std::fs::write(d.join("model.safetensors"), b"not safetensors").unwrap();
    let e = read_dir(d).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors: not a safetensors file"),
        "{e}"
    );
    std::fs::copy(
        fixture("llama/base/model.safetensors"),
        d.join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    let index = r#"{"metadata": {}, "weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors", "x.weight": "model-00001-of-00001.safetensors"}}"#;
    std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    let e = read_dir(d).unwrap_err().to_string();
    assert!(e.contains("model-00001-of-00001.safetensors: tensor `lm_head.weight` is not listed for this shard"), "{e}");
}

/// requantize: merged weights go back to NF4 exactly as bitsandbytes quantizes them, untouched
/// ones keep their bytes, the config keeps quantization_config, and the export is 4-bit.
#[test]
fn nf4_requantize_round_trip() {
    let base = fixture("llama_nf4/base");
    let opts = MergeOptions {
        dtype: OutDtype::Auto,
        requantize: true,
    };
    let m = merge_adapter(&base, &fixture("llama/adapter"), &opts).unwrap();
    assert_eq!(m.report.requantized.len(), 4);
    assert!(m.model.config.get("quantization_config").is_some());
    let orig = read_dir(&base).unwrap();
    let want = read_file(&fixture("llama_nf4/expected.safetensors")).unwrap();
    let mut names: Vec<&String> = m.model.tensors.keys().collect();
    let mut orig_names: Vec<&String> = orig.keys().collect();
    names.sort();
    orig_names.sort();
    assert_eq!(names, orig_names);
    for (k, t) in &m.model.tensors {
        let requant = m
            .report
            .requantized
            .iter()
            .any(|n| k.starts_with(n.as_str()));
        if !requant {
            assert!(t.bytes() == orig[k].bytes(), "{k} changed");
        } else if k.ends_with(".weight") || k.ends_with(".absmax") {
            assert!(t.bytes() == want[&format!("requant.{k}")].bytes(), "{k}");
        }
    }
    let out = tempfile::tempdir().unwrap();
    write_hf_dir(&m.model, &[&base], out.path(), &ExportOptions::default()).unwrap();
    assert!(read_config(out.path())
        .unwrap()
        .get("quantization_config")
        .is_some());
    let e = merge_adapter(&fixture("llama/base"), &fixture("llama/adapter"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("requantize needs a 4-bit (bitsandbytes) base; this one is not quantized"),
        "{e}"
    );
}

/// A peft < 0.7 adapter (`adapter_model.bin`) merges exactly as its safetensors copy.
#[test]
fn bin_adapter_merges_like_its_safetensors_copy() {
    let fx = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let opts = MergeOptions {
        dtype: OutDtype::Auto,
        requantize: false,
    };
    let base = fx.join("engine/llama");
    let bin = merge_adapter(&base, &fx.join("torch_bin/adapter"), &opts).unwrap();
    let st = merge_adapter(&base, &fx.join("engine/llama/adapter"), &opts).unwrap();
    assert_eq!(bin.model.tensors.len(), st.model.tensors.len());
    for (name, t) in &st.model.tensors {
        assert_eq!(bin.model.tensors[name].bytes(), t.bytes(), "{name}");
    }
}
