//! A model directory's tokenizer with the facts around it.
//!
//! `TokenizerBundle::from_dir` reads, in this order:
//! - `tokenizer.json` (merges as "a b" strings or [a, b] pairs both load),
//!   or else `tokenizer.model` (SentencePiece, converted as transformers'
//!   LlamaConverter does, see `sentencepiece.rs`; ChatGLM-6B v1's is
//!   `ice_text.model`);
//! - `tokenizer_config.json`: bos/eos/pad/unk tokens (strings or AddedToken
//!   objects), `padding_side`, `added_tokens_decoder`, `add_bos_token` /
//!   `add_eos_token`, `chat_template` (a string or a list of
//!   {name, template}), and `chat_template.jinja` beside it;
//! - `special_tokens_map.json` for tokens the config does not name;
//! - `generation_config.json` for the generation eos ids.
//!
//! ChatGLM tokenizers (`tokenizer_class` ChatGLMTokenizer, no tokenizer.json)
//! get ChatGLM3's nine special tokens right after the SentencePiece vocab
//! ([MASK], [gMASK], [sMASK], sop, eop, <|system|>, <|user|>, <|assistant|>,
//! <|observation|>), eos `</s>`, pad `<unk>`, left padding, and the
//! [gMASK] sop prefix that `tokenizer(text)` adds. Segment text is encoded
//! as plain sentencepiece (special tokens inside text are not matched).
//! ChatGLM-6B v1 (commands such as [gMASK] <sop> <eop> inside its SP vocab)
//! loads without the nine tokens and gets its SPTokenizer's text rules
//! (`glm1_preprocess` / `glm1_postprocess`): newline as `<n>`, tab as
//! `<|tab|>`, runs of 2..=80 spaces as `<|blank_N|>`.

use super::fast_bpe::FastBpe;
use super::sentencepiece::{added_token_json, SpModel};
use anyhow::{bail, Context, Result};
use indexmap::IndexMap;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::{NormalizedString, Normalizer, Tokenizer};

/// A token's byte range (start, end) in the encoded text.
pub type Span = (usize, usize);

pub const CHATGLM3_SPECIAL: [&str; 9] = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    Left,
    Right,
}

pub struct TokenizerBundle {
    pub tok: Tokenizer,
    /// For ChatGLM: a copy that does not match special tokens inside text,
    /// as ChatGLM's SPTokenizer.encode (plain sentencepiece) does; used by
    /// `encode` (segment text). `encode_with_offsets` (whole rendered
    /// strings) still matches them.
    tok_plain: Option<Tokenizer>,
    /// The ids-only encoder `encode` uses when the tokenizer is one it
    /// supports (byte-level BPE); `RECIPE_SLOW_TOKENIZER=1` turns it off.
    fast: Option<FastBpe>,
    /// ChatGLM-6B v1: text goes through `glm1_preprocess` before encoding and
    /// `glm1_postprocess` after decoding.
    glm1: bool,
    /// ChatGLM-6B v1 from tokenizer.model: `encode` adds sentencepiece's dummy prefix "▁"
    /// itself (once, at the start of non-empty text).
    glm1_prefix: bool,
    /// ... and sentencepiece's remove_extra_whitespaces on the whole text.
    glm1_trim: bool,
    /// ... and its charsmap normalization (nmt_nfkc in ice_text.model), before the trimming.
    glm1_charsmap: Option<NormalizerWrapper>,
    pub dir: PathBuf,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// Ids that end generation: generation_config eos ids, then eos_id.
    pub stop_ids: Vec<u32>,
    pub padding_side: PaddingSide,
    /// The default chat template (tokenizer_config or chat_template.jinja).
    pub chat_template: Option<String>,
    /// Named templates (e.g. "tool_use") when the config holds a list.
    pub chat_templates: IndexMap<String, String>,
    /// What `tokenizer(text)` (add_special_tokens=True) puts before / after.
    pub prefix_ids: Vec<u32>,
    pub suffix_ids: Vec<u32>,
    /// tokenizer_class from the config (e.g. "ChatGLMTokenizer"), if any.
    pub tokenizer_class: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v = serde_json::from_str(&s).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(v))
}

/// ChatGLM-6B v1's longest `<|blank_N|>` (SPTokenizer max_blank_length).
const GLM1_MAX_BLANK: usize = 80;

