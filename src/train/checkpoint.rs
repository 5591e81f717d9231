//! Checkpoints: `work/checkpoint-<step>/` holding the model's trainables
//! (a PEFT adapter for LoRA), the optimizer state and `trainer_state.json`
//! (step, epoch, position in the epoch, the metrics so far). Each is written
//! to a temporary dir and renamed, so a kill never leaves a half checkpoint.

use super::{LogLine, Optim, TrainModel};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    pub epoch: usize,
    /// Micro-batches of the current epoch already consumed.
    pub micro: usize,
    pub log: Vec<LogLine>,
    /// Loss of the run's first optimizer step (for the divergence warning after a resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_loss: Option<f64>,
}

fn step_of(p: &Path) -> Option<usize> {
    p.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// Complete checkpoints in `work`, oldest first.
pub fn list(work: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(work)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("trainer_state.json").is_file())
                .filter_map(|p| step_of(&p).map(|s| (s, p)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

pub fn latest(work: &Path) -> Option<PathBuf> {
    list(work).pop()
}

pub fn save(
    work: &Path,
    state: &TrainerState,
    model: &mut dyn TrainModel,
    optim: &dyn Optim,
    keep: Option<usize>,
) -> Result<PathBuf> {
    let dst = work.join(format!("checkpoint-{}", state.step));
    let tmp = work.join(format!(
        ".checkpoint-{}.tmp.{}",
        state.step,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
    model.save(&tmp)?;
    optim.save(&tmp.join("optimizer.bin"))?;
    std::fs::write(
        tmp.join("trainer_state.json"),
        serde_json::to_vec_pretty(state)?,
    )?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst)?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot publish checkpoint `{}`", dst.display()))?;
    if let Some(k) = keep {
        let all = list(work);
        for old in all.iter().take(all.len().saturating_sub(k.max(1))) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(dst)
}

/// Restore a checkpoint. The optimizer is loaded before the model; both loads are
/// all-or-nothing, so an error leaves the model as it was.
pub fn load(dir: &Path, model: &mut dyn TrainModel, optim: &mut dyn Optim) -> Result<TrainerState> {
    let state: TrainerState = serde_json::from_slice(
        &std::fs::read(dir.join("trainer_state.json"))
            .with_context(|| format!("cannot read checkpoint `{}`", dir.display()))?,
    )
    .with_context(|| format!("bad trainer_state.json in `{}`", dir.display()))?;
    optim.load(&dir.join("optimizer.bin"))?;
    model.load(dir)?;
    Ok(state)
}

/// Restore the newest checkpoint in `work` that loads: a damaged one (a truncated file, a
/// bad JSON) is skipped with a warning naming it and the next older one is tried. `None`
/// when there is no checkpoint; an error only when every checkpoint is damaged and one of
/// them had already replaced the optimizer state (the run cannot start clean then).
pub fn load_newest(
    work: &Path,
    model: &mut dyn TrainModel,
    optim: &mut dyn Optim,
    log: &dyn Fn(&str),
) -> Result<Option<(PathBuf, TrainerState)>> {
    let all = list(work);
    let mut touched = false;
    let mut errors = Vec::new();
    for dir in all.iter().rev() {
        let state = std::fs::read(dir.join("trainer_state.json"))
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<TrainerState>(&b)?));
        let res = state.and_then(|st| {
            optim.load(&dir.join("optimizer.bin"))?;
            touched = true;
            model.load(dir)?;
            Ok(st)
        });
        match res {
            Ok(st) => return Ok(Some((dir.clone(), st))),
            Err(e) => {
                log(&format!(
                    "WARNING: checkpoint `{}` is damaged ({e:#}); trying an older one",
                    dir.display()
                ));
                errors.push(format!("`{}`: {e:#}", dir.display()));
            }
        }
    }
    if touched {
        anyhow::bail!(
            "no checkpoint in `{}` could be restored ({}); delete them to start over",
            work.display(),
            errors.join("; ")
        );
    }
    if !errors.is_empty() {
        log("WARNING: no usable checkpoint; starting from the beginning");
    }
    Ok(None)
}
