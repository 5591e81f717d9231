//! An ids-only encoder for byte-level BPE `tokenizer.json` files (GPT-2,
//! BLOOM, Qwen2, LLaMA-3): the ids of `tokenizers`' `encode(text, false)`,
//! without what ids do not need (offset alignments, token strings,
//! `Encoding`s) and with the `regex` crate's DFA instead of fancy-regex's
//! backtracking VM.
//!
//! The pipeline, as `tokenizers` runs it:
//! 1. added tokens split the text, leftmost-longest: tokens with
//!    `normalized = false` on the raw text, the others after normalizing;
//! 2. the normalizer (none, or NFC; skipped when the text is already NFC);
//! 3. the pre-tokenizer regex cuts each piece into words (`Isolated`:
//!    matches and the gaps between them are words);
//! 4. each word's bytes are merged: the lowest-ranked adjacent pair first,
//!    the leftmost on ties, until no pair has a merge (`ignore_merges`:
//!    a word that is itself in the vocabulary is one token).
//!
//! `FastBpe::from_json` returns `Err(reason)` for any other configuration
//! (SentencePiece-style BPE, dropout, lstrip/rstrip tokens ...); the caller
//! then keeps using `tokenizers`. Tests check ids against `tokenizers` on a
//! multilingual corpus.
//!
//! Fancy-regex's lookahead `\s+(?!\S)`: GPT-2-style patterns end in
//! `|\s+(?!\S)|\s+`. We match `P|\s+` instead (P = the other alternatives)
//! and, when `\s+` took a run of two or more whitespace characters that a
//! non-space follows, give back its last character, which is exactly what
//! the lookahead makes the original do.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;
use rustc_hash::FxHashMap;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BinaryHeap;

/// GPT-2's pattern, which `ByteLevel { use_regex: true }` applies.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";

/// Byte -> the printable char byte-level BPE writes for it (GPT-2's table).
fn bytes_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

/// The pre-tokenizer's word splitter.
struct Splitter {
    re: Regex,
    /// `\A(?:P)`, set when the pattern ended in the lookahead tail.
    prefix: Option<Regex>,
}

impl Splitter {
    fn new(pattern: &str) -> Result<Splitter, String> {
        let (main, prefix) = match pattern.strip_suffix(LOOKAHEAD_TAIL) {
            Some(p) => (
                format!("{p}|\\s+"),
                Some(Regex::new(&format!("\\A(?:{p})")).map_err(|e| e.to_string())?),
            ),
            None => (pattern.to_string(), None),
        };
        let re = Regex::new(&main).map_err(|e| format!("regex {pattern:?}: {e}"))?;
        if re.is_match("") {
            return Err(format!("regex {pattern:?} matches the empty string"));
        }
        Ok(Splitter { re, prefix })
    }

    /// Calls `f` on each word of `s`, in order.
    fn split<'a>(&self, s: &'a str, mut f: impl FnMut(&'a str)) {
        let mut pos = 0;
        while pos < s.len() {
            let Some(m) = self.re.find_at(s, pos) else {
                f(&s[pos..]);
                return;
            };
            if m.start() > pos {
                f(&s[pos..m.start()]);
            }
            let mut end = m.end();
            if let Some(prefix) = &self.prefix {
                end = self.lookahead_end(prefix, s, m.start(), end);
            }
            f(&s[m.start()..end]);
            pos = end;
        }
    }

    /// Where the original `\s+(?!\S)` would have ended a whitespace match.
    fn lookahead_end(&self, prefix: &Regex, s: &str, start: usize, end: usize) -> usize {
        let word = &s[start..end];
        if end == s.len() || !word.chars().all(char::is_whitespace) {
            return end;
        }
        let mut chars = word.char_indices();
        let last = match chars.next_back() {
            Some((i, _)) if i > 0 => i,
            _ => return end, // one character: `\s+` matches it either way
        };
        if prefix.find(&s[start..]).is_some() {
            return end; // one of the other alternatives made this match
        }
        start + last
    }
}

