//! Engine tests against transformers + peft fixtures (tests/reference/engine_make_fixtures.py).
//! Tolerances: logits/loss 1e-5 and gradients 1e-4, as |ours − ref| ≤ tol·(1 + |ref|)
//! elementwise (f32 through two layers; the reference is f32 torch on the CPU).

use super::*;
use crate::formats::safetensors::{self as st, read_all};
use crate::model::lora;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

type Tensors = HashMap<String, (Vec<f32>, Vec<usize>)>;

/// An engine fixture (`llama`) or another fixture set's model (`bases/qwen3`).
pub(super) fn dir(family: &str) -> PathBuf {
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if family.contains('/') {
        fx.join(family)
    } else {
        fx.join("engine").join(family)
    }
}

pub(super) fn fixture(family: &str) -> (Model, Tensors, Batch) {
    let d = dir(family);
    let model = Model::load(&d, &LoadOptions::default()).unwrap();
    let r = read_all(&d.join("ref.safetensors")).unwrap();
    let (ids, s) = &r["input_ids"];
    let batch = Batch {
        b: s[0],
        t: s[1],
        input_ids: ids.iter().map(|&x| x as u32).collect(),
        attention_mask: r["attention_mask"].0.iter().map(|&x| x as u8).collect(),
        labels: Some(r["labels"].0.iter().map(|&x| x as i64).collect()),
        segments: None,
    };
    (model, r, batch)
}

#[track_caller]
pub(super) fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs() / (1.0 + w.abs());
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: worst error {} at {} (got {}, want {})",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}

/// Logits at real (non-padding) positions only: padded query rows are undefined in transformers.
pub(super) fn valid_logits(l: &[f32], batch: &Batch, v: usize) -> Vec<f32> {
    (0..batch.b * batch.t)
        .filter(|&k| batch.attention_mask[k] == 1)
        .flat_map(|k| l[k * v..(k + 1) * v].to_vec())
        .collect()
}

pub(super) fn check_forward(family: &str) {
    let (model, r, batch) = fixture(family);
    let out = model.forward(&batch).unwrap();
    let v = model.arch.vocab;
    close(
        &format!("{family} logits"),
        &valid_logits(&out.logits, &batch, v),
        &valid_logits(&r["logits"].0, &batch, v),
        1e-5,
    );
    close(
        &format!("{family} loss"),
        &[out.loss.unwrap()],
        &r["loss"].0,
        1e-5,
    );
}

pub(super) fn check_full_grads(family: &str) {
    let (mut model, r, batch) = fixture(family);
    model.set_full_trainable().unwrap();
    let loss = model
        .forward_backward(&batch, TrainOptions::default())
        .unwrap();
    close(&format!("{family} full loss"), &[loss], &r["loss"].0, 1e-5);
    let conv1d = model.arch.conv1d;
    let mut n = 0;
    for p in model.params_mut() {
        let (want, shape) = r
            .get(&format!("full_grad.{}", p.name))
            .unwrap_or_else(|| panic!("{family}: no reference grad for {}", p.name));
        // GPT-2 Conv1D weights are [in, out] in the reference; ours are [out, in].
        let want = if conv1d
            && p.name.ends_with(".weight")
            && shape.len() == 2
            && !p.name.contains("wte")
            && !p.name.contains("wpe")
        {
            let (i, o) = (shape[0], shape[1]);
            let mut t = vec![0.0; i * o];
            for a in 0..i {
                for b in 0..o {
                    t[b * i + a] = want[a * o + b];
                }
            }
            t
        } else {
            want.clone()
        };
        close(
            &format!("{family} grad {}", p.name),
            p.grad.host(),
            &want,
            1e-4,
        );
        n += 1;
    }
    let n_ref = r.keys().filter(|k| k.starts_with("full_grad.")).count();
    assert_eq!(n, n_ref, "{family}: number of trainable tensors");
}

pub(super) fn check_lora(family: &str) {
    let (mut model, r, batch) = fixture(family);
    lora::load_peft(&mut model, &dir(family).join("adapter")).unwrap();
    let out = model.forward(&batch).unwrap();
    let v = model.arch.vocab;
    close(
        &format!("{family} lora logits"),
        &valid_logits(&out.logits, &batch, v),
        &valid_logits(&r["lora_logits"].0, &batch, v),
        1e-5,
    );
    let loss = model
        .forward_backward(&batch, TrainOptions::default())
        .unwrap();
    close(
        &format!("{family} lora loss"),
        &[loss],
        &r["lora_loss"].0,
        1e-5,
    );
    let mut n = 0;
    for p in model.params_mut() {
        let key = format!("lora_grad.base_model.model.{}", p.name);
        let (want, _) = r
            .get(&key)
            .unwrap_or_else(|| panic!("{family}: no reference grad {key}"));
        close(&format!("{family} {}", key), p.grad.host(), want, 1e-4);
        n += 1;
    }
    assert_eq!(
        n,
        r.keys().filter(|k| k.starts_with("lora_grad.")).count(),
        "{family}: number of adapter tensors"
    );
}

/// Checkpointing on/off gives bit-identical gradients.
pub(super) fn check_checkpointing(family: &str) {
    let grads = |ck: bool| {
        let (mut model, _, batch) = fixture(family);
        lora::load_peft(&mut model, &dir(family).join("adapter")).unwrap();
        model.set_full_trainable().unwrap();
        let loss = model
            .forward_backward(
                &batch,
                TrainOptions {
                    checkpointing: ck,
                    dropout_seed: 5,
                },
            )
            .unwrap();
        let g: Vec<Vec<f32>> = model
            .params_mut()
            .into_iter()
            .map(|p| p.grad.to_vec())
            .collect();
        (loss, g)
    };
    assert_eq!(
        grads(false),
        grads(true),
        "{family}: checkpointing changed the result"
    );
}

macro_rules! family_tests {
    ($m:ident, $f:literal) => {
        mod $m {
            #[test]
            fn forward_matches_transformers() {
                super::check_forward($f);
            }
            #[test]
            fn full_grads_match_autograd() {
                super::check_full_grads($f);
            }
            #[test]
            fn lora_matches_peft() {
                super::check_lora($f);
            }
            #[test]
            fn checkpointing_is_identical() {
                super::check_checkpointing($f);
            }
        }
    };
}

family_tests!(llama, "llama");
family_tests!(qwen2, "qwen2");
family_tests!(gpt2, "gpt2");
family_tests!(bloom, "bloom");
family_tests!(chatglm, "chatglm");
family_tests!(qwen, "qwen");
// tests/reference/bases_make_fixtures.py: RoPE scaling on a tiny LLaMA, Qwen3, sliding windows.
family_tests!(rope_linear, "bases/rope_linear");
family_tests!(rope_dynamic, "bases/rope_dynamic");
family_tests!(rope_llama3, "bases/rope_llama3");
family_tests!(rope_yarn, "bases/rope_yarn");
family_tests!(qwen3, "bases/qwen3");
family_tests!(mistral_sliding, "bases/mistral");
family_tests!(qwen2_sliding, "bases/qwen2_sliding");
family_tests!(gemma3, "bases/gemma3");

