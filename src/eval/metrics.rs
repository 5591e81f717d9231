//! Aggregate metrics: finetune_demo's generation metrics (ROUGE-1/2/L ×100 rounded to 4
//! decimals, BLEU-4 as a fraction, each averaged over examples), exact match, RAFT-style label
//! accuracy, token accuracy and perplexity.

use serde::Serialize;

use super::bleu::bleu4;
use super::cut::cut;
use super::pystr::py_strip;
use super::rouge::rouge_scores;

/// Scores of one prediction/reference pair, on the scale finetune_demo averages.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// 1.0 if the stripped texts are equal.
    #[serde(rename = "exact-match")]
    pub exact_match: f64,
}

/// Means over examples (what finetune_demo's `compute_metrics` returns, plus exact match ×100).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationMetrics {
    #[serde(rename = "rouge-1")]
    pub rouge1: f64,
    #[serde(rename = "rouge-2")]
    pub rouge2: f64,
    #[serde(rename = "rouge-l")]
    pub rougel: f64,
    #[serde(rename = "bleu-4")]
    pub bleu4: f64,
    /// Percentage of exact matches (stripped texts).
    #[serde(rename = "exact-match")]
    pub exact_match: f64,
    pub count: usize,
    #[serde(skip)]
    pub per_example: Vec<ExampleScores>,
}

impl GenerationMetrics {
    /// Name/value pairs in a fixed order (for metrics.json and tables).
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("rouge-1", self.rouge1),
            ("rouge-2", self.rouge2),
            ("rouge-l", self.rougel),
            ("bleu-4", self.bleu4),
            ("exact-match", self.exact_match),
        ]
    }
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
        exact_match: f64::from(u8::from(p == r)),
    }
}

/// finetune_demo `compute_metrics` over decoded predictions and references (same length;
/// extra items of the longer list are ignored).
pub fn compute_generation_metrics<S: AsRef<str>>(preds: &[S], refs: &[S]) -> GenerationMetrics {
    let per_example: Vec<ExampleScores> = preds
        .iter()
        .zip(refs)
        .map(|(p, r)| score_example(p.as_ref(), r.as_ref()))
        .collect();
    let e = &per_example;
    GenerationMetrics {
        rouge1: mean(e.iter().map(|s| s.rouge1)),
        rouge2: mean(e.iter().map(|s| s.rouge2)),
        rougel: mean(e.iter().map(|s| s.rougel)),
        bleu4: mean(e.iter().map(|s| s.bleu4)),
        exact_match: 100.0 * mean(e.iter().map(|s| s.exact_match)),
        count: e.len(),
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

    #[test]
    fn bleu_and_rouge_match_python_per_pair() {
        let fx = fixture();
        for row in fx["pairs"].as_array().expect("pairs") {
            let (pt, rt) = (strings(&row["pred_tokens"]), strings(&row["ref_tokens"]));
            let bleu = bleu4(&pt, &rt);
            let want = row["bleu4"].as_f64().expect("bleu");
            assert!(
                (bleu - want).abs() < TOL,
                "bleu {pt:?} {rt:?}: {bleu} vs {want}"
            );
            let rouge = rouge_scores(&pt, &rt);
            match &row["rouge"] {
                Value::Null => assert!(rouge.is_none(), "{pt:?} {rt:?} should have no rouge"),
                r => {
                    let got = rouge.expect("rouge");
                    for (k, v) in [
                        ("rouge-1", got.rouge1),
                        ("rouge-2", got.rouge2),
                        ("rouge-l", got.rougel),
                    ] {
                        let want = r[k]["f"].as_f64().or_else(|| r[k].as_f64()).expect("f");
                        assert!((v - want).abs() < TOL, "{k} {pt:?} {rt:?}: {v} vs {want}");
                    }
                }
            }
        }
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
        for (k, v) in m.named().into_iter().take(4) {
            let want = a[k].as_f64().expect("agg");
            assert!((v - want).abs() < TOL, "{k}: {v} vs {want}");
        }
        assert_eq!(m.count, rows.len());
        // exact matches in the fixture: identical pair, "complaint", "  no complaint  ", "" vs "".
        assert!((m.exact_match - 100.0 * 4.0 / rows.len() as f64).abs() < 1e-12);
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
        let p = perplexity(&[1.0, 2.0, 3.0]).expect("ppl");
        assert!((p - 2f64.exp()).abs() < 1e-12);
        assert_eq!(round4(12.345_649_9), 12.3456);
        assert_eq!(round4(0.03125), 0.0312); // exact tie: half-even like Python
    }
}
