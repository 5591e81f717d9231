//! Aggregate metrics: finetune_demo's generation metrics (ROUGE-1/2/L ×100 rounded to 4
//! decimals, BLEU-4 as a fraction, each averaged over examples), exact match, RAFT-style label
//! accuracy, token accuracy and perplexity.

use serde::Serialize;

use super::bleu::bleu4;
use super::cut::cut;
use super::pystr::py_strip;
use super::rouge::rouge_scores;

/// Generation scores on the scale finetune_demo averages: of one pair, or their means.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ExampleScores {
    /// `round(f * 100, 4)`; 0 where rouge_chinese would raise (empty side).
    #[serde(rename = "rouge-1")]
    pub rouge1: f64,
    #[serde(rename = "rouge-2")]
    pub rouge2: f64,
    #[serde(rename = "rouge-l")]
    pub rougel: f64,
    /// nltk sentence BLEU-4 (method 3 smoothing), in [0, 1] (finetune_demo does not scale it).
    #[serde(rename = "bleu-4")]
    pub bleu4: f64,
    /// 100 if the stripped texts are equal, else 0 (so the mean is a percentage).
    #[serde(rename = "exact-match")]
    pub exact_match: f64,
}

impl ExampleScores {
    /// Name/value pairs in a fixed order (for metrics.json, predictions.jsonl and tables).
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("rouge-1", self.rouge1),
            ("rouge-2", self.rouge2),
            ("rouge-l", self.rougel),
            ("bleu-4", self.bleu4),
            ("exact-match", self.exact_match),
        ]
    }
}

/// What finetune_demo's `compute_metrics` returns (means over pairs), plus exact match.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationMetrics {
    #[serde(flatten)]
    pub mean: ExampleScores,
    /// Pairs in the means.
    pub count: usize,
    /// Pairs left out ([`EmptyPairs::Skip`]).
    pub skipped: usize,
    #[serde(skip)]
    pub per_example: Vec<ExampleScores>,
}

/// Python `round(x, 4)`: the double nearest to the correctly rounded 4-decimal value.
fn round4(x: f64) -> f64 {
    format!("{x:.4}").parse().unwrap_or(x)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// Scores of one pair: both texts stripped, jieba-cut, then ROUGE and BLEU on the tokens.
pub fn score_example(pred: &str, reference: &str) -> ExampleScores {
    let (p, r) = (py_strip(pred), py_strip(reference));
    let (pt, rt) = (cut(p), cut(r));
    let rouge = rouge_scores(&pt, &rt).unwrap_or_default();
    ExampleScores {
        rouge1: round4(rouge.rouge1 * 100.0),
        rouge2: round4(rouge.rouge2 * 100.0),
        rougel: round4(rouge.rougel * 100.0),
        bleu4: bleu4(&pt, &rt),
        exact_match: if p == r { 100.0 } else { 0.0 },
    }
}

/// What to do with a pair whose stripped prediction or reference is empty (rouge_chinese
/// raises `ValueError` there, so finetune_demo itself would crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptyPairs {
    /// Score ROUGE as 0 (BLEU is 0 by nltk's own rules) and keep the pair in the means.
    #[default]
    Zero,
    /// Leave the pair out of the means (GLM-4's finetune.py skips empty predictions/labels).
    Skip,
}

/// finetune_demo `compute_metrics` over decoded predictions and references (same length;
/// extra items of the longer list are ignored). Empty pairs score 0 ([`EmptyPairs::Zero`]).
pub fn compute_generation_metrics<S: AsRef<str>>(preds: &[S], refs: &[S]) -> GenerationMetrics {
    compute_generation_metrics_with(preds, refs, EmptyPairs::Zero)
}

