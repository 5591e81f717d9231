//! Engine tests against transformers + peft fixtures (tests/reference/engine_make_fixtures.py).
//! Tolerances: logits/loss 1e-5 and gradients 1e-4, as |ours − ref| ≤ tol·(1 + |ref|)
//! elementwise (f32 through two layers; the reference is f32 torch on the CPU).

use super::load::read_all;
use super::*;
use crate::lora;
use std::collections::HashMap;
use std::path::PathBuf;

type Tensors = HashMap<String, (Vec<f32>, Vec<usize>)>;

fn dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/engine")
        .join(family)
}

fn fixture(family: &str) -> (Model, Tensors, Batch) {
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
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
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
fn valid_logits(l: &[f32], batch: &Batch, v: usize) -> Vec<f32> {
    (0..batch.b * batch.t)
        .filter(|&k| batch.attention_mask[k] == 1)
        .flat_map(|k| l[k * v..(k + 1) * v].to_vec())
        .collect()
}

fn check_forward(family: &str) {
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

fn check_full_grads(family: &str) {
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
        close(&format!("{family} grad {}", p.name), p.grad, &want, 1e-4);
        n += 1;
    }
    let n_ref = r.keys().filter(|k| k.starts_with("full_grad.")).count();
    assert_eq!(n, n_ref, "{family}: number of trainable tensors");
}

fn check_lora(family: &str) {
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
        close(&format!("{family} {}", key), p.grad, want, 1e-4);
        n += 1;
    }
    assert_eq!(
        n,
        r.keys().filter(|k| k.starts_with("lora_grad.")).count(),
        "{family}: number of adapter tensors"
    );
}

/// Checkpointing on/off gives bit-identical gradients.
fn check_checkpointing(family: &str) {
    let grads = |ck: bool| {
        let (mut model, _, batch) = fixture(family);
        lora::load_peft(&mut model, &dir(family).join("adapter")).unwrap();
        model.set_full_trainable().unwrap();
        let loss = model
            .forward_backward(&batch, TrainOptions { checkpointing: ck })
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
