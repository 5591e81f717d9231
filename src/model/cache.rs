//! Incremental decoding with a KV cache: `Model::forward_step` runs new tokens against the
//! cached keys/values of everything before them (prefill = the whole prompt as one step).
//! Positions: learned ones follow `Model::forward` (slot index incl. left padding); RoPE and
//! ALiBi count the row's real tokens − 1 (padding 0), as transformers' `generate` does. RoPE
//! only sees relative positions, so a prefill plus steps reproduces the full forward's logits,
//! except under dynamic NTK, whose frequencies change between steps and so need the reference's
//! absolute positions. ChatGLM-6B (v1): the first step must hold each row's `<sop>`; it runs
//! as a full attention with the row's bidirectional prefix, the later ones (all after `<sop>`,
//! so causal) against the cache, with 2D positions from the row's tokens so far.
//! Qwen v1 past `seq_length` (`long_context`): each row keeps the NTK α of
//! its prefill for every step, and the logn factor follows the query's cache slot.

use super::block::{ensure, Acts};
use super::{alibi_slopes, glm_row_positions, Model, ModelError, Positions};
use crate::backend::{AttnDims, AttnMask, Strided, Tensor};

pub struct KvCache {
    pub b: usize,
    /// Capacity in tokens per row.
    pub cap: usize,
    /// Tokens already cached per row.
    pub len: usize,
    /// Per layer [B, cap, KV·HD], on the backend.
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// [B*cap] 1 = real token (host bookkeeping, uploaded per step).
    valid: Vec<u8>,
    /// [B*cap] ALiBi key positions.
    kpos: Vec<f32>,
    /// [B] real tokens so far.
    count: Vec<i64>,
    /// ChatGLM-6B: each row's real tokens so far (its 2D positions depend on them).
    glm_ids: Vec<Vec<u32>>,
    /// [B] Qwen v1 dynamic NTK: each row's α, chosen at the prefill and kept (`long_context`).
    ntk_alpha: Vec<f64>,
}

impl Model {
    /// An empty cache for `b` rows of up to `cap` tokens.
    pub fn new_cache(&self, b: usize, cap: usize) -> KvCache {
        let kd = self.arch.kv_dim();
        let layers = self.layers.len();
        KvCache {
            b,
            cap,
            len: 0,
            k: (0..layers)
                .map(|_| self.backend.zeros(b * cap * kd))
                .collect(),
            v: (0..layers)
                .map(|_| self.backend.zeros(b * cap * kd))
                .collect(),
            valid: vec![0; b * cap],
            kpos: vec![0.0; b * cap],
            count: vec![0; b],
            glm_ids: vec![Vec::new(); b],
            ntk_alpha: vec![1.0; b],
        }
    }

    /// Runs `ids` [B, Tn] (mask [B, Tn], 0 = left padding) after the cached tokens; returns
    /// logits [B, Tn, V] and appends the new keys/values to the cache.
    pub fn forward_step(
        &self,
        cache: &mut KvCache,
        ids: &[u32],
        mask: &[u8],
    ) -> Result<Vec<f32>, ModelError> {
        let y = self.step_hidden(cache, ids, mask)?;
        let n = ids.len();
        let mut logits = self.backend.zeros(n * self.arch.vocab);
        self.head_fwd(&mut logits, &y, n);
        Ok(self.backend.download(&logits))
    }

    /// Like `forward_step` but returns only each row's last-position logits [B, V] (what
    /// sampling needs; a long prefill never holds [B, Tn, V]).
    pub fn forward_step_last(
        &self,
        cache: &mut KvCache,
        ids: &[u32],
        mask: &[u8],
    ) -> Result<Vec<f32>, ModelError> {
        let y = self.step_hidden(cache, ids, mask)?;
        let be = &*self.backend;
        let (b, h) = (cache.b, self.arch.hidden);
        let tn = ids.len() / b;
        let mut last = be.zeros(b * h);
        let row = Strided::rows(tn * h, (tn - 1) * h);
        be.copy2d(&mut last, Strided::rows(h, 0), &y, row, b, h);
        let mut logits = be.zeros(b * self.arch.vocab);
        self.head_fwd(&mut logits, &last, b);
        Ok(be.download(&logits))
    }

