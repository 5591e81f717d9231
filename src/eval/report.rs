//! Evaluation and training reports: `predictions.jsonl`, `metrics.json`, a before/after
//! table (base vs fine-tuned), and a summary of a train run's `metrics.jsonl`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;

use super::metrics::{ExampleScores, GenerationMetrics};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: plotting failed: {msg}")]
    Plot { path: PathBuf, msg: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One line of `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionRecord {
    pub prompt: String,
    pub prediction: String,
    pub reference: String,
    /// Per-example scores (e.g. "rouge-1", "bleu-4", "exact-match"), in insertion order.
    pub scores: IndexMap<String, f64>,
}

/// Per-example scores as an ordered name -> value map.
pub fn example_scores_map(s: &ExampleScores) -> IndexMap<String, f64> {
    s.named()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Aggregate metrics as an ordered name -> value map (plus "count" and "skipped").
pub fn metrics_map(m: &GenerationMetrics) -> IndexMap<String, f64> {
    let mut map = example_scores_map(&m.mean);
    map.insert("count".to_string(), m.count as f64);
    map.insert("skipped".to_string(), m.skipped as f64);
    map
}

/// Writes one JSON object per line (UTF-8, no ASCII escaping).
pub fn write_predictions_jsonl(path: &Path, rows: &[PredictionRecord]) -> Result<(), ReportError> {
    let mut buf = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut buf, r).expect("serializing plain data cannot fail");
        buf.push(b'\n');
    }
    std::fs::write(path, buf).map_err(io_err(path))
}

/// Writes `metrics` as pretty JSON with a trailing newline.
pub fn write_metrics_json<T: Serialize>(path: &Path, metrics: &T) -> Result<(), ReportError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    let text = serde_json::to_string_pretty(metrics).expect("serializing plain data cannot fail");
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .map_err(io_err(path))
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn fmt_delta(v: f64) -> String {
    let s = fmt_num(v);
    if v > 0.0 {
        format!("+{s}")
    } else {
        s
    }
}

/// Renders rows as a left-aligned first column and right-aligned others.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (c, cell) in r.iter().enumerate().take(cols) {
            width[c] = width[c].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if c > 0 {
                s.push_str("  ");
            }
            if c == 0 {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            }
        }
        s.trim_end().to_string()
    };
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    out.push_str(&line(&head));
    out.push('\n');
    let total: usize = width.iter().sum::<usize>() + 2 * (cols - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// Before/after table: one row per metric of `base` (then metrics only in `tuned`), with
/// the fine-tuned value and the delta (tuned − base). Missing values show as "-".
pub fn render_comparison(base: &IndexMap<String, f64>, tuned: &IndexMap<String, f64>) -> String {
    let mut names: Vec<&String> = base.keys().collect();
    names.extend(tuned.keys().filter(|k| !base.contains_key(*k)));
    let rows: Vec<Vec<String>> = names
        .into_iter()
        .map(|k| {
            let (b, t) = (base.get(k).copied(), tuned.get(k).copied());
            vec![
                k.clone(),
                b.map_or("-".into(), fmt_num),
                t.map_or("-".into(), fmt_num),
                match (b, t) {
                    (Some(b), Some(t)) => fmt_delta(t - b),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    render_table(&["metric", "base", "fine-tuned", "delta"], &rows)
}

/// One training log record from `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TrainRecord {
    pub step: u64,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub eval_loss: Option<f64>,
}

fn num(obj: &serde_json::Map<String, Value>, keys: &[&str]) -> Option<f64> {
    keys.iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_f64))
}

/// Reads a train run's `metrics.jsonl` (one JSON object per line; blank lines skipped).
/// Keys: `step` (required), `loss`, `lr` | `learning_rate`, `grad_norm`,
/// `tokens_per_s` | `tokens_per_sec` | `tok_per_s`, `eval_loss`.
pub fn read_train_metrics(path: &Path) -> Result<Vec<TrainRecord>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    parse_train_metrics(&text, path)
}

/// [`read_train_metrics`] on text already in memory (`path` is only used in errors).
pub fn parse_train_metrics(text: &str, path: &Path) -> Result<Vec<TrainRecord>, ReportError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let perr = |msg: String| ReportError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| perr(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| perr("expected a JSON object".into()))?;
        let step = obj
            .get("step")
            .and_then(Value::as_u64)
            .ok_or_else(|| perr("key `step`: expected a non-negative integer".into()))?;
        out.push(TrainRecord {
            step,
            loss: num(obj, &["loss"]),
            lr: num(obj, &["lr", "learning_rate"]),
            grad_norm: num(obj, &["grad_norm"]),
            tokens_per_s: num(obj, &["tokens_per_s", "tokens_per_sec", "tok_per_s"]),
            eval_loss: num(obj, &["eval_loss"]),
        });
    }
    Ok(out)
}