/// ChatGLM-6B v1's SPTokenizer `_preprocess`: "\n" -> `<n>`, "\t" -> `<|tab|>`,
/// then runs of spaces, longest first (80 down to 2), -> `<|blank_N|>`.
pub fn glm1_preprocess(text: &str) -> String {
    let mut t = text.replace('\n', "<n>").replace('\t', "<|tab|>");
    for n in (2..=GLM1_MAX_BLANK).rev() {
        let run = " ".repeat(n);
        if t.contains(&run) {
            t = t.replace(&run, &format!("<|blank_{n}|>"));
        }
    }
    t
}

/// ChatGLM-6B v1's SPTokenizer `decode` text rules, the inverse of `glm1_preprocess`.
pub fn glm1_postprocess(text: &str) -> String {
    let mut t = text.replace("<n>", "\n").replace("<|tab|>", "\t");
    for n in 2..=GLM1_MAX_BLANK {
        let tok = format!("<|blank_{n}|>");
        if t.contains(&tok) {
            t = t.replace(&tok, &" ".repeat(n));
        }
    }
    t
}

/// A token given as "text" or as an AddedToken object {"content": ...}.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Rewrites "a b" merges to [a, b] pairs (both forms are accepted by
/// tokenizers 0.23, this keeps older files with odd spaces loading too).
fn normalise_merges(tj: &mut Value) {
    if let Some(m) = tj
        .pointer_mut("/model/merges")
        .and_then(Value::as_array_mut)
    {
        for e in m.iter_mut() {
            if let Value::String(s) = e {
                if let Some((a, b)) = s.split_once(' ') {
                    *e = serde_json::json!([a, b]);
                }
            }
        }
    }
}

