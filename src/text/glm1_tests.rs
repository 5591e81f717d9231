//! ChatGLM-6B (v1) text: SPTokenizer's rules against the `sentencepiece` package
//! (tests/fixtures/glm6b/tokenizer*, tests/reference/glm6b_make_fixtures.py), and seed 001's
//! AdvertiseGen example through the `chatglm` template into exactly its printed ids and labels.
//! The same text rules on a Unigram ice_text.model like THUDM's (tests/fixtures/glm6b/unigram);
//! the real one is checked by tests/glm6b_tokenizer.rs when it is available.

use super::tokenizer::{glm1_postprocess, glm1_preprocess, TokenizerBundle};
use std::path::{Path, PathBuf};

fn glm6b(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/glm6b")
        .join(p)
}

#[test]
fn glm1_text_rules() {
    assert_eq!(glm1_preprocess("a\nb\tc"), "a<n>b<|tab|>c");
    assert_eq!(glm1_preprocess("a b  c   d"), "a b<|blank_2|>c<|blank_3|>d");
    // Longest first, 80 at most: 85 spaces = blank_80 + blank_5.
    assert_eq!(glm1_preprocess(&" ".repeat(85)), "<|blank_80|><|blank_5|>");
    assert_eq!(glm1_preprocess(&" ".repeat(81)), "<|blank_80|> ");
    for t in ["  a  b \t c\n  d  ", "x\n\n", &" ".repeat(85)] {
        assert_eq!(glm1_postprocess(&glm1_preprocess(t)), t);
    }
}

