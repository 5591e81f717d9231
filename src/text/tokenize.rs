//! Examples -> token rows with labels, and the token-dataset file.
//!
//! Per example: render segments (`template.rs`), choose what is trained
//! (`TrainOn`), encode (segment by segment; or the whole string once with
//! offsets for Jinja-like templates), prepend the tokenizer's prefix (bos)
//! for templates whose seed code called `tokenizer(prompt)`, append the end
//! token (eos; the pad token for `raft_label`), make labels (`MaskRule`),
//! truncate, then pad (left/right) or pack several examples into a row.
//!
//! Lengths: `max_length` caps a row; without it `max_input_length +
//! max_output_length` gives the cap as the seeds do: ChatGLM3's
//! finetune_demo uses in + out + 1; the ChatGLM-6B v1 template truncates the
//! prompt to in - 1 and the answer to out - 2 tokens (cap in + out).

use super::dataset::{TokenDatasetWriter, TokenRow, IGNORE};
use super::segment::{Piece, Segment};
use super::template::{Builtin, EndToken, MaskRule, Rendered, Renderer, Template};
use super::tokenizer::{PaddingSide, TokenizerBundle};
use crate::data::example::{Example, Role};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which segments are trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// What the template marks trainable: every reply (for chatglm3 also
    /// observation turns, as finetune_demo does).
    #[default]
    Completion,
    /// Only assistant-role segments of what the template marks.
    Assistant,
    /// Only the last assistant reply.
    LastAssistant,
    /// Every token (plain language modelling).
    All,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnEmpty {
    /// An example with no trained token is an error naming its source.
    #[default]
    Error,
    /// Drop it (counted in the stats).
    Skip,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizeOptions {
    pub train_on: TrainOn,
    /// None: the template's rule (shifted for chatglm3).
    pub mask_rule: Option<MaskRule>,
    /// None: the template's default (eos for most built-ins, the pad token
    /// for raft_label, nothing for chat templates that write their own).
    pub add_eos: Option<bool>,
    /// Prepend the tokenizer's special prefix (bos). None: the template's
    /// default.
    pub add_prefix: Option<bool>,
    pub max_length: Option<usize>,
    pub max_input_length: Option<usize>,
    pub max_output_length: Option<usize>,
    /// Pad every row to the length cap (else rows keep their length and
    /// the trainer pads per batch).
    pub pad_to_max_length: bool,
    /// None: the tokenizer's padding_side.
    pub padding_side: Option<PaddingSide>,
    /// Overrides the tokenizer's pad token (e.g. "</s>" when it has none).
    pub pad_token: Option<String>,
    /// Pack several examples into rows of the length cap.
    pub packing: bool,
    pub on_empty: OnEmpty,
}

impl TokenizeOptions {
    /// Option combinations that cannot work, as messages.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_input_length.is_some() != self.max_output_length.is_some() {
            p.push("max_input_length and max_output_length go together".to_string());
        }
        if (self.pad_to_max_length || self.packing)
            && self.max_length.is_none()
            && self.max_input_length.is_none()
        {
            p.push("pad_to_max_length and packing need max_length".to_string());
        }
        if self.max_length == Some(0) {
            p.push("max_length must be at least 1".to_string());
        }
        p
    }

    /// The row length cap for this template.
    pub fn length_cap(&self, template: &Template) -> Option<usize> {
        if let Some(m) = self.max_length {
            return Some(m);
        }
        let (i, o) = (self.max_input_length?, self.max_output_length?);
        Some(if matches!(template, Template::Builtin(Builtin::ChatGlm)) {
            i + o
        } else {
            i + o + 1
        })
    }
}

/// One tokenized example before padding/packing.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
    pub truncated: bool,
    /// The appended end token was cut off by truncation.
    pub end_truncated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TokenizeStats {
    pub examples: usize,
    pub rows: usize,
    pub skipped_empty: usize,
    /// Sources of the first skipped examples (up to 10).
    pub skipped_sources: Vec<String>,
    /// Real (non-pad) tokens.
    pub tokens: usize,
    pub pad_tokens: usize,
    pub trained_tokens: usize,
    pub truncated: usize,
    /// Examples whose end token (eos) was cut off by truncation.
    pub eos_truncated: usize,
    pub min_len: usize,
    pub max_len: usize,
    /// (upper bound, count) per power-of-two bucket of example lengths.
    pub length_histogram: Vec<(usize, usize)>,
    pub warnings: Vec<String>,
}