impl TokenizerBundle {
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<TokenizerBundle> {
        let dir = dir.as_ref();
        let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let stm = read_json(&dir.join("special_tokens_map.json"))?.unwrap_or(Value::Null);
        let tokenizer_class = cfg
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .map(str::to_string);
        let auto_map = cfg
            .get("auto_map")
            .map(|v| v.to_string())
            .unwrap_or_default();
        let is_glm = tokenizer_class.as_deref() == Some("ChatGLMTokenizer")
            || auto_map.contains("ChatGLMTokenizer");

        let tj_path = dir.join("tokenizer.json");
        // ChatGLM-6B v1 names its sentencepiece model ice_text.model.
        let sp_path = match dir.join("tokenizer.model") {
            p if !p.exists() && is_glm && dir.join("ice_text.model").exists() => {
                dir.join("ice_text.model")
            }
            p => p,
        };
        let mut from_sp = false;
        let mut glm1_prefix = false;
        let mut glm1_trim = false;
        let mut glm1_charsmap = None;
        let mut tj = if let Some(v) = read_json(&tj_path)? {
            v
        } else if sp_path.exists() {
            from_sp = true;
            let sp = SpModel::from_file(&sp_path)?;
            let mut tj = sp
                .to_tokenizer_json()
                .with_context(|| format!("converting {}", sp_path.display()))?;
            let n = sp.pieces.len();
            let added = tj["added_tokens"].as_array_mut().context("added_tokens")?;
            // ChatGLM2/3 keep their commands outside the SP vocab;
            // ChatGLM-6B v1 has [gMASK] <sop> <eop> inside it.
            let glm3 = is_glm && !sp.pieces.iter().any(|p| p.piece == "[gMASK]");
            let glm1 = is_glm
                && ["[gMASK]", "<sop>"]
                    .iter()
                    .all(|t| sp.pieces.iter().any(|p| p.piece == *t));
            if glm3 {
                for (i, t) in CHATGLM3_SPECIAL.iter().enumerate() {
                    added.push(added_token_json(n + i, t, true));
                }
            } else if glm1 {
                // sentencepiece normalizes the whole text (charsmap, then leading/trailing
                // spaces and its dummy prefix, once); tokenizers normalizes each piece between
                // user-defined pieces (<n>, <|blank_N|>), which would add "▁" and drop spaces
                // around every one of them. So `encode` does those steps itself.
                if let Some(norms) = tj["normalizer"]["normalizers"].as_array_mut() {
                    let before = norms.len();
                    norms.retain(|x| x["type"] != "Prepend");
                    glm1_prefix = norms.len() < before;
                    glm1_trim = sp.remove_extra_whitespaces;
                    norms.retain(|x| x["pattern"]["Regex"] != "^ +| +$");
                    if let Some(i) = norms.iter().position(|x| x["type"] == "Precompiled") {
                        let n = serde_json::from_value(norms.remove(i))
                            .with_context(|| format!("{}: charsmap", sp_path.display()))?;
                        glm1_charsmap = Some(n);
                    }
                }
            } else if let Some(dec) = cfg.get("added_tokens_decoder").and_then(Value::as_object) {
                // Tokens beyond the SP vocab, in id order.
                let mut extra: Vec<(usize, String, bool)> = dec
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            k.parse().ok()?,
                            token_str(Some(v))?,
                            v.get("special").and_then(Value::as_bool).unwrap_or(true),
                        ))
                    })
                    .filter(|(id, _, _)| *id >= n)
                    .collect();
                extra.sort();
                for (id, t, special) in extra {
                    added.push(added_token_json(id, &t, special));
                }
            }
            tj
        } else {
            bail!("{}: no tokenizer.json or tokenizer.model", dir.display());
        };
        normalise_merges(&mut tj);
        // ChatGLM's `encode` (segment text) skips special tokens in text.
        let fast = std::env::var_os("RECIPE_SLOW_TOKENIZER")
            .is_none()
            .then(|| FastBpe::from_json(&tj, is_glm).ok())
            .flatten();
        let json = serde_json::to_string(&tj)?;
        // The tokenizers crate panics on some malformed files (found by fuzzing).
        let tok: Tokenizer = crate::util::catch_panic(|| json.parse::<Tokenizer>())
            .map_err(|p| anyhow::anyhow!("{}: loading tokenizer: {p}", dir.display()))?
            .map_err(|e| anyhow::anyhow!("{}: loading tokenizer: {e}", dir.display()))?;
        // Added tokens get ids in order after the model vocab: check they
        // landed where the files say.
        if let Some(a) = tj["added_tokens"].as_array() {
            for t in a {
                let (Some(c), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) else {
                    continue;
                };
                let got = tok.token_to_id(c);
                if got != Some(id as u32) {
                    bail!(
                        "{}: added token {c:?} should have id {id}, the tokenizer gives {got:?}",
                        dir.display()
                    );
                }
            }
        }

        let pick = |key: &str| token_str(cfg.get(key)).or_else(|| token_str(stm.get(key)));
        let mut bos_token = pick("bos_token");
        let mut eos_token = pick("eos_token");
        let mut pad_token = pick("pad_token");
        let mut unk_token = pick("unk_token");
        if is_glm {
            eos_token.get_or_insert_with(|| "</s>".into());
            pad_token.get_or_insert_with(|| "<unk>".into());
            unk_token.get_or_insert_with(|| "<unk>".into());
        }
        if from_sp && !is_glm {
            bos_token.get_or_insert_with(|| "<s>".into());
            eos_token.get_or_insert_with(|| "</s>".into());
            unk_token.get_or_insert_with(|| "<unk>".into());
        }
        let id_of = |t: &Option<String>, key: &str| -> Result<Option<u32>> {
            match t {
                None => Ok(None),
                Some(s) => match tok.token_to_id(s) {
                    Some(id) => Ok(Some(id)),
                    None => bail!("{}: {key} {s:?} is not in the vocabulary", dir.display()),
                },
            }
        };
        let bos_id = id_of(&bos_token, "bos_token")?;
        let eos_id = id_of(&eos_token, "eos_token")?;
        let pad_id = id_of(&pad_token, "pad_token")?;
        let unk_id = id_of(&unk_token, "unk_token")?;

        let padding_side = match cfg.get("padding_side").and_then(Value::as_str) {
            Some("left") => PaddingSide::Left,
            Some("right") | None if !is_glm => PaddingSide::Right,
            None => PaddingSide::Left,
            Some(o) => bail!(
                "{}/tokenizer_config.json: padding_side {o:?}, expected \"left\" or \"right\"",
                dir.display()
            ),
        };

        // What tokenizer(text) adds around the text.
        let (mut prefix_ids, mut suffix_ids) = if is_glm && tok.token_to_id("sop").is_some() {
            let g = |t: &str| tok.token_to_id(t).context("ChatGLM special token");
            (vec![g("[gMASK]")?, g("sop")?], vec![])
        } else {
            let with = tok
                .encode("a", true)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .get_ids()
                .to_vec();
            let without = tok
                .encode("a", false)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .get_ids()
                .to_vec();
            match (0..=with.len().saturating_sub(without.len()))
                .find(|&i| with[i..].starts_with(&without))
            {
                Some(i) => (with[..i].to_vec(), with[i + without.len()..].to_vec()),
                None => (vec![], vec![]),
            }
        };
        let llama_like = from_sp
            || tokenizer_class
                .as_deref()
                .is_some_and(|c| c.starts_with("Llama"));
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .or(if from_sp && !is_glm { Some(true) } else { None });
        if let (Some(b), Some(add)) = (bos_id, add_bos) {
            if add && !prefix_ids.contains(&b) && (llama_like || cfg.get("add_bos_token").is_some())
            {
                prefix_ids.insert(0, b);
            } else if !add {
                prefix_ids.retain(|&x| x != b);
            }
        }
        if let (Some(e), Some(add)) = (eos_id, cfg.get("add_eos_token").and_then(Value::as_bool)) {
            if add && !suffix_ids.contains(&e) {
                suffix_ids.push(e);
            } else if !add {
                suffix_ids.retain(|&x| x != e);
            }
        }

        // Chat templates: chat_template.jinja wins over the config.
        let mut chat_templates = IndexMap::new();
        let mut chat_template = None;
        match cfg.get("chat_template") {
            Some(Value::String(s)) => chat_template = Some(s.clone()),
            Some(Value::Array(list)) => {
                for t in list {
                    if let (Some(n), Some(s)) = (t["name"].as_str(), t["template"].as_str()) {
                        chat_templates.insert(n.to_string(), s.to_string());
                    }
                }
                chat_template = chat_templates.get("default").cloned();
            }
            _ => {}
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            chat_template = Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("reading {}", jinja.display()))?,
            );
        }

        let mut stop_ids = Vec::new();
        if let Some(g) = read_json(&dir.join("generation_config.json"))? {
            stop_ids.extend(crate::formats::config::ids(g.get("eos_token_id")));
        }
        if is_glm {
            for t in ["<|user|>", "<|observation|>"] {
                stop_ids.extend(tok.token_to_id(t));
            }
        }
        if let Some(e) = eos_id {
            if !stop_ids.contains(&e) {
                stop_ids.insert(0, e);
            }
        }

        let glm1 =
            is_glm && tok.token_to_id("<sop>").is_some() && tok.token_to_id("[gMASK]").is_some();
        let tok_plain = is_glm.then(|| {
            let mut t = tok.clone();
            t.set_encode_special_tokens(true);
            t
        });
        Ok(TokenizerBundle {
            tok,
            tok_plain,
            fast,
            glm1,
            glm1_prefix,
            glm1_trim,
            glm1_charsmap,
            dir: dir.to_path_buf(),
            bos_token,
            eos_token,
            pad_token,
            unk_token,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            stop_ids,
            padding_side,
            chat_template,
            chat_templates,
            prefix_ids,
            suffix_ids,
            tokenizer_class,
        })
    }

    /// Ids of `text` without special tokens added (added tokens in the text
    /// are still matched, as transformers does, except for ChatGLM).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let pre;
        let text = if self.glm1 {
            pre = self.glm1_normalize(text)?;
            pre.as_str()
        } else {
            text
        };
        if let Some(f) = &self.fast {
            return Ok(f.encode(text));
        }
        let e = self
            .tok_plain
            .as_ref()
            .unwrap_or(&self.tok)
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(e.get_ids().to_vec())
    }

    /// ChatGLM-6B v1 text as sentencepiece sees it: `glm1_preprocess`, then (for a
    /// tokenizer.model) the charsmap, leading/trailing spaces removed and runs of spaces
    /// collapsed over the whole text, and one dummy prefix "▁" if anything is left.
    fn glm1_normalize(&self, text: &str) -> Result<String> {
        let mut t = glm1_preprocess(text);
        if let Some(n) = &self.glm1_charsmap {
            let mut ns = NormalizedString::from(t.as_str());
            n.normalize(&mut ns)
                .map_err(|e| anyhow::anyhow!("normalizing {text:?}: {e}"))?;
            t = ns.get().to_string();
        }
        if self.glm1_trim {
            t = t
                .split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
        }
        if self.glm1_prefix && !t.is_empty() {
            t.insert(0, '\u{2581}');
        }
        Ok(t)
    }

    /// Whether `encode` runs the fast ids-only encoder (`fast_bpe`).
    pub fn has_fast_encoder(&self) -> bool {
        self.fast.is_some()
    }

    /// Ids and byte offsets (start, end) into `text`, without special tokens.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Span>)> {
        // (Not for ChatGLM, whose fast encoder skips special tokens.)
        let fast = self.fast.as_ref().filter(|_| self.tok_plain.is_none());
        if let Some(r) = fast.and_then(|f| f.encode_with_offsets(text)) {
            return Ok(r);
        }
        let e = self
            .tok
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok((e.get_ids().to_vec(), e.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let s = self
            .tok
            .decode(ids, skip_special)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        Ok(if self.glm1 { glm1_postprocess(&s) } else { s })
    }

    /// Id of a special piece such as "<|user|>" or "[gMASK]".
    pub fn special_id(&self, content: &str) -> Result<u32> {
        self.tok.token_to_id(content).with_context(|| {
            format!(
                "special token {content:?} is not in the tokenizer of {}",
                self.dir.display()
            )
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    pub fn is_chatglm(&self) -> bool {
        self.tokenizer_class.as_deref() == Some("ChatGLMTokenizer")
            || self.tok.token_to_id("[gMASK]").is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/text")
            .join(p)
    }

    #[test]
    fn glm3_dir() {
        let b = TokenizerBundle::from_dir(fixture("glm3")).unwrap();
        assert_eq!(b.special_id("[gMASK]").unwrap(), 701);
        assert_eq!(b.special_id("<|observation|>").unwrap(), 708);
        assert_eq!((b.eos_id, b.pad_id), (Some(2), Some(0)));
        assert_eq!(b.padding_side, PaddingSide::Left);
        assert_eq!(b.prefix_ids, vec![701, 703]);
        assert_eq!(b.stop_ids, vec![2, 706, 708]);
        assert!(b.chat_template.as_deref().unwrap().contains("[gMASK]sop"));
        // Inside segment text, special tokens are plain text (ChatGLM's
        // SPTokenizer.encode is plain sentencepiece): "philosophy" keeps
        // its "sop"; whole rendered strings still match them.
        let ids = b.encode("philosophy <|user|></s>").unwrap();
        assert!(
            !ids.iter().any(|&i| i == 703 || i == 706 || i == 2),
            "{ids:?}"
        );
        let (ids, _) = b.encode_with_offsets("[gMASK]sop<|user|>").unwrap();
        assert_eq!(ids, vec![701, 703, 706]);
    }

    #[test]
    fn llama_dir_adds_bos() {
        let b = TokenizerBundle::from_dir(fixture("llama")).unwrap();
        assert_eq!((b.bos_id, b.eos_id, b.pad_id), (Some(1), Some(2), Some(0)));
        assert_eq!(b.prefix_ids, vec![1]);
        assert!(b.suffix_ids.is_empty());
        assert_eq!(b.padding_side, PaddingSide::Right);
    }

    #[test]
    fn bloom_dir_and_string_merges() {
        let b = TokenizerBundle::from_dir(fixture("bloom")).unwrap();
        assert_eq!(
            (b.bos_id, b.eos_id, b.pad_id, b.unk_id),
            (Some(1), Some(2), Some(3), Some(0))
        );
        assert_eq!(b.padding_side, PaddingSide::Left);
        assert!(b.prefix_ids.is_empty() && b.suffix_ids.is_empty());
        // The same tokenizer with "a b" merges loads and encodes the same.
        let mut tj: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("bloom/tokenizer.json")).unwrap(),
        )
        .unwrap();
        let merges = tj["model"]["merges"].as_array_mut().unwrap();
        assert!(merges[0].is_array());
        for m in merges.iter_mut() {
            let s = format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap());
            *m = Value::String(s);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            serde_json::to_string(&tj).unwrap(),
        )
        .unwrap();
        let b2 = TokenizerBundle::from_dir(dir.path()).unwrap();
        let t = "Machine learning 人工智能 1234";
        assert_eq!(b.encode(t).unwrap(), b2.encode(t).unwrap());
    }

    #[test]
    fn config_variants() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture("bloom/tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "</s>", "special": true, "__type": "AddedToken"},
                "chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"pad_token": "<pad>"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [2, 1]}"#,
        )
        .unwrap();
        let b = TokenizerBundle::from_dir(dir.path()).unwrap();
        assert_eq!((b.eos_id, b.pad_id), (Some(2), Some(3)));
        assert_eq!(b.chat_template.as_deref(), Some("D"));
        assert_eq!(b.chat_templates["tool_use"], "T");
        assert_eq!(b.stop_ids, vec![2, 1]);
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        let b = TokenizerBundle::from_dir(dir.path()).unwrap();
        assert_eq!(b.chat_template.as_deref(), Some("J"));
        // A missing pad token is reported with the file.
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"pad_token": "<nope>"}"#,
        )
        .unwrap();
        let e = TokenizerBundle::from_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("pad_token \"<nope>\" is not in the vocabulary"),
            "{e}"
        );
    }
}