/// A row packing two examples equals running each example alone (positions restart, no
/// attention across the boundary, no prediction across it).
#[test]
fn packed_sequences_equal_separate_runs() {
    for family in ["llama", "bloom", "gpt2", "chatglm"] {
        let (model, _, _) = fixture(family);
        let v = model.arch.vocab;
        let ex1: Vec<u32> = vec![5, 9, 17, 3, 22];
        let ex2: Vec<u32> = vec![7, 30, 11];
        let one = |ids: &Vec<u32>| Batch {
            b: 1,
            t: ids.len(),
            input_ids: ids.clone(),
            attention_mask: vec![1; ids.len()],
            labels: Some(ids.iter().map(|&x| x as i64).collect()),
            segments: None,
        };
        let (o1, o2) = (
            model.forward(&one(&ex1)).unwrap(),
            model.forward(&one(&ex2)).unwrap(),
        );
        let ids: Vec<u32> = ex1.iter().chain(&ex2).cloned().collect();
        let packed = Batch {
            segments: Some(vec![0, 0, 0, 0, 0, 1, 1, 1]),
            ..one(&ids)
        };
        let op = model.forward(&packed).unwrap();
        let want: Vec<f32> = o1.logits.iter().chain(&o2.logits).cloned().collect();
        close(&format!("{family} packed logits"), &op.logits, &want, 1e-5);
        assert_eq!(op.n_tokens, o1.n_tokens + o2.n_tokens);
        let mean = (o1.loss.unwrap() * o1.n_tokens as f32 + o2.loss.unwrap() * o2.n_tokens as f32)
            / op.n_tokens as f32;
        close(
            &format!("{family} packed loss"),
            &[op.loss.unwrap()],
            &[mean],
            1e-5,
        );
        assert_eq!(op.logits.len(), 8 * v);
    }
}

/// Sharded checkpoints (model.safetensors.index.json) and bf16 storage load.
#[test]
fn sharded_and_bf16_weights_load() {
    let (model, _, batch) = fixture("llama");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir("llama").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let all = read_all(&dir("llama").join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let t: Vec<(String, Vec<usize>, &[f32])> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].1.clone(), &all[*n].0[..]))
            .collect();
        st::write_f32(&tmp.path().join(file), &t).unwrap();
        for n in part {
            map.insert((*n).clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let sharded = Model::load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(
        sharded.forward(&batch).unwrap().logits,
        model.forward(&batch).unwrap().logits
    );
    // bf16 / f16 decoding
    let x = [1.5f32, -0.375, 3.0e-3];
    let bf: Vec<u8> = x
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let hf: Vec<u8> = x
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let got = st::decode_f32(safetensors::Dtype::BF16, &bf[1..]).map(|_| ());
    assert!(got.is_ok(), "unaligned slices decode");
    let d = st::decode_f32(safetensors::Dtype::BF16, &bf).unwrap();
    assert_eq!(d[..2], [1.5, -0.375]);
    assert!((d[2] - 3.0e-3).abs() < 2e-5);
    let d = st::decode_f32(safetensors::Dtype::F16, &hf).unwrap();
    assert_eq!(d[..2], [1.5, -0.375]);
}

/// PEFT target matching: suffix names, full-match regex, all-linear without the head.
#[test]
fn lora_targets_match_like_peft() {
    use crate::model::lora::{LoraConfig, Targets};
    let names = Targets::Names(vec!["q_proj".into(), "model.layers.1.mlp.down_proj".into()]);
    assert!(names.matches("model.layers.0.self_attn.q_proj", None));
    assert!(!names.matches("model.layers.0.self_attn.xq_proj", None));
    assert!(names.matches("model.layers.1.mlp.down_proj", None));
    assert!(!names.matches("model.layers.0.mlp.down_proj", None));
    let (mut model, _, batch) = fixture("bloom");
    let base = model.forward(&batch).unwrap().logits;
    let cfg = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: Targets::Regex(r".*\.1.*query_key_value".into()),
        use_rslora: false,
        modules_to_save: vec![],
        seed: 3,
    };
    let got = lora::apply(&mut model, &cfg).unwrap();
    assert_eq!(
        got,
        vec!["transformer.h.1.self_attention.query_key_value".to_string()]
    );
    // B = 0 at init: the adapted model computes exactly the base model; A within 1/sqrt(d_in).
    assert_eq!(model.forward(&batch).unwrap().logits, base);
    let a = model.layers[1].qkv[0].lora.as_ref().unwrap().a.host();
    let bound = 1.0 / (model.arch.hidden as f32).sqrt();
    assert!(a.iter().all(|x| x.abs() <= bound) && a.iter().any(|x| x.abs() > bound / 2.0));
    let (mut llama, _, _) = fixture("llama");
    let all = LoraConfig {
        targets: Targets::AllLinear,
        ..cfg.clone()
    };
    let got = lora::apply(&mut llama, &all).unwrap();
    assert_eq!(got.len(), 14);
    assert!(!got.iter().any(|n| n == "lm_head"));
    let none = LoraConfig {
        targets: Targets::Names(vec!["nothing".into()]),
        ..cfg
    };
    assert!(lora::apply(&mut llama, &none)
        .unwrap_err()
        .to_string()
        .starts_with("target_modules Names([\"nothing\"]): matches no linear layer"));
}

