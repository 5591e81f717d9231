//! Batched autoregressive generation over any causal LM.
//!
//! The loop: prefill all prompts, then per step choose one token per active row with that
//! row's [`Sampler`], stop a row on a stop id or after `max_new_tokens`, feed the chosen ids
//! back with [`CausalLm::decode`]. Padding, KV caches and attention masks are the model's
//! business; this loop only sees unpadded prompts and last-position logits.

use super::sampling::{Sampler, SamplingParams};

/// A model that can continue a batch of sequences one token at a time.
pub trait CausalLm {
    /// Size of the logits vectors.
    fn vocab(&self) -> usize;
    /// Starts a new batch. `batch_ids[r]` is row r's prompt (unpadded; rows may differ in
    /// length, the implementer pads, e.g. on the left). Returns each row's logits at its last
    /// prompt token: rows × [vocab].
    fn prefill(&mut self, batch_ids: &[Vec<u32>]) -> anyhow::Result<Vec<Vec<f32>>>;
    /// Appends `next[r]` to every row and returns the logits after it: rows × [vocab].
    /// Rows with `active[r] == false` have finished: their `next` is a repeat of their last
    /// token and their logits are ignored (an implementer may skip their compute).
    fn decode(&mut self, next: &[u32], active: &[bool]) -> anyhow::Result<Vec<Vec<f32>>>;
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenConfig {
    pub max_new_tokens: usize,
    /// Generation stops on any of these ids (ChatGLM3: [2, 64795, 64797]).
    pub stop_ids: Vec<u32>,
    #[serde(flatten)]
    pub sampling: SamplingParams,
    /// Row r samples with seed `seed + r` (rows independent of each other's draws).
    pub seed: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            max_new_tokens: 128,
            stop_ids: Vec::new(),
            sampling: SamplingParams::default(),
            seed: 42,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FinishReason {
    /// Chose this stop id (not included in `tokens`).
    Stop(u32),
    /// Reached `max_new_tokens`.
    Length,
}

/// One row's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generation {
    /// Generated ids, without the prompt and without the stop id.
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// Generates continuations for every prompt as one batch. `on_token(row, id)` is called for
/// each generated id as soon as it is chosen (stop ids excluded), for streaming.
pub fn generate<M: CausalLm + ?Sized>(
    model: &mut M,
    prompts: &[Vec<u32>],
    cfg: &GenConfig,
    mut on_token: impl FnMut(usize, u32),
) -> anyhow::Result<Vec<Generation>> {
    cfg.sampling
        .validate()
        .map_err(|e| anyhow::anyhow!("generation config: {e}"))?;
    let rows = prompts.len();
    let mut out: Vec<Generation> = (0..rows)
        .map(|_| Generation {
            tokens: Vec::new(),
            finish: FinishReason::Length,
        })
        .collect();
    if rows == 0 || cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let vocab = model.vocab();
    let mut samplers: Vec<Sampler> = (0..rows)
        .map(|r| Sampler::new(cfg.sampling.clone(), cfg.seed.wrapping_add(r as u64)))
        .collect();
    // Repetition penalty history per row: prompt + generated.
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut active = vec![true; rows];
    let mut last: Vec<u32> = prompts
        .iter()
        .map(|p| p.last().copied().unwrap_or(0))
        .collect();

    let mut logits = model.prefill(prompts)?;
    for step in 0..cfg.max_new_tokens {
        anyhow::ensure!(
            logits.len() == rows,
            "model returned logits for {} rows, expected {rows}",
            logits.len()
        );
        for r in 0..rows {
            if !active[r] {
                continue;
            }
            let l = &mut logits[r];
            anyhow::ensure!(
                l.len() == vocab,
                "row {r}: logits have {} entries, vocab is {vocab}",
                l.len()
            );
            let id = samplers[r].next_token(l, &history[r]);
            if cfg.stop_ids.contains(&id) {
                out[r].finish = FinishReason::Stop(id);
                active[r] = false;
                continue;
            }
            last[r] = id;
            history[r].push(id);
            out[r].tokens.push(id);
            on_token(r, id);
        }
        if step + 1 == cfg.max_new_tokens || !active.iter().any(|&a| a) {
            break;
        }
        logits = model.decode(&last, &active)?;
    }
    Ok(out)
}

/// A left-padded batch, as transformers feeds decoder-only models in `generate`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftPadded {
    /// rows × len, row-major; padding first.
    pub ids: Vec<u32>,
    /// rows × len; 0 on padding, 1 on tokens.
    pub attention_mask: Vec<u8>,
    /// rows × len; `cumsum(mask) − 1`, and 1 on padding (transformers' `prepare_inputs_for_generation`).
    pub position_ids: Vec<u32>,
    pub rows: usize,
    pub len: usize,
}

/// Left-pads `rows` to the longest with `pad_id` (a helper for [`CausalLm`] implementers).
pub fn left_pad(rows: &[Vec<u32>], pad_id: u32) -> LeftPadded {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let n = rows.len() * len;
    let (mut ids, mut attention_mask, mut position_ids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in rows {
        let pad = len - r.len();
        ids.extend(std::iter::repeat_n(pad_id, pad).chain(r.iter().copied()));
        attention_mask.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1, r.len())));
        position_ids.extend(std::iter::repeat_n(1u32, pad).chain(0..r.len() as u32));
    }
    LeftPadded {
        ids,
        attention_mask,
        position_ids,
        rows: rows.len(),
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bigram LM: logits depend only on the previous token; logits[prev][next] from a table.
    /// Records what it was fed so the test can check the loop's protocol.
    struct Bigram {
        table: Vec<Vec<f32>>,
        last: Vec<u32>,
        decode_calls: usize,
    }

    impl Bigram {
        /// next = (prev * 3 + 1) % vocab is the favourite (logit 5), others small and distinct.
        fn new(vocab: usize) -> Self {
            let table = (0..vocab)
                .map(|p| {
                    (0..vocab)
                        .map(|n| {
                            if n == (p * 3 + 1) % vocab {
                                5.0
                            } else {
                                (n as f32) * 0.01
                            }
                        })
                        .collect()
                })
                .collect();
            Bigram {
                table,
                last: Vec::new(),
                decode_calls: 0,
            }
        }
    }

    impl CausalLm for Bigram {
        fn vocab(&self) -> usize {
            self.table.len()
        }
        fn prefill(&mut self, batch_ids: &[Vec<u32>]) -> anyhow::Result<Vec<Vec<f32>>> {
            self.last = batch_ids
                .iter()
                .map(|p| *p.last().expect("non-empty prompt"))
                .collect();
            Ok(self
                .last
                .iter()
                .map(|&t| self.table[t as usize].clone())
                .collect())
        }
        fn decode(&mut self, next: &[u32], active: &[bool]) -> anyhow::Result<Vec<Vec<f32>>> {
            self.decode_calls += 1;
            for (r, &t) in next.iter().enumerate() {
                if active[r] {
                    self.last[r] = t;
                } else {
                    assert_eq!(self.last[r], t, "finished rows repeat their last token");
                }
            }
            Ok(self
                .last
                .iter()
                .map(|&t| self.table[t as usize].clone())
                .collect())
        }
    }

    #[test]
    fn greedy_stop_and_ragged_batch() {
        // vocab 10: chain from 2: 7, 2, 7, ...; from 1: 4, 3, 0, 1, 4 ...; from 5: 6, 9, 8, 5
        let mut m = Bigram::new(10);
        let cfg = GenConfig {
            max_new_tokens: 6,
            stop_ids: vec![0],
            ..Default::default()
        };
        let prompts = vec![vec![9, 9, 2], vec![1], vec![3, 5]];
        let mut streamed = Vec::new();
        let out = generate(&mut m, &prompts, &cfg, |r, t| streamed.push((r, t))).expect("gen");
        assert_eq!(out[0].tokens, [7, 2, 7, 2, 7, 2]);
        assert_eq!(out[0].finish, FinishReason::Length);
        assert_eq!(out[1].tokens, [4, 3]);
        assert_eq!(out[1].finish, FinishReason::Stop(0));
        assert_eq!(out[2].tokens, [6, 9, 8, 5, 6, 9]);
        // Streaming order: per step, rows in order.
        assert_eq!(
            &streamed[..6],
            &[(0, 7), (1, 4), (2, 6), (0, 2), (1, 3), (2, 9)]
        );
        assert_eq!(streamed.len(), 6 + 2 + 6);
        // prefill gives step 1; decode is called for steps 2..=6.
        assert_eq!(m.decode_calls, 5);
    }

    #[test]
    fn all_rows_stopping_ends_early() {
        let mut m = Bigram::new(10);
        let cfg = GenConfig {
            max_new_tokens: 50,
            stop_ids: vec![3, 7],
            ..Default::default()
        };
        let out = generate(&mut m, &[vec![2], vec![1]], &cfg, |_, _| {}).expect("gen");
        assert_eq!(
            out[0],
            Generation {
                tokens: vec![],
                finish: FinishReason::Stop(7)
            }
        );
        assert_eq!(
            out[1],
            Generation {
                tokens: vec![4],
                finish: FinishReason::Stop(3)
            }
        );
        assert_eq!(m.decode_calls, 1);
        let none = generate(
            &mut m,
            &[vec![2]],
            &GenConfig {
                max_new_tokens: 0,
                ..cfg
            },
            |_, _| {},
        );
        assert_eq!(none.expect("gen")[0].tokens, Vec::<u32>::new());
    }

    #[test]
    fn repetition_penalty_sees_prompt_and_output() {
        // From 2 the favourite is 7 (logit 5); penalty 100 on 7 (in the prompt) => 5/100 = 0.05
        // loses to token 9 (0.09).
        let mut m = Bigram::new(10);
        let cfg = GenConfig {
            max_new_tokens: 1,
            sampling: SamplingParams {
                repetition_penalty: 100.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let out = generate(&mut m, &[vec![7, 2]], &cfg, |_, _| {}).expect("gen");
        assert_eq!(out[0].tokens, [9]);
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let mut m = Bigram::new(16);
        // Flatten the table so sampling has real choices.
        for row in &mut m.table {
            for (n, v) in row.iter_mut().enumerate() {
                *v = ((n * 7) % 5) as f32 * 0.3;
            }
        }
        let cfg = GenConfig {
            max_new_tokens: 20,
            sampling: SamplingParams {
                do_sample: true,
                temperature: 0.9,
                top_k: 8,
                top_p: 0.95,
                ..Default::default()
            },
            seed: 11,
            ..Default::default()
        };
        let prompts = vec![vec![1, 2], vec![3], vec![4, 5, 6]];
        let a = generate(&mut m, &prompts, &cfg, |_, _| {}).expect("gen");
        let b = generate(&mut m, &prompts, &cfg, |_, _| {}).expect("gen");
        assert_eq!(a, b);
        // Row r's draws do not depend on the other rows: row 0 alone gives the same tokens.
        let alone = generate(&mut m, &prompts[..1], &cfg, |_, _| {}).expect("gen");
        assert_eq!(alone[0], a[0]);
        let c = generate(
            &mut m,
            &prompts,
            &GenConfig {
                seed: 12,
                ..cfg.clone()
            },
            |_, _| {},
        )
        .expect("gen");
        assert_ne!(a, c);
        // top-k 8: the 8th largest logit is 0.6, ties kept => only logits >= 0.6 (9 ids) appear.
        let allowed: Vec<u32> = (0..16u32).filter(|n| (n * 7) % 5 >= 2).collect();
        assert!(
            a.iter()
                .flat_map(|g| &g.tokens)
                .all(|t| allowed.contains(t)),
            "{a:?}"
        );
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn left_padding_layout() {
        let b = left_pad(&[vec![5, 6, 7], vec![9]], 0);
        assert_eq!((b.rows, b.len), (2, 3));
        assert_eq!(b.ids, [5, 6, 7, 0, 0, 9]);
        assert_eq!(b.attention_mask, [1, 1, 1, 0, 0, 1]);
        assert_eq!(b.position_ids, [0, 1, 2, 1, 1, 0]);
    }

    #[test]
    fn invalid_sampling_is_an_error() {
        struct Never;
        impl CausalLm for Never {
            fn vocab(&self) -> usize {
                1
            }
            fn prefill(&mut self, _: &[Vec<u32>]) -> anyhow::Result<Vec<Vec<f32>>> {
                unreachable!("validation happens first")
            }
            fn decode(&mut self, _: &[u32], _: &[bool]) -> anyhow::Result<Vec<Vec<f32>>> {
                unreachable!("validation happens first")
            }
        }
        let cfg = GenConfig {
            sampling: SamplingParams {
                do_sample: true,
                top_p: 2.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = generate(&mut Never, &[vec![0]], &cfg, |_, _| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "generation config: top_p: has to be in [0, 1], got 2"
        );
    }

    #[test]
    fn gen_config_from_json() {
        let c: GenConfig = serde_json::from_str(
            r#"{"max_new_tokens": 5, "do_sample": true, "top_p": 0.9, "stop_ids": [2]}"#,
        )
        .expect("parse");
        assert_eq!(c.max_new_tokens, 5);
        assert!(c.sampling.do_sample);
        assert_eq!(c.sampling.top_p, 0.9);
        assert_eq!(c.sampling.top_k, 50);
        assert_eq!(c.stop_ids, [2]);
        let e = serde_json::from_str::<GenConfig>(r#"{"top_q": 1}"#);
        assert!(e.is_err(), "unknown keys are rejected");
    }
}
