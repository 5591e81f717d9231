//! ROUGE-1/2/L F-scores exactly as `rouge_chinese.Rouge().get_scores(hyp, ref)` (1.0.3) with
//! `hyp = ' '.join(pred_tokens)`, `ref = ' '.join(ref_tokens)` (finetune_demo's call).
//!
//! rouge_chinese first splits each text into sentences (`cut_sent`: after 。！？? not followed
//! by a closing quote, after six dots or two "…", after a sentence end plus closing quote),
//! drops empty sentences, collapses whitespace inside each with `' '.join(s.split())`, then
//! flattens all sentences into one word list with `s.split(' ')`.
//! - ROUGE-N: n-grams as SETS (exclusive mode); p = |H∩R|/|H|, r = |H∩R|/|R| (0 if a set is
//!   empty); f = 2·p·r / (p + r + 1e-8).
//! - ROUGE-L ("summary level", but really): LCS of the flattened word lists; p = lcs/|hyp|,
//!   r = lcs/|ref|; f as above.
//!
//! rouge_chinese raises `ValueError` when either side has no sentence left (empty text);
//! [`rouge_scores`] returns `None` there and callers score it as 0.

use std::collections::HashSet;
use std::sync::OnceLock;

use regex::Regex;

use super::pystr::{py_rstrip, py_split_ws};

/// F-scores in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct RougeScores {
    pub rouge1: f64,
    pub rouge2: f64,
    pub rougel: f64,
}

/// rouge_chinese `Rouge.cut_sent`.
fn cut_sent(para: &str) -> Vec<String> {
    static RES: OnceLock<[Regex; 4]> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            Regex::new(r"([。！？\?])([^”’])").expect("static regex"),
            Regex::new(r"(\.{6})([^”’])").expect("static regex"),
            Regex::new(r"(…{2})([^”’])").expect("static regex"),
            Regex::new(r"([。！？\?][”’])([^，。！？\?])").expect("static regex"),
        ]
    });
    let mut s = para.to_string();
    for re in res.iter() {
        s = re.replace_all(&s, "${1}\n${2}").into_owned();
    }
    py_rstrip(&s).split('\n').map(str::to_string).collect()
}

/// Sentences -> flattened word list, or None when rouge_chinese would raise.
fn words(text: &str) -> Option<Vec<String>> {
    let sentences: Vec<String> = cut_sent(text)
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| py_split_ws(&s).collect::<Vec<_>>().join(" "))
        .collect();
    if sentences.is_empty() {
        return None;
    }
    Some(
        sentences
            .iter()
            .flat_map(|s| s.split(' ').map(str::to_string))
            .collect(),
    )
}

fn f_score(overlap: usize, hyp_count: usize, ref_count: usize) -> f64 {
    let p = if hyp_count == 0 {
        0.0
    } else {
        overlap as f64 / hyp_count as f64
    };
    let r = if ref_count == 0 {
        0.0
    } else {
        overlap as f64 / ref_count as f64
    };
    2.0 * ((p * r) / (p + r + 1e-8))
}

fn rouge_n(hyp: &[String], reference: &[String], n: usize) -> f64 {
    let grams = |w: &[String]| -> HashSet<Vec<String>> {
        if w.len() < n {
            HashSet::new()
        } else {
            w.windows(n).map(|g| g.to_vec()).collect()
        }
    };
    let (h, r) = (grams(hyp), grams(reference));
    f_score(h.intersection(&r).count(), h.len(), r.len())
}

/// Length of the longest common subsequence.
fn lcs_len(x: &[String], y: &[String]) -> usize {
    let mut prev = vec![0usize; y.len() + 1];
    let mut cur = vec![0usize; y.len() + 1];
    for xi in x {
        for (j, yj) in y.iter().enumerate() {
            cur[j + 1] = if xi == yj {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[y.len()]
}

/// ROUGE F-scores of `rouge_chinese.Rouge().get_scores(' '.join(pred), ' '.join(ref))`;
/// None where rouge_chinese raises (a side is empty after sentence splitting).
pub fn rouge_scores<S: AsRef<str>>(pred_tokens: &[S], ref_tokens: &[S]) -> Option<RougeScores> {
    let join = |t: &[S]| t.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ");
    let hyp = words(&join(pred_tokens))?;
    let reference = words(&join(ref_tokens))?;
    let lcs = lcs_len(&reference, &hyp);
    Some(RougeScores {
        rouge1: rouge_n(&hyp, &reference, 1),
        rouge2: rouge_n(&hyp, &reference, 2),
        rougel: f_score(lcs, hyp.len(), reference.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_sent_matches_python() {
        // Python: Rouge().cut_sent("你好。再见！好？”对") == ['你好。', '再见！', '好？”', '对']
        assert_eq!(
            cut_sent("你好。再见！好？”对"),
            ["你好。", "再见！", "好？”", "对"]
        );
        assert_eq!(cut_sent("。。。"), ["。", "。。"]);
        assert_eq!(cut_sent(""), [""]);
    }

    #[test]
    fn empty_sides_are_none() {
        let e: [&str; 0] = [];
        assert!(rouge_scores(&e, &["a"]).is_none());
        assert!(rouge_scores(&["a"], &e).is_none());
        // Python raises "Hypothesis is empty." for a blank hypothesis too.
        assert!(rouge_scores(&[" "], &["a"]).is_none());
    }
}