/// An adapter saved here reloads to the same logits; keys and config follow PEFT's format.
#[test]
fn peft_save_load_round_trip() {
    use crate::model::lora::{LoraConfig, Targets};
    for (family, targets, mts) in [
        (
            "llama",
            Targets::AllLinear,
            vec!["embed_tokens".to_string()],
        ),
        (
            "gpt2",
            Targets::Names(vec!["c_attn".into(), "c_fc".into()]),
            vec![],
        ),
    ] {
        let (mut model, _, batch) = fixture(family);
        let cfg = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets,
            use_rslora: false,
            modules_to_save: mts,
            seed: 7,
        };
        lora::apply(&mut model, &cfg).unwrap();
        // a training-like change to every trainable tensor
        for (i, p) in model.params_mut().into_iter().enumerate() {
            p.value
                .host_mut()
                .iter_mut()
                .enumerate()
                .for_each(|(j, x)| *x += 0.01 * ((i * 31 + j) as f32).sin());
        }
        let want = model.forward(&batch).unwrap().logits;
        let tmp = tempfile::tempdir().unwrap();
        lora::save_peft(&model, &cfg, "tiny", tmp.path()).unwrap();
        let saved = read_all(&tmp.path().join("adapter_model.safetensors")).unwrap();
        let c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(c["peft_type"], "LORA");
        assert_eq!(c["fan_in_fan_out"], family == "gpt2");
        if family == "llama" {
            assert_eq!(
                saved["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].1,
                vec![4, 16]
            );
            assert_eq!(
                saved["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].1,
                vec![8, 4]
            );
            assert!(saved.contains_key("base_model.model.model.embed_tokens.weight"));
        } else {
            assert_eq!(
                saved["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].1,
                vec![48, 4]
            );
        }
        let (mut fresh, _, _) = fixture(family);
        let back = lora::load_peft(&mut fresh, tmp.path()).unwrap();
        assert_eq!(back.r, 4);
        assert_eq!(fresh.forward(&batch).unwrap().logits, want);
    }
}

/// LoRA dropout: seeded (same seed = same grads, also under checkpointing), changes the result
/// vs no dropout, and its gradient matches finite differences of the same-mask loss.
#[test]
fn lora_dropout_is_seeded_and_differentiable() {
    const P: f32 = 0.3;
    let run = |p: f32, seed: u64, ck: bool| {
        let (mut model, _, batch) = fixture("qwen2");
        lora::load_peft(&mut model, &dir("qwen2").join("adapter")).unwrap();
        for l in model.linears_mut() {
            if let Some(lw) = &mut l.lora {
                lw.dropout = p;
            }
        }
        let loss = model
            .forward_backward(
                &batch,
                TrainOptions {
                    checkpointing: ck,
                    dropout_seed: seed,
                },
            )
            .unwrap();
        let g: Vec<Vec<f32>> = model
            .params_mut()
            .into_iter()
            .map(|p| p.grad.to_vec())
            .collect();
        (loss, g)
    };
    let a = run(0.3, 1, false);
    assert_eq!(a, run(0.3, 1, true));
    assert_ne!(a.0, run(0.3, 2, false).0);
    assert_ne!(a.0, run(0.0, 1, false).0);
    // finite difference on one A entry, same mask (same seed)
    let (mut model, _, batch) = fixture("qwen2");
    lora::load_peft(&mut model, &dir("qwen2").join("adapter")).unwrap();
    let set = |m: &mut Model, delta: f32| {
        for l in m.linears_mut() {
            if let Some(lw) = &mut l.lora {
                lw.dropout = P;
                if l.name.ends_with("layers.1.self_attn.q_proj") {
                    lw.a.host_mut()[3] += delta;
                }
            }
        }
    };
    set(&mut model, 0.0);
    let opts = TrainOptions {
        checkpointing: false,
        dropout_seed: 1,
    };
    model.forward_backward(&batch, opts).unwrap();
    let g = model
        .params_mut()
        .into_iter()
        .find(|p| p.name == "model.layers.1.self_attn.q_proj.lora_A.weight")
        .unwrap()
        .grad
        .host()[3];
    let h = 1e-2;
    set(&mut model, h);
    let lp = model.forward_backward(&batch, opts).unwrap();
    set(&mut model, -2.0 * h);
    let lm = model.forward_backward(&batch, opts).unwrap();
    let fd = (lp - lm) / (2.0 * h);
    assert!(
        (fd - g).abs() < 2e-3 * (1.0 + g.abs()),
        "fd {fd} vs grad {g}"
    );
}

/// Prefill of a left-padded prompt then one token at a time reproduces `forward`'s logits.
#[test]
fn kv_cache_steps_match_full_forward() {
    for family in ["llama", "qwen2", "gpt2", "bloom", "chatglm", "qwen"] {
        let (model, _, batch) = fixture(family);
        let (b, t, v) = (batch.b, batch.t, model.arch.vocab);
        let full = model
            .forward(&Batch {
                labels: None,
                ..batch.clone()
            })
            .unwrap()
            .logits;
        let mut cache = model.new_cache(b, t);
        let split = 5;
        let cols = |a: usize, z: usize, x: &[u32]| -> Vec<u32> {
            (0..b)
                .flat_map(|r| x[r * t + a..r * t + z].to_vec())
                .collect()
        };
        let mask: Vec<u32> = batch.attention_mask.iter().map(|&m| m as u32).collect();
        let as_u8 = |x: Vec<u32>| -> Vec<u8> { x.into_iter().map(|m| m as u8).collect() };
        let mut got = vec![0.0; b * t * v];
        let mut put = |a: usize, z: usize, l: &[f32]| {
            for r in 0..b {
                for i in a..z {
                    got[(r * t + i) * v..][..v]
                        .copy_from_slice(&l[(r * (z - a) + i - a) * v..][..v]);
                }
            }
        };
        let l = model
            .forward_step(
                &mut cache,
                &cols(0, split, &batch.input_ids),
                &as_u8(cols(0, split, &mask)),
            )
            .unwrap();
        put(0, split, &l);
        for i in split..t {
            let l = model
                .forward_step(
                    &mut cache,
                    &cols(i, i + 1, &batch.input_ids),
                    &as_u8(cols(i, i + 1, &mask)),
                )
                .unwrap();
            put(i, i + 1, &l);
        }
        close(
            &format!("{family} kv-cache logits"),
            &valid_logits(&got, &batch, v),
            &valid_logits(&full, &batch, v),
            1e-5,
        );
    }
}

/// save_pretrained then load gives the same model; merging an adapter keeps its logits.
#[test]
fn save_pretrained_and_merge() {
    for family in [
        "gpt2",
        "chatglm",
        "bloom",
        "bases/qwen3",
        "bases/rope_yarn",
        "bases/mistral",
        "bases/gemma3",
    ] {
        let (mut model, r, batch) = fixture(family);
        lora::load_peft(&mut model, &dir(family).join("adapter")).unwrap();
        lora::merge(&mut model).unwrap();
        let v = model.arch.vocab;
        let merged = model.forward(&batch).unwrap().logits;
        close(
            &format!("{family} merged logits"),
            &valid_logits(&merged, &batch, v),
            &valid_logits(&r["lora_logits"].0, &batch, v),
            1e-5,
        );
        let tmp = tempfile::tempdir().unwrap();
        model.save_pretrained(tmp.path()).unwrap();
        let back = Model::load(tmp.path(), &LoadOptions::default()).unwrap();
        assert_eq!(back.forward(&batch).unwrap().logits, merged, "{family}");
    }
}

/// A frozen `QuantLinear` plugs in as a base weight: same outputs and LoRA grads as dense.
#[test]
fn quant_linear_plugs_in() {
    struct DenseAsQuant(Vec<f32>, usize, usize);
    impl QuantLinear for DenseAsQuant {
        fn d_in(&self) -> usize {
            self.1
        }
        fn d_out(&self) -> usize {
            self.2
        }
        fn matmul_xwt(&self, y: &mut [f32], x: &[f32], n: usize) {
            crate::backend::CpuBackend.matmul_ref(y, x, &self.0, n, self.2, self.1);
        }
        fn matmul_dyw(&self, dx: &mut [f32], dy: &[f32], n: usize) {
            for t in 0..n {
                for o in 0..self.2 {
                    for i in 0..self.1 {
                        dx[t * self.1 + i] += dy[t * self.2 + o] * self.0[o * self.1 + i];
                    }
                }
            }
        }
    }
    let run = |quant: bool| {
        let (mut model, _, batch) = fixture("llama");
        if quant {
            for l in model.linears_mut() {
                if let LinearWeight::Dense(w) = &l.weight {
                    l.weight = LinearWeight::Quant(crate::backend::QuantWeight::Host(Box::new(
                        DenseAsQuant(w.to_vec(), l.d_in, l.d_out),
                    )));
                }
            }
        }
        lora::load_peft(&mut model, &dir("llama").join("adapter")).unwrap();
        let loss = model
            .forward_backward(&batch, TrainOptions::default())
            .unwrap();
        let g: Vec<Vec<f32>> = model
            .params_mut()
            .into_iter()
            .map(|p| p.grad.to_vec())
            .collect();
        (loss, g)
    };
    let (a, b) = (run(false), run(true));
    close("quant loss", &[b.0], &[a.0], 1e-6);
    for (x, y) in a.1.iter().zip(&b.1) {
        close("quant grads", y, x, 1e-5);
    }
    let (mut model, _, _) = fixture("qwen");
    let l = &mut model.layers[0].o;
    l.weight = LinearWeight::Quant(crate::backend::QuantWeight::Host(Box::new(DenseAsQuant(
        vec![0.0; l.d_in * l.d_out],
        l.d_in,
        l.d_out,
    ))));
    assert!(model
        .set_full_trainable()
        .unwrap_err()
        .to_string()
        .contains("a quantized weight cannot be trained"));
}

/// Writes adapters trained-like here plus our logits for tests/reference/engine_check_saved_adapter.py
/// (run: ENGINE_PEFT_CHECK_DIR=/tmp/x cargo test --lib write_adapters_for_peft_check -- --ignored).
#[test]
#[ignore]
fn write_adapters_for_peft_check() {
    use crate::model::lora::{LoraConfig, Targets};
    let out = PathBuf::from(std::env::var("ENGINE_PEFT_CHECK_DIR").expect("ENGINE_PEFT_CHECK_DIR"));
    for (family, targets, mts) in [
        (
            "llama",
            Targets::AllLinear,
            vec!["embed_tokens".to_string()],
        ),
        (
            "gpt2",
            Targets::Names(vec!["c_attn".into(), "c_proj".into()]),
            vec![],
        ),
        (
            "bloom",
            Targets::Regex(r".*\.1.*query_key_value".into()),
            vec![],
        ),
        (
            "qwen2",
            Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
            vec![],
        ),
        ("bases/gemma3", Targets::AllLinear, vec![]),
    ] {
        let (mut model, _, batch) = fixture(family);
        let cfg = LoraConfig {
            r: 4,
            alpha: 16.0,
            dropout: 0.0,
            targets,
            use_rslora: family == "qwen2",
            modules_to_save: mts,
            seed: 11,
        };
        lora::apply(&mut model, &cfg).unwrap();
        for (i, p) in model.params_mut().into_iter().enumerate() {
            p.value
                .host_mut()
                .iter_mut()
                .enumerate()
                .for_each(|(j, x)| *x += 0.05 * ((i * 17 + j) as f32).cos());
        }
        let o = model.forward(&batch).unwrap();
        let d = out.join(family.replace('/', "_"));
        lora::save_peft(&model, &cfg, &dir(family).display().to_string(), &d).unwrap();
        let shape = vec![batch.b, batch.t, model.arch.vocab];
        st::write_f32(
            &d.join("ours.safetensors"),
            &[
                ("logits".into(), shape, &o.logits[..]),
                ("loss".into(), vec![1], &[o.loss.unwrap()][..]),
            ],
        )
        .unwrap();
        // merged full model for transformers
        lora::merge(&mut model).unwrap();
        model.save_pretrained(&d.join("merged")).unwrap();
    }
}

#[test]
fn quantize_hook_replaces_layer_linears() {
    let hook: QuantizeHook = Arc::new(
        |name: &str, _w: &[f32], d_in: usize, d_out: usize| -> Option<Box<dyn QuantLinear>> {
            struct Zero(usize, usize);
            impl QuantLinear for Zero {
                fn d_in(&self) -> usize {
                    self.0
                }
                fn d_out(&self) -> usize {
                    self.1
                }
                fn matmul_xwt(&self, y: &mut [f32], _x: &[f32], n: usize) {
                    y[..n * self.1].iter_mut().for_each(|v| *v = 0.0);
                }
                fn matmul_dyw(&self, _dx: &mut [f32], _dy: &[f32], _n: usize) {}
            }
            name.ends_with("mlp.down_proj")
                .then(|| Box::new(Zero(d_in, d_out)) as Box<dyn QuantLinear>)
        },
    );
    let m = Model::load(
        &dir("llama"),
        &LoadOptions {
            quantize: Some(hook),
            ..Default::default()
        },
    )
    .unwrap();
    let quant: Vec<&str> = m
        .layers
        .iter()
        .flat_map(|l| l.linears())
        .filter(|l| matches!(l.weight, LinearWeight::Quant(_)))
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        quant,
        [
            "model.layers.0.mlp.down_proj",
            "model.layers.1.mlp.down_proj"
        ]
    );
    let files = WeightFiles::open(&dir("llama")).unwrap();
    let (dt, shape, bytes) = files.raw("model.norm.weight").unwrap();
    assert_eq!(
        (dt, shape, bytes.len()),
        (safetensors::Dtype::F32, vec![16], 64)
    );
}

/// Timing on a larger model: ENGINE_BENCH_DIR=<hf dir> cargo test --lib bench_forward_backward -- --ignored --nocapture
#[test]
#[ignore]
fn bench_forward_backward() {
    use crate::model::lora::{LoraConfig, Targets};
    let d = PathBuf::from(std::env::var("ENGINE_BENCH_DIR").expect("ENGINE_BENCH_DIR"));
    let mut model = Model::load(&d, &LoadOptions::default()).unwrap();
    let cfg = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: Targets::AllLinear,
        use_rslora: false,
        modules_to_save: vec![],
        seed: 1,
    };
    lora::apply(&mut model, &cfg).unwrap();
    let (b, t) = (4, 256);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| (i * 7919 % model.arch.vocab) as u32)
        .collect();
    let batch = Batch {
        b,
        t,
        input_ids: ids.clone(),
        attention_mask: vec![1; b * t],
        labels: Some(ids.iter().map(|&x| x as i64).collect()),
        segments: None,
    };
    for ck in [false, true] {
        let t0 = std::time::Instant::now();
        let loss = model
            .forward_backward(
                &batch,
                TrainOptions {
                    checkpointing: ck,
                    dropout_seed: 0,
                },
            )
            .unwrap();
        let s = t0.elapsed().as_secs_f64();
        println!(
            "checkpointing={ck}: loss {loss:.4}, {s:.2}s, {:.0} tokens/s",
            (b * t) as f64 / s
        );
    }
    let t0 = std::time::Instant::now();
    model.forward(&batch).unwrap();
    println!("forward: {:.2}s", t0.elapsed().as_secs_f64());
}

