//! Logits processing and token choice as transformers' `generate` does it.
//!
//! Order (transformers `_get_logits_processor`): repetition penalty (greedy and sampling),
//! then, only when sampling: temperature, top-k, top-p. Then greedy takes the first argmax;
//! sampling draws from softmax(scores) with our own seeded RNG (xoshiro256**), so draws are
//! reproducible but not bit-identical to torch's multinomial.
//!
//! Defaults follow `GenerationConfig`: do_sample false, temperature 1, top_k 50, top_p 1,
//! repetition_penalty 1 (a processor whose value is neutral is skipped, as in transformers).

use crate::util::argmax;
use std::collections::HashSet;

/// Sampling knobs (transformers `GenerationConfig` names and defaults).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    pub do_sample: bool,
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 1.0 disables the penalty.
    pub repetition_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingParams {
    /// The checks transformers' processors make at construction; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty: has to be a strictly positive float, got {}",
                self.repetition_penalty
            ));
        }
        if self.do_sample {
            if self.temperature.is_nan() || self.temperature <= 0.0 {
                return Err(format!(
                    "temperature: has to be a strictly positive float, got {} \
                     (for greedy decoding set do_sample = false)",
                    self.temperature
                ));
            }
            if !(0.0..=1.0).contains(&self.top_p) {
                return Err(format!("top_p: has to be in [0, 1], got {}", self.top_p));
            }
        }
        Ok(())
    }
}

