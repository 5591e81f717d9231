//! The loop on a toy bigram model: resume equivalence, accumulation
//! equivalence, NaN stop, checkpoint rotation.

use super::batch::{PadSide, Sample};
use super::*;
use crate::backend::CpuBackend;
use crate::model::{Batch, EvalSums};

/// logits(t) = W[input(t)], a V×V table; loss = CE(logits(t), label(t+1)).
struct Bigram {
    v: usize,
    w: Tensor,
    g: Tensor,
    poison: bool,
}

impl Bigram {
    fn new(v: usize) -> Self {
        let mut r = rng::Rng::new(3);
        Bigram {
            v,
            w: Tensor::from_host((0..v * v).map(|_| r.next_f32() - 0.5).collect()),
            g: Tensor::from_host(vec![0.0; v * v]),
            poison: false,
        }
    }
    /// Σ losses, count, correct; adds scale·grad when `grad`.
    fn pass(&mut self, b: &Batch, scale: f32, grad: bool) -> (f64, usize, usize) {
        let (mut loss, mut n, mut correct) = (0.0, 0, 0);
        for r in 0..b.b {
            for t in 0..b.t - 1 {
                let lab = b.target(r * b.t + t);
                if lab < 0 || b.attention_mask[r * b.t + t] == 0 {
                    continue;
                }
                let x = b.input_ids[r * b.t + t] as usize;
                let row = &self.w.host()[x * self.v..(x + 1) * self.v];
                let m = row.iter().cloned().fold(f32::MIN, f32::max);
                let z: f32 = row.iter().map(|&l| (l - m).exp()).sum();
                let lab = lab as usize;
                loss += ((z.ln() + m) - row[lab]) as f64;
                if self.poison {
                    loss = f64::NAN;
                }
                let argmax = (0..self.v)
                    .max_by(|&a, &c| row[a].total_cmp(&row[c]))
                    .unwrap_or(0);
                correct += usize::from(argmax == lab);
                n += 1;
                if grad {
                    for j in 0..self.v {
                        let p = (row[j] - m).exp() / z;
                        self.g.host_mut()[x * self.v + j] +=
                            scale * (p - if j == lab { 1.0 } else { 0.0 });
                    }
                }
            }
        }
        (loss, n, correct)
    }
}

impl TrainModel for Bigram {
    fn forward_backward(
        &mut self,
        b: &Batch,
        scale: f32,
        _seed: u64,
        loss: &mut Tensor,
    ) -> Result<usize> {
        let (l, n, _) = self.pass(b, scale, true);
        loss.host_mut()[0] += l as f32;
        Ok(n)
    }
    fn eval_batch(&mut self, b: &Batch) -> Result<EvalSums> {
        let (nll, tokens, correct) = self.pass(b, 0.0, false);
        Ok(EvalSums {
            nll,
            tokens,
            correct,
        })
    }
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(CpuBackend)
    }
    fn trainables(&mut self) -> Vec<(&mut Tensor, &mut Tensor)> {
        vec![(&mut self.w, &mut self.g)]
    }
    fn zero_grad(&mut self) {
        self.g.host_mut().fill(0.0);
    }
    fn save(&mut self, dir: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.w.host().iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(dir.join("w.bin"), bytes)?;
        Ok(())
    }
    fn load(&mut self, dir: &Path) -> Result<()> {
        let b = std::fs::read(dir.join("w.bin"))?;
        self.w = Tensor::from_host(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        Ok(())
    }
}

/// SGD with momentum: has state, so resume must restore it.
struct Momentum(Vec<f32>);

impl Optim for Momentum {
    fn step(&mut self, pg: &mut [(&mut Tensor, &mut Tensor)], lr: f32) -> Result<()> {
        let mut k = 0;
        for (p, g) in pg.iter_mut() {
            let (p, g) = (p.host_mut(), g.host());
            if self.0.len() < k + p.len() {
                self.0.resize(k + p.len(), 0.0);
            }
            for i in 0..p.len() {
                self.0[k + i] = 0.9 * self.0[k + i] + g[i];
                p[i] -= lr * self.0[k + i];
            }
            k += p.len();
        }
        Ok(())
    }
    fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(
            path,
            self.0
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
        )?;
        Ok(())
    }
    fn load(&mut self, path: &Path) -> Result<()> {
        let b = std::fs::read(path)?;
        self.0 = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(())
    }
}

fn data() -> Vec<Sample> {
    let mut r = rng::Rng::new(11);
    (0..24)
        .map(|_| {
            let n = 3 + r.below(6);
            let ids: Vec<u32> = (0..n).map(|i| ((i * 3 + r.below(2)) % 8) as u32).collect();
            let mut labels: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
            labels[0] = -100;
            Sample {
                input_ids: ids,
                labels,
                segments: vec![],
            }
        })
        .collect()
}