    /// Final-norm hidden states [B*Tn, H] of the new tokens; appends their keys/values.
    fn step_hidden(
        &self,
        cache: &mut KvCache,
        ids: &[u32],
        mask: &[u8],
    ) -> Result<Tensor, ModelError> {
        let (b, past) = (cache.b, cache.len);
        if ids.is_empty() || ids.len() % b != 0 || mask.len() != ids.len() {
            return Err(ModelError::Batch(format!(
                "forward_step: ids ({}) and mask ({}) must be B*Tn with B = {b}",
                ids.len(),
                mask.len()
            )));
        }
        let tn = ids.len() / b;
        self.check_length(past + tn, false)?;
        if past + tn > cache.cap {
            return Err(ModelError::Batch(format!(
                "forward_step: cache capacity {} exceeded ({} + {tn})",
                cache.cap, past
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.arch.vocab) {
            return Err(ModelError::Batch(format!(
                "token id {bad} >= vocab size {}",
                self.arch.vocab
            )));
        }
        if let Positions::Learned { max } = self.arch.positions {
            if past + tn > max {
                return Err(ModelError::Batch(format!(
                    "sequence length {} > max positions {max}",
                    past + tn
                )));
            }
        }
        let be = &*self.backend;
        let (h, kd, n) = (self.arch.hidden, self.arch.kv_dim(), b * tn);
        let mut pos = vec![0.0; n];
        let is_rope = matches!(self.arch.positions, Positions::Rope { .. });
        for r in 0..b {
            for i in 0..tn {
                let slot = r * cache.cap + past + i;
                cache.valid[slot] = mask[r * tn + i];
                cache.count[r] += mask[r * tn + i] as i64;
                let counted = (cache.count[r] - 1).max(0) as f32;
                pos[r * tn + i] = if is_rope { counted } else { (past + i) as f32 };
                cache.kpos[slot] = counted * mask[r * tn + i] as f32;
            }
        }
        let glm = self.glm_step_positions(cache, ids, mask, tn)?;
        if let Some((p, _, _)) = &glm {
            pos.clone_from(p);
        }
        let pos_ids = matches!(self.arch.positions, Positions::Learned { .. }).then(|| {
            let ids: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
            be.upload_i32(&ids)
        });
        let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let (mut x, _) = self.embed(&be.upload_i32(&ids), pos_ids.as_ref(), n);
        let alibi = (self.arch.positions == Positions::Alibi).then(|| {
            (
                be.upload(&alibi_slopes(self.arch.heads)),
                be.upload(&cache.kpos),
            )
        });
        let valid = be.upload_u8(&cache.valid);
        let dims = AttnDims {
            b,
            t: tn,
            nh: self.arch.heads,
            nkv: self.arch.kv_heads,
            hd: self.arch.head_dim,
        };
        let seq_len = pos.iter().fold(0.0f32, |a, &p| a.max(p)) as usize + 1;
        let pos_t = be.upload(&pos);
        let mut rope = self
            .rope_freqs(seq_len)
            .map(|f| be.rope_tables(&pos_t, n, &f));
        let rope_local = self
            .rope_local_freqs(seq_len)
            .map(|f| be.rope_tables(&pos_t, n, &f));
        let rope_block = glm.as_ref().and_then(|(_, block, _)| {
            let f = self.rope_freqs(seq_len)?;
            Some(be.rope_tables(&be.upload(block), n, &f))
        });
        // GLM's first step: full attention over the step with each row's bidirectional prefix.
        let prefill = glm.as_ref().map(|(_, _, prefix)| {
            let step_valid: Vec<u8> = mask.to_vec();
            let seg: Vec<i32> = mask.iter().map(|&m| if m == 0 { -1 } else { 0 }).collect();
            (
                be.upload_u8(&step_valid),
                be.upload_i32(&seg),
                be.upload_i32(prefix),
            )
        });
        let mut rope_q = None;
        if let Some(lc) = &self.arch.long_context {
            if past == 0 {
                cache.ntk_alpha = cache
                    .count
                    .iter()
                    .map(|&c| lc.ntk_alpha(c as usize))
                    .collect();
            }
            if let Some((k, q)) = self.long_rope(&pos, b, tn, past, &cache.ntk_alpha) {
                rope = Some(k);
                rope_q = Some(q);
            }
        }
        let mut acts = Acts::default();
        let mut y = be.zeros(n * h);
        for (li, l) in self.layers.iter().enumerate() {
            let (tab, tab_q) = if l.local_rope {
                (&rope_local, None)
            } else {
                (&rope, rope_q.as_ref())
            };
            l.qkv_fwd(
                be,
                &self.arch,
                &mut acts,
                &x,
                tab.as_ref(),
                tab_q,
                rope_block.as_ref(),
                n,
            );
            // new keys/values of row r go to cache slots r·cap + past ..
            for r in 0..b {
                let (dst, src) = (
                    Strided::rows(kd, (r * cache.cap + past) * kd),
                    Strided::rows(kd, r * tn * kd),
                );
                be.copy2d(&mut cache.k[li], dst, &acts.k, src, tn, kd);
                be.copy2d(&mut cache.v[li], dst, &acts.v, src, tn, kd);
            }
            ensure(be, &mut acts.att, n * self.arch.q_dim());
            let scale = self.arch.attn_scale();
            if let (Some((valid, seg, prefix)), 0) = (&prefill, past) {
                let m = AttnMask {
                    valid,
                    segment: seg,
                    alibi: None,
                    alibi_relative: true,
                    window: None,
                    prefix: Some(prefix),
                };
                ensure(be, &mut acts.attn_saved, be.attention_saved_len(dims));
                be.attention_fwd(
                    &mut acts.att,
                    &mut acts.attn_saved,
                    &acts.q,
                    &acts.k,
                    &acts.v,
                    &m,
                    dims,
                    scale,
                );
                l.post_attn_fwd(be, &self.arch, &mut y, &mut acts, &x, n);
                std::mem::swap(&mut x, &mut y);
                continue;
            }
            be.attention_cached_fwd(
                &mut acts.att,
                &acts.q,
                &cache.k[li],
                &cache.v[li],
                &valid,
                alibi.as_ref().map(|(s, p)| (s, p)),
                l.window,
                dims,
                cache.cap,
                past,
                scale,
            );
            l.post_attn_fwd(be, &self.arch, &mut y, &mut acts, &x, n);
            std::mem::swap(&mut x, &mut y);
        }
        self.final_norm
            .forward(be, &mut y, &mut Default::default(), &x, n);
        cache.len += tn;
        Ok(y)
    }

    /// ChatGLM-6B (None for other families): position and block-position ids [B*Tn] of a step's
    /// tokens from each row's tokens so far, and per row the step slot of `<sop>` (the first
    /// step's bidirectional prefix). The first step must contain every row's `<sop>`.
    #[allow(clippy::type_complexity)]
    fn glm_step_positions(
        &self,
        cache: &mut KvCache,
        ids: &[u32],
        mask: &[u8],
        tn: usize,
    ) -> Result<Option<(Vec<f32>, Vec<f32>, Vec<i32>)>, ModelError> {
        let Positions::Glm2d {
            sop,
            gmask,
            mask: m,
            ..
        } = self.arch.positions
        else {
            return Ok(None);
        };
        let b = cache.b;
        let (mut pos, mut block, mut prefix) = (vec![0.0; b * tn], vec![0.0; b * tn], vec![0; b]);
        for r in 0..b {
            let before = cache.glm_ids[r].len();
            let new: Vec<usize> = (0..tn).filter(|&i| mask[r * tn + i] == 1).collect();
            cache.glm_ids[r].extend(new.iter().map(|&i| ids[r * tn + i]));
            let row = glm_row_positions(&cache.glm_ids[r], sop, gmask, m);
            if row.context == cache.glm_ids[r].len() {
                return Err(ModelError::Batch(format!(
                    "ChatGLM-6B (v1) generation needs <sop> (id {sop}) in the first step of every \
                     row: its prompt ends with [gMASK] <sop> (the chatglm template adds them)"
                )));
            }
            for (k, &i) in new.iter().enumerate() {
                pos[r * tn + i] = row.pos[before + k] as f32;
                block[r * tn + i] = row.block[before + k] as f32;
            }
            if before == 0 {
                prefix[r] = new.get(row.context).map_or(tn, |&i| i) as i32;
            }
        }
        Ok(Some((pos, block, prefix)))
    }
}