impl TokenizeStats {
    pub fn trained_share(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.trained_tokens as f64 / self.tokens as f64
        }
    }

    fn add_length(&mut self, n: usize) {
        let first = self.length_histogram.is_empty();
        let ub = n.max(1).next_power_of_two();
        match self.length_histogram.iter_mut().find(|(b, _)| *b == ub) {
            Some((_, c)) => *c += 1,
            None => {
                self.length_histogram.push((ub, 1));
                self.length_histogram.sort();
            }
        }
        self.min_len = if first { n } else { self.min_len.min(n) };
        self.max_len = self.max_len.max(n);
    }

    /// A few human-readable lines.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} examples -> {} rows, {} tokens ({:.1}% trained), {} pad, lengths {}..{}",
            self.examples,
            self.rows,
            self.tokens,
            100.0 * self.trained_share(),
            self.pad_tokens,
            self.min_len,
            self.max_len
        );
        if self.truncated > 0 {
            s += &format!(", {} truncated", self.truncated);
        }
        if self.skipped_empty > 0 {
            s += &format!(", {} skipped (nothing to train)", self.skipped_empty);
        }
        s.push('\n');
        for (ub, c) in &self.length_histogram {
            s += &format!("  <= {ub:>6}: {c}\n");
        }
        for w in &self.warnings {
            s += &format!("warning: {w}\n");
        }
        s
    }
}

/// Applies `train_on` to the template's flags.
pub fn apply_train_on(segs: &mut [Segment], train_on: TrainOn) {
    match train_on {
        TrainOn::Completion => {}
        TrainOn::Assistant => segs
            .iter_mut()
            .for_each(|s| s.trainable = s.trainable && s.role == Role::Assistant),
        TrainOn::All => segs.iter_mut().for_each(|s| s.trainable = true),
        TrainOn::LastAssistant => {
            // The last run of trainable assistant segments.
            let Some(end) = segs
                .iter()
                .rposition(|s| s.trainable && s.role == Role::Assistant)
            else {
                return;
            };
            let mut start = end;
            while start > 0 && segs[start - 1].trainable && segs[start - 1].role == Role::Assistant
            {
                start -= 1;
            }
            for (i, s) in segs.iter_mut().enumerate() {
                s.trainable = s.trainable && i >= start && i <= end;
            }
        }
    }
}

fn where_(ex: &Example) -> String {
    if ex.source.is_empty() {
        "example".into()
    } else {
        ex.source.clone()
    }
}

/// Token ids of segments, and whether each token is trainable (before the
/// mask rule). `whole_string`: the concatenated text is encoded once and
/// a token belongs to the segment holding its first byte.
fn encode_segments(
    rendered: &Rendered,
    template: &Template,
    bundle: &TokenizerBundle,
    ex: &Example,
    opts: &TokenizeOptions,
) -> Result<(Vec<u32>, Vec<bool>)> {
    let (segs, whole_string) = (&rendered.segments, rendered.whole_string);
    let mut ids: Vec<u32> = Vec::new();
    let mut mask: Vec<bool> = Vec::new();
    if opts.add_prefix.unwrap_or(template.adds_prefix()) {
        ids.extend(&bundle.prefix_ids);
        mask.extend(bundle.prefix_ids.iter().map(|_| false));
    }
    if whole_string {
        let mut full = String::new();
        let mut edges = Vec::with_capacity(segs.len()); // (end byte, trainable)
        for s in segs {
            match &s.piece {
                Piece::Text(t) | Piece::Special(t) => full.push_str(t),
            }
            edges.push((full.len(), s.trainable));
        }
        let (tids, offs) = bundle
            .encode_with_offsets(&full)
            .with_context(|| where_(ex))?;
        let mut k = 0;
        for (id, (start, _)) in tids.into_iter().zip(offs) {
            while k + 1 < edges.len() && start >= edges[k].0 {
                k += 1;
            }
            ids.push(id);
            mask.push(edges.get(k).is_some_and(|e| e.1));
        }
    } else {
        let glm1 = matches!(template, Template::Builtin(Builtin::ChatGlm));
        for (k, s) in segs.iter().enumerate() {
            let mut t = match &s.piece {
                Piece::Special(c) => vec![bundle
                    .special_id(c)
                    .with_context(|| format!("{}: template {}", where_(ex), template.name()))?],
                Piece::Text(x) => bundle.encode(x).with_context(|| where_(ex))?,
            };
            if glm1 && opts.max_length.is_none() {
                if let (Some(i), Some(o)) = (opts.max_input_length, opts.max_output_length) {
                    match k {
                        0 => t.truncate(i.saturating_sub(1)),
                        3 => t.truncate(o.saturating_sub(2)),
                        _ => {}
                    }
                }
            }
            mask.extend(t.iter().map(|_| s.trainable));
            ids.extend(t);
        }
    }

    Ok((ids, mask))
}