/// GPT-2 / BLOOM checkpoints saved from the base model (no `transformer.` prefix) load with the
/// canonical module names.
#[test]
fn unprefixed_checkpoints_load() {
    for family in ["gpt2", "bloom"] {
        let (model, _, batch) = fixture(family);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir(family).join("config.json"),
            tmp.path().join("config.json"),
        )
        .unwrap();
        let all = read_all(&dir(family).join("model.safetensors")).unwrap();
        let t: Vec<(String, Vec<usize>, &[f32])> = all
            .iter()
            .map(|(n, (d, s))| {
                (
                    n.trim_start_matches("transformer.").to_string(),
                    s.clone(),
                    &d[..],
                )
            })
            .collect();
        st::write_f32(&tmp.path().join("model.safetensors"), &t).unwrap();
        let m = Model::load(tmp.path(), &LoadOptions::default()).unwrap();
        assert_eq!(
            m.forward(&batch).unwrap().logits,
            model.forward(&batch).unwrap().logits
        );
        assert!(m.layers[0].ln1.name.starts_with("transformer.h.0."));
        assert!(m.layers[0].qkv[0].name.starts_with("transformer.h.0."));
    }
}

#[test]
fn batch_padding_and_packing() {
    let rows = vec![(vec![5, 6, 7], vec![-100, 6, 7]), (vec![8], vec![8])];
    let b = Batch::padded(&rows, 0, true);
    assert_eq!((b.b, b.t), (2, 3));
    assert_eq!(b.input_ids, [5, 6, 7, 0, 0, 8]);
    assert_eq!(b.attention_mask, [1, 1, 1, 0, 0, 1]);
    assert_eq!(b.labels.unwrap(), [-100, 6, 7, -100, -100, 8]);
    let r = Batch::padded(&rows, 0, false);
    assert_eq!(r.input_ids, [5, 6, 7, 8, 0, 0]);
    let p = Batch::packed(
        &[
            (vec![1, 2, 3], vec![1, 2, 3]),
            (vec![4, 5], vec![4, 5]),
            (vec![6, 7, 8], vec![6, 7, 8]),
        ],
        5,
        0,
    );
    assert_eq!((p.b, p.t), (2, 5));
    assert_eq!(p.input_ids, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0]);
    assert_eq!(
        p.segments.unwrap(),
        [0, 0, 0, 1, 1, 0, 0, 0, u32::MAX, u32::MAX]
    );
    assert_eq!(p.attention_mask, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
}

