//! An ids-only encoder for BPE `tokenizer.json` files, byte-level (GPT-2,
//! BLOOM, Qwen2, LLaMA-3) or SentencePiece-style (LLaMA-1/2, ChatGLM, as
//! converted by `sentencepiece.rs`): the ids of `tokenizers`' `encode(text, false)`,
//! without what ids do not need (offset alignments, token strings,
//! `Encoding`s) and with the `regex` crate's DFA instead of fancy-regex's
//! backtracking VM.
//!
//! The pipeline, as `tokenizers` runs it:
//! 1. added tokens split the text, leftmost-longest: tokens with
//!    `normalized = false` on the raw text, the others after normalizing;
//! 2. the normalizer: a sequence of NFC (skipped when the text is already
//!    NFC), Prepend and string Replace;
//! 3. the pre-tokenizer regex cuts each piece into words (`Isolated`:
//!    matches and the gaps between them are words); without a
//!    pre-tokenizer the piece is one word;
//! 4. a word's first symbols: its bytes (byte-level), or its characters,
//!    with `<0xXX>` byte tokens for characters not in the vocabulary
//!    (`byte_fallback`), else unk (runs fused with `fuse_unk`);
//! 5. merges: the lowest-ranked adjacent pair first, the leftmost on ties,
//!    until no pair has a merge (`ignore_merges`: a word that is itself in
//!    the vocabulary is one token).
//!
//! `FastBpe::from_json` returns `Err(reason)` for any other configuration
//! (Metaspace, Precompiled normalizers, dropout, lstrip/rstrip tokens ...); the caller
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

use super::tokenizer::Span;

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
    units: Units,
    /// (left id, right id) -> (rank, merged id).
    pairs: FxHashMap<(u32, u32), (u32, u32)>,
    /// `ignore_merges`: whole words found in the vocabulary.
    whole: Option<FxHashMap<Box<[u8]>, u32>>,
}

/// How a word's first symbols are found.
enum Units {
    /// Byte-level: the id of each byte's printable char.
    Bytes([u32; 256]),
    /// SentencePiece-style: characters in the vocabulary; the others
    /// become their `<0xXX>` tokens (`byte_fallback`) or unk.
    Chars {
        char_id: FxHashMap<char, u32>,
        byte_fallback: Option<[u32; 256]>,
        unk: Option<u32>,
        fuse_unk: bool,
    },
}

impl Units {
    /// The first symbols of `w`, as tokenizers' `BPE::merge_word` makes them.
    fn first(&self, w: &str, ids: &mut Vec<u32>) {
        ids.clear();
        let (char_id, byte_fallback, unk, fuse_unk) = match self {
            Units::Bytes(b) => return ids.extend(w.bytes().map(|x| b[x as usize])),
            Units::Chars {
                char_id,
                byte_fallback,
                unk,
                fuse_unk,
            } => (char_id, byte_fallback, unk, fuse_unk),
        };
        let mut last_unk = false;
        for c in w.chars() {
            if let Some(&id) = char_id.get(&c) {
                ids.push(id);
                last_unk = false;
            } else if let Some(b) = byte_fallback {
                let mut buf = [0u8; 4];
                ids.extend(c.encode_utf8(&mut buf).bytes().map(|x| b[x as usize]));
                last_unk = false;
            } else if let Some(u) = unk {
                if !(last_unk && *fuse_unk) {
                    ids.push(*u);
                }
                last_unk = true;
            }
        }
    }
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
    first: Vec<u32>,
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

    /// Appends the ids of one word to `out`.
    fn encode_word(&self, w: &str, out: &mut Vec<u32>, sc: &mut Scratch) {
        if w.is_empty() {
            return;
        }
        if let Some(id) = self.whole.as_ref().and_then(|m| m.get(w.as_bytes())) {
            return out.push(*id);
        }
        let mut first = std::mem::take(&mut sc.first);
        self.units.first(w, &mut first);
        self.merge(&first, out, sc);
        sc.first = first;
    }

