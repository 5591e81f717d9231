//! The fast ids-only encoder (`text::fast_bpe`) gives `tokenizers`' ids on
//! real text: every string in `examples/data` plus mixed random strings,
//! for the shipped byte-level and SentencePiece fixtures and, when `.ci/qwen_tokenizer.sh`
//! fetched it (RECIPE_QWEN_TOKENIZER), Qwen2.5's real 151k-token
//! tokenizer.json (NFC, the Qwen2 split regex, ~150k merges).

use recipe::text::TokenizerBundle;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Every string of the sample data (JSON values, CSV lines), and random
/// concatenations of them with whitespace runs and special tokens.
fn corpus() -> Vec<String> {
    let mut files = vec![];
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = vec![];
    for p in files {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        match ext {
            "jsonl" => text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .for_each(|v: Value| strings(&v, &mut out)),
            "json" => serde_json::from_str(&text)
                .iter()
                .for_each(|v| strings(v, &mut out)),
            "csv" | "txt" => out.extend(text.lines().map(str::to_string)),
            _ => {}
        }
    }
    assert!(out.len() > 100, "sample data strings: {}", out.len());
    let glue = [
        "",
        " ",
        "\n",
        "\n\n",
        "  ",
        "\t",
        "<|im_end|>",
        "<|endoftext|>",
        "\r\n",
        " \n ",
    ];
    let mut st = 7u64;
    let mut next = move || {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        st as usize
    };
    let n = out.len();
    for _ in 0..2000 {
        let mut s = String::new();
        for _ in 0..1 + next() % 4 {
            let x = &out[next() % n];
            let cut = x.char_indices().nth(next() % 40).map_or(x.len(), |c| c.0);
            s.push_str(&x[..cut]);
            s.push_str(glue[next() % glue.len()]);
        }
        out.push(s);
    }
    out
}

/// `encode` and `encode_with_offsets` (the fast path) equal `tokenizers`
/// on the corpus.
fn check(dir: &Path, corpus: &[String]) -> usize {
    let b = TokenizerBundle::from_dir(dir).unwrap();
    assert!(b.has_fast_encoder(), "{}: no fast encoder", dir.display());
    // ChatGLM's encode leaves special tokens in text unmatched.
    let mut plain = b.tok.clone();
    plain.set_encode_special_tokens(b.is_chatglm());
    let mut n = 0;
    for t in corpus {
        let p = plain.encode(t.as_str(), false).unwrap();
        let d = dir.display();
        assert_eq!(b.encode(t).unwrap(), p.get_ids(), "{d}: {t:?}");
        let e = b.tok.encode(t.as_str(), false).unwrap();
        let (ids, spans) = b.encode_with_offsets(t).unwrap();
        let want = (e.get_ids(), e.get_offsets());
        assert_eq!((&ids[..], &spans[..]), want, "{d}: {t:?}");
        n += ids.len();
    }
    n
}

#[test]
fn fixture_tokenizers() {
    let c = corpus();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for d in [
        "qwen2", "qwen", "llama3", "gpt2", "bloom", "llama", "chatglm",
    ] {
        assert!(check(&root.join("e2e").join(d), &c) > 50_000, "{d}");
    }
    // SentencePiece models converted from tokenizer.model (byte fallback).
    for d in ["llama", "glm3"] {
        assert!(check(&root.join("text").join(d), &c) > 50_000, "{d}");
    }
    // A Precompiled (nmt_nfkc) normalizer is left to tokenizers.
    let nfkc = TokenizerBundle::from_dir(root.join("text/sp_nfkc")).unwrap();
    assert!(!nfkc.has_fast_encoder());
}

#[test]
fn real_qwen_tokenizer() {
    let Some(dir) = std::env::var_os("RECIPE_QWEN_TOKENIZER").map(PathBuf::from) else {
        if std::env::var_os("RECIPE_REQUIRE_QWEN_TOKENIZER").is_some() {
            panic!("RECIPE_REQUIRE_QWEN_TOKENIZER is set but RECIPE_QWEN_TOKENIZER is not");
        }
        eprintln!("skipped: set RECIPE_QWEN_TOKENIZER (eval \"$(.ci/qwen_tokenizer.sh)\")");
        return;
    };
    let n = check(&dir, &corpus());
    assert!(n > 20_000, "{n} tokens");
}
