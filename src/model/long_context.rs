//! Qwen v1 past `seq_length` in eval mode (`Arch::long_context`, modeling_qwen.py): the rotary
//! tables of a forward when a row's dynamic-NTK base differs from the plain one or a query's
//! logn factor differs from 1.
//!
//! Each row r gets its own base, base·α_r^(d/(d−2)) (`LongContext::ntk_alpha` of the row's real
//! tokens): in a full forward from its length; with the KV cache from its length at the prefill,
//! kept for every later step, so cached keys keep the rotation they were stored with (Qwen's
//! `_ntk_alpha_cached_list`). The logn factor of the query at slot i multiplies the query's
//! cos/sin, which equals scaling the rotated query when RoPE covers the whole head
//! (`rotary_pct` 1, every released Qwen v1; a partial rotary past `seq_length` is refused by
//! `Model::check_length`). Training never comes here: Qwen v1 applies neither in train mode.

use super::{Model, ModelError, Positions};
use crate::backend::RopeTables;

impl Model {
    /// Errors on what this engine does not follow past Qwen v1's `seq_length`: logn attention
    /// with a partial rotary (`rotary_pct` < 1), whose unrotated query dims it would not scale.
    pub(crate) fn check_length(&self, len: usize, training: bool) -> Result<(), ModelError> {
        let Some(lc) = &self.arch.long_context else {
            return Ok(());
        };
        let partial = match self.arch.positions {
            Positions::Rope { rot_dim, .. } => rot_dim < self.arch.head_dim,
            _ => false,
        };
        if !training && lc.logn && partial && len > lc.len {
            return Err(ModelError::Batch(format!(
                "sequence length {len} > seq_length {} with use_logn_attn and rotary_pct < 1 in \
                 config.json: logn attention over a partial rotary is not supported; use \
                 max_length <= {}",
                lc.len, lc.len
            )));
        }
        Ok(())
    }

    /// Key and query rotary tables for `rows` rows of `tn` tokens at positions `pos` [rows·tn],
    /// the first token of each row at slot `slot0` (0, or the cached length), rows with `alpha`
    /// [rows]; None when nothing differs from the plain tables (every α = 1, every factor 1), or
    /// without `long_context`.
    pub(crate) fn long_rope(
        &self,
        pos: &[f32],
        rows: usize,
        tn: usize,
        slot0: usize,
        alpha: &[f64],
    ) -> Option<(RopeTables, RopeTables)> {
        let lc = self.arch.long_context.as_ref()?;
        let Positions::Rope { rot_dim, base, .. } = self.arch.positions else {
            return None;
        };
        let logn: Vec<f32> = (0..tn).map(|i| lc.logn(slot0 + i)).collect();
        if alpha.iter().all(|&a| a == 1.0) && logn.iter().all(|&f| f == 1.0) {
            return None;
        }
        let half = rot_dim / 2;
        let n = rows * tn;
        let (mut kc, mut ks) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        let (mut qc, mut qs) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for (r, &a) in alpha.iter().enumerate().take(rows) {
            // RotaryEmbedding: base = self.base * ntk_alpha ** (dim / (dim - 2)) in Python
            // floats, then θ_i in f32 as for any RoPE.
            let d = rot_dim as f64;
            let b = (base as f64 * a.powf(d / (d - 2.0))) as f32;
            let inv = crate::backend::cpu::inv_freq(rot_dim, b);
            for (i, &f) in logn.iter().enumerate() {
                for th in &inv {
                    // As `Backend::rope_tables`: the angle and its cos/sin in f32.
                    let ang = pos[r * tn + i] * th;
                    let (c, s) = (ang.cos(), ang.sin());
                    kc.push(c);
                    ks.push(s);
                    qc.push(c * f);
                    qs.push(s * f);
                }
            }
        }
        let be = &*self.backend;
        let tables = |c: &[f32], s: &[f32]| RopeTables {
            cos: be.upload(c),
            sin: be.upload(s),
            index: be.upload_i32(&(0..n as i32).collect::<Vec<_>>()),
            half,
        };
        Some((tables(&kc, &ks), tables(&qc, &qs)))
    }
}

/// Real tokens of each of `rows` rows of `t` slots in `mask`.
pub(crate) fn row_counts(mask: &[u8], rows: usize, t: usize) -> Vec<usize> {
    (0..rows)
        .map(|r| mask[r * t..(r + 1) * t].iter().filter(|&&m| m != 0).count())
        .collect()
}