    /// Merges the symbols `w` (ids) and appends the result to `out`.
    fn merge(&self, w: &[u32], out: &mut Vec<u32>, sc: &mut Scratch) {
        match w {
            [] => return,
            [a] => return out.push(*a),
            [a, b] => {
                match self.pairs.get(&(*a, *b)) {
                    Some(&(_, id)) => out.push(id),
                    None => out.extend([*a, *b]),
                }
                return;
            }
            _ => {}
        }
        let n = w.len();
        sc.syms.clear();
        sc.heap.clear();
        sc.syms.extend(w.iter().enumerate().map(|(i, &id)| Sym {
            id,
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
    /// The token's id, or None for a match to leave in the text.
    ids: Vec<Option<u32>>,
}

impl Added {
    /// `tokens`: (content, id), id None for a token matched but skipped.
    fn new(tokens: Vec<(String, Option<u32>)>) -> Result<Option<Added>, String> {
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

    /// Calls `f` on the gaps (`Ok(text)`) and the matches (`Err((id,
    /// matched text))`), in order.
    fn split<'a>(&self, s: &'a str, mut f: impl FnMut(Result<&'a str, (u32, &'a str)>)) {
        let mut pos = 0;
        for m in self.ac.find_iter(s) {
            let Some(id) = self.ids[m.pattern().as_usize()] else {
                continue;
            };
            if m.start() > pos {
                f(Ok(&s[pos..m.start()]));
            }
            f(Err((id, &s[m.start()..m.end()])));
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
    norm: Vec<NormOp>,
    /// None: each piece is one word (SentencePiece-style).
    splitter: Option<Splitter>,
    merges: Merges,
    /// Byte length of each BPE token (offsets need it).
    token_len: Vec<u32>,
    /// How the post-processor trims offsets; None: offsets unsupported.
    trim: Option<Trim>,
}

/// The ByteLevel post-processor's `trim_offsets` (it runs even without
/// special tokens): leading/trailing spaces leave a token's offsets.
#[derive(Clone, Copy)]
enum Trim {
    No,
    Spaces { add_prefix_space: bool },
}

/// Where `encode` puts what it finds: ids, and with `offsets` their byte
/// spans in `text` (every piece handed in is a slice of it unless a
/// normalizer changed it).
struct Sink<'a> {
    ids: Vec<u32>,
    spans: Vec<Span>,
    offsets: Option<Trim>,
    text: &'a str,
    /// Set when normalization changed a piece (offsets are then unknown).
    normalized: bool,
}

impl Sink<'_> {
    fn offset_of(&self, piece: &str) -> usize {
        piece.as_ptr() as usize - self.text.as_ptr() as usize
    }

    /// Spans for the ids pushed since `from` (a word at byte `start`):
    /// each token's bytes widened to whole characters, as byte-level
    /// alignments are, then trimmed of spaces (`lead`/`trail`: the
    /// token's leading/trailing space bytes).
    fn word_spans(&mut self, from: usize, start: usize, token_len: &[u32]) {
        let t = self.text.as_bytes();
        let mut at = start;
        for i in from..self.ids.len() {
            let len = token_len.get(self.ids[i] as usize).copied().unwrap_or(0) as usize;
            let end = (at + len).min(t.len());
            let raw = &t[at..end];
            let lead = raw.iter().take_while(|&&b| b == b' ').count();
            let trail = raw.iter().rev().take_while(|&&b| b == b' ').count();
            let (mut a, mut b) = (at, end);
            while !self.text.is_char_boundary(a) {
                a -= 1;
            }
            while !self.text.is_char_boundary(b) {
                b += 1;
            }
            self.push_span((a, b), lead, trail);
            at = end;
        }
    }

    /// An added token matched as `m` (a slice of the text unless normalized).
    fn token(&mut self, id: u32, m: &str) {
        self.ids.push(id);
        if self.offsets.is_some() && !self.normalized {
            let a = self.offset_of(m);
            // Its token string is its content: spaces are whitespace chars.
            let space = |c: &char| c.is_whitespace() || *c == '\u{120}';
            let lead = m.chars().take_while(space).count();
            let trail = m.chars().rev().take_while(space).count();
            self.push_span((a, a + m.len()), lead, trail);
        }
    }

    /// tokenizers' `process_offsets` (ByteLevel `trim_offsets`).
    fn push_span(&mut self, mut span: Span, mut lead: usize, trail: usize) {
        if let Some(Trim::Spaces { add_prefix_space }) = self.offsets {
            if lead > 0 {
                let first = self.spans.is_empty() || span.0 == 0;
                if first && add_prefix_space && lead == 1 {
                    lead = 0;
                }
                span.0 = (span.0 + lead).min(span.1);
            }
            if trail > 0 && span.1 >= trail {
                span.1 = (span.1 - trail).max(span.0);
            }
        }
        self.spans.push(span);
    }
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// One supported normalizer.
enum NormOp {
    Nfc,
    /// Before a non-empty piece.
    Prepend(String),
    /// Every occurrence of a string.
    Replace(String, String),
}

fn normalizer_ops(n: &Value, ops: &mut Vec<NormOp>) -> Result<(), String> {
    if n.is_null() {
        return Ok(());
    }
    let s = |k: &str| n[k].as_str().map(str::to_string);
    match n["type"].as_str() {
        Some("NFC") => ops.push(NormOp::Nfc),
        Some("Prepend") => ops.push(NormOp::Prepend(s("prepend").ok_or("Prepend")?)),
        Some("Replace") => match (n["pattern"]["String"].as_str(), s("content")) {
            (Some(p), Some(c)) if !p.is_empty() => ops.push(NormOp::Replace(p.into(), c)),
            _ => return Err("a Replace on a regex".into()),
        },
        Some("Sequence") => {
            for m in n["normalizers"].as_array().ok_or("Sequence")? {
                normalizer_ops(m, ops)?;
            }
        }
        t => return Err(format!("normalizer {t:?}")),
    }
    Ok(())
}

/// The split pattern of a supported byte-level pre-tokenizer.
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
    /// `skip_special`: special added tokens inside text are not matched
    /// (tokenizers' `encode_special_tokens`, as ChatGLM's encode does).
    pub fn from_json(tj: &Value, skip_special: bool) -> Result<FastBpe, String> {
        let model = &tj["model"];
        if model["type"] != "BPE" {
            return Err(format!("model {}", model["type"]));
        }
        let empty = |k: &str| model[k].is_null() || model[k] == "";
        if !model["dropout"].is_null()
            || !empty("continuing_subword_prefix")
            || !empty("end_of_word_suffix")
        {
            return Err("BPE dropout or subword affixes".into());
        }
        let mut norm = vec![];
        normalizer_ops(&tj["normalizer"], &mut norm)?;

        let vocab = model["vocab"].as_object().ok_or("no vocab")?;
        let id = |t: &str| -> Result<u32, String> {
            let v = vocab.get(t).and_then(Value::as_u64);
            v.map(|x| x as u32)
                .ok_or_else(|| format!("{t:?} not in the vocab"))
        };
        let table = bytes_char();
        let byte_level = !tj["pre_tokenizer"].is_null();
        let (splitter, units) = if byte_level {
            let splitter = Splitter::new(&pre_tokenizer_pattern(&tj["pre_tokenizer"])?)?;
            let mut byte_id = [0u32; 256];
            for (b, c) in table.iter().enumerate() {
                byte_id[b] = id(&c.to_string())?;
            }
            (Some(splitter), Units::Bytes(byte_id))
        } else {
            let mut char_id = FxHashMap::default();
            for (t, v) in vocab {
                let mut cs = t.chars();
                if let (Some(c), None, Some(i)) = (cs.next(), cs.next(), v.as_u64()) {
                    char_id.insert(c, i as u32);
                }
            }
            let byte_fallback = if flag(model, "byte_fallback", false) {
                let mut b = [0u32; 256];
                for (x, slot) in b.iter_mut().enumerate() {
                    *slot = id(&format!("<0x{x:02X}>"))?;
                }
                Some(b)
            } else {
                None
            };
            let unk = match model["unk_token"].as_str() {
                Some(u) => Some(id(u)?),
                None => None,
            };
            let fuse_unk = flag(model, "fuse_unk", false);
            (
                None,
                Units::Chars {
                    char_id,
                    byte_fallback,
                    unk,
                    fuse_unk,
                },
            )
        };
        let mut pairs = FxHashMap::default();
        for (rank, m) in model["merges"]
            .as_array()
            .ok_or("no merges")?
            .iter()
            .enumerate()
        {
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
        // `ignore_merges`: a word's bytes -> its token (byte-level tokens
        // are spelled in the printable byte chars).
        let whole = flag(model, "ignore_merges", false).then(|| {
            let mut inv = FxHashMap::default();
            for (b, c) in table.iter().enumerate() {
                inv.insert(*c, b as u8);
            }
            vocab
                .iter()
                .filter_map(|(t, v)| {
                    let bytes: Vec<u8> = match byte_level {
                        true => t
                            .chars()
                            .map(|c| inv.get(&c).copied())
                            .collect::<Option<_>>()?,
                        false => t.as_bytes().to_vec(),
                    };
                    Some((bytes.into_boxed_slice(), v.as_u64()? as u32))
                })
                .collect()
        });

        let mut token_len = vec![0u32; vocab.len()];
        for (t, v) in vocab {
            if let Some(slot) = v.as_u64().and_then(|i| token_len.get_mut(i as usize)) {
                *slot = t.chars().count() as u32;
            }
        }
        // Offsets only where the text is not rewritten (byte-level, NFC).
        let trim = match &tj["post_processor"] {
            _ if !byte_level => None,
            Value::Null => Some(Trim::No),
            p => post_processor_trim(p),
        };

        let (mut raw, mut normalized) = (Vec::new(), Vec::new());
        for t in tj["added_tokens"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if flag(t, "lstrip", false) || flag(t, "rstrip", false) || flag(t, "single_word", false)
            {
                return Err("added tokens with lstrip, rstrip or single_word".into());
            }
            let (Some(c), Some(i)) = (t["content"].as_str(), t["id"].as_u64()) else {
                return Err("a malformed added token".into());
            };
            // Matched and skipped, as tokenizers' encode_special_tokens.
            let id = (!(skip_special && flag(t, "special", false))).then_some(i as u32);
            // A normalized token is looked for as the normalizer writes
            // it (tokenizers normalizes its content too: Prepend adds "▁").
            match flag(t, "normalized", true) {
                true if normalize(&norm, c).is_empty() => return Err("an empty token".into()),
                true => normalized.push((normalize(&norm, c).into_owned(), id)),
                false => raw.push((c.to_string(), id)),
            }
        }
        Ok(FastBpe {
            raw_added: Added::new(raw)?,
            normalized_added: Added::new(normalized)?,
            norm,
            splitter,
            merges: Merges {
                units,
                pairs,
                whole,
            },
            token_len,
            trim,
        })
    }

    /// The ids of `text`, as `tokenizers`' `encode(text, false)` gives them.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.run(text, None).ids
    }

    /// Ids and byte spans, as `tokenizers`' `encode(text, false)` gives
    /// `get_ids()` and `get_offsets()`; None when this tokenizer's
    /// post-processor is not one we reproduce, or normalization changed
    /// the text (the caller then asks `tokenizers`).
    pub fn encode_with_offsets(&self, text: &str) -> Option<(Vec<u32>, Vec<Span>)> {
        let sink = self.run(text, Some(self.trim?));
        if sink.normalized {
            return None;
        }
        Some((sink.ids, sink.spans))
    }

    fn run<'t>(&self, text: &'t str, offsets: Option<Trim>) -> Sink<'t> {
        let mut sink = Sink {
            ids: Vec::with_capacity(text.len() / 3 + 1),
            spans: Vec::new(),
            offsets,
            text,
            normalized: false,
        };
        let mut sc = Scratch::default();
        match &self.raw_added {
            None => self.encode_piece(text, &mut sink, &mut sc),
            Some(a) => a.split(text, |p| match p {
                Ok(s) => self.encode_piece(s, &mut sink, &mut sc),
                Err((id, m)) => sink.token(id, m),
            }),
        }
        sink
    }

    /// A piece between raw added tokens: normalize, split on normalized
    /// added tokens, pre-tokenize, merge.
    fn encode_piece(&self, s: &str, sink: &mut Sink, sc: &mut Scratch) {
        let s = self.normalize(s);
        sink.normalized |= matches!(s, Cow::Owned(_));
        let words = |t: &str, sink: &mut Sink, sc: &mut Scratch| {
            let mut word = |w: &str| {
                let from = sink.ids.len();
                self.merges.encode_word(w, &mut sink.ids, sc);
                if sink.offsets.is_some() && !sink.normalized {
                    let at = sink.offset_of(w);
                    sink.word_spans(from, at, &self.token_len);
                }
            };
            match &self.splitter {
                Some(sp) => sp.split(t, word),
                None => word(t),
            }
        };
        match &self.normalized_added {
            None => words(&s, sink, sc),
            Some(a) => a.split(&s, |p| match p {
                Ok(t) => words(t, sink, sc),
                Err((id, m)) => sink.token(id, m),
            }),
        }
    }
}

/// The offsets trim of a supported post-processor (ByteLevel, and
/// TemplateProcessing, which adds nothing without special tokens).
fn post_processor_trim(p: &Value) -> Option<Trim> {
    match p["type"].as_str()? {
        "ByteLevel" => Some(if flag(p, "trim_offsets", true) {
            Trim::Spaces {
                add_prefix_space: flag(p, "add_prefix_space", true),
            }
        } else {
            Trim::No
        }),
        "TemplateProcessing" => Some(Trim::No),
        "Sequence" => {
            let mut trim = Trim::No;
            for q in p["processors"].as_array()? {
                if let Trim::Spaces { .. } = post_processor_trim(q)? {
                    trim = post_processor_trim(q)?;
                }
            }
            Some(trim)
        }
        _ => None,
    }
}

impl FastBpe {
    fn normalize<'s>(&self, s: &'s str) -> Cow<'s, str> {
        normalize(&self.norm, s)
    }
}