/// The prompt of `ex` for generation (everything before the last
/// assistant reply, plus the template's generation prompt) and that reply
/// as the reference, if the example ends with one. Built as training
/// encodes it, so prompt ids equal the start of the training row (for
/// Jinja templates: transformers' add_generation_prompt=True).
pub fn prompt_ids(
    renderer: &Renderer,
    bundle: &TokenizerBundle,
    ex: &Example,
    opts: &TokenizeOptions,
) -> Result<(Vec<u32>, Option<String>)> {
    let (rendered, reference) = renderer.render_prompt(ex)?;
    let (ids, _) = encode_segments(&rendered, &renderer.template, bundle, ex, opts)?;
    Ok((ids, reference))
}

/// Tokenizes one example. `Ok(None)`: nothing to train and `on_empty = skip`.
pub fn tokenize_example(
    renderer: &Renderer,
    bundle: &TokenizerBundle,
    ex: &Example,
    opts: &TokenizeOptions,
) -> Result<Option<Encoded>> {
    let template = &renderer.template;
    let mut rendered = renderer.render(ex)?;
    apply_train_on(&mut rendered.segments, opts.train_on);
    let rule = opts.mask_rule.unwrap_or(template.mask_rule());
    let (mut ids, mut mask) = encode_segments(&rendered, template, bundle, ex, opts)?;

    let end = match (opts.add_eos, template.default_end()) {
        (Some(false), _) => EndToken::None,
        (Some(true), EndToken::Pad) => EndToken::Pad,
        (Some(true), _) => EndToken::Eos,
        (None, d) => d,
    };
    let end_id = match end {
        EndToken::None => None,
        EndToken::Eos => Some(bundle.eos_id.with_context(|| {
            format!(
                "{}: the tokenizer has no eos token to append",
                bundle.dir.display()
            )
        })?),
        EndToken::Pad => Some(pad_id(bundle, opts)?),
    };
    if let Some(e) = end_id {
        let t = rule == MaskRule::Direct && mask.last().copied().unwrap_or(false);
        ids.push(e);
        mask.push(t);
    }
    let mut labels: Vec<i32> = match rule {
        MaskRule::Direct => ids
            .iter()
            .zip(&mask)
            .map(|(&i, &m)| if m { i as i32 } else { IGNORE })
            .collect(),
        MaskRule::Shifted => (0..ids.len())
            .map(|i| {
                if i > 0 && mask[i - 1] {
                    ids[i] as i32
                } else {
                    IGNORE
                }
            })
            .collect(),
    };
    let mut truncated = false;
    let mut end_truncated = false;
    if let Some(cap) = opts.length_cap(template) {
        if ids.len() > cap {
            truncated = true;
            end_truncated = end_id.is_some();
            ids.truncate(cap);
            labels.truncate(cap);
        }
    }
    if labels.iter().all(|&l| l == IGNORE) {
        if opts.on_empty == OnEmpty::Skip {
            return Ok(None);
        }
        bail!(
            "{}: no trained tokens after templating{} (template {}, train_on {:?}); set on_empty = \"skip\" to drop such examples",
            where_(ex),
            if truncated { " and truncation" } else { "" },
            template.name(),
            opts.train_on
        );
    }
    Ok(Some(Encoded {
        input_ids: ids,
        labels,
        truncated,
        end_truncated,
    }))
}

fn pad_id(bundle: &TokenizerBundle, opts: &TokenizeOptions) -> Result<u32> {
    match &opts.pad_token {
        Some(t) => bundle.special_id(t),
        None => bundle.pad_id.with_context(|| {
            format!(
                "{}: the tokenizer has no pad token; set pad_token (e.g. to the eos token)",
                bundle.dir.display()
            )
        }),
    }
}

