//! SentencePiece `tokenizer.model` -> `tokenizers::Tokenizer`.
//!
//! A minimal protobuf reader for `ModelProto` (only the fields the
//! conversion needs) and the conversion transformers' `LlamaConverter`
//! does (convert_slow_tokenizer.py, transformers 5.23):
//! - vocab: pieces in id order;
//! - merges (`generate_merges`): for every piece, every split (l, r) with
//!   both halves in the vocab, the splits of one piece sorted by (id l, id r);
//!   then all merges stably sorted by (score, len l, len r) descending;
//! - BPE with `unk_token` = trainer_spec.unk_piece, fuse_unk, byte_fallback;
//! - normalizer Prepend("▁") (when add_dummy_prefix) + Replace(" ", "▁");
//! - decoder Replace("▁", " "), ByteFallback, Fuse, Strip(1 left);
//! - control (type 3) and unknown pieces become special added tokens,
//!   user-defined pieces (type 4) plain added tokens.
//!
//! Beyond LlamaConverter (so that models whose truth is the `sentencepiece`
//! library itself, like ChatGLM3's, encode as it does): a non-empty
//! `precompiled_charsmap` becomes a `Precompiled` normalizer first, and
//! `remove_extra_whitespaces` strips leading/trailing spaces and collapses
//! runs of spaces before the dummy prefix. LLaMA-style models (identity
//! normalization, no whitespace removal) get exactly LlamaConverter's
//! tokenizer.
//!
//! Unigram models (type 1, e.g. ChatGLM-6B v1's ice_text.model) become a
//! `tokenizers` Unigram model with the pieces' scores, the same normalizer
//! and decoder; control, unknown, unused and byte pieces score so low that
//! text does not produce them (`unigram_json`).

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// SentencePiece piece type (sentencepiece_model.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

#[derive(Clone, Debug)]
pub struct SpPiece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The parts of `ModelProto` we use.
#[derive(Clone, Debug)]
pub struct SpModel {
    pub pieces: Vec<SpPiece>,
    /// trainer_spec.model_type: 1 unigram, 2 bpe, 3 word, 4 char.
    pub model_type: u64,
    pub byte_fallback: bool,
    pub unk_piece: String,
    pub unk_id: i64,
    pub bos_id: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    /// normalizer_spec.precompiled_charsmap (empty for "identity").
    pub charsmap: Vec<u8>,
}

/// Protobuf wire reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).context("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes at byte {}", self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.with_context(|| {
            format!("field of {n} bytes runs past the end at byte {}", self.pos)
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next (field number, value), or None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into()?)),
            w => bail!(
                "unsupported protobuf wire type {w} (field {num}) at byte {}",
                self.pos
            ),
        };
        Ok(Some((num, f)))
    }
}

fn as_string(b: &[u8], what: &str) -> Result<String> {
    String::from_utf8(b.to_vec()).with_context(|| format!("{what} is not UTF-8"))
}