/// `RepetitionPenaltyLogitsProcessor`: every distinct id of `history` (prompt without padding
/// plus generated ids) gets s·penalty if s < 0, else s / penalty — once per id.
pub fn apply_repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = HashSet::new();
    for &id in history {
        let i = id as usize;
        if i < scores.len() && seen.insert(i) {
            let s = scores[i];
            scores[i] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// `TemperatureLogitsWarper`: scores / temperature.
pub fn apply_temperature(scores: &mut [f32], temperature: f32) {
    for s in scores.iter_mut() {
        *s /= temperature;
    }
}

/// `TopKLogitsWarper` (min_tokens_to_keep 1): scores below the k-th largest become -inf
/// (ties with the k-th value are kept).
pub fn apply_top_k(scores: &mut [f32], top_k: usize) {
    let k = top_k.max(1).min(scores.len());
    if k == 0 {
        return;
    }
    let mut sorted: Vec<f32> = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    for s in scores.iter_mut() {
        if *s < kth {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `TopPLogitsWarper` (min_tokens_to_keep 1): sort ascending, cumulative softmax (f32 values,
/// accumulated in f64 like torch's CPU cumsum), drop tokens whose cumulative probability is
/// <= 1 − top_p (compared in f32), always keep the most likely token.
pub fn apply_top_p(scores: &mut [f32], top_p: f32) {
    let n = scores.len();
    if n == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let probs = softmax_f32(scores);
    let threshold = 1.0f32 - top_p;
    let mut cum = 0f64;
    let mut remove = vec![false; n];
    for (rank, &i) in order.iter().enumerate() {
        cum += f64::from(probs[i]);
        remove[i] = (cum as f32) <= threshold && rank + 1 < n;
    }
    for (s, r) in scores.iter_mut().zip(remove) {
        if r {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// f32 softmax (max subtracted, sum in f64).
pub fn softmax_f32(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    }
    let e: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f64 = e.iter().map(|&x| f64::from(x)).sum();
    e.iter().map(|&x| (f64::from(x) / sum) as f32).collect()
}

/// xoshiro256** seeded through splitmix64: small, fast, deterministic across platforms.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut sm = crate::rng::SplitMix64(seed);
        Rng {
            s: [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Chooses next tokens: processes scores, then greedy or seeded sampling.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Sampler {
            params,
            rng: Rng::new(seed),
        }
    }

    /// Applies the processors in transformers' order, in place.
    /// scores: [vocab]; history: the row's prompt (no padding) + generated ids.
    pub fn process(&self, scores: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            apply_repetition_penalty(scores, history, p.repetition_penalty);
        }
        if !p.do_sample {
            return;
        }
        if p.temperature != 1.0 {
            apply_temperature(scores, p.temperature);
        }
        if p.top_k != 0 {
            apply_top_k(scores, p.top_k);
        }
        if p.top_p < 1.0 {
            apply_top_p(scores, p.top_p);
        }
    }

    /// Next token for one row. logits: [vocab] (consumed as scratch).
    pub fn next_token(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.process(logits, history);
        if !self.params.do_sample {
            return argmax(logits);
        }
        let probs = softmax_f32(logits);
        let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
        let u = self.rng.next_f64() * total;
        let mut cum = 0f64;
        let mut last_nonzero = argmax(logits);
        for (i, &p) in probs.iter().enumerate() {
            if p <= 0.0 {
                continue;
            }
            cum += f64::from(p);
            last_nonzero = i as u32;
            if u < cum {
                return i as u32;
            }
        }
        last_nonzero
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn row(v: &Value) -> Vec<f32> {
        v.as_array()
            .expect("row")
            .iter()
            .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |f| f as f32))
            .collect()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let ok = if w.is_infinite() {
                g == w
            } else {
                (g - w).abs() <= 1e-6 + 1e-6 * w.abs()
            };
            assert!(
                ok,
                "{what}: index {i}: got {g} want {w}\n got {got:?}\nwant {want:?}"
            );
        }
        assert_eq!(got.len(), want.len());
    }

    /// Each processor stage against transformers' processors on seeded random logits.
    #[test]
    fn processors_match_transformers() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/eval/logits.json"
        );
        let fx: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
        for (ci, case) in fx["cases"].as_array().expect("cases").iter().enumerate() {
            let cfg = &case["config"];
            let params = SamplingParams {
                do_sample: true,
                temperature: cfg["temperature"].as_f64().expect("t") as f32,
                top_k: cfg["top_k"].as_u64().expect("k") as usize,
                top_p: cfg["top_p"].as_f64().expect("p") as f32,
                repetition_penalty: cfg["repetition_penalty"].as_f64().expect("r") as f32,
            };
            let ids = case["input_ids"].as_array().expect("ids");
            for (b, scores) in case["scores"]
                .as_array()
                .expect("scores")
                .iter()
                .enumerate()
            {
                let hist: Vec<u32> = ids[b]
                    .as_array()
                    .expect("ids row")
                    .iter()
                    .map(|x| x.as_u64().expect("id") as u32)
                    .collect();
                let mut all = row(scores);
                Sampler::new(params.clone(), 0).process(&mut all, &hist);
                if let Some(stages) = case["stages"].as_array() {
                    // Small vocabulary: every stage, then the whole chain.
                    let mut s = row(scores);
                    for stage in stages {
                        let name = stage["name"].as_str().expect("name");
                        match name {
                            "RepetitionPenaltyLogitsProcessor" => {
                                apply_repetition_penalty(&mut s, &hist, params.repetition_penalty)
                            }
                            "TemperatureLogitsWarper" => {
                                apply_temperature(&mut s, params.temperature)
                            }
                            "TopKLogitsWarper" => apply_top_k(&mut s, params.top_k),
                            "TopPLogitsWarper" => apply_top_p(&mut s, params.top_p),
                            other => panic!("unknown stage {other}"),
                        }
                        close(
                            &s,
                            &row(&stage["scores"][b]),
                            &format!("case {ci} row {b} {name}"),
                        );
                    }
                    let last = stages.last().expect("a stage");
                    close(
                        &all,
                        &row(&last["scores"][b]),
                        &format!("case {ci} row {b} chain"),
                    );
                } else {
                    // Large flat vocabulary: the kept set and values after the whole chain.
                    let kept: Vec<usize> = case["kept"][b]
                        .as_array()
                        .expect("kept")
                        .iter()
                        .map(|x| x.as_u64().expect("id") as usize)
                        .collect();
                    let got: Vec<usize> = (0..all.len()).filter(|&i| all[i].is_finite()).collect();
                    assert_eq!(got, kept, "case {ci} row {b}: kept ids differ");
                    let vals: Vec<f32> = kept.iter().map(|&i| all[i]).collect();
                    close(
                        &vals,
                        &row(&case["kept_values"][b]),
                        &format!("case {ci} row {b} values"),
                    );
                }
            }
        }
    }

    #[test]
    fn validation_messages() {
        let bad = SamplingParams {
            do_sample: true,
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "temperature: has to be a strictly positive float, got 0 (for greedy decoding set do_sample = false)"
        );
        // Greedy ignores temperature, like transformers (the warper is not built).
        assert!(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
        .validate()
        .is_ok());
        let bad = SamplingParams {
            do_sample: true,
            top_p: 1.5,
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "top_p: has to be in [0, 1], got 1.5"
        );
        let bad = SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("repetition_penalty:"));
    }

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = vec![0.1f32, 2.0, 2.0, -1.0];
        let mut g = Sampler::new(SamplingParams::default(), 1);
        assert_eq!(g.next_token(&mut logits.clone(), &[]), 1); // first max
                                                               // Penalty 2 on id 1 (positive: halved) moves greedy to id 2.
        let mut p = Sampler::new(
            SamplingParams {
                repetition_penalty: 2.0,
                ..Default::default()
            },
            1,
        );
        assert_eq!(p.next_token(&mut logits.clone(), &[1, 1]), 2);

        let sp = SamplingParams {
            do_sample: true,
            top_k: 0,
            ..Default::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(sp.clone(), seed);
            (0..2000)
                .map(|_| s.next_token(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // Empirical frequencies near softmax (tolerance ~4 sigma for 2000 draws).
        let d = draw(7);
        let probs = softmax_f32(&logits);
        for (i, &p) in probs.iter().enumerate() {
            let f = d.iter().filter(|&&t| t as usize == i).count() as f32 / d.len() as f32;
            assert!((f - p).abs() < 0.045, "token {i}: freq {f} prob {p}");
        }
        // top_k 1 while sampling is greedy.
        let mut k1 = Sampler::new(
            SamplingParams {
                do_sample: true,
                top_k: 1,
                ..Default::default()
            },
            3,
        );
        assert!((0..50).all(|_| k1.next_token(&mut [0.0, 0.5, 3.0, 1.0], &[]) == 2));
    }
}