/// Summary table of a train run: at most `max_rows` records, evenly spaced, always with the
/// first and last; then one line with the final and minimum loss.
pub fn render_train_summary(records: &[TrainRecord], max_rows: usize) -> String {
    if records.is_empty() {
        return "no training records\n".to_string();
    }
    let n = records.len();
    let keep = max_rows.max(2).min(n);
    let mut idx: Vec<usize> = (0..keep)
        .map(|i| {
            if keep == 1 {
                0
            } else {
                i * (n - 1) / (keep - 1)
            }
        })
        .collect();
    idx.dedup();
    let opt = |v: Option<f64>| v.map_or("-".to_string(), fmt_num);
    let show_eval = records.iter().any(|r| r.eval_loss.is_some());
    let mut header = vec!["step", "loss", "lr", "grad_norm", "tokens/s"];
    if show_eval {
        header.push("eval_loss");
    }
    let rows: Vec<Vec<String>> = idx
        .iter()
        .map(|&i| {
            let r = &records[i];
            let mut row = vec![
                r.step.to_string(),
                opt(r.loss),
                opt(r.lr),
                opt(r.grad_norm),
                r.tokens_per_s.map_or("-".into(), |t| format!("{t:.1}")),
            ];
            if show_eval {
                row.push(opt(r.eval_loss));
            }
            row
        })
        .collect();
    let mut out = render_table(&header, &rows);
    let losses: Vec<(u64, f64)> = records
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.step, l)))
        .collect();
    if let (Some(last), Some(min)) = (
        losses.last(),
        losses.iter().min_by(|a, b| a.1.total_cmp(&b.1)),
    ) {
        let _ = writeln!(
            out,
            "{} records; final loss {} at step {}; min loss {} at step {}",
            n,
            fmt_num(last.1),
            last.0,
            fmt_num(min.1),
            min.0
        );
    }
    for w in train_health_warnings(records) {
        let _ = writeln!(out, "WARNING: {w}");
    }
    out
}

/// A finished run that went wrong without a NaN: its last loss is above its first (it
/// diverged), or its gradient norm stayed exactly 0 at the end (`stuck_for` = that many
/// `unit`s, e.g. "steps"): nothing is learned any more. The loop calls it with per-step
/// values, `recipe report` with metrics.jsonl ([`train_health_warnings`]).
pub fn health_warnings(
    first: Option<(usize, f64)>,
    last: Option<(usize, f64)>,
    stuck_for: Option<usize>,
    unit: &str,
) -> Vec<String> {
    let mut w = Vec::new();
    if let (Some((s1, a)), Some((s2, b))) = (first, last) {
        if s2 > s1 && b > a {
            w.push(format!(
                "the training loss ended above where it started ({a:.4} at step {s1}, \
                 {b:.4} at step {s2}): the run diverged; lower learning_rate"
            ));
        }
    }
    if let Some(n) = stuck_for {
        w.push(format!(
            "the gradient norm was 0 for the last {n} {unit}: training is stuck \
             (nothing is learned; a diverged or saturated model?)"
        ));
    }
    w
}

