//! The training loop: epochs or max_steps, seeded order, gradient
//! accumulation, global-norm clipping, LR schedule, logging, eval,
//! checkpoints (atomic) and resume after a kill.
//!
//! The loop is written against two small traits, [`TrainModel`] and
//! [`Optim`], so it runs the same for LoRA, full fine-tuning, QLoRA and any
//! backend. Loss normalisation follows transformers ≥ 4.46: the token losses
//! of all micro-batches in one accumulation window are summed and divided
//! by the number of trained tokens in the window.

pub mod batch;
pub mod checkpoint;
pub mod engine;
pub mod optimizer;
mod optimizer_state;
#[cfg(test)]
mod optimizer_tests;
pub use crate::rng;

use crate::backend::{Backend, Strided, Tensor};
use crate::model::{Batch, EvalSums};
use anyhow::{bail, Context, Result};
use batch::{collate, epoch_order, PadSide, Samples};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What the loop needs from a model.
pub trait TrainModel: Send {
    /// Forward and backward on one micro-batch. Adds `scale · ∂(Σ token
    /// losses)/∂θ` into the gradient buffers and Σ token losses into `loss[0]`
    /// (a backend scalar: nothing is read back); returns the trained tokens.
    /// `seed` drives dropout for this micro-batch.
    fn forward_backward(
        &mut self,
        batch: &Batch,
        scale: f32,
        seed: u64,
        loss: &mut Tensor,
    ) -> Result<usize>;
    /// No gradients: (Σ token losses, trained tokens, correct argmax).
    fn eval_batch(&mut self, batch: &Batch) -> Result<EvalSums>;
    /// The backend the trainables live on (clipping and the finite check run there).
    fn backend(&self) -> Arc<dyn Backend>;
    /// Trainable tensors and their gradients, in a fixed order.
    fn trainables(&mut self) -> Vec<(&mut Tensor, &mut Tensor)>;
    /// Names of the `trainables`, same order (for messages; empty when unnamed).
    fn trainable_names(&mut self) -> Vec<String> {
        Vec::new()
    }
    fn zero_grad(&mut self);
    /// Write the trained result (a PEFT adapter, or full weights) into `dir`.
    fn save(&mut self, dir: &Path) -> Result<()>;
    /// Restore trainable values written by `save`; on an error nothing is changed.
    fn load(&mut self, dir: &Path) -> Result<()>;
}

/// What the loop needs from an optimizer.
pub trait Optim: Send {
    /// One update of every (param, grad) pair at learning rate `lr`.
    fn step(&mut self, pg: &mut [(&mut Tensor, &mut Tensor)], lr: f32) -> Result<()>;
    fn save(&self, path: &Path) -> Result<()>;
    /// Restore a state written by `save`; on an error nothing is changed.
    fn load(&mut self, path: &Path) -> Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveStrategy {
    No,
    Steps(usize),
    Epoch,
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub grad_accum: usize,
    pub num_epochs: f64,
    /// > 0 overrides num_epochs.
    pub max_steps: i64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub group_by_length: bool,
    pub logging_steps: usize,
    pub eval_steps: Option<usize>,
    pub save: SaveStrategy,
    pub save_total_limit: Option<usize>,
    pub pad_id: u32,
    pub pad_side: PadSide,
}

impl TrainConfig {
    /// Total optimizer steps, as transformers' Trainer computes them.
    pub fn total_steps(&self, n_examples: usize) -> usize {
        if self.max_steps > 0 {
            return self.max_steps as usize;
        }
        let per_epoch = self.steps_per_epoch(n_examples);
        (self.num_epochs * per_epoch as f64).ceil() as usize
    }
    pub fn steps_per_epoch(&self, n_examples: usize) -> usize {
        (n_examples.div_ceil(self.batch_size.max(1)) / self.grad_accum.max(1)).max(1)
    }
}

/// One line of metrics.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    pub step: usize,
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_token_accuracy: Option<f64>,
}