fn cfg() -> TrainConfig {
    TrainConfig {
        batch_size: 4,
        grad_accum: 1,
        num_epochs: 2.0,
        max_steps: -1,
        max_grad_norm: 1.0,
        seed: 5,
        group_by_length: false,
        logging_steps: 2,
        eval_steps: None,
        save: SaveStrategy::Steps(4),
        save_total_limit: Some(2),
        pad_id: 0,
        pad_side: PadSide::Right,
    }
}

fn lr(step: usize) -> f64 {
    0.5 * (1.0 - step as f64 / 20.0)
}

fn run(cfg: &TrainConfig, work: &Path, out: &Path, stop: Option<usize>) -> (Bigram, TrainReport) {
    let d = data();
    let mut m = Bigram::new(8);
    let mut o = Momentum(vec![]);
    let io = TrainIo {
        work,
        out,
        log: &|_| {},
        bar: None,
        stop_after: stop,
    };
    let r = train(&mut m, &mut o, &lr, &d, Some(&d), cfg, &io).unwrap();
    (m, r)
}

#[test]
fn loss_goes_down_and_metrics_are_written() {
    let (w, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, r) = run(&cfg(), w.path(), o.path(), None);
    assert_eq!(r.steps, 12); // 24 examples / batch 4 = 6 steps per epoch, 2 epochs
    let log: Vec<LogLine> = std::fs::read_to_string(o.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let losses: Vec<f64> = log.iter().filter_map(|l| l.loss).collect();
    assert_eq!(losses.len(), 6);
    assert!(losses[5] < losses[0] * 0.9, "{losses:?}");
    assert!(log.last().unwrap().eval_loss.is_some());
    // save_total_limit 2 keeps checkpoint-4 and checkpoint-8.
    let kept: Vec<_> = checkpoint::list(w.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(kept, ["checkpoint-4", "checkpoint-8"]);
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let (w1, o1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (full, _) = run(&cfg(), w1.path(), o1.path(), None);
    let (w2, o2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, part) = run(&cfg(), w2.path(), o2.path(), Some(7)); // "killed" after step 7
    assert_eq!(part.steps, 7);
    let (resumed, r) = run(&cfg(), w2.path(), o2.path(), None);
    assert_eq!(r.resumed_from, Some(4));
    assert_eq!(full.w.host(), resumed.w.host());
    assert_eq!(
        std::fs::read_to_string(o1.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"loss\""))
            .count(),
        std::fs::read_to_string(o2.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"loss\""))
            .count()
    );
}

/// The events file holds, record for record, the scalars of metrics.jsonl (as f32).
fn assert_events_match_metrics(out: &Path) {
    use crate::eval::tfevents::{read_events, FILE_NAME};
    let log: Vec<LogLine> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ev = read_events(&out.join(FILE_NAME)).unwrap();
    assert_eq!(ev[0].file_version.as_deref(), Some("brain.Event:2"));
    assert_eq!(ev.len(), log.len() + 1);
    for (e, l) in ev[1..].iter().zip(&log) {
        assert_eq!(e.step, l.step as i64);
        let want: Vec<(String, f32)> = l
            .scalars()
            .into_iter()
            .map(|(t, v)| (t.to_string(), v as f32))
            .collect();
        assert_eq!(e.scalars, want);
    }
}

#[test]
fn tensorboard_events_match_metrics_jsonl() {
    let (w, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&cfg(), w.path(), o.path(), None);
    assert_events_match_metrics(o.path());
    let ev =
        crate::eval::tfevents::read_events(&o.path().join("events.out.tfevents.recipe")).unwrap();
    // 6 logged train steps (every 2) and evals: every training line has all four scalars.
    let tags = |i: usize| {
        ev[i]
            .scalars
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tags(1),
        [
            "train/loss",
            "train/lr",
            "train/grad_norm",
            "train/tokens_per_s"
        ]
    );
    assert_eq!(tags(ev.len() - 1), ["eval/loss", "eval/token_accuracy"]);
    // Killed after step 7 and resumed from checkpoint-4: the file is rewritten from the
    // checkpoint's log and again matches metrics.jsonl.
    let (w2, o2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&cfg(), w2.path(), o2.path(), Some(7));
    run(&cfg(), w2.path(), o2.path(), None);
    assert_events_match_metrics(o2.path());
}

#[test]
fn accumulation_matches_a_bigger_batch() {
    let mut big = cfg();
    big.batch_size = 4;
    big.save = SaveStrategy::No;
    let mut acc = big.clone();
    acc.batch_size = 2;
    acc.grad_accum = 2;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m1, r1) = run(&big, a.path(), a.path(), None);
    let (m2, r2) = run(&acc, b.path(), b.path(), None);
    assert_eq!(r1.steps, r2.steps);
    let max =
        m1.w.host()
            .iter()
            .zip(m2.w.host())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
    assert!(max < 1e-5, "max diff {max}");
}