/// Packed backward: gradients of a packed row equal the token-weighted mean of the separate
/// examples' gradients (full fine-tuning, so every weight's gradient is compared).
#[test]
fn packed_gradients_equal_separate() {
    for family in ["llama", "bloom", "gpt2"] {
        let ex = [
            (vec![5u32, 9, 17, 3, 22], vec![-100i64, 9, 17, 3, 22]),
            (vec![7, 30, 11], vec![7, 30, 11]),
        ];
        let grads = |batch: &Batch| {
            let (mut model, _, _) = fixture(family);
            model.set_full_trainable().unwrap();
            model
                .forward_backward(batch, TrainOptions::default())
                .unwrap();
            model
                .params_mut()
                .into_iter()
                .map(|p| p.grad.to_vec())
                .collect::<Vec<_>>()
        };
        let g1 = grads(&Batch::padded(&ex[..1], 0, false));
        let g2 = grads(&Batch::padded(&ex[1..], 0, false));
        let gp = grads(&Batch::packed(&ex, 8, 0));
        let (n1, n2) = (4.0, 2.0); // predicted tokens per example (shifted labels)
        for ((a, b), p) in g1.iter().zip(&g2).zip(&gp) {
            let want: Vec<f32> = a
                .iter()
                .zip(b)
                .map(|(a, b)| (n1 * a + n2 * b) / (n1 + n2))
                .collect();
            close(&format!("{family} packed grads"), p, &want, 1e-5);
        }
    }
}

#[test]
fn peft_config_options_that_change_the_math_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir("llama").join("adapter/adapter_model.safetensors"),
        tmp.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir("llama").join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    for (k, v, msg) in [
        (
            "rank_pattern",
            serde_json::json!({"q_proj": 8}),
            "key \"rank_pattern\": per-module ranks/alphas are not supported",
        ),
        (
            "use_dora",
            serde_json::json!(true),
            "key \"use_dora\": DoRA is not supported",
        ),
        (
            "bias",
            serde_json::json!("all"),
            "key \"bias\": only \"none\" is supported",
        ),
    ] {
        let mut c = base.clone();
        c[k] = v;
        std::fs::write(tmp.path().join("adapter_config.json"), c.to_string()).unwrap();
        let (mut model, _, _) = fixture("llama");
        let e = lora::load_peft(&mut model, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(e.ends_with(msg), "{e}");
        assert!(e.contains("adapter_config.json"), "{e}");
    }
}

/// eval_loss equals forward's loss; forward_step_last equals the last column of forward_step.
#[test]
fn eval_loss_and_last_logits() {
    let (model, r, batch) = fixture("chatglm");
    let e = model.eval_loss(&batch).unwrap();
    let (sum, cnt) = (e.nll, e.tokens);
    close(
        "eval_loss",
        &[(sum / cnt as f64) as f32],
        &r["loss"].0,
        1e-5,
    );
    let v = model.arch.vocab;
    let mut c1 = model.new_cache(batch.b, batch.t);
    let mut c2 = model.new_cache(batch.b, batch.t);
    let all = model
        .forward_step(&mut c1, &batch.input_ids, &batch.attention_mask)
        .unwrap();
    let last = model
        .forward_step_last(&mut c2, &batch.input_ids, &batch.attention_mask)
        .unwrap();
    for row in 0..batch.b {
        // (a different matmul shape may round differently)
        close(
            "last logits",
            &last[row * v..(row + 1) * v],
            &all[((row + 1) * batch.t - 1) * v..((row + 1) * batch.t) * v],
            1e-6,
        );
    }
    assert!(
        model.forward_step(&mut c1, &[1, 2], &[1, 1]).is_err(),
        "capacity exceeded"
    );
}