/// A SentencePiece model with ChatGLM-6B's special pieces inside its vocab encodes and decodes
/// as SPTokenizer (preprocess + sentencepiece) does.
#[test]
fn glm1_tokenizer_matches_sentencepiece() {
    let b = TokenizerBundle::from_dir(glm6b("tokenizer")).unwrap();
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(glm6b("tokenizer_ids.json")).unwrap()).unwrap();
    let sp = &fx["special"];
    for (name, id) in sp.as_object().unwrap() {
        assert_eq!(
            b.special_id(name).unwrap() as u64,
            id.as_u64().unwrap(),
            "{name}"
        );
    }
    assert_eq!(b.eos_id, Some(sp["<eop>"].as_u64().unwrap() as u32));
    assert_eq!(b.pad_id, Some(3));
    for c in fx["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(b.encode(text).unwrap(), want, "{text:?} ({})", c["pieces"]);
        assert_eq!(
            b.decode(&want, false).unwrap(),
            c["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
    }
}

/// A SentencePiece *Unigram* model named ice_text.model with the real ChatGLM-6B's settings
/// (control [gMASK] <sop> <eop>, user-defined <n> <|tab|> <|blank_N|>, a charsmap,
/// remove_extra_whitespaces) encodes and decodes as SPTokenizer does; among the strings: spaces
/// before or after a newline, whitespace-only text, ideographic spaces at the ends, "<sop>" as
/// text (tests/fixtures/glm6b/unigram*, tests/reference/glm6b_real_ids.py).
#[test]
fn glm1_unigram_ice_text_matches_sentencepiece() {
    let b = TokenizerBundle::from_dir(glm6b("unigram")).unwrap();
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(glm6b("unigram_ids.json")).unwrap()).unwrap();
    for (name, id) in fx["special"].as_object().unwrap() {
        assert_eq!(
            b.tok.token_to_id(name),
            Some(id.as_u64().unwrap() as u32),
            "{name}"
        );
    }
    assert_eq!((b.pad_id, b.eos_id), (Some(3), Some(9)));
    let mut bad = vec![];
    for c in fx["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        let got = b.encode(text).unwrap();
        if got != want {
            bad.push(format!(
                "{text:?}: got {got:?} want {want:?} {}",
                c["pieces"]
            ));
        } else if b.decode(&want, false).unwrap() != c["decoded"].as_str().unwrap() {
            bad.push(format!("decode {text:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert_eq!(fx["cases"].as_array().unwrap().len(), 35);
}

/// Seed 001's AdvertiseGen row: the pieces and ids it prints.
const SEED_PROMPT: &str =
    "类型#上衣*材质#牛仔布*颜色#白色*风格#简约*图案#刺绣*衣样式#外套*衣款式#破洞";
const SEED_ANSWER: &str = "简约而不简单的牛仔外套,白色的衣身十分百搭。衣身多处有做旧破洞设计,打破单调乏味,增加一丝造型看点。衣身后背处有趣味刺绣装饰,丰富层次感,彰显别样时尚。";
const SEED_A: [(&str, u32); 32] = [
    ("▁", 5),
    ("类型", 65421),
    ("#", 61),
    ("上衣", 75898),
    ("*", 32),
    ("材质", 68554),
    ("#", 61),
    ("牛仔", 77257),
    ("布", 64555),
    ("*", 32),
    ("颜色", 65107),
    ("#", 61),
    ("白色", 66268),
    ("*", 32),
    ("风格", 65347),
    ("#", 61),
    ("简约", 71689),
    ("*", 32),
    ("图案", 69768),
    ("#", 61),
    ("刺绣", 85428),
    ("*", 32),
    ("衣", 65173),
    ("样式", 73942),
    ("#", 61),
    ("外套", 70984),
    ("*", 32),
    ("衣", 65173),
    ("款式", 70936),
    ("#", 61),
    ("破", 64703),
    ("洞", 65509),
];
const SEED_B: [(&str, u32); 48] = [
    ("▁", 5),
    ("简约", 71689),
    ("而不", 66561),
    ("简单的", 67061),
    ("牛仔", 77257),
    ("外套", 70984),
    (",", 6),
    ("白色的", 72194),
    ("衣", 65173),
    ("身", 64290),
    ("十分", 64622),
    ("百搭", 81549),
    ("。", 63823),
    ("衣", 65173),
    ("身", 64290),
    ("多处", 83343),
    ("有", 63832),
    ("做", 63912),
    ("旧", 65209),
    ("破", 64703),
    ("洞", 65509),
    ("设计", 64051),
    (",", 6),
    ("打破", 69418),
    ("单调", 78598),
    ("乏味", 87019),
    (",", 6),
    ("增加", 64257),
    ("一丝", 71319),
    ("造型", 66069),
    ("看点", 74197),
    ("。", 63823),
    ("衣", 65173),
    ("身后", 72265),
    ("背", 64880),
    ("处", 64131),
    ("有", 63832),
    ("趣味", 73416),
    ("刺绣", 85428),
    ("装饰", 66261),
    (",", 6),
    ("丰富", 65594),
    ("层次感", 87834),
    (",", 6),
    ("彰显", 73412),
    ("别样", 105145),
    ("时尚", 65388),
    ("。", 63823),
];

/// ChatGLM-6B's special pieces (inside its sentencepiece vocabulary).
const SPECIAL: [(&str, u32); 5] = [
    ("<pad>", 3),
    ("[MASK]", 130000),
    ("[gMASK]", 130001),
    ("<sop>", 130004),
    ("<eop>", 130005),
];

/// A tokenizer directory whose vocabulary holds the seed's pieces at the seed's ids (BPE merges
/// that build each piece from its characters, sentencepiece-style normalizer) and ChatGLM-6B's
/// special ids, dressed as its tokenizer_config.
fn seed_tokenizer(dir: &Path) {
    let mut vocab: serde_json::Map<String, serde_json::Value> = Default::default();
    let mut merges: Vec<serde_json::Value> = Vec::new();
    vocab.insert("<unk>".into(), 0.into());
    for (t, id) in SPECIAL {
        vocab.insert(t.into(), id.into());
    }
    let mut next = 1000u32;
    for (piece, id) in SEED_A.iter().chain(SEED_B.iter()) {
        vocab.insert(piece.to_string(), (*id).into());
    }
    for (piece, _) in SEED_A.iter().chain(SEED_B.iter()) {
        let chars: Vec<String> = piece.chars().map(String::from).collect();
        let mut left = String::new();
        for (i, c) in chars.iter().enumerate() {
            for p in [c.clone(), format!("{left}{c}")] {
                if !vocab.contains_key(&p) {
                    vocab.insert(p, next.into());
                    next += 1;
                }
            }
            if i > 0 {
                let m = serde_json::json!([left, c]);
                if !merges.contains(&m) {
                    merges.push(m);
                }
            }
            left.push_str(c);
        }
    }
    let added = |id: u32, c: &str| {
        serde_json::json!({"id": id, "content": c, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": SPECIAL.iter().map(|(t, id)| added(*id, t)).collect::<Vec<_>>(),
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "ChatGLMTokenizer", "bos_token": "<sop>", "eos_token": "<eop>",
            "end_token": "</s>", "gmask_token": "[gMASK]", "mask_token": "[MASK]",
            "pad_token": "<pad>", "unk_token": "<unk>", "padding_side": "left"}"#,
    )
    .unwrap();
}

/// Seed 001's preprocess_function_train (max_source_length 64, max_target_length 64,
/// ignore_pad_token_for_loss) on its printed example gives exactly its input_ids and labels:
/// prompt + [gMASK] <sop> + answer + <eop>, labels -100 up to <sop>, then padded with <pad> (3)
/// to 128 with labels -100.
#[test]
fn seed_advertisegen_example_ids_and_labels() {
    use super::template::{Renderer, Template};
    use super::tokenize::{tokenize_example, tokenize_rows, TokenizeOptions};
    use super::tokenizer::PaddingSide;
    use crate::data::example::{Example, Message, Role};
    let tmp = tempfile::tempdir().unwrap();
    seed_tokenizer(tmp.path());
    let b = TokenizerBundle::from_dir(tmp.path()).unwrap();
    let ids = |x: &[(&str, u32)]| x.iter().map(|p| p.1).collect::<Vec<u32>>();
    assert_eq!(b.encode(SEED_PROMPT).unwrap(), ids(&SEED_A));
    assert_eq!(b.encode(SEED_ANSWER).unwrap(), ids(&SEED_B));
    let msg = |role, c: &str| Message {
        role,
        content: c.into(),
        metadata: String::new(),
    };
    let ex = Example {
        messages: vec![
            msg(Role::User, SEED_PROMPT),
            msg(Role::Assistant, SEED_ANSWER),
        ],
        source: "AdvertiseGen/train.json:1".into(),
        ..Default::default()
    };
    let r = Renderer::new(
        Template::from_name_or_source("chatglm", None).unwrap(),
        Some(&b),
    )
    .unwrap();
    let opts = TokenizeOptions {
        max_input_length: Some(64),
        max_output_length: Some(64),
        pad_to_max_length: true,
        padding_side: Some(PaddingSide::Right),
        ..Default::default()
    };
    // The seed's printed input_ids and labels.
    let mut want_ids = ids(&SEED_A);
    want_ids.extend([130001, 130004]);
    want_ids.extend(ids(&SEED_B));
    want_ids.push(130005);
    let mut want_labels = vec![-100i32; 33];
    want_labels.extend(want_ids[33..].iter().map(|&x| x as i32));
    assert_eq!(want_ids.len(), 83);
    assert_eq!(&want_ids[30..36], &[64703, 65509, 130001, 130004, 5, 71689]);
    let e = tokenize_example(&r, &b, &ex, &opts).unwrap().unwrap();
    assert_eq!(e.input_ids, want_ids);
    assert_eq!(e.labels, want_labels);
    assert!(!e.truncated);
    // Padded to max_source_length + max_target_length with <pad>, labels -100.
    let (rows, stats) = tokenize_rows(vec![ex.clone()], &r, &b, &opts).unwrap();
    let row = &rows.rows()[0];
    assert_eq!(row.input_ids.len(), 128);
    assert_eq!(&row.input_ids[..83], &want_ids[..]);
    assert!(row.input_ids[83..].iter().all(|&x| x == 3));
    assert_eq!(&row.labels[..83], &want_labels[..]);
    assert!(row.labels[83..].iter().all(|&x| x == -100));
    assert_eq!((stats.tokens, stats.pad_tokens), (83, 45));
    // Truncation as the seed's: the prompt to 64 - 1, the answer to 64 - 2 tokens.
    let short = TokenizeOptions {
        max_input_length: Some(11),
        max_output_length: Some(12),
        ..opts.clone()
    };
    let e = tokenize_example(&r, &b, &ex, &short).unwrap().unwrap();
    let mut want = ids(&SEED_A)[..10].to_vec();
    want.extend([130001, 130004]);
    want.extend(&ids(&SEED_B)[..10]);
    want.push(130005);
    assert_eq!(e.input_ids, want);
    assert_eq!(e.labels[..11], [-100; 11]);
    assert_eq!(e.labels[11], 130004);
}