/// Byte-level BPE over ids.
struct Merges {
    /// Id of each single byte.
    byte_id: [u32; 256],
    /// (left id, right id) -> (rank, merged id).
    pairs: FxHashMap<(u32, u32), (u32, u32)>,
    /// `ignore_merges`: whole words found in the vocabulary.
    whole: Option<FxHashMap<Box<[u8]>, u32>>,
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: i32,
    next: i32,
    alive: bool,
}

/// Reusable buffers for one `encode` call.
#[derive(Default)]
struct Scratch {
    syms: Vec<Sym>,
    /// Min-heap on (rank, position) by storing the bitwise complement.
    heap: BinaryHeap<(u32, u32, u32)>,
}

impl Merges {
    fn push(&self, sc: &mut Scratch, at: usize, out_of: usize) {
        let (a, b) = (sc.syms[at].id, sc.syms[out_of].id);
        if let Some(&(rank, new_id)) = self.pairs.get(&(a, b)) {
            sc.heap.push((!rank, !(at as u32), new_id));
        }
    }

    /// Appends the ids of one word (its raw bytes) to `out`.
    fn encode_word(&self, w: &[u8], out: &mut Vec<u32>, sc: &mut Scratch) {
        match w.len() {
            0 => return,
            1 => return out.push(self.byte_id[w[0] as usize]),
            _ => {}
        }
        if let Some(id) = self.whole.as_ref().and_then(|m| m.get(w)) {
            return out.push(*id);
        }
        if w.len() == 2 {
            let (a, b) = (self.byte_id[w[0] as usize], self.byte_id[w[1] as usize]);
            match self.pairs.get(&(a, b)) {
                Some(&(_, id)) => out.push(id),
                None => out.extend([a, b]),
            }
            return;
        }
        let n = w.len();
        sc.syms.clear();
        sc.heap.clear();
        sc.syms.extend(w.iter().enumerate().map(|(i, &b)| Sym {
            id: self.byte_id[b as usize],
            prev: i as i32 - 1,
            next: if i + 1 < n { i as i32 + 1 } else { -1 },
            alive: true,
        }));
        for i in 0..n - 1 {
            self.push(sc, i, i + 1);
        }
        while let Some((_, npos, new_id)) = sc.heap.pop() {
            let pos = !npos as usize;
            let s = sc.syms[pos];
            if !s.alive || s.next < 0 {
                continue;
            }
            let right = sc.syms[s.next as usize];
            // A stale entry: the pair at `pos` is not the one queued.
            match self.pairs.get(&(s.id, right.id)) {
                Some(&(_, id)) if id == new_id => {}
                _ => continue,
            }
            sc.syms[pos].id = new_id;
            sc.syms[pos].next = right.next;
            sc.syms[s.next as usize].alive = false;
            if right.next >= 0 {
                sc.syms[right.next as usize].prev = pos as i32;
                self.push(sc, pos, right.next as usize);
            }
            if s.prev >= 0 {
                self.push(sc, s.prev as usize, pos);
            }
        }
        let mut i = 0i32;
        while i >= 0 {
            out.push(sc.syms[i as usize].id);
            i = sc.syms[i as usize].next;
        }
    }
}

/// Added tokens of one kind (raw or normalized) and their ids.
struct Added {
    ac: AhoCorasick,
    ids: Vec<u32>,
}

impl Added {
    fn new(tokens: Vec<(String, u32)>) -> Result<Option<Added>, String> {
        if tokens.is_empty() {
            return Ok(None);
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|t| &t.0))
            .map_err(|e| e.to_string())?;
        Ok(Some(Added {
            ac,
            ids: tokens.into_iter().map(|t| t.1).collect(),
        }))
    }

    /// Calls `f` on the gaps (`Ok(text)`) and the matches (`Err(id)`), in order.
    fn split<'a>(&self, s: &'a str, mut f: impl FnMut(Result<&'a str, u32>)) {
        let mut pos = 0;
        for m in self.ac.find_iter(s) {
            if m.start() > pos {
                f(Ok(&s[pos..m.start()]));
            }
            f(Err(self.ids[m.pattern().as_usize()]));
            pos = m.end();
        }
        if pos < s.len() {
            f(Ok(&s[pos..]));
        }
    }
}