/// Qwen v1 past `seq_length` 8 (tests/reference/qwen_v1_long.py, a transcription of
/// modeling_qwen.py): evaluation of two rows of 20 slots (NTK α 7 and 3 from their 20 and 15 real
/// tokens, logn from slot 8) within 1e-5, and greedy generation with the KV cache equal to
/// Qwen's greedy loop, each prompt alone (5 tokens: α stays 1 while logn grows; 12 tokens: α 3
/// kept for all 14 steps) and as one left-padded batch, whose every step's logits match too.
#[test]
fn qwen_logn_and_dynamic_ntk_match_the_reference() {
    use crate::eval::generate::{generate, FinishReason, GenConfig, Generation};
    use crate::eval::lm::EngineLm;
    let (model, r, batch) = fixture("qwen_long");
    let lc = model.arch.long_context.clone().unwrap();
    assert_eq!((lc.len, lc.logn, lc.dynamic_ntk), (8, true, true));
    assert_eq!(
        [5, 8, 9, 15, 16, 17, 20, 33].map(|n| lc.ntk_alpha(n)),
        [1.0, 1.0, 3.0, 3.0, 3.0, 7.0, 7.0, 15.0]
    );
    assert_eq!(
        (lc.logn(7), lc.logn(8)),
        (1.0, (9f64.ln() / 8f64.ln()) as f32)
    );
    let v = model.arch.vocab;
    let out = model.forward(&batch).unwrap();
    close(
        "qwen_long logits",
        &valid_logits(&out.logits, &batch, v),
        &valid_logits(&r["logits"].0, &batch, v),
        1e-5,
    );
    close("qwen_long loss", &[out.loss.unwrap()], &r["loss"].0, 1e-5);

    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("qwen_long").join("greedy.json")).unwrap())
            .unwrap();
    let rows = |v: &serde_json::Value| -> Vec<Vec<u32>> {
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            let a = v.as_array().unwrap();
            a.iter().map(|x| x.as_u64().unwrap() as u32).collect()
        };
        v.as_array().unwrap().iter().map(ids).collect()
    };
    let prompts = rows(&fx["prompts"]);
    let cfg = GenConfig {
        max_new_tokens: fx["max_new_tokens"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let greedy = |ps: &[Vec<u32>]| -> Vec<Vec<u32>> {
        let mut lm = EngineLm::new(&model, 0, cfg.max_new_tokens);
        let g: Vec<Generation> = generate(&mut lm, ps, &cfg, |_, _| {}).unwrap();
        assert!(g.iter().all(|g| g.finish == FinishReason::Length));
        g.into_iter().map(|g| g.tokens).collect()
    };
    let single: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| greedy(std::slice::from_ref(p)).remove(0))
        .collect();
    assert_eq!(single, rows(&fx["single"]), "single prompts");
    assert_eq!(greedy(&prompts), rows(&fx["batch"]), "left-padded batch");

    // Every step of the batched run: its last-position logits [steps, B, V].
    let want = &r["greedy_logits"].0;
    let gen = rows(&fx["batch"]);
    let padded = crate::eval::generate::left_pad(&prompts, 0);
    let mut cache = model.new_cache(2, padded.len + gen[0].len());
    let mut got = model
        .forward_step_last(&mut cache, &padded.ids, &padded.attention_mask)
        .unwrap();
    for s in 1..gen[0].len() {
        let next = [gen[0][s - 1], gen[1][s - 1]];
        got.extend(model.forward_step_last(&mut cache, &next, &[1, 1]).unwrap());
    }
    close("qwen_long greedy step logits", &got, want, 1e-5);
}

/// Past Qwen v1's `seq_length` only logn attention over a partial rotary (`rotary_pct` < 1) is
/// refused, in evaluation and generation; training runs plain RoPE as Qwen v1 does in train
/// mode (the loss of the model without `long_context`).
#[test]
fn qwen_long_context_training_and_refusal() {
    let (mut model, _, batch) = fixture("qwen_long");
    let mut plain = model.arch.clone();
    plain.long_context = None;
    let want = {
        let (mut m, _, _) = fixture("qwen_long");
        m.arch = plain;
        m.forward(&batch).unwrap().loss.unwrap()
    };
    let got = model.forward_backward(&batch, Default::default()).unwrap();
    assert!((got - want).abs() <= 1e-6 * want.abs(), "{got} vs {want}");
    let eval = model.forward(&batch).unwrap().loss.unwrap();
    assert!((eval - want).abs() > 1e-3, "eval differs from training");

    let tmp = tempfile::tempdir().unwrap();
    let src = dir("qwen_long");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    cfg["rotary_pct"] = serde_json::json!(0.5);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let mut model = Model::load(tmp.path(), &LoadOptions::default()).unwrap();
    let e = model
        .forward(&batch)
        .err()
        .expect("partial rotary")
        .to_string();
    assert_eq!(
        e,
        "batch: sequence length 20 > seq_length 8 with use_logn_attn and rotary_pct < 1 in \
         config.json: logn attention over a partial rotary is not supported; use max_length <= 8"
    );
    let mut cache = model.new_cache(1, 9);
    let e = model.forward_step(&mut cache, &[1; 9], &[1; 9]).err();
    assert!(e
        .unwrap()
        .to_string()
        .starts_with("batch: sequence length 9 > seq_length 8"));
    model.forward_backward(&batch, Default::default()).unwrap();
}

/// Sliding windows are read from the config (followed, not refused: see the bases/mistral and
/// bases/qwen2_sliding fixtures).
#[test]
fn sliding_window_configs() {
    // Sliding windows are followed (see the bases/mistral and bases/qwen2_sliding fixtures):
    // Mistral on every layer, Qwen2 with use_sliding_window from max_window_layers on.
    let mistral = r#"{"model_type": "mistral", "hidden_size": 8, "num_attention_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 16, "vocab_size": 10, "sliding_window": 4096}"#;
    let a = crate::model::arch::Arch::from_config_json(mistral, "config.json").unwrap();
    assert_eq!(
        (a.long_context.is_none(), a.window(0), a.window(1)),
        (true, Some(4096), Some(4096))
    );
    let qwen2 = mistral.replace("mistral", "qwen2");
    let a = crate::model::arch::Arch::from_config_json(&qwen2, "c").unwrap();
    assert_eq!(a.sliding_window, None);
    let on = qwen2.replace(
        "4096}",
        r#"4096, "use_sliding_window": true, "max_window_layers": 1}"#,
    );
    let a = crate::model::arch::Arch::from_config_json(&on, "c").unwrap();
    assert_eq!((a.window(0), a.window(1)), (None, Some(4096)));
}

/// θ_i of each scaled fixture config equal transformers' `inv_freq` (printed by loading the
/// fixture with transformers 5.24; dynamic: `_compute_dynamic_ntk_parameters(seq_len=12)`), and
/// YaRN's cos/sin factor 0.1·ln(4) + 1.
#[test]
fn rope_frequencies_match_transformers() {
    let cases: [(&str, usize, [f64; 4], f64); 6] = [
        (
            "rope_linear",
            0,
            [
                0.5,
                0.05000000074505806,
                0.004999999888241291,
                0.0005000000237487257,
            ],
            1.0,
        ),
        (
            "rope_dynamic",
            8,
            [
                1.0,
                0.10000000149011612,
                0.009999999776482582,
                0.0010000000474974513,
            ],
            1.0,
        ),
        (
            "rope_dynamic",
            12,
            [
                1.0,
                0.07937005162239075,
                0.006299605127424002,
                0.0005000000237487257,
            ],
            1.0,
        ),
        (
            "rope_llama3",
            0,
            [
                1.0,
                0.0958399772644043,
                0.012500000186264515,
                0.0039528473280370235,
            ],
            1.0,
        ),
        (
            "rope_yarn",
            0,
            [
                1.0,
                0.02500000037252903,
                0.0024999999441206455,
                0.0002500000118743628,
            ],
            1.138629436111989,
        ),
        (
            "qwen3",
            0,
            [
                1.0,
                0.17782793939113617,
                0.03162277489900589,
                0.005623413249850273,
            ],
            1.0,
        ),
    ];
    for (name, seq, want, scale) in cases {
        let a = Arch::from_dir(&dir(&format!("bases/{name}"))).unwrap();
        let Positions::Rope {
            rot_dim,
            base,
            scaling,
            ..
        } = a.positions
        else {
            panic!("{name}: no rope")
        };
        let f = scaling.freqs(rot_dim, base, seq);
        let want: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        close(&format!("{name} inv_freq"), &f.inv, &want, 1e-6);
        assert_eq!(f.scale, scale as f32, "{name}: scale");
    }
}