impl SpModel {
    pub fn from_file(path: &Path) -> Result<SpModel> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        SpModel::parse(&bytes)
            .with_context(|| format!("parsing SentencePiece model {}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<SpModel> {
        let mut m = SpModel {
            pieces: Vec::new(),
            model_type: 1,
            byte_fallback: false,
            unk_piece: "<unk>".into(),
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            charsmap: Vec::new(),
        };
        let mut r = Reader::new(bytes);
        while let Some((num, f)) = r.next()? {
            match (num, f) {
                (1, Field::Bytes(b)) => m
                    .pieces
                    .push(parse_piece(b).with_context(|| format!("piece {}", m.pieces.len()))?),
                (2, Field::Bytes(b)) => parse_trainer_spec(b, &mut m).context("trainer_spec")?,
                (3, Field::Bytes(b)) => {
                    parse_normalizer_spec(b, &mut m).context("normalizer_spec")?
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            bail!("no pieces: not a SentencePiece model");
        }
        Ok(m)
    }

    /// The equivalent `tokenizer.json` (LlamaConverter recipe, see module doc).
    pub fn to_tokenizer_json(&self) -> Result<Value> {
        let model = match self.model_type {
            1 => self.unigram_json(),
            2 => self.bpe_json(),
            t => bail!(
                "SentencePiece model type {t} is not supported (only unigram, type 1, and BPE, type 2)"
            ),
        };
        let added: Vec<Value> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                matches!(
                    p.kind,
                    PieceType::Control | PieceType::Unknown | PieceType::UserDefined
                )
            })
            .map(|(i, p)| added_token_json(i, &p.piece, p.kind != PieceType::UserDefined))
            .collect();
        let mut norms = Vec::new();
        if !self.charsmap.is_empty() {
            norms.push(
                json!({"type": "Precompiled", "precompiled_charsmap": base64(&self.charsmap)}),
            );
        }
        if self.remove_extra_whitespaces {
            norms.push(json!({"type": "Replace", "pattern": {"Regex": "^ +| +$"}, "content": ""}));
            norms.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
        }
        if self.add_dummy_prefix {
            norms.push(json!({"type": "Prepend", "prepend": "▁"}));
        }
        norms.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        let mut decs = vec![
            json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_dummy_prefix {
            decs.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": norms},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": decs},
            "model": model,
        }))
    }

    /// LlamaConverter's BPE model: the vocab and `generate_merges`.
    fn bpe_json(&self) -> Value {
        let mut vocab: HashMap<&str, usize> = HashMap::with_capacity(self.pieces.len());
        let mut vocab_json = Map::new();
        for (i, p) in self.pieces.iter().enumerate() {
            vocab.insert(p.piece.as_str(), i);
            vocab_json.insert(p.piece.clone(), json!(i));
        }
        let merges = generate_merges(&self.pieces, &vocab);
        json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": self.unk_piece,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": self.byte_fallback,
            "ignore_merges": false,
            "vocab": vocab_json,
            "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        })
    }

    /// A Unigram model: [piece, score] in id order. sentencepiece never
    /// matches control, unknown, unused or byte pieces inside text; Unigram's
    /// lattice would (they score 0, the best score), so they score
    /// `UNMATCHABLE`. (Renaming them is not possible: added tokens take the
    /// model's id for their text.) That lowers the Unigram minimum score and
    /// so the score of an unknown character, which changes nothing where every
    /// path holds the same unknown characters: trained pieces only hold
    /// characters that are pieces, but a control piece holding one that is not
    /// (ChatGLM-6B's vocabulary has all of ASCII) could still match from text.
    fn unigram_json(&self) -> Value {
        let vocab: Vec<Value> = self
            .pieces
            .iter()
            .map(|p| {
                let score = match p.kind {
                    PieceType::Normal | PieceType::UserDefined => f64::from(p.score),
                    _ => UNMATCHABLE,
                };
                json!([p.piece, score])
            })
            .collect();
        json!({
            "type": "Unigram",
            "unk_id": self.unk_id.max(0),
            "vocab": vocab,
            "byte_fallback": self.byte_fallback,
        })
    }
}

/// Unigram score of pieces that text must not produce (no real score is near it).
const UNMATCHABLE: f64 = -1e9;

/// Standard base64 with padding (tokenizers stores the charsmap so).
fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn added_token_json(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": special})
}