pub struct FastBpe {
    raw_added: Option<Added>,
    normalized_added: Option<Added>,
    nfc: bool,
    splitter: Splitter,
    merges: Merges,
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// Whether the normalizer is NFC (true), none (false), or unsupported.
fn normalizer_is_nfc(n: &Value) -> Result<bool, String> {
    match n {
        Value::Null => Ok(false),
        _ => match n["type"].as_str() {
            Some("NFC") => Ok(true),
            Some("Sequence") => {
                let list = n["normalizers"].as_array().map(Vec::as_slice);
                match list.unwrap_or_default() {
                    [] => Ok(false),
                    [one] => normalizer_is_nfc(one),
                    _ => Err("a normalizer sequence".into()),
                }
            }
            t => Err(format!("normalizer {t:?}")),
        },
    }
}

/// The split pattern of a supported pre-tokenizer.
fn pre_tokenizer_pattern(p: &Value) -> Result<String, String> {
    let byte_level = |b: &Value, regex: bool| {
        b["type"] == "ByteLevel"
            && !flag(b, "add_prefix_space", true)
            && flag(b, "use_regex", true) == regex
    };
    if byte_level(p, true) {
        return Ok(GPT2_PATTERN.into());
    }
    let list = p["pretokenizers"].as_array().map(Vec::as_slice);
    match (p["type"].as_str(), list) {
        (Some("Sequence"), Some([b])) if byte_level(b, true) => Ok(GPT2_PATTERN.into()),
        (Some("Sequence"), Some([s, b])) if s["type"] == "Split" && byte_level(b, false) => {
            if s["behavior"] != "Isolated" || flag(s, "invert", false) {
                return Err("a Split that is not Isolated".into());
            }
            match s["pattern"]["Regex"].as_str() {
                Some(r) => Ok(r.to_string()),
                None => Err("a Split on a string".into()),
            }
        }
        _ => Err(format!("pre_tokenizer {}", p["type"])),
    }
}

impl FastBpe {
    /// From a parsed tokenizer.json; `Err` names what is not supported.
    pub fn from_json(tj: &Value) -> Result<FastBpe, String> {
        let model = &tj["model"];
        if model["type"] != "BPE" {
            return Err(format!("model {}", model["type"]));
        }
        let empty = |k: &str| model[k].is_null() || model[k] == "";
        if !model["dropout"].is_null()
            || flag(model, "byte_fallback", false)
            || !empty("continuing_subword_prefix")
            || !empty("end_of_word_suffix")
        {
            return Err("BPE dropout, byte fallback or subword affixes".into());
        }
        let nfc = normalizer_is_nfc(&tj["normalizer"])?;
        let splitter = Splitter::new(&pre_tokenizer_pattern(&tj["pre_tokenizer"])?)?;

        let vocab = model["vocab"].as_object().ok_or("no vocab")?;
        let id = |t: &str| -> Result<u32, String> {
            let v = vocab.get(t).and_then(Value::as_u64);
            v.map(|x| x as u32).ok_or_else(|| format!("{t:?} not in the vocab"))
        };
        let table = bytes_char();
        let mut byte_id = [0u32; 256];
        for (b, c) in table.iter().enumerate() {
            byte_id[b] = id(&c.to_string())?;
        }
        let mut pairs = FxHashMap::default();
        for (rank, m) in model["merges"].as_array().ok_or("no merges")?.iter().enumerate() {
            let (a, b) = match m {
                Value::String(s) => s.split_once(' ').ok_or("a merge without a space")?,
                Value::Array(p) => match (p.first().and_then(Value::as_str), p.get(1)) {
                    (Some(a), Some(Value::String(b))) => (a, b.as_str()),
                    _ => return Err("a malformed merge".into()),
                },
                _ => return Err("a malformed merge".into()),
            };
            pairs.insert((id(a)?, id(b)?), (rank as u32, id(&format!("{a}{b}"))?));
        }
        let whole = flag(model, "ignore_merges", false).then(|| {
            let mut inv = FxHashMap::default();
            for (b, c) in table.iter().enumerate() {
                inv.insert(*c, b as u8);
            }
            vocab
                .iter()
                .filter_map(|(t, v)| {
                    let bytes: Option<Vec<u8>> = t.chars().map(|c| inv.get(&c).copied()).collect();
                    Some((bytes?.into_boxed_slice(), v.as_u64()? as u32))
                })
                .collect()
        });

        let (mut raw, mut normalized) = (Vec::new(), Vec::new());
        for t in tj["added_tokens"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if flag(t, "lstrip", false) || flag(t, "rstrip", false) || flag(t, "single_word", false)
            {
                return Err("added tokens with lstrip, rstrip or single_word".into());
            }
            let (Some(c), Some(i)) = (t["content"].as_str(), t["id"].as_u64()) else {
                return Err("a malformed added token".into());
            };
            let list = if flag(t, "normalized", true) { &mut normalized } else { &mut raw };
            list.push((c.to_string(), i as u32));
        }
        Ok(FastBpe {
            raw_added: Added::new(raw)?,
            normalized_added: Added::new(normalized)?,
            nfc,
            splitter,
            merges: Merges { byte_id, pairs, whole },
        })
    }