/// Dynamic NTK keeps transformers' state: after the 12-token forwards a 10-token forward still
/// uses the base scaled to 12 (the fixture's `lora_short_logits`), while a fresh model scales
/// to 10 and so differs.
#[test]
fn dynamic_ntk_keeps_the_length_it_scaled_to() {
    let (mut model, r, batch) = fixture("bases/rope_dynamic");
    lora::load_peft(&mut model, &dir("bases/rope_dynamic").join("adapter")).unwrap();
    let cut = |b: &Batch, t: usize| Batch {
        b: b.b,
        t,
        input_ids: (0..b.b)
            .flat_map(|r| b.input_ids[r * b.t..r * b.t + t].to_vec())
            .collect(),
        attention_mask: (0..b.b)
            .flat_map(|r| b.attention_mask[r * b.t..r * b.t + t].to_vec())
            .collect(),
        labels: None,
        segments: None,
    };
    let short = cut(&batch, 10);
    let v = model.arch.vocab;
    let fresh = model.forward(&short).unwrap().logits;
    model.forward(&batch).unwrap();
    let after = model.forward(&short).unwrap().logits;
    let want = valid_logits(&r["lora_short_logits"].0, &short, v);
    close(
        "dynamic short logits",
        &valid_logits(&after, &short, v),
        &want,
        1e-5,
    );
    let d = valid_logits(&fresh, &short, v)
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        d > 1e-3,
        "a fresh model should scale to 10, not 12 (max diff {d})"
    );
}

/// Greedy generation (KV cache) of every tests/fixtures/bases model, base and with its
/// adapter, equals transformers' `generate`: each prompt alone, then as one left-padded batch,
/// in the order the reference ran them (dynamic NTK is stateful). The no-cache path agrees
/// except under dynamic NTK, where transformers' cached keys keep their older rotation.
#[test]
fn greedy_matches_transformers_bases() {
    use crate::eval::generate::{generate, FinishReason, GenConfig, Generation};
    use crate::eval::lm::{load_model, EngineLm};
    let p = dir("bases/greedy.json");
    let fx: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompts: Vec<Vec<u32>> = fx["prompts"].as_array().unwrap().iter().map(ids).collect();
    let eos = fx["eos"].as_u64().unwrap() as u32;
    let cfg = GenConfig {
        max_new_tokens: fx["max_new_tokens"].as_u64().unwrap() as usize,
        stop_ids: vec![eos],
        ..Default::default()
    };
    let gens = |v: &serde_json::Value| -> Vec<Generation> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| Generation {
                tokens: ids(&r["tokens"]),
                finish: if r["finish"] == "stop" {
                    FinishReason::Stop(eos)
                } else {
                    FinishReason::Length
                },
            })
            .collect()
    };
    let run = |m: &Model, ps: &[Vec<u32>], cache: bool| {
        let mut lm = if cache {
            EngineLm::new(m, 0, cfg.max_new_tokens)
        } else {
            EngineLm::no_cache(m, 0, cfg.max_new_tokens)
        };
        generate(&mut lm, ps, &cfg, |_, _| {}).unwrap()
    };
    let mut n = 0;
    for (name, entry) in fx["models"].as_object().unwrap() {
        for (variant, want) in entry.as_object().unwrap() {
            let d = dir(&format!("bases/{name}"));
            let adapter = (variant == "adapter").then(|| d.join("adapter"));
            let model = load_model(&d, adapter.as_deref()).unwrap();
            let what = format!("{name}/{variant}");
            let single: Vec<Generation> = prompts
                .iter()
                .map(|p| run(&model, std::slice::from_ref(p), true).remove(0))
                .collect();
            assert_eq!(single, gens(&want["single"]), "{what}: single prompts");
            let batch = run(&model, &prompts, true);
            assert_eq!(batch, gens(&want["batch"]), "{what}: left-padded batch");
            if name != "rope_dynamic" {
                assert_eq!(run(&model, &prompts, false), batch, "{what}: no-cache path");
            }
            n += 1;
        }
    }
    assert_eq!(n, 16);
}