/// [`compute_generation_metrics`] with a choice for empty pairs. `per_example` always has one
/// entry per pair; `count` is the number of pairs in the means, `skipped` the others.
pub fn compute_generation_metrics_with<S: AsRef<str>>(
    preds: &[S],
    refs: &[S],
    empty: EmptyPairs,
) -> GenerationMetrics {
    let mut per_example = Vec::new();
    let mut used = Vec::new();
    for (p, r) in preds.iter().zip(refs) {
        let (p, r) = (p.as_ref(), r.as_ref());
        let is_empty = py_strip(p).is_empty() || py_strip(r).is_empty();
        per_example.push(score_example(p, r));
        used.push(!(is_empty && empty == EmptyPairs::Skip));
    }
    let kept = || {
        per_example
            .iter()
            .zip(&used)
            .filter(|(_, &u)| u)
            .map(|(s, _)| s)
    };
    GenerationMetrics {
        mean: ExampleScores {
            rouge1: mean(kept().map(|s| s.rouge1)),
            rouge2: mean(kept().map(|s| s.rouge2)),
            rougel: mean(kept().map(|s| s.rougel)),
            bleu4: mean(kept().map(|s| s.bleu4)),
            exact_match: mean(kept().map(|s| s.exact_match)),
        },
        count: kept().count(),
        skipped: used.iter().filter(|&&u| !u).count(),
        per_example,
    }
}

/// Percentage of predictions equal to their reference after Python `strip()` on both.
pub fn exact_match<S: AsRef<str>>(preds: &[S], refs: &[S]) -> f64 {
    100.0
        * mean(
            preds
                .iter()
                .zip(refs)
                .map(|(p, r)| f64::from(u8::from(py_strip(p.as_ref()) == py_strip(r.as_ref())))),
        )
}

/// Classification accuracy as PEFT's RAFT example computes it: the generated continuation
/// (decoded, special tokens skipped) counts as correct when `pred.strip() == label.strip()`;
/// returns `correct / total * 100`.
pub fn label_accuracy<S: AsRef<str>>(preds: &[S], labels: &[S]) -> f64 {
    exact_match(preds, labels)
}

/// Fraction of trained positions (label != -100) where the predicted id equals the label.
/// `pred_ids[t]` must already be aligned with `labels[t]` (shift done by the caller).
/// None when no position is trained.
pub fn token_accuracy(pred_ids: &[u32], labels: &[i64]) -> Option<f64> {
    let (mut hit, mut n) = (0usize, 0usize);
    for (&p, &l) in pred_ids.iter().zip(labels) {
        if l == -100 {
            continue;
        }
        n += 1;
        hit += usize::from(i64::from(p) == l);
    }
    (n > 0).then(|| hit as f64 / n as f64)
}

/// Token accuracy of a causal LM before the shift: `pred_ids[t]` (argmax of the logits at
/// position t) predicts `labels[t + 1]`, as the causal loss pairs them; -100 is ignored.
pub fn causal_token_accuracy(pred_ids: &[u32], labels: &[i64]) -> Option<f64> {
    token_accuracy(pred_ids, labels.get(1..).unwrap_or(&[]))
}

/// Perplexity exp(sum / count) from a summed NLL (natural log) over `count` tokens.
pub fn perplexity_from_sum(nll_sum: f64, count: usize) -> Option<f64> {
    (count > 0).then(|| (nll_sum / count as f64).exp())
}

