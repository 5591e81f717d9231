//! Three LoRA steps through our training loop (engine + AdamW + clipping +
//! linear schedule with warmup) against peft + torch.optim.AdamW +
//! clip_grad_norm_ + transformers.get_scheduler, from the same adapter with
//! nonzero lora_B (fixtures: tests/reference/train_make_fixtures.py).
//! Tolerance: 1e-4 relative to each tensor's largest value (f32 vs torch
//! f32 with different summation orders).

#[path = "common/lora_steps.rs"]
mod lora_steps;
use lora_steps::{lora_steps, Knobs, Trained};
use recipe::train::batch::Sample;
use std::path::PathBuf;

fn fx(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/train")
        .join(rel)
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn three_lora_steps_with_clipping_and_schedule_match_peft() {
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx("ref.json")).unwrap()).unwrap();
    let mut model = recipe::model::Model::load(&fx("base"), &Default::default()).unwrap();
    let cfg = recipe::model::lora::load_peft(&mut model, &fx("adapter_init")).unwrap();
    let schedule = recipe::optim::Schedule::new(recipe::optim::ScheduleKind::Linear, 3, 1);
    let lr_at = move |s: usize| schedule.lr(s, 5e-2);
    let rows: Vec<Sample> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["labels"].as_array().unwrap())
        .map(|(i, l)| Sample {
            input_ids: i
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            labels: l
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap() as i32)
                .collect(),
            segments: vec![],
        })
        .collect();
    let knobs = Knobs {
        steps: 3,
        weight_decay: 0.01,
        max_grad_norm: 0.1,
        pad_id: 0,
    };
    let Trained { out, log } = lora_steps(model, cfg, &rows, &lr_at, &knobs);

    // Per-step loss, pre-clip gradient norm and learning rate.
    for (k, (name, want)) in [
        ("loss", &r["losses"]),
        ("grad_norm", &r["grad_norms"]),
        ("lr", &r["lrs"]),
    ]
    .iter()
    .enumerate()
    {
        let want = floats(want);
        for (step, w) in want.iter().enumerate() {
            let got = log[step][*name].as_f64().unwrap();
            assert!(
                (got - w).abs() <= 1e-4 * w.abs().max(1e-3),
                "{name} (#{k}) step {step}: {got} vs {w}"
            );
        }
    }
    // The adapter after 3 steps.
    let saved =
        recipe::formats::safetensors::read_all(&out.path().join("adapter_model.safetensors"))
            .unwrap();
    let want = r["adapter_after"].as_object().unwrap();
    assert_eq!(want.len(), 12, "2 layers × 3 modules × (A, B)");
    for (k, v) in want {
        let key = format!("base_model.model.{k}.weight");
        let (got, _) = saved.get(&key).unwrap_or_else(|| panic!("missing {key}"));
        let w = floats(v);
        let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let diff = got
            .iter()
            .zip(&w)
            .fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
        assert!(diff <= 1e-4 * scale, "{k}: max diff {diff} (scale {scale})");
    }
}
