//! Sentence BLEU-4 exactly as
//! `nltk.translate.bleu_score.sentence_bleu([reference], hypothesis,
//! smoothing_function=SmoothingFunction().method3)` (nltk 3.x, uniform weights 0.25).
//!
//! For n = 1..4: p_n = clipped n-gram matches / max(1, hypothesis n-grams) (unreduced
//! fractions). If there is no unigram match the score is 0. Method 3 (NIST geometric
//! smoothing) replaces each p_n with zero matches by 1 / (2^k · denominator_n), k = 1, 2, ...
//! counting the zero orders from the left. BLEU = BP · exp(fsum(0.25 · ln p_n)), with
//! BP = 1 if |hyp| > |ref|, 0 if |hyp| = 0, else exp(1 − |ref| / |hyp|).

use std::collections::HashMap;
use std::hash::Hash;

/// Unreduced modified precision for order `n`: (clipped matches, max(1, hyp n-gram count)).
fn modified_precision<T: Eq + Hash>(hyp: &[T], reference: &[T], n: usize) -> (u64, u64) {
    let mut hyp_counts: HashMap<&[T], u64> = HashMap::new();
    if hyp.len() >= n {
        for g in hyp.windows(n) {
            *hyp_counts.entry(g).or_insert(0) += 1;
        }
    }
    let mut ref_counts: HashMap<&[T], u64> = HashMap::new();
    if reference.len() >= n {
        for g in reference.windows(n) {
            *ref_counts.entry(g).or_insert(0) += 1;
        }
    }
    let numerator = hyp_counts
        .iter()
        .map(|(g, &c)| c.min(ref_counts.get(g).copied().unwrap_or(0)))
        .sum();
    let denominator = hyp_counts.values().sum::<u64>().max(1);
    (numerator, denominator)
}

/// BLEU-4 of one hypothesis against one reference (token lists), in [0, 1].
pub fn bleu4<T: Eq + Hash>(pred_tokens: &[T], ref_tokens: &[T]) -> f64 {
    let p: Vec<(u64, u64)> = (1..=4)
        .map(|n| modified_precision(pred_tokens, ref_tokens, n))
        .collect();
    if p[0].0 == 0 {
        return 0.0;
    }
    let (hyp_len, ref_len) = (pred_tokens.len(), ref_tokens.len());
    let bp = if hyp_len > ref_len {
        1.0
    } else if hyp_len == 0 {
        0.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    };
    // SmoothingFunction().method3
    let mut k = 1;
    let mut terms = Vec::with_capacity(4);
    for &(num, den) in &p {
        let p_n = if num == 0 {
            let v = 1.0 / (2f64.powi(k) * den as f64);
            k += 1;
            v
        } else {
            num as f64 / den as f64
        };
        if p_n > 0.0 {
            terms.push(0.25 * p_n.ln());
        }
    }
    bp * fsum(&terms).exp()
}

/// Python's `math.fsum`: the correctly rounded sum (Shewchuk's partials, CPython's final
/// half-even correction).
pub fn fsum(xs: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &x0 in xs {
        let mut x = x0;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    let mut n = partials.len();
    let mut hi = 0.0;
    if n > 0 {
        n -= 1;
        hi = partials[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = partials[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsum_is_exact() {
        assert_eq!(fsum(&[1e100, 1.0, -1e100, 1e-100]), 1.0);
        assert_eq!(fsum(&[0.1; 10]), 1.0);
        assert_eq!(fsum(&[]), 0.0);
    }

    #[test]
    fn bleu_edge_cases() {
        let e: [&str; 0] = [];
        assert_eq!(bleu4(&e, &["a"]), 0.0);
        assert_eq!(bleu4(&["a"], &e), 0.0);
        assert_eq!(bleu4(&["a", "b", "c", "d"], &["a", "b", "c", "d"]), 1.0);
        // one unigram match, no higher orders: (1 * 1/2 * 1/4 * 1/8)^(1/4)
        let v = bleu4(&["x"], &["x"]);
        assert!((v - (1.0f64 / 64.0).powf(0.25)).abs() < 1e-15, "{v}");
    }
}