/// Perplexity exp(mean NLL) from per-token losses (natural log). None for no tokens.
pub fn perplexity(token_losses: &[f32]) -> Option<f64> {
    if token_losses.is_empty() {
        return None;
    }
    let sum: f64 = token_losses.iter().map(|&l| f64::from(l)).sum();
    Some((sum / token_losses.len() as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/eval/metrics.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("str").to_string())
            .collect()
    }

    const TOL: f64 = 1e-9;

    #[test]
    fn jieba_tokens_match_python() {
        let fx = fixture();
        let mut mismatches = Vec::new();
        for row in fx["pairs"].as_array().expect("pairs") {
            for (text_key, tok_key) in [("prediction", "pred_tokens"), ("reference", "ref_tokens")]
            {
                let text = py_strip(row[text_key].as_str().expect("text"));
                let want = strings(&row[tok_key]);
                let got = cut(text);
                if got != want {
                    mismatches.push(format!("{text:?}: got {got:?} want {want:?}"));
                }
            }
        }
        for row in fx["jieba_extra"].as_array().expect("extra") {
            let text = row["text"].as_str().expect("text");
            let (got, want) = (cut(text), strings(&row["tokens"]));
            if got != want {
                mismatches.push(format!("{text:?}: got {got:?} want {want:?}"));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    /// BLEU-4 and ROUGE of one fixture row (given tokens) against the Python values.
    fn check_scores(row: &Value) {
        let (pt, rt) = (strings(&row["pred_tokens"]), strings(&row["ref_tokens"]));
        let bleu = bleu4(&pt, &rt);
        let want = row["bleu4"].as_f64().expect("bleu");
        assert!(
            (bleu - want).abs() < TOL,
            "bleu {pt:?} {rt:?}: {bleu} vs {want}"
        );
        match (&row["rouge"], rouge_scores(&pt, &rt)) {
            (Value::Null, None) => {}
            (r, Some(got)) if !r.is_null() => {
                for (k, v) in [
                    ("rouge-1", got.rouge1),
                    ("rouge-2", got.rouge2),
                    ("rouge-l", got.rougel),
                ] {
                    let want = r[k].as_f64().expect("f");
                    assert!((v - want).abs() < TOL, "{k} {pt:?} {rt:?}: {v} vs {want}");
                }
            }
            (r, got) => panic!("{pt:?} {rt:?}: python {r} vs rust {got:?}"),
        }
    }

    #[test]
    fn bleu_and_rouge_match_python_per_pair() {
        for row in fixture()["pairs"].as_array().expect("pairs") {
            check_scores(row);
        }
    }

    /// Random token lists (repeats, sentence ends, quotes, spaces) against nltk/rouge_chinese.
    #[test]
    fn bleu_and_rouge_match_python_on_random_tokens() {
        let fx = fixture();
        let rows = fx["token_fuzz"].as_array().expect("fuzz");
        assert!(rows.len() >= 100);
        rows.iter().for_each(check_scores);
    }

    #[test]
    fn aggregate_matches_finetune_demo() {
        let fx = fixture();
        let rows = fx["pairs"].as_array().expect("pairs");
        let preds: Vec<&str> = rows
            .iter()
            .map(|r| r["prediction"].as_str().expect("p"))
            .collect();
        let refs: Vec<&str> = rows
            .iter()
            .map(|r| r["reference"].as_str().expect("r"))
            .collect();
        let m = compute_generation_metrics(&preds, &refs);
        let a = &fx["aggregate"];
        for (k, v) in m.mean.named().into_iter().take(4) {
            let want = a[k].as_f64().expect("agg");
            assert!((v - want).abs() < TOL, "{k}: {v} vs {want}");
        }
        assert_eq!(m.count, rows.len());
        // exact matches in the fixture: identical pair, "complaint", "  no complaint  ", "" vs "".
        assert!((m.mean.exact_match - 100.0 * 4.0 / rows.len() as f64).abs() < 1e-12);
        // Skipping the 3 empty pairs: means over the others (bleu of empty pairs is 0).
        let s = compute_generation_metrics_with(&preds, &refs, EmptyPairs::Skip);
        assert_eq!((s.count, s.skipped), (rows.len() - 3, 3));
        let n = rows.len() as f64;
        let want = a["bleu-4"].as_f64().expect("agg") * n / (n - 3.0);
        assert!(
            (s.mean.bleu4 - want).abs() < TOL,
            "{} vs {want}",
            s.mean.bleu4
        );
        assert!((s.mean.exact_match - 100.0 * 3.0 / (n - 3.0)).abs() < 1e-12);
    }

    #[test]
    fn accuracy_and_perplexity() {
        assert_eq!(
            label_accuracy(
                &[" complaint\n", "no complaint", "x"],
                &["complaint", "complaint", "x "]
            ),
            2.0 / 3.0 * 100.0
        );
        assert_eq!(
            token_accuracy(&[1, 2, 3, 4], &[-100, 2, 5, 4]),
            Some(2.0 / 3.0)
        );
        assert_eq!(token_accuracy(&[1], &[-100]), None);
        // Unshifted: position t predicts label t+1 (the last prediction has no label).
        assert_eq!(
            causal_token_accuracy(&[2, 7, 4, 9], &[-100, 2, 5, 4]),
            Some(2.0 / 3.0)
        );
        assert_eq!(causal_token_accuracy(&[2], &[]), None);
        assert_eq!(perplexity_from_sum(6.0, 3), Some(2f64.exp()));
        let p = perplexity(&[1.0, 2.0, 3.0]).expect("ppl");
        assert!((p - 2f64.exp()).abs() < 1e-12);
        assert_eq!(round4(12.345_649_9), 12.3456);
        assert_eq!(round4(0.03125), 0.0312); // exact tie: half-even like Python
    }
}
