//! Makes the quickstart's inputs: a small corpus of facts, an instruction
//! set asking about those facts, a byte-level BPE tokenizer trained on them,
//! and a randomly initialised tiny LLaMA-shaped model. The base model that
//! `recipes/quickstart.toml` fine-tunes is then pretrained from this random
//! init by `recipe` itself (`recipes/quickstart_pretrain.toml`, method = "full").
//!
//!   cargo run --release --example make_quickstart
//!   cargo run --release -- run recipes/quickstart_pretrain.toml
//!
//! Everything is deterministic (fixed seeds), so re-running gives the same files.

use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

const COLORS: &[(&str, &str)] = &[
    ("the sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("coal", "black"),
    ("a banana", "yellow"),
    ("a tomato", "red"),
    ("an orange", "orange"),
    ("a violet", "purple"),
    ("chocolate", "brown"),
    ("a lemon", "yellow"),
    ("the sea", "blue"),
    ("a frog", "green"),
];
const SOUNDS: &[(&str, &str)] = &[
    ("cow", "moo"),
    ("dog", "woof"),
    ("cat", "meow"),
    ("duck", "quack"),
    ("sheep", "baa"),
    ("lion", "roar"),
    ("owl", "hoot"),
    ("horse", "neigh"),
    ("pig", "oink"),
    ("bee", "buzz"),
    ("snake", "hiss"),
    ("mouse", "squeak"),
];
const CAPITALS: &[(&str, &str)] = &[
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Egypt", "Cairo"),
    ("China", "Beijing"),
    ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
];
const OPPOSITES: &[(&str, &str)] = &[
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("old", "new"),
    ("wet", "dry"),
    ("loud", "quiet"),
];
const NUMBERS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve",
];

fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// (question, answer) pairs; every answer is also a sentence of the corpus.
fn facts() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (x, c) in COLORS {
        v.push((format!("What color is {x}?"), format!("{} is {c}.", cap(x))));
    }
    for (a, s) in SOUNDS {
        v.push((format!("What does a {a} say?"), format!("A {a} says {s}.")));
    }
    for (c, p) in CAPITALS {
        v.push((
            format!("What is the capital of {c}?"),
            format!("The capital of {c} is {p}."),
        ));
    }
    for (a, b) in OPPOSITES {
        v.push((
            format!("What is the opposite of {a}?"),
            format!("The opposite of {a} is {b}."),
        ));
    }
    for w in NUMBERS.windows(2) {
        v.push((
            format!("What number comes after {}?", w[0]),
            format!("After {} comes {}.", w[0], w[1]),
        ));
    }
    v
}

/// Declarative sentences in a few phrasings, shuffled into short documents.
fn corpus() -> Vec<String> {
    let mut s: Vec<String> = Vec::new();
    for (x, c) in COLORS {
        s.push(format!("{} is {c}.", cap(x)));
        s.push(format!("The color of {x} is {c}."));
    }
    for (a, snd) in SOUNDS {
        s.push(format!("A {a} says {snd}."));
        s.push(format!("The {a} makes the sound {snd}."));
    }
    for (c, p) in CAPITALS {
        s.push(format!("The capital of {c} is {p}."));
        s.push(format!("{p} is the capital of {c}."));
    }
    for (a, b) in OPPOSITES {
        s.push(format!("The opposite of {a} is {b}."));
        s.push(format!("{} is the opposite of {b}.", cap(a)));
    }
    for w in NUMBERS.windows(2) {
        s.push(format!("After {} comes {}.", w[0], w[1]));
        s.push(format!("{} comes after {}.", cap(w[1]), w[0]));
    }
    let mut rng = 0x1234_5678_u64;
    let mut docs = Vec::new();
    for _ in 0..400 {
        let mut d = Vec::new();
        for _ in 0..4 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            d.push(s[(rng >> 33) as usize % s.len()].clone());
        }
        docs.push(d.join(" "));
    }
    docs
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        writeln!(f, "{r}")?;
    }
    f.flush()
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    let init = root.join("base-init");
    std::fs::create_dir_all(&init)?;

    let docs = corpus();
    write_jsonl(
        &root.join("corpus.jsonl"),
        &docs
            .iter()
            .map(|d| serde_json::json!({ "text": d }))
            .collect::<Vec<_>>(),
    )?;
    let qa = facts();
    write_jsonl(
        &root.join("instructions.jsonl"),
        &qa.iter()
            .map(|(q, a)| serde_json::json!({ "instruction": q, "input": "", "output": a }))
            .collect::<Vec<_>>(),
    )?;

    // Byte-level BPE, vocab 384, trained on the corpus and the questions.
    let specials = ["<|endoftext|>", "<|pad|>"];
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(384)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build()
        .into();
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let mut texts: Vec<String> = docs.clone();
    texts.extend(qa.iter().map(|(q, a)| format!("{q} {a}")));
    tok.train(&mut trainer, texts.into_iter())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tok.save(init.join("tokenizer.json"), true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let vocab = tok.get_vocab_size(true);
    let id = |s: &str| tok.token_to_id(s).unwrap_or(0);
    std::fs::write(
        init.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": null,
            "eos_token": "<|endoftext|>",
            "pad_token": "<|pad|>",
            "padding_side": "right",
            "model_max_length": 256,
        }))?,
    )?;

    // A tiny LLaMA: 4 layers, hidden 128, 4 heads (2 KV heads), SwiGLU 256.
    let (h, layers, heads, kv, inter) = (128usize, 4usize, 4usize, 2usize, 256usize);
    let hd = h / heads;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hd,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "vocab_size": vocab,
        "bos_token_id": id("<|endoftext|>"),
        "eos_token_id": id("<|endoftext|>"),
        "pad_token_id": id("<|pad|>"),
        "torch_dtype": "float32",
    });
    std::fs::write(
        init.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;

    let mut rng = 42u64;
    let mut normal = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let mut u = || {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
                };
                let (a, b) = (u(), u());
                (0.02 * (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
            })
            .collect()
    };
    let mut t: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        (vec![vocab, h], normal(vocab * h)),
    );
    t.insert("lm_head.weight".into(), (vec![vocab, h], normal(vocab * h)));
    t.insert("model.norm.weight".into(), (vec![h], vec![1.0; h]));
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (n, o, i) in [
            ("self_attn.q_proj", heads * hd, h),
            ("self_attn.k_proj", kv * hd, h),
            ("self_attn.v_proj", kv * hd, h),
            ("self_attn.o_proj", h, heads * hd),
            ("mlp.gate_proj", inter, h),
            ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter),
        ] {
            t.insert(format!("{p}.{n}.weight"), (vec![o, i], normal(o * i)));
        }
        t.insert(
            format!("{p}.input_layernorm.weight"),
            (vec![h], vec![1.0; h]),
        );
        t.insert(
            format!("{p}.post_attention_layernorm.weight"),
            (vec![h], vec![1.0; h]),
        );
    }
    let bytes: BTreeMap<String, (Vec<usize>, Vec<u8>)> = t
        .into_iter()
        .map(|(k, (s, v))| (k, (s, v.iter().flat_map(|x| x.to_le_bytes()).collect())))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, (s, b))| Ok((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize_to_file(views, meta, &init.join("model.safetensors"))?;
    println!(
        "wrote {} (vocab {vocab}), {} facts, {} corpus documents",
        init.display(),
        qa.len(),
        docs.len()
    );
    Ok(())
}