/// `rope_scaling` / `rope_parameters` forms: transformers 4's `type` key, a dict nested per
/// layer type (one shared set is accepted), and clear errors for what is not followed.
#[test]
fn rope_config_forms_and_refusals() {
    let cfg = |rope: &str| {
        format!(
            r#"{{"model_type":"llama","hidden_size":16,"num_attention_heads":2,"num_hidden_layers":2,
            "vocab_size":10,"intermediate_size":8,"max_position_embeddings":64,
            "layer_types":["full_attention","full_attention"],{rope}}}"#
        )
    };
    let rope = |text: &str| match Arch::from_config_json(&cfg(text), "c.json") {
        Ok(a) => Ok(a.positions),
        Err(e) => Err(e.to_string()),
    };
    let flat = rope(r#""rope_parameters":{"rope_type":"yarn","factor":4.0,"rope_theta":500.0}"#);
    let Ok(Positions::Rope { base, scaling, .. }) = flat else {
        panic!("{flat:?}")
    };
    assert_eq!(base, 500.0);
    assert_eq!(
        scaling,
        RopeScaling::Yarn {
            factor: 4.0,
            original: 64,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 0.1 * 4f64.ln() + 1.0,
            truncate: true
        }
    );
    assert_eq!(
        rope(
            r#""rope_parameters":{"full_attention":{"rope_type":"yarn","factor":4.0,"rope_theta":500.0}}"#
        ),
        flat
    );
    assert_eq!(
        rope(r#""rope_theta":500.0,"rope_scaling":{"type":"yarn","factor":4.0}"#),
        flat
    );
    assert_eq!(
        rope(
            r#""rope_theta":500.0,"original_max_position_embeddings":16,"rope_scaling":{"type":"dynamic","factor":2.0}"#
        ),
        Ok(Positions::Rope {
            kind: crate::backend::RopeKind::Half,
            rot_dim: 8,
            base: 500.0,
            scaling: RopeScaling::Dynamic {
                factor: 2.0,
                max_pos: 64
            }
        })
    );
    let two = cfg(
        r#""rope_parameters":{"full_attention":{"rope_type":"default","rope_theta":1e4},
        "sliding_attention":{"rope_type":"default","rope_theta":1e6}}"#,
    )
    .replace(
        r#"["full_attention","full_attention"]"#,
        r#"["sliding_attention","full_attention"]"#,
    );
    assert_eq!(
        Arch::from_config_json(&two, "c.json").unwrap_err().to_string(),
        "c.json: key \"rope_parameters\": different RoPE parameters per layer type are not supported"
    );
    assert_eq!(
        rope(r#""rope_scaling":{"rope_type":"longrope","factor":8.0}"#).unwrap_err(),
        "c.json: key \"rope_scaling\": rope type \"longrope\" is not supported (supported: default, linear, dynamic, llama3, yarn)"
    );
    assert_eq!(
        rope(r#""rope_scaling":{"rope_type":"llama3","factor":8.0}"#).unwrap_err(),
        "c.json: key \"rope_scaling\": rope type \"llama3\" needs a number \"low_freq_factor\""
    );
    assert_eq!(
        rope(r#""partial_rotary_factor":0.5,"rope_scaling":{"rope_type":"linear","factor":2.0}"#).unwrap_err(),
        "c.json: key \"partial_rotary_factor\": 0.5 with rope type \"linear\" is not supported (only 1.0)"
    );
}

/// Labels from the data are checked like input ids: one per token and inside the vocabulary
/// (the cross-entropy would otherwise index past a logits row).
#[test]
fn bad_labels_are_errors_not_panics() {
    let (mut model, _, batch) = fixture("llama");
    let v = model.arch.vocab as i64;
    let mut b = batch.clone();
    if let Some(l) = &mut b.labels {
        l[3] = v;
    }
    let e = model
        .forward_backward(&b, TrainOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.to_string(), format!("batch: label {v} >= vocab size {v}"));
    let e = model.eval_loss(&b).err().unwrap();
    assert_eq!(e.to_string(), format!("batch: label {v} >= vocab size {v}"));
    let mut b = batch.clone();
    b.labels = Some(vec![-100; 3]);
    let e = model.forward(&b).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "batch: labels must have B*T = {} entries, got 3",
            batch.b * batch.t
        )
    );
}

/// Gemma 3 configs as its config class reads them: the fixture's transformers-5
/// `rope_parameters` per layer type (θ_i printed from transformers 5.24's rotary embedding), the
/// transformers-4 form (`rope_scaling` on the global layers, `rope_local_base_freq`,
/// `sliding_window_pattern`), the defaults, and one error naming the key for what is not
/// followed.
#[test]
fn gemma3_config_forms_and_refusals() {
    let a = Arch::from_dir(&dir("bases/gemma3")).unwrap();
    let Positions::Rope {
        rot_dim,
        base,
        scaling,
        ..
    } = a.positions
    else {
        panic!("no rope")
    };
    let global = scaling.freqs(rot_dim, base, 0);
    let (lb, ls) = a.local_rope.unwrap();
    let local = ls.freqs(rot_dim, lb, 0);
    close(
        "global inv_freq",
        &global.inv,
        &[
            0.5,
            0.08891396969556808,
            0.015811389312148094,
            0.0028117066249251366,
        ],
        1e-6,
    );
    close(
        "local inv_freq",
        &local.inv,
        &[
            1.0,
            0.5623413324356079,
            0.3162277638912201,
            0.17782793939113617,
        ],
        1e-6,
    );
    assert_eq!(
        (a.emb_scale, a.attn_scale, a.window(0), a.window(1)),
        (Some(4.0), Some(0.25), Some(4), None)
    );
    assert_eq!((a.local_rope_at(0), a.local_rope_at(1)), (true, false));
    // A recipe listing no targets gets what peft chose for the fixture's adapter (its defaults).
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir("bases/gemma3/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let mut peft: Vec<String> = serde_json::from_value(cfg["target_modules"].clone()).unwrap();
    peft.sort();
    let lora::Targets::Names(mut ours) = lora::Targets::from_keys(vec![], None, a.family) else {
        panic!("not names")
    };
    ours.sort();
    assert_eq!(ours, peft);

    let cfg = |extra: &str| {
        format!(
            r#"{{"model_type":"gemma3_text","hidden_size":16,"num_attention_heads":2,"num_hidden_layers":6,
            "head_dim":8,"vocab_size":10,"intermediate_size":8{extra}}}"#
        )
    };
    let arch = |extra: &str| Arch::from_config_json(&cfg(extra), "c.json");
    let v4 = arch(
        r#","rope_theta":1e6,"rope_local_base_freq":1e4,"sliding_window":512,
        "sliding_window_pattern":6,"rope_scaling":{"rope_type":"linear","factor":8.0}"#,
    )
    .unwrap();
    let windows: Vec<_> = (0..6).map(|i| v4.window(i)).collect();
    assert_eq!(
        windows,
        [Some(512); 5].into_iter().chain([None]).collect::<Vec<_>>()
    );
    assert_eq!(
        (v4.positions, v4.local_rope, v4.attn_scale),
        (
            Positions::Rope {
                kind: crate::backend::RopeKind::Half,
                rot_dim: 8,
                base: 1e6,
                scaling: RopeScaling::Linear { factor: 8.0 }
            },
            Some((1e4, RopeScaling::None)),
            Some(0.0625)
        )
    );
    let d = arch("").unwrap();
    assert_eq!(
        (d.local_rope, d.window(0), d.norm, d.mlp, d.tied),
        (
            Some((1e4, RopeScaling::None)),
            Some(4096),
            NormKind::RmsPlusOne,
            MlpKind::GeGlu,
            true
        )
    );
    let Positions::Rope { base, .. } = d.positions else {
        panic!()
    };
    assert_eq!(base, 1e6);
    let err = |extra: &str| arch(extra).unwrap_err().to_string();
    assert_eq!(
        err(r#","final_logit_softcapping":30.0"#),
        "c.json: key \"final_logit_softcapping\": 30.0: logit soft-capping is not supported (only null)"
    );
    assert_eq!(
        err(r#","attn_logit_softcapping":50.0"#),
        "c.json: key \"attn_logit_softcapping\": 50.0: logit soft-capping is not supported (only null)"
    );
    assert_eq!(
        err(r#","hidden_activation":"gelu""#),
        "c.json: key \"hidden_activation\": \"gelu\" is not supported (only gelu_pytorch_tanh)"
    );
    assert_eq!(
        err(r#","use_bidirectional_attention":true"#),
        "c.json: key \"use_bidirectional_attention\": bidirectional attention is not supported (only false)"
    );
    assert_eq!(
        err(r#","rope_parameters":{"rope_type":"default","rope_theta":1e4}"#),
        "c.json: key \"rope_parameters\": expected parameters per layer type (full_attention, sliding_attention)"
    );
    assert_eq!(
        err(r#","rope_parameters":{"sliding_attention":{"rope_type":"dynamic","factor":2.0}},"max_position_embeddings":64"#),
        "c.json: key \"rope_parameters\": dynamic RoPE on the sliding_attention layers is not supported"
    );
}

/// The gemma3 fixture's batch is longer than the sliding window and its local layer's RoPE
/// differs from the global one: dropping either moves the logits away from transformers'.
#[test]
fn gemma3_local_layers_matter() {
    let worst = |model: &Model, r: &Tensors, batch: &Batch| {
        let v = model.arch.vocab;
        let got = valid_logits(&model.forward(batch).unwrap().logits, batch, v);
        let want = valid_logits(&r["logits"].0, batch, v);
        got.iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    let (mut model, r, batch) = fixture("bases/gemma3");
    assert!(worst(&model, &r, &batch) < 1e-4);
    model.layers[0].window = None;
    assert!(worst(&model, &r, &batch) > 1e-2, "window");
    let (mut model, r, batch) = fixture("bases/gemma3");
    model.layers[0].local_rope = false;
    assert!(worst(&model, &r, &batch) > 1e-2, "local rope");
}