/// [`health_warnings`] on a metrics.jsonl: the first and last logged training loss,
/// and the gradient norm of the trailing training records (each is one step's norm: two
/// logged zeros in a row at the end count as stuck, or one when that is all there is).
pub fn train_health_warnings(records: &[TrainRecord]) -> Vec<String> {
    let train: Vec<(usize, f64, Option<f64>)> = records
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.step as usize, l, r.grad_norm)))
        .collect();
    let zeros = train.iter().rev().take_while(|r| r.2 == Some(0.0)).count();
    let stuck = (zeros > 0 && zeros >= 2.min(train.len())).then_some(zeros);
    health_warnings(
        train.first().map(|r| (r.0, r.1)),
        train.last().map(|r| (r.0, r.1)),
        stuck,
        "logged steps",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_table_text() {
        let base: IndexMap<String, f64> =
            [("rouge-1".to_string(), 30.5), ("bleu-4".to_string(), 0.1)]
                .into_iter()
                .collect();
        let tuned: IndexMap<String, f64> = [
            ("rouge-1".to_string(), 42.25),
            ("bleu-4".to_string(), 0.05),
            ("exact-match".to_string(), 10.0),
        ]
        .into_iter()
        .collect();
        let t = render_comparison(&base, &tuned);
        let want = "\
metric          base  fine-tuned     delta
------------------------------------------
rouge-1      30.5000     42.2500  +11.7500
bleu-4        0.1000      0.0500   -0.0500
exact-match        -     10.0000         -
";
        assert_eq!(t, want, "\n{t}");
    }

    #[test]
    fn train_summary_and_errors() {
        let text =
            "{\"step\":1,\"loss\":2.5,\"lr\":5e-5,\"grad_norm\":1.25,\"tokens_per_s\":1000.0}\n\n\
                    {\"step\":2,\"loss\":2.0,\"learning_rate\":4e-5}\n\
                    {\"step\":3,\"loss\":2.25,\"lr\":3e-5,\"eval_loss\":2.1}\n";
        let recs = parse_train_metrics(text, Path::new("m.jsonl")).expect("parse");
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].lr, Some(4e-5));
        let s = render_train_summary(&recs, 10);
        let want = "\
step    loss        lr  grad_norm  tokens/s  eval_loss
------------------------------------------------------
1     2.5000  5.000e-5     1.2500    1000.0          -
2     2.0000  4.000e-5          -         -          -
3     2.2500  3.000e-5          -         -     2.1000
3 records; final loss 2.2500 at step 3; min loss 2.0000 at step 2
";
        assert_eq!(s, want, "\n{s}");
        let e =
            parse_train_metrics("{\"step\":1}\n{\"loss\":1}\n", Path::new("m.jsonl")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.jsonl:2: key `step`: expected a non-negative integer"
        );
        let e = parse_train_metrics("{oops\n", Path::new("m.jsonl")).unwrap_err();
        assert!(
            e.to_string().starts_with("m.jsonl:1: key must be a string"),
            "{e}"
        );
    }

    #[test]
    fn train_summary_warns_about_divergence_and_zero_gradients() {
        let text = "{\"step\":20,\"loss\":2.5,\"grad_norm\":1.5}\n\
                    {\"step\":40,\"loss\":9.0,\"grad_norm\":0.0}\n\
                    {\"step\":40,\"eval_loss\":9.5}\n\
                    {\"step\":60,\"loss\":11.0,\"grad_norm\":0.0}\n";
        let recs = parse_train_metrics(text, Path::new("m.jsonl")).expect("parse");
        let s = render_train_summary(&recs, 10);
        let tail: Vec<&str> = s.lines().rev().take(2).collect();
        assert_eq!(
            tail,
            [
                "WARNING: the gradient norm was 0 for the last 2 logged steps: training is stuck \
                 (nothing is learned; a diverged or saturated model?)",
                "WARNING: the training loss ended above where it started (2.5000 at step 20, \
                 11.0000 at step 60): the run diverged; lower learning_rate",
            ]
        );
        // A healthy run: no warning.
        let ok = parse_train_metrics(
            "{\"step\":1,\"loss\":2.5,\"grad_norm\":1.0}\n{\"step\":2,\"loss\":2.0,\"grad_norm\":0.5}\n",
            Path::new("m.jsonl"),
        )
        .expect("parse");
        assert!(train_health_warnings(&ok).is_empty());
    }

    #[test]
    fn writes_predictions_and_metrics() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = super::super::metrics::compute_generation_metrics(&["你好", "a"], &["你好", "b"]);
        let rows: Vec<PredictionRecord> = m
            .per_example
            .iter()
            .zip([("p1", "你好", "你好"), ("p2", "a", "b")])
            .map(|(s, (p, pred, r))| PredictionRecord {
                prompt: p.into(),
                prediction: pred.into(),
                reference: r.into(),
                scores: example_scores_map(s),
            })
            .collect();
        let pp = dir.path().join("predictions.jsonl");
        write_predictions_jsonl(&pp, &rows).expect("write");
        let text = std::fs::read_to_string(&pp).expect("read");
        let first = text.lines().next().expect("line");
        assert!(first.starts_with("{\"prompt\":\"p1\",\"prediction\":\"你好\",\"reference\":\"你好\",\"scores\":{\"rouge-1\":100.0,"), "{first}");
        assert_eq!(text.lines().count(), 2);
        let mp = dir.path().join("metrics.json");
        write_metrics_json(&mp, &metrics_map(&m)).expect("write");
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&mp).expect("read")).expect("json");
        assert_eq!(v["count"], 2.0);
        assert_eq!(v["exact-match"], 50.0);
    }

    #[test]
    fn health_warning_texts() {
        assert!(health_warnings(Some((1, 2.0)), Some((12, 1.0)), None, "steps").is_empty());
        assert_eq!(
            health_warnings(Some((1, 2.0)), Some((12, 7.5)), Some(4), "steps"),
            [
                "the training loss ended above where it started (2.0000 at step 1, 7.5000 at step \
                 12): the run diverged; lower learning_rate",
                "the gradient norm was 0 for the last 4 steps: training is stuck (nothing is \
                 learned; a diverged or saturated model?)"
            ]
        );
    }
}
