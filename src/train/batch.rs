//! Examples -> micro-batches: epoch order (seeded shuffle or
//! length-grouped), and collation with padding into the engine's
//! [`Batch`] (the one batch type the model, the trainer and the evaluator share).

use super::rng::Rng;
pub use crate::model::Batch;

/// One tokenized example as the trainer sees it.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub input_ids: Vec<u32>,
    /// -100 = not trained.
    pub labels: Vec<i32>,
    /// Packed sequences: example index of each token (positions restart and
    /// attention stays inside an example). Empty when not packed.
    pub segments: Vec<u32>,
}

/// Where the trainer reads examples from (the token dataset file).
pub trait Samples: Sync {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> Sample;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Length of example i (for group_by_length) without building it.
    fn length(&self, i: usize) -> usize {
        self.get(i).input_ids.len()
    }
}

impl Samples for Vec<Sample> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn get(&self, i: usize) -> Sample {
        self[i].clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadSide {
    Left,
    Right,
}

/// Pad samples to the longest one with `pad_id` (labels -100, mask 0).
pub fn collate(samples: &[Sample], pad_id: u32, side: PadSide) -> Batch {
    let b = samples.len();
    let t = samples
        .iter()
        .map(|s| s.input_ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let packed = samples.iter().any(|s| !s.segments.is_empty());
    let mut input_ids = vec![pad_id; b * t];
    let mut labels = vec![-100i64; b * t];
    let mut attention_mask = vec![0; b * t];
    let mut segments = packed.then(|| vec![u32::MAX; b * t]);
    for (r, s) in samples.iter().enumerate() {
        let n = s.input_ids.len();
        let off = match side {
            PadSide::Left => r * t + (t - n),
            PadSide::Right => r * t,
        };
        input_ids[off..off + n].copy_from_slice(&s.input_ids);
        for (l, &x) in labels[off..off + n].iter_mut().zip(&s.labels) {
            *l = i64::from(x);
        }
        attention_mask[off..off + n].fill(1);
        if let (Some(seg), false) = (&mut segments, s.segments.is_empty()) {
            seg[off..off + n].copy_from_slice(&s.segments);
        }
    }
    Batch {
        b,
        t,
        input_ids,
        attention_mask,
        labels: Some(labels),
        segments,
    }
}

/// The order of examples in `epoch`: a seeded shuffle, or with
/// `group_by_length` megabatches of 50 batches sorted by length (longest
/// first) as transformers' LengthGroupedSampler does.
pub fn epoch_order(
    data: &dyn Samples,
    seed: u64,
    epoch: u64,
    batch: usize,
    group_by_length: bool,
) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..data.len()).collect();
    Rng::derive(seed, &[1, epoch]).shuffle(&mut idx);
    if group_by_length {
        let mega = (batch * 50).max(1);
        for chunk in idx.chunks_mut(mega) {
            chunk.sort_by_key(|&i| std::cmp::Reverse(data.length(i)));
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_pads_both_sides() {
        let s = vec![
            Sample {
                input_ids: vec![5, 6, 7],
                labels: vec![-100, 6, 7],
                segments: vec![],
            },
            Sample {
                input_ids: vec![8],
                labels: vec![8],
                segments: vec![],
            },
        ];
        let r = collate(&s, 0, PadSide::Right);
        assert_eq!(r.input_ids, [5, 6, 7, 8, 0, 0]);
        assert_eq!(r.labels, Some(vec![-100, 6, 7, 8, -100, -100]));
        assert_eq!(r.attention_mask, [1, 1, 1, 1, 0, 0]);
        let l = collate(&s, 0, PadSide::Left);
        assert_eq!(l.input_ids, [5, 6, 7, 0, 0, 8]);
        assert_eq!(l.labels, Some(vec![-100, 6, 7, -100, -100, 8]));
        assert_eq!(r.trained_tokens(), 2);
    }

    #[test]
    fn order_is_a_seeded_permutation() {
        let data: Vec<Sample> = (0..10)
            .map(|i| Sample {
                input_ids: vec![1; i + 1],
                labels: vec![1; i + 1],
                segments: vec![],
            })
            .collect();
        let a = epoch_order(&data, 7, 0, 2, false);
        assert_eq!(a, epoch_order(&data, 7, 0, 2, false));
        assert_ne!(a, epoch_order(&data, 7, 1, 2, false));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
        let g = epoch_order(&data, 7, 0, 2, true);
        assert!(g
            .windows(2)
            .all(|w| data[w[0]].input_ids.len() >= data[w[1]].input_ids.len()));
    }
}