/// Pads `row` to `len` on `side` (labels -100, attention 0).
fn pad_row(row: &mut TokenRow, len: usize, side: PaddingSide, pad: u32) {
    let n = len.saturating_sub(row.input_ids.len());
    if n == 0 {
        return;
    }
    match side {
        PaddingSide::Right => {
            row.input_ids.extend(std::iter::repeat_n(pad, n));
            row.labels.extend(std::iter::repeat_n(IGNORE, n));
            row.attention_mask.extend(std::iter::repeat_n(0, n));
        }
        PaddingSide::Left => {
            row.input_ids.splice(0..0, std::iter::repeat_n(pad, n));
            row.labels.splice(0..0, std::iter::repeat_n(IGNORE, n));
            row.attention_mask.splice(0..0, std::iter::repeat_n(0, n));
            row.boundaries.iter_mut().for_each(|b| *b += n as u32);
        }
    }
}

/// Examples encoded per parallel batch; small enough to bound the memory
/// of a batch's rendered text, large enough to keep every thread busy.
const BATCH: usize = 4096;

/// Tokenizes all examples into rows (padded / packed per `opts`).
///
/// Examples are encoded in parallel (rayon, per batch of `BATCH`) and
/// consumed in order, so rows, stats and the first error are those of a
/// sequential loop.
pub fn tokenize_rows(
    examples: impl IntoIterator<Item = Example>,
    renderer: &Renderer,
    bundle: &TokenizerBundle,
    opts: &TokenizeOptions,
) -> Result<(TokenDatasetWriter, TokenizeStats)> {
    tokenize_rows_in(examples, renderer, bundle, opts, BATCH, true)
}