/// Where the loop writes and how it reports.
pub struct TrainIo<'a> {
    /// Checkpoints (survives a kill).
    pub work: &'a Path,
    /// Final adapter / weights, metrics.jsonl.
    pub out: &'a Path,
    pub log: &'a (dyn Fn(&str) + Sync),
    pub bar: Option<indicatif::ProgressBar>,
    /// Test hook: stop (as if killed) after this many optimizer steps.
    pub stop_after: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub steps: usize,
    pub resumed_from: Option<usize>,
    /// Loss of the first optimizer step (before any update).
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub wall_secs: f64,
    pub tokens: u64,
    /// Signs of a run that went wrong without a NaN (see [`crate::eval::report::health_warnings`]).
    pub warnings: Vec<String>,
}

/// Optimizer steps in a row with a zero gradient norm that count as "stuck".
pub const STUCK_GRAD_STEPS: usize = 3;

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Σ token losses over the window.
    pub loss_sum: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The first trainable (in `trainables` order) that is NaN or inf after the update.
    pub nonfinite: Option<usize>,
}

/// One optimizer step over an accumulation window: gradients zeroed, forward + backward of each
/// micro-batch (`seeds[k]` drives its dropout, `scale` multiplies every gradient) with the token
/// losses summed on the backend, global-norm clipping to `max_grad_norm` when > 0
/// (torch.nn.utils.clip_grad_norm_ semantics, [`optimizer::clip_grads`]), the update at `lr`, and
/// the finite check of the updated weights. Everything stays on the backend until one download
/// of [weight norms, loss sum, gradient norm]: the step's only host synchronization.
pub fn optimizer_step(
    model: &mut dyn TrainModel,
    optim: &mut dyn Optim,
    window: &[Batch],
    seeds: &[u64],
    scale: f32,
    max_grad_norm: f64,
    lr: f32,
) -> Result<StepOutcome> {
    let be = model.backend();
    let mut loss = be.zeros(1);
    model.zero_grad();
    for (b, &seed) in window.iter().zip(seeds) {
        model.forward_backward(b, scale, seed, &mut loss)?;
    }
    let mut clip = be.zeros(2);
    let mut pg = model.trainables();
    let k = pg.len();
    {
        let mut grads: Vec<&mut Tensor> = pg.iter_mut().map(|(_, g)| &mut **g).collect();
        let max_norm = (max_grad_norm > 0.0).then_some(max_grad_norm as f32);
        optimizer::clip_grads(&*be, &mut clip, &mut grads, max_norm);
    }
    optim.step(&mut pg, lr)?;
    // [‖p_1‖ … ‖p_k‖, loss sum, grad norm]: a finite gradient at a huge learning rate can still
    // overflow a weight, and checkpoints are only written from finite weights.
    let mut stats = be.zeros(k + 2);
    let params: Vec<&Tensor> = pg.iter().map(|(p, _)| &**p).collect();
    be.norms_into(&mut stats, &params);
    let at = |off| Strided::rows(1, off);
    be.copy2d(&mut stats, at(k), &loss, at(0), 1, 1);
    be.copy2d(&mut stats, at(k + 1), &clip, at(1), 1, 1);
    let stats = be.download(&stats);
    Ok(StepOutcome {
        loss_sum: stats[k] as f64,
        grad_norm: stats[k + 1] as f64,
        nonfinite: stats[..k].iter().position(|x| !x.is_finite()),
    })
}

/// Mean loss and token accuracy over a dataset.
pub fn evaluate(
    model: &mut dyn TrainModel,
    data: &dyn Samples,
    cfg: &TrainConfig,
) -> Result<(f64, f64)> {
    let mut sums = EvalSums::default();
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(cfg.batch_size.max(1)) {
        let samples: Vec<_> = chunk.iter().map(|&i| data.get(i)).collect();
        let b = collate(&samples, cfg.pad_id, cfg.pad_side);
        sums.add(model.eval_batch(&b)?);
    }
    let n = sums.tokens.max(1) as f64;
    Ok((sums.nll / n, sums.correct as f64 / n))
}

