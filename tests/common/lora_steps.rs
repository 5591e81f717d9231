//! A few full-batch LoRA training steps through `recipe::train::train` (AdamW, right padding,
//! no checkpoints), as the peft parity tests drive it (`#[path = "common/lora_steps.rs"]`):
//! tests/train_parity.rs and tests/deep_checkpoint.rs.

use recipe::model::lora::LoraConfig;
use recipe::model::Model;
use recipe::train::batch::{PadSide, Samples};
use recipe::train::engine::{EngineModel, EngineOptim, Saved};
use recipe::train::{train, SaveStrategy, TrainConfig, TrainIo};

/// What a run leaves: the output dir (adapter_model.safetensors, metrics.jsonl) and the
/// metrics log, one JSON object per step.
pub struct Trained {
    pub out: tempfile::TempDir,
    pub log: Vec<serde_json::Value>,
}

/// Knobs the two tests set differently.
pub struct Knobs {
    pub steps: i64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub pad_id: u32,
}

/// Trains `model` (with the LoRA `cfg` already attached) `k.steps` steps, each on all of
/// `samples`, at `lr_at(step)`.
pub fn lora_steps(
    model: Model,
    cfg: LoraConfig,
    samples: &dyn Samples,
    lr_at: &dyn Fn(usize) -> f64,
    k: &Knobs,
) -> Trained {
    let mut model = model;
    let sizes: Vec<usize> = model.params_mut().iter().map(|p| p.value.len()).collect();
    let ocfg = recipe::optim::OptimConfig {
        weight_decay: k.weight_decay,
        ..Default::default()
    };
    let mut optim = EngineOptim(recipe::train::optimizer::Optimizer::new(
        model.backend.clone(),
        recipe::optim::OptimKind::AdamW,
        &ocfg,
        &sizes,
    ));
    let mut em = EngineModel {
        model,
        saved: Saved::Lora {
            cfg,
            base_name: "base".into(),
        },
        checkpointing: false,
        copy_from: None,
    };
    let tc = TrainConfig {
        batch_size: samples.len(),
        grad_accum: 1,
        num_epochs: 1.0,
        max_steps: k.steps,
        max_grad_norm: k.max_grad_norm,
        seed: 0,
        group_by_length: false,
        logging_steps: 1,
        eval_steps: None,
        save: SaveStrategy::No,
        save_total_limit: None,
        pad_id: k.pad_id,
        pad_side: PadSide::Right,
    };
    let (work, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let io = TrainIo {
        work: work.path(),
        out: out.path(),
        log: &|_| {},
        bar: None,
        stop_after: None,
    };
    let report = train(&mut em, &mut optim, lr_at, samples, None, &tc, &io).unwrap();
    assert_eq!(report.steps as i64, k.steps);
    let log = std::fs::read_to_string(out.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Trained { out, log }
}