#[test]
fn nan_loss_stops_with_the_step() {
    let (w, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = data();
    let mut m = Bigram::new(8);
    m.poison = true;
    let io = TrainIo {
        work: w.path(),
        out: o.path(),
        log: &|_| {},
        bar: None,
        stop_after: None,
    };
    let e = train(&mut m, &mut Momentum(vec![]), &lr, &d, None, &cfg(), &io).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("loss is NaN at step 1 (epoch 0); stopped."),
        "{e}"
    );
}

/// Collects log lines (the loop's warnings go there).
struct Log(std::sync::Mutex<Vec<String>>);

impl Log {
    fn new() -> Self {
        Log(std::sync::Mutex::new(Vec::new()))
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn train_logged(
    m: &mut Bigram,
    o: &mut Momentum,
    lr: &dyn Fn(usize) -> f64,
    cfg: &TrainConfig,
    work: &Path,
    out: &Path,
    log: &Log,
) -> Result<TrainReport> {
    let d = data();
    let f = |s: &str| log.0.lock().unwrap().push(s.to_string());
    let io = TrainIo {
        work,
        out,
        log: &f,
        bar: None,
        stop_after: None,
    };
    train(m, o, lr, &d, None, cfg, &io)
}

#[test]
fn nan_stop_names_only_a_checkpoint_it_wrote() {
    // No checkpoint yet: says so.
    let (w, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut m = Bigram::new(8);
    m.poison = true;
    let log = Log::new();
    let e = train_logged(
        &mut m,
        &mut Momentum(vec![]),
        &lr,
        &cfg(),
        w.path(),
        o.path(),
        &log,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "loss is NaN at step 1 (epoch 0); stopped. Training diverged: no checkpoint was written \
         before it. Lower learning_rate (or max_grad_norm)"
    );
    assert!(checkpoint::list(w.path()).is_empty());
    // Killed after step 5 (checkpoint-4 written), then the resumed run hits a NaN at step 5.
    let (w, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&cfg(), w.path(), o.path(), Some(5));
    let mut m = Bigram::new(8);
    m.poison = true;
    let e = train_logged(
        &mut m,
        &mut Momentum(vec![]),
        &lr,
        &cfg(),
        w.path(),
        o.path(),
        &log,
    )
    .unwrap_err();
    let ck = w.path().join("checkpoint-4");
    assert_eq!(
        e.to_string(),
        format!(
            "loss is NaN at step 5 (epoch 0); stopped. Training diverged: the last good \
             checkpoint is `{}` (step 4). Lower learning_rate (or max_grad_norm)",
            ck.display()
        )
    );
}

#[test]
fn damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let (w1, o1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (full, _) = run(&cfg(), w1.path(), o1.path(), None);
    let (w, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&cfg(), w.path(), o.path(), Some(9)); // checkpoints 4 and 8
    let newest = w.path().join("checkpoint-8");
    std::fs::write(newest.join("trainer_state.json"), "{\"step\": 8, \"epo").unwrap();
    let log = Log::new();
    let mut m = Bigram::new(8);
    let r = train_logged(
        &mut m,
        &mut Momentum(vec![]),
        &lr,
        &cfg(),
        w.path(),
        o.path(),
        &log,
    )
    .unwrap();
    assert_eq!(r.resumed_from, Some(4));
    assert_eq!(
        m.w.host(),
        full.w.host(),
        "resumed from checkpoint-4 is bit-exact"
    );
    let lines = log.lines();
    assert!(
        lines[0].starts_with(&format!(
            "WARNING: checkpoint `{}` is damaged (",
            newest.display()
        )) && lines[0].ends_with("); trying an older one"),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("resuming from "), "{lines:?}");
}

#[test]
fn zero_steps_is_an_error() {
    let (w, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = cfg();
    c.num_epochs = -3.0;
    let e = train_logged(
        &mut Bigram::new(8),
        &mut Momentum(vec![]),
        &lr,
        &c,
        w.path(),
        o.path(),
        &Log::new(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "0 optimizer steps (num_epochs -3, max_steps -1, 24 examples): nothing would be trained"
    );
}

#[test]
fn a_diverging_run_ends_with_a_warning() {
    let (w, o) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = cfg();
    c.save = SaveStrategy::No;
    c.max_grad_norm = 0.0;
    let log = Log::new();
    let big = |_: usize| 1e4;
    let r = train_logged(
        &mut Bigram::new(8),
        &mut Momentum(vec![]),
        &big,
        &c,
        w.path(),
        o.path(),
        &log,
    )
    .unwrap();
    assert!(
        r.warnings[0].starts_with("the training loss ended above where it started"),
        "{:?}",
        r.warnings
    );
    assert!(
        log.lines()
            .iter()
            .any(|l| l == &format!("WARNING: {}", r.warnings[0])),
        "{:?}",
        log.lines()
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o.path().join("train_report.json")).unwrap())
            .unwrap();
    assert_eq!(saved["warnings"][0], r.warnings[0].as_str());
}