/// `tokenize_rows` with batches of `batch` examples, encoded on the rayon
/// pool (`parallel`) or on this thread.
fn tokenize_rows_in(
    examples: impl IntoIterator<Item = Example>,
    renderer: &Renderer,
    bundle: &TokenizerBundle,
    opts: &TokenizeOptions,
    batch: usize,
    parallel: bool,
) -> Result<(TokenDatasetWriter, TokenizeStats)> {
    let problems = opts.problems();
    if !problems.is_empty() {
        bail!("tokenize options: {}", problems.join("; "));
    }
    let cap = opts.length_cap(&renderer.template);
    let pad = if opts.pad_to_max_length || opts.packing {
        Some(pad_id(bundle, opts)?)
    } else {
        None
    };
    let side = opts.padding_side.unwrap_or(bundle.padding_side);
    let mut stats = TokenizeStats::default();
    let mut w = TokenDatasetWriter::new();
    w.padded = opts.pad_to_max_length;
    let mut cur = TokenRow::default();
    let finish = |mut row: TokenRow, w: &mut TokenDatasetWriter| {
        if let (true, Some(c), Some(p)) = (opts.pad_to_max_length, cap, pad) {
            pad_row(&mut row, c, side, p);
        }
        w.push(row);
    };
    let mut examples = examples.into_iter();
    loop {
        let chunk: Vec<Example> = examples.by_ref().take(batch.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        let one = |ex: &Example| tokenize_example(renderer, bundle, ex, opts);
        let encoded: Vec<Result<Option<Encoded>>> = if parallel {
            chunk.par_iter().map(one).collect()
        } else {
            chunk.iter().map(one).collect()
        };
        for (ex, e) in chunk.iter().zip(encoded) {
            stats.examples += 1;
            let Some(e) = e? else {
                stats.skipped_empty += 1;
                if stats.skipped_sources.len() < 10 {
                    stats.skipped_sources.push(where_(ex));
                }
                continue;
            };
            stats.add_length(e.input_ids.len());
            stats.tokens += e.input_ids.len();
            stats.trained_tokens += e.labels.iter().filter(|&&l| l != IGNORE).count();
            stats.truncated += usize::from(e.truncated);
            stats.eos_truncated += usize::from(e.end_truncated);
            let n = e.input_ids.len();
            if opts.packing {
                if !cur.input_ids.is_empty() && cur.input_ids.len() + n > cap.unwrap_or(usize::MAX)
                {
                    finish(std::mem::take(&mut cur), &mut w);
                }
                cur.boundaries.push(cur.input_ids.len() as u32);
                cur.input_ids.extend(e.input_ids);
                cur.labels.extend(e.labels);
                cur.attention_mask.extend(std::iter::repeat_n(1, n));
            } else {
                let row = TokenRow {
                    input_ids: e.input_ids,
                    labels: e.labels,
                    attention_mask: vec![1; n],
                    boundaries: vec![0],
                };
                finish(row, &mut w);
            }
        }
    }
    if !cur.input_ids.is_empty() {
        finish(cur, &mut w);
    }
    stats.rows = w.len();
    stats.pad_tokens = w
        .rows()
        .iter()
        .map(|r| r.attention_mask.iter().filter(|&&a| a == 0).count())
        .sum();
    if stats.eos_truncated > 0 {
        stats.warnings.push(format!(
            "{} of {} examples lost their end token to truncation (cap {}): the model does not learn to stop on them",
            stats.eos_truncated,
            stats.examples,
            cap.unwrap_or(0)
        ));
    }
    if stats.skipped_empty > 0 {
        stats.warnings.push(format!(
            "{} examples had no trained tokens and were skipped (first: {})",
            stats.skipped_empty,
            stats.skipped_sources.join(", ")
        ));
    }
    Ok((w, stats))
}

/// Tokenizes `examples` and writes the token dataset to `out_path`.
pub fn tokenize(
    examples: impl IntoIterator<Item = Example>,
    renderer: &Renderer,
    bundle: &TokenizerBundle,
    opts: &TokenizeOptions,
    out_path: &Path,
) -> Result<TokenizeStats> {
    let (w, stats) = tokenize_rows(examples, renderer, bundle, opts)?;
    w.write(out_path)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::example::Message;

    /// Parallel batches give the file, stats and first error of a
    /// sequential one-by-one loop (padding, packing, skipping, truncation).
    #[test]
    fn parallel_equals_sequential() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/bloom");
        let bundle = TokenizerBundle::from_dir(dir).unwrap();
        let msg = |role, c: String| Message {
            role,
            content: c,
            metadata: String::new(),
        };
        let examples: Vec<Example> = (0..50)
            .map(|i| Example {
                messages: vec![
                    msg(
                        Role::User,
                        format!("问题{i}: 三原色是什么？ {}", "why ".repeat(i % 7)),
                    ),
                    // Every 9th example has an empty reply (nothing to train
                    // once eos is off).
                    msg(
                        Role::Assistant,
                        if i % 9 == 4 {
                            String::new()
                        } else {
                            format!("答案 {i} 红绿蓝。{}", "色".repeat(i % 13))
                        },
                    ),
                ],
                source: format!("t.jsonl:{}", i + 1),
                ..Default::default()
            })
            .collect();
        let renderer = Renderer::new(
            Template::from_name_or_source("human_assistant", None).unwrap(),
            Some(&bundle),
        )
        .unwrap();
        // Caps between the shortest and the longest example, so some
        // examples are truncated (and some of those lose every label).
        let free = TokenizeOptions {
            on_empty: OnEmpty::Skip,
            ..Default::default()
        };
        let (_, s) = tokenize_rows(examples.clone(), &renderer, &bundle, &free).unwrap();
        let mid = (s.min_len + s.max_len) / 2;
        let variants = [
            TokenizeOptions {
                add_eos: Some(false),
                on_empty: OnEmpty::Skip,
                max_length: Some(mid),
                ..Default::default()
            },
            TokenizeOptions {
                max_length: Some(mid),
                pad_to_max_length: true,
                padding_side: Some(PaddingSide::Left),
                on_empty: OnEmpty::Skip,
                ..Default::default()
            },
            TokenizeOptions {
                max_length: Some(s.max_len),
                packing: true,
                pad_to_max_length: true,
                on_empty: OnEmpty::Skip,
                ..Default::default()
            },
        ];
        for opts in &variants {
            let (a, sa) =
                tokenize_rows_in(examples.clone(), &renderer, &bundle, opts, 7, true).unwrap();
            let (b, sb) =
                tokenize_rows_in(examples.clone(), &renderer, &bundle, opts, 1, false).unwrap();
            assert!(
                a.len() > 1 && sa.truncated + sa.skipped_empty > 0,
                "{opts:?}"
            );
            assert_eq!(a.to_bytes(), b.to_bytes(), "{opts:?}");
            assert_eq!(sa, sb, "{opts:?}");
        }
        assert_eq!(
            tokenize_rows(examples.clone(), &renderer, &bundle, &variants[0])
                .unwrap()
                .1
                .skipped_empty,
            6
        );
        // The first failing example in order is the one reported.
        let opts = TokenizeOptions {
            add_eos: Some(false),
            ..Default::default()
        };
        let e = tokenize_rows_in(examples, &renderer, &bundle, &opts, 7, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("t.jsonl:5: no trained tokens"), "{e}");
    }
}