/// The normalizer's ops in order; Borrowed when nothing changed.
fn normalize<'s>(norm: &[NormOp], s: &'s str) -> Cow<'s, str> {
    let mut cur = Cow::Borrowed(s);
    for op in norm {
        match op {
            NormOp::Nfc if !cur.is_ascii() && !is_nfc(&cur) => {
                let mut n = tokenizers::NormalizedString::from(cur.as_ref());
                n.nfc();
                cur = Cow::Owned(n.get().to_string());
            }
            NormOp::Prepend(p) if !cur.is_empty() => cur = Cow::Owned(format!("{p}{cur}")),
            NormOp::Replace(a, b) if cur.contains(a.as_str()) => {
                cur = Cow::Owned(cur.replace(a.as_str(), b))
            }
            _ => {}
        }
    }
    cur
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
    use serde_json::json;
    use tokenizers::models::bpe::BpeTrainer;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::Tokenizer;

    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const BLOOM: &str = r" ?[^(\s|[.,!?…。，、।۔،])]+";

    #[rustfmt::skip]
    pub(super) const TEXTS: &[&str] = &[
        "Hello world! I'm here, DON'T panic; it'S fine. We'll see: you've 3.14159 and 2024-11-23.",
        "人工智能是未来的重要方向，我们需要学习机器学习和深度学习。中国的历史文化源远流长！",
        "Human: 请解释一下transformer模型\n\nAssistant: Transformer是一种基于attention的模型。",
        "日本語のテキストと한국어 텍스트, emoji 😀🎉 and naïve café (NFD: cafe\u{301}, \u{212B}ngstr\u{f6}m).",
        "  leading spaces,   runs   of spaces\t\ttabs\r\nwindows\r\n\r\nlines   \n  \n",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
        "numbers 1234567890 ١٢٣ ½ and symbols @#$%^&*()_+-=[]{}|\\:;\"'<>,.?/~` …。，、",
    ];

    /// SplitMix64 strings from an alphabet with every class the patterns
    /// care about (letters, CJK, digits, spaces, newlines, marks, tokens).
    fn random_texts(n: usize) -> Vec<String> {
        let parts = [
            "a",
            "b",
            "The",
            " the",
            "s",
            "'",
            "'S",
            "'ll",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            "\u{3000}",
            "中",
            "文",
            "学习",
            "模型",
            "。",
            "，",
            "😀",
            "1",
            "23",
            "٣",
            ".",
            "!!",
            "e\u{301}",
            "\u{212B}",
            "é",
            "é!",
            "<|im_end|>",
            "<|im_",
            "end|>",
            "-",
            "_",
            "ü",
            "Ω",
            "한",
        ];
        let mut st = crate::rng::SplitMix64(0x5EED);
        let mut next = move || st.next_u64() as usize;
        (0..n)
            .map(|_| {
                (0..next() % 40)
                    .map(|_| parts[next() % parts.len()])
                    .collect()
            })
            .collect()
    }

    /// A byte-level BPE with `pre`/`normalizer`, trained by `tokenizers`
    /// on TEXTS so that CJK and multi-byte merges exist.
    fn trained(pre: Value, normalizer: Value) -> Value {
        let corpus = TEXTS.iter().map(|t| t.to_string()).chain(random_texts(300));
        train(pre, normalizer, corpus.collect(), true)
    }

    /// `byte_alphabet`: start from the 256 byte chars (byte-level); else
    /// from the corpus' characters, with an `<unk>` token.
    pub(super) fn train(
        pre: Value,
        normalizer: Value,
        corpus: Vec<String>,
        byte_alphabet: bool,
    ) -> Value {
        let base = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": {}, "merges": []}
        });
        let mut tok: Tokenizer = base.to_string().parse().unwrap();
        let mut builder = BpeTrainer::builder().vocab_size(900).show_progress(false);
        builder = match byte_alphabet {
            true => builder.initial_alphabet(bytes_char().into_iter().collect()),
            false => builder.special_tokens(vec![tokenizers::AddedToken::from("<unk>", true)]),
        };
        let mut trainer: TrainerWrapper = builder.build().into();
        tok.train(&mut trainer, corpus.into_iter()).unwrap();
        serde_json::from_str(&tok.to_string(false).unwrap()).unwrap()
    }

    fn split_pre(pattern: &str) -> Value {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})
    }

    fn add_tokens(tj: &mut Value) {
        let n = tj["model"]["vocab"].as_object().unwrap().len();
        let added = [("<|im_start|>", false), ("<|im_end|>", false), ("é!", true)];
        tj["added_tokens"] = added
            .iter()
            .enumerate()
            .map(|(i, (c, norm))| {
                json!({"id": n + i, "content": c, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": norm, "special": !norm})
            })
            .collect();
    }

    /// Every text gives `tokenizers`' ids, and its offsets where we give
    /// offsets; returns the number of tokens.
    fn same_ids(tj: &Value) -> usize {
        let fast = FastBpe::from_json(tj, false).unwrap();
        let tok: Tokenizer = tj.to_string().parse().unwrap();
        let (mut n, mut with_offsets) = (0, 0);
        for t in TEXTS
            .iter()
            .map(|t| t.to_string())
            .chain(random_texts(3000))
        {
            let e = tok.encode(t.as_str(), false).unwrap();
            assert_eq!(fast.encode(&t), e.get_ids(), "{t:?}");
            if let Some((ids, spans)) = fast.encode_with_offsets(&t) {
                assert_eq!(
                    (ids.as_slice(), spans.as_slice()),
                    (e.get_ids(), e.get_offsets()),
                    "{t:?}"
                );
                with_offsets += 1;
            }
            n += e.len();
        }
        if fast.trim.is_some() {
            assert!(with_offsets > 1000, "{with_offsets} texts with offsets");
        }
        n
    }

    #[test]
    fn same_ids_as_tokenizers_for_each_supported_pipeline() {
        let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let mut cases = vec![
            ("gpt2", trained(gpt2, Value::Null)),
            (
                "qwen2 + nfc",
                trained(split_pre(QWEN2), json!({"type": "NFC"})),
            ),
            ("bloom", trained(split_pre(BLOOM), Value::Null)),
        ];
        let mut ignore = cases[1].1.clone();
        ignore["model"]["ignore_merges"] = json!(true);
        cases.push(("qwen2 + ignore_merges", ignore));
        // Post-processors that move offsets (ByteLevel trim_offsets).
        for (trim, prefix) in [(true, false), (true, true), (false, false)] {
            let mut t = cases[if prefix { 2 } else { 0 }].1.clone();
            t["post_processor"] = json!({"type": "ByteLevel", "add_prefix_space": prefix,
                "trim_offsets": trim, "use_regex": false});
            cases.push(("trim offsets", t));
        }
        for (name, mut tj) in cases {
            assert!(
                tj["model"]["merges"].as_array().unwrap().len() > 500,
                "{name}"
            );
            let plain = same_ids(&tj);
            add_tokens(&mut tj);
            let with_added = same_ids(&tj);
            assert!(
                plain > 20_000 && with_added < plain,
                "{name}: {plain} {with_added}"
            );
        }
    }

    /// SentencePiece-style (no pre-tokenizer, Prepend + Replace "▁",
    /// characters as symbols), trained on three texts so that most random
    /// characters are unknown: unk, fused or not.
    #[test]
    fn sentencepiece_style_unk() {
        let norm = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let corpus = TEXTS[..3].iter().map(|t| t.to_string()).collect();
        let base = train(Value::Null, norm, corpus, false);
        let merges = base["model"]["merges"].as_array().unwrap().len();
        assert!(merges > 100, "{merges} merges");
        let unk = base["model"]["vocab"]["<unk>"].as_u64().unwrap() as u32;
        for fuse in [false, true] {
            let mut tj = base.clone();
            tj["model"]["unk_token"] = json!("<unk>");
            tj["model"]["fuse_unk"] = json!(fuse);
            tj["added_tokens"] = json!([]);
            let fast = FastBpe::from_json(&tj, false).unwrap();
            let unks: usize = random_texts(300)
                .iter()
                .map(|t| fast.encode(t).iter().filter(|&&i| i == unk).count())
                .sum();
            assert!(unks > 1000, "{unks} unk tokens");
            same_ids(&tj);
            add_tokens(&mut tj);
            same_ids(&tj);
        }
    }

    #[test]
    fn the_shipped_fixture_tokenizers_are_supported() {
        for d in [
            "tests/fixtures/e2e/qwen2",
            "tests/fixtures/e2e/gpt2",
            "tests/fixtures/text/bloom",
        ] {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(d)
                .join("tokenizer.json");
            let tj: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            same_ids(&tj);
        }
    }

    #[test]
    fn unsupported_pipelines_are_refused() {
        let base = trained(split_pre(QWEN2), Value::Null);
        let edits: [(&str, fn(&mut Value)); 4] = [
            (
                "regex replace",
                |t| {
                    t["normalizer"] =
                        json!({"type": "Replace", "pattern": {"Regex": " +"}, "content": " "})
                },
            ),
            ("dropout", |t| t["model"]["dropout"] = json!(0.1)),
            ("lstrip", |t| {
                add_tokens(t);
                t["added_tokens"][0]["lstrip"] = json!(true)
            }),
            ("prefix space", |t| {
                t["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = json!(true)
            }),
        ];
        for (name, edit) in edits {
            let mut tj = base.clone();
            edit(&mut tj);
            assert!(FastBpe::from_json(&tj, false).is_err(), "{name}");
        }
    }

    #[test]
    fn lookahead_emulation_matches_fancy_regex() {
        for pattern in [GPT2_PATTERN, QWEN2] {
            let sp = Splitter::new(pattern).unwrap();
            let fancy = fancy_regex::Regex::new(pattern).unwrap();
            for s in TEXTS
                .iter()
                .map(|t| t.to_string())
                .chain(random_texts(2000))
            {
                let mut ours = vec![];
                sp.split(&s, |w| ours.push(w.to_string()));
                let theirs: Vec<String> = fancy
                    .find_iter(&s)
                    .map(|m| m.unwrap().as_str().to_string())
                    .collect();
                assert_eq!(ours, theirs, "{pattern} on {s:?}");
            }
        }
    }
}