/// Train to the end (or to `io.stop_after`), resuming from the newest
/// checkpoint in `io.work` if there is one.
pub fn train(
    model: &mut dyn TrainModel,
    optim: &mut dyn Optim,
    lr_at: &dyn Fn(usize) -> f64,
    data: &dyn Samples,
    eval: Option<&dyn Samples>,
    cfg: &TrainConfig,
    io: &TrainIo,
) -> Result<TrainReport> {
    if data.is_empty() {
        bail!("the training set is empty");
    }
    let t0 = Instant::now();
    let total = cfg.total_steps(data.len());
    if total == 0 {
        bail!(
            "0 optimizer steps (num_epochs {}, max_steps {}, {} examples): nothing would be trained",
            cfg.num_epochs,
            cfg.max_steps,
            data.len()
        );
    }
    let micro_per_epoch = data.len().div_ceil(cfg.batch_size.max(1));
    let mut state = checkpoint::TrainerState::default();
    // The newest checkpoint that loads; a damaged one is skipped with a warning.
    let mut last_ckpt: Option<(PathBuf, usize)> = None;
    let resumed_from = match checkpoint::load_newest(io.work, model, optim, io.log)? {
        Some((dir, st)) => {
            state = st;
            (io.log)(&format!(
                "resuming from {} (step {})",
                dir.display(),
                state.step
            ));
            last_ckpt = Some((dir, state.step));
            Some(state.step)
        }
        None => None,
    };
    // Where to look after a stop: never name a checkpoint that was not written.
    let kept = |last: &Option<(PathBuf, usize)>| match last {
        Some((dir, step)) => format!(
            "the last good checkpoint is `{}` (step {step})",
            dir.display()
        ),
        None => "no checkpoint was written before it".to_string(),
    };
    if let Some(bar) = &io.bar {
        bar.set_length(total as u64);
        bar.set_position(state.step as u64);
    }
    // TensorBoard events beside metrics.jsonl, written as the run goes; a resumed run
    // rewrites the file from the checkpoint's log, so it holds what metrics.jsonl will.
    let tb_path = io.out.join(crate::eval::tfevents::FILE_NAME);
    let mut tb = crate::eval::tfevents::EventWriter::create(&tb_path)
        .with_context(|| format!("cannot write `{}`", tb_path.display()))?;
    for l in &state.log {
        write_event(&mut tb, &tb_path, l)?;
    }
    let mut window_loss = 0.0;
    let mut window_steps = 0usize;
    let mut tokens_since = 0u64;
    let mut t_log = Instant::now();
    let mut last_loss = None;
    let mut last_eval = None;
    let mut first_loss: Option<f64> = state.first_loss;
    // Optimizer steps in a row (up to now) whose gradient norm was exactly 0.
    let mut zero_grad_run = 0usize;

    'outer: while state.step < total {
        let order = epoch_order(
            data,
            cfg.seed,
            state.epoch as u64,
            cfg.batch_size,
            cfg.group_by_length,
        );
        let batches: Vec<&[usize]> = order.chunks(cfg.batch_size.max(1)).collect();
        while state.micro < batches.len() {
            // One accumulation window (cut short at the end of the epoch).
            let end = (state.micro + cfg.grad_accum.max(1)).min(batches.len());
            let window: Vec<Batch> = batches[state.micro..end]
                .iter()
                .map(|ix| {
                    collate(
                        &ix.iter().map(|&i| data.get(i)).collect::<Vec<_>>(),
                        cfg.pad_id,
                        cfg.pad_side,
                    )
                })
                .collect();
            let items: usize = window.iter().map(Batch::trained_tokens).sum();
            let scale = 1.0 / items.max(1) as f32;
            let seeds: Vec<u64> = (0..window.len())
                .map(|k| rng::Rng::derive(cfg.seed, &[2, state.step as u64, k as u64]).next_u64())
                .collect();
            let lr = lr_at(state.step);
            let out = optimizer_step(
                model,
                optim,
                &window,
                &seeds,
                scale,
                cfg.max_grad_norm,
                lr as f32,
            )?;
            tokens_since += window.iter().map(|b| b.real_tokens() as u64).sum::<u64>();
            let loss = out.loss_sum / items.max(1) as f64;
            if !loss.is_finite() {
                bail!(
                    "loss is {loss} at step {} (epoch {}); stopped. Training diverged: {}. \
                     Lower learning_rate (or max_grad_norm)",
                    state.step + 1,
                    state.epoch,
                    kept(&last_ckpt)
                );
            }
            if first_loss.is_none() {
                first_loss = Some(loss);
                state.first_loss = first_loss;
            }
            let grad_norm = out.grad_norm;
            if !grad_norm.is_finite() {
                bail!(
                    "gradient norm is {grad_norm} at step {}; stopped. Training diverged: {}. \
                     Lower learning_rate (or max_grad_norm)",
                    state.step + 1,
                    kept(&last_ckpt)
                );
            }
            if let Some(k) = out.nonfinite {
                let name = model
                    .trainable_names()
                    .get(k)
                    .map_or_else(|| k.to_string(), |n| format!("`{n}`"));
                bail!(
                    "trainable tensor {name} became non-finite at step {} (learning rate \
                     {lr:.3e}); stopped. Training diverged: {}. Lower learning_rate",
                    state.step + 1,
                    kept(&last_ckpt)
                );
            }
            zero_grad_run = if grad_norm == 0.0 {
                zero_grad_run + 1
            } else {
                0
            };
            state.step += 1;
            state.micro = end;
            window_loss += loss;
            window_steps += 1;
            last_loss = Some(loss);
            let epoch_f = state.epoch as f64 + state.micro as f64 / micro_per_epoch.max(1) as f64;
            if let Some(bar) = &io.bar {
                bar.set_position(state.step as u64);
                bar.set_message(format!("loss {loss:.4}"));
            }
            if cfg.logging_steps > 0 && (state.step % cfg.logging_steps == 0 || state.step == total)
            {
                let secs = t_log.elapsed().as_secs_f64().max(1e-9);
                let line = LogLine {
                    step: state.step,
                    epoch: round4(epoch_f),
                    loss: Some(window_loss / window_steps.max(1) as f64),
                    lr: Some(lr),
                    grad_norm: Some(grad_norm),
                    tokens_per_s: Some(tokens_since as f64 / secs),
                    eval_loss: None,
                    eval_token_accuracy: None,
                };
                (io.log)(&format!(
                    "step {:>5}/{total}  loss {:.4}  lr {:.3e}  grad_norm {:.3}  {:.0} tok/s",
                    line.step,
                    line.loss.unwrap_or(0.0),
                    lr,
                    grad_norm,
                    line.tokens_per_s.unwrap_or(0.0)
                ));
                push_logged(&mut state.log, &mut tb, &tb_path, line)?;
                window_loss = 0.0;
                window_steps = 0;
                tokens_since = 0;
                t_log = Instant::now();
            }
            if let (Some(every), Some(ev)) = (cfg.eval_steps, eval) {
                if every > 0 && state.step % every == 0 {
                    let (el, acc) = evaluate(model, ev, cfg)?;
                    (io.log)(&format!(
                        "step {:>5}/{total}  eval_loss {el:.4}  token_accuracy {acc:.4}",
                        state.step
                    ));
                    last_eval = Some(el);
                    push_logged(
                        &mut state.log,
                        &mut tb,
                        &tb_path,
                        LogLine {
                            step: state.step,
                            epoch: round4(epoch_f),
                            loss: None,
                            lr: None,
                            grad_norm: None,
                            tokens_per_s: None,
                            eval_loss: Some(el),
                            eval_token_accuracy: Some(acc),
                        },
                    )?;
                }
            }
            let epoch_done = state.micro >= batches.len();
            let save_now = match cfg.save {
                SaveStrategy::No => false,
                SaveStrategy::Steps(n) => n > 0 && state.step % n == 0,
                SaveStrategy::Epoch => epoch_done,
            };
            if epoch_done {
                state.epoch += 1;
                state.micro = 0;
            }
            if save_now && state.step < total {
                let dir = checkpoint::save(io.work, &state, model, optim, cfg.save_total_limit)?;
                last_ckpt = Some((dir, state.step));
            }
            if io.stop_after.is_some_and(|s| state.step >= s) {
                return Ok(TrainReport {
                    steps: state.step,
                    resumed_from,
                    first_loss,
                    final_loss: last_loss,
                    eval_loss: last_eval,
                    wall_secs: t0.elapsed().as_secs_f64(),
                    tokens: 0,
                    warnings: Vec::new(),
                });
            }
            if state.step >= total {
                break 'outer;
            }
            if epoch_done {
                continue 'outer;
            }
        }
        state.epoch += 1;
        state.micro = 0;
    }
    if let Some(bar) = &io.bar {
        bar.finish_and_clear();
    }
    if let Some(ev) = eval {
        let (el, acc) = evaluate(model, ev, cfg)?;
        (io.log)(&format!("final eval_loss {el:.4}  token_accuracy {acc:.4}"));
        last_eval = Some(el);
        push_logged(
            &mut state.log,
            &mut tb,
            &tb_path,
            LogLine {
                step: state.step,
                epoch: state.epoch as f64,
                loss: None,
                lr: None,
                grad_norm: None,
                tokens_per_s: None,
                eval_loss: Some(el),
                eval_token_accuracy: Some(acc),
            },
        )?;
    }
    let stuck = (zero_grad_run >= STUCK_GRAD_STEPS.min(state.step)).then_some(zero_grad_run);
    let warnings = crate::eval::report::health_warnings(
        first_loss.map(|l| (1, l)),
        last_loss.map(|l| (state.step, l)),
        stuck.filter(|&n| n > 0),
        "steps",
    );
    for w in &warnings {
        (io.log)(&format!("WARNING: {w}"));
    }
    model.save(io.out)?;
    write_metrics(&io.out.join("metrics.jsonl"), &state.log)?;
    let report = TrainReport {
        steps: state.step,
        resumed_from,
        first_loss,
        final_loss: last_loss,
        eval_loss: last_eval,
        wall_secs: t0.elapsed().as_secs_f64(),
        tokens: 0,
        warnings,
    };
    std::fs::write(
        io.out.join("train_report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(report)
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

impl LogLine {
    /// This line as TensorBoard scalars (tag, value): `train/…` and `eval/…`.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        [
            ("train/loss", self.loss),
            ("train/lr", self.lr),
            ("train/grad_norm", self.grad_norm),
            ("train/tokens_per_s", self.tokens_per_s),
            ("eval/loss", self.eval_loss),
            ("eval/token_accuracy", self.eval_token_accuracy),
        ]
        .into_iter()
        .filter_map(|(t, v)| Some((t, v?)))
        .collect()
    }
}

fn write_event(
    tb: &mut crate::eval::tfevents::EventWriter,
    path: &Path,
    l: &LogLine,
) -> Result<()> {
    tb.scalars(l.step as u64, &l.scalars())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

/// Logs `line`: to the TensorBoard file now, to metrics.jsonl at the end.
fn push_logged(
    log: &mut Vec<LogLine>,
    tb: &mut crate::eval::tfevents::EventWriter,
    path: &Path,
    line: LogLine,
) -> Result<()> {
    write_event(tb, path, &line)?;
    log.push(line);
    Ok(())
}

pub fn write_metrics(path: &Path, log: &[LogLine]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for l in log {
        serde_json::to_writer(&mut f, l)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests;