/// transformers' `generate_merges(vocab, vocab_scores)`.
fn generate_merges(pieces: &[SpPiece], vocab: &HashMap<&str, usize>) -> Vec<(String, String)> {
    // (left, right, score), in piece order then (id l, id r).
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for p in pieces {
        let s = p.piece.as_str();
        let mut local: Vec<(&str, &str, f32)> = Vec::new();
        for (i, _) in s.char_indices().skip(1) {
            let (l, r) = s.split_at(i);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                local.push((l, r, p.score));
            }
        }
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // Python: sorted(key=(score, len(l), len(r)), reverse=True) is stable.
    let clen = |s: &str| s.chars().count();
    merges.sort_by(|a, b| {
        (b.2, clen(b.0), clen(b.1))
            .partial_cmp(&(a.2, clen(a.0), clen(a.1)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

fn parse_piece(b: &[u8]) -> Result<SpPiece> {
    let mut p = SpPiece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut r = Reader::new(b);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(s)) => p.piece = as_string(s, "piece")?,
            (2, Field::Fixed32(v)) => {
                p.score = f32::from_bits(v);
                // A NaN score has no place in the merge order (found by fuzzing).
                if p.score.is_nan() {
                    bail!("piece {:?} has a NaN score", p.piece);
                }
            }
            (3, Field::Varint(v)) => {
                p.kind = match v {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    t => bail!("unknown piece type {t}"),
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

fn parse_trainer_spec(b: &[u8], m: &mut SpModel) -> Result<()> {
    let mut r = Reader::new(b);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (3, Field::Varint(v)) => m.model_type = v,
            (35, Field::Varint(v)) => m.byte_fallback = v != 0,
            // int32 fields are sign-extended varints.
            (40, Field::Varint(v)) => m.unk_id = v as i64 as i32 as i64,
            (41, Field::Varint(v)) => m.bos_id = v as i64 as i32 as i64,
            (42, Field::Varint(v)) => m.eos_id = v as i64 as i32 as i64,
            (43, Field::Varint(v)) => m.pad_id = v as i64 as i32 as i64,
            (45, Field::Bytes(s)) => m.unk_piece = as_string(s, "unk_piece")?,
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer_spec(b: &[u8], m: &mut SpModel) -> Result<()> {
    let mut r = Reader::new(b);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (2, Field::Bytes(c)) => m.charsmap = c.to_vec(),
            (3, Field::Varint(v)) => m.add_dummy_prefix = v != 0,
            (4, Field::Varint(v)) => m.remove_extra_whitespaces = v != 0,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(p: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/text")
            .join(p)
    }

    #[test]
    fn parses_spec_fields() {
        let m = SpModel::from_file(&fixture("glm3/tokenizer.model")).unwrap();
        assert_eq!(m.pieces.len(), 700);
        assert_eq!(m.model_type, 2);
        assert!(m.byte_fallback);
        assert!(m.add_dummy_prefix);
        assert!(!m.remove_extra_whitespaces);
        assert_eq!((m.unk_id, m.bos_id, m.eos_id, m.pad_id), (0, 1, 2, -1));
        assert_eq!(m.pieces[0].kind, PieceType::Unknown);
        assert_eq!(m.pieces[1].piece, "<s>");
        assert_eq!(m.pieces[13].piece, "<0x0A>");
        assert_eq!(m.pieces[13].kind, PieceType::Byte);
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    fn load(model: &str) -> tokenizers::Tokenizer {
        let m = SpModel::from_file(&fixture(model)).unwrap();
        serde_json::to_string(&m.to_tokenizer_json().unwrap())
            .unwrap()
            .parse()
            .unwrap()
    }

    fn check_ids(tok: &tokenizers::Tokenizer, want: &Value) {
        let mut bad = Vec::new();
        for c in want["cases"].as_array().unwrap() {
            let text = c["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
            let got = tok.encode(text, false).unwrap().get_ids().to_vec();
            if got != ids {
                bad.push(format!("{text:?}: got {got:?} want {ids:?}"));
            }
        }
        assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
    }

    /// A model with a charsmap and remove_extra_whitespaces
    /// (tests/fixtures/text/sp_ids_nfkc.json).
    #[test]
    fn converter_follows_sentencepiece_normalization() {
        let m = SpModel::from_file(&fixture("sp_nfkc/tokenizer.model")).unwrap();
        assert!(m.remove_extra_whitespaces && !m.charsmap.is_empty());
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("sp_ids_nfkc.json")).unwrap())
                .unwrap();
        check_ids(&load("sp_nfkc/tokenizer.model"), &want);
    }

    /// Ids from the `sentencepiece` package (tests/fixtures/text/sp_ids.json).
    #[test]
    fn converter_matches_sentencepiece_ids() {
        let tok = load("glm3/tokenizer.model");
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("sp_ids.json")).unwrap())
                .unwrap();
        check_ids(&tok, &want);
        // ChatGLM3 behaviour: "\n" alone -> [dummy prefix, <0x0A>].
        let nl = tok.encode("\n", false).unwrap().get_ids().to_vec();
        assert_eq!(
            nl,
            vec![
                want["dummy_prefix_id"].as_u64().unwrap() as u32,
                want["newline_id"].as_u64().unwrap() as u32
            ]
        );
        // Decoding drops the dummy prefix and fuses byte pieces.
        let e = tok.encode("emoji 😀 and 你好", false).unwrap();
        assert_eq!(tok.decode(e.get_ids(), true).unwrap(), "emoji 😀 and 你好");
    }
}
