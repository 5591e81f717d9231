//! Human- and machine-readable views of tokenized rows.
//!
//! `inspect_text` decodes runs of tokens that share a state: trained tokens
//! bold green, masked tokens dimmed, pads counted (`<pad×N>`); without
//! color, trained text is wrapped in `[[…]]`. `row_json` is one jsonl line
//! `{"input_ids", "labels", "attention_mask"}`.

use super::dataset::{RowRef, IGNORE};
use super::tokenizer::TokenizerBundle;
use anyhow::Result;

const TRAINED: &str = "\x1b[1;32m";
const MASKED: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Pad,
    Masked,
    Trained,
}

/// One row rendered for a terminal (`color`) or plain text.
pub fn inspect_text(bundle: &TokenizerBundle, row: &RowRef<'_>, color: bool) -> Result<String> {
    let n = row.input_ids.len();
    let trained = row.labels.iter().filter(|&&l| l != IGNORE).count();
    let pads = row.attention_mask.iter().filter(|&&a| a == 0).count();
    let mut out = format!("[{n} tokens, {trained} trained, {pads} pad]\n");
    let state = |i: usize| {
        if row.attention_mask[i] == 0 {
            State::Pad
        } else if row.labels[i] != IGNORE {
            State::Trained
        } else {
            State::Masked
        }
    };
    let mut i = 0;
    while i < n {
        let s = state(i);
        let mut j = i + 1;
        while j < n && state(j) == s && !row.boundaries.contains(&(j as u32)) {
            j += 1;
        }
        if i > 0 && state(i - 1) != State::Pad && row.boundaries.contains(&(i as u32)) {
            out.push_str(if color { "\x1b[33m|\x1b[0m" } else { "|" });
        }
        match s {
            State::Pad => out.push_str(&format!("<pad×{}>", j - i)),
            _ => {
                let t = bundle.decode(&row.input_ids[i..j], false)?;
                match (s, color) {
                    (State::Trained, true) => out.push_str(&format!("{TRAINED}{t}{RESET}")),
                    (State::Trained, false) => out.push_str(&format!("[[{t}]]")),
                    (_, true) => out.push_str(&format!("{MASKED}{t}{RESET}")),
                    _ => out.push_str(&t),
                }
            }
        }
        i = j;
    }
    out.push('\n');
    Ok(out)
}

/// `{"input_ids": [...], "labels": [...], "attention_mask": [...]}`.
pub fn row_json(row: &RowRef<'_>) -> String {
    serde_json::json!({
        "input_ids": row.input_ids,
        "labels": row.labels,
        "attention_mask": row.attention_mask,
    })
    .to_string()
}