    /// The ids of `text`, as `tokenizers`' `encode(text, false)` gives them.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut sc = Scratch::default();
        match &self.raw_added {
            None => self.encode_piece(text, &mut out, &mut sc),
            Some(a) => a.split(text, |p| match p {
                Ok(s) => self.encode_piece(s, &mut out, &mut sc),
                Err(id) => out.push(id),
            }),
        }
        out
    }

    /// A piece between raw added tokens: normalize, split on normalized
    /// added tokens, pre-tokenize, merge.
    fn encode_piece(&self, s: &str, out: &mut Vec<u32>, sc: &mut Scratch) {
        let s: Cow<str> = if self.nfc && !s.is_ascii() && !is_nfc(s) {
            let mut n = tokenizers::NormalizedString::from(s);
            n.nfc();
            Cow::Owned(n.get().to_string())
        } else {
            Cow::Borrowed(s)
        };
        let words = |t: &str, out: &mut Vec<u32>, sc: &mut Scratch| {
            self.splitter
                .split(t, |w| self.merges.encode_word(w.as_bytes(), out, sc))
        };
        match &self.normalized_added {
            None => words(&s, out, sc),
            Some(a) => a.split(&s, |p| match p {
                Ok(t) => words(t, out, sc),
                Err(id) => out.push(id),
            }),
        }
    }
}

fn is_nfc(s: &str) -> bool {
    use unicode_normalization_alignments::{is_nfc_quick, IsNormalized};
    match is_nfc_quick(s.chars()) {
        IsNormalized::Yes => true,
        IsNormalized::No => false,
        IsNormalized::Maybe => unicode_normalization_alignments::is_nfc(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookahead_emulation_matches_fancy_regex() {
        let sp = Splitter::new(GPT2_PATTERN).unwrap();
        let fancy = fancy_regex::Regex::new(GPT2_PATTERN).unwrap();
        for s in [
            "a  b",
            "a   b   ",
            "x \n\n  y\t\tz",
            "  lead",
            "end   ",
            "hi  ,  there!!  42  ",
            "\u{3000}\u{3000}中文  text",
        ] {
            let mut ours = vec![];
            sp.split(s, |w| ours.push(w.to_string()));
            let theirs: Vec<String> = fancy
                .find_iter(s)
                .map(|m| m.unwrap().as_str().to_string())
                .collect();
            assert_eq!(ours, theirs, "{s:?}");
        }
    }
}
