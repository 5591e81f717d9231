//! ChatGLM-6B (v1) against tests/reference/glm6b_modeling.py, our torch transcription of THUDM's
//! modeling_chatglm.py (fixtures: tests/reference/glm6b_make_fixtures.py). Same tolerances as
//! tests.rs: logits/loss 1e-5, gradients 1e-4, relative to 1 + |ref|.

use super::tests::{
    check_checkpointing, check_forward, check_full_grads, check_lora, close, dir, fixture,
    valid_logits,
};
use super::*;
use crate::model::lora;

const TINY: &str = "glm6b/tiny";

#[test]
fn forward_matches_reference() {
    check_forward(TINY);
}

#[test]
fn full_grads_match_autograd() {
    check_full_grads(TINY);
}

#[test]
fn lora_matches_peft() {
    check_lora(TINY);
}

#[test]
fn checkpointing_is_identical() {
    check_checkpointing(TINY);
}

/// The fixture's config: GLM family, tied head, 2D positions with its own special ids.
#[test]
fn tiny_config_reads_as_glm() {
    let a = Arch::from_dir(&dir(TINY)).unwrap();
    assert_eq!(a.family, Family::Glm);
    assert_eq!(a.family.name(), "chatglm6b");
    assert!(a.tied);
    assert_eq!(a.qkv, QkvLayout::PerHead);
    assert_eq!(a.mlp, MlpKind::GeluTanh);
    assert_eq!(
        a.positions,
        Positions::Glm2d {
            rot_dim: 8,
            base: 10000.0,
            sop: 44,
            gmask: 41,
            mask: 40
        }
    );
    assert_eq!(a.glm_alpha(), Some(56f32.sqrt()));
    assert_eq!(
        a.module_names(),
        ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    );
}

/// THUDM/chatglm-6b's config.json: 6,173,286,400 parameters (embedding tied to lm_head).
#[test]
fn chatglm_6b_counts_from_config_alone() {
    let cfg = r#"{"architectures":["ChatGLMModel"],"bos_token_id":130004,"eos_token_id":130005,
      "mask_token_id":130000,"gmask_token_id":130001,"pad_token_id":3,"hidden_size":4096,
      "inner_hidden_size":16384,"layernorm_epsilon":1e-05,"max_sequence_length":2048,
      "model_type":"chatglm","num_attention_heads":32,"num_layers":28,"position_encoding_2d":true,
      "torch_dtype":"float16","use_cache":true,"vocab_size":130528,"quantization_bit":0,
      "pre_seq_len":null,"prefix_projection":false}"#;
    let a = Arch::from_config_json(cfg, "config.json").unwrap();
    assert_eq!(a.family, Family::Glm);
    assert_eq!(a.param_counts().total(), 6_173_286_400);
    assert_eq!(a.eos_token_id, Some(130005));
    let refuse = |from: &str, to: &str| {
        Arch::from_config_json(&cfg.replace(from, to), "config.json")
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        refuse(r#""pre_seq_len":null"#, r#""pre_seq_len":128"#),
        "config.json: key \"pre_seq_len\": P-tuning v2 prefix checkpoints are not supported; use the base model"
    );
    assert_eq!(
        refuse(r#""quantization_bit":0"#, r#""quantization_bit":4"#),
        "config.json: key \"quantization_bit\": THUDM's pre-quantized (int4/int8) checkpoints are not supported; use the f16 model (with `quantize` for QLoRA)"
    );
    assert_eq!(
        refuse(r#""position_encoding_2d":true"#, r#""position_encoding_2d":false"#),
        "config.json: key \"position_encoding_2d\": only true (ChatGLM-6B's 2D positions) is supported"
    );
}

/// Seed 001's example: positions count to [gMASK] (index 32), then stay there; block positions
/// start at 1 on <sop> (index 33); the context (bidirectional prefix) is the 33 tokens before it.
#[test]
fn seed_example_positions() {
    let (gmask, sop, eop) = (130001, 130004, 130005);
    let mut ids: Vec<u32> = (0..32).map(|i| 60000 + i).collect();
    ids.extend([gmask, sop]);
    ids.extend((0..48).map(|i| 70000 + i));
    ids.push(eop);
    let r = glm_row_positions(&ids, sop, gmask, 130000);
    assert_eq!(r.context, 33);
    assert_eq!(&r.pos[30..36], &[30, 31, 32, 32, 32, 32]);
    assert_eq!(&r.block[30..36], &[0, 0, 0, 1, 2, 3]);
    assert_eq!(r.pos[82], 32);
    assert_eq!(r.block[82], 50);
    // No <sop>: all context, plain counting (the tokenizer's `_pad` rule).
    let r = glm_row_positions(&[5, 6, 7], sop, gmask, 130000);
    assert_eq!(
        (r.context, r.pos, r.block),
        (3, vec![0, 1, 2], vec![0, 0, 0])
    );
}

/// Packed rows are refused (the bidirectional prefix is per row), not silently mis-masked.
#[test]
fn packed_batches_are_refused() {
    let (model, _, batch) = fixture(TINY);
    let mut b = batch.clone();
    // One example per row (the evaluator's unpacked batches) is fine.
    b.segments = Some(vec![0; b.b * b.t]);
    assert_eq!(
        model.forward(&b).unwrap().logits,
        model.forward(&batch).unwrap().logits
    );
    b.segments.as_mut().unwrap()[5] = 1;
    assert_eq!(
        model.forward(&b).err().unwrap().to_string(),
        "batch: packed sequences are not supported for ChatGLM-6B (v1): its bidirectional context \
         up to <sop> is per row; turn packing off"
    );
}

/// A first (prefill) step holding each row's <sop>, then one token at a time, gives the full
/// forward's logits; a first step without <sop> is an error.
#[test]
fn kv_cache_steps_match_full_forward() {
    let (model, _, batch) = fixture(TINY);
    let (b, t, v) = (batch.b, batch.t, model.arch.vocab);
    let full = model
        .forward(&Batch {
            labels: None,
            ..batch.clone()
        })
        .unwrap()
        .logits;
    let cols = |a: usize, z: usize, x: &[u32]| -> Vec<u32> {
        (0..b)
            .flat_map(|r| x[r * t + a..r * t + z].to_vec())
            .collect()
    };
    let mask: Vec<u32> = batch.attention_mask.iter().map(|&m| m as u32).collect();
    let as_u8 = |x: Vec<u32>| -> Vec<u8> { x.into_iter().map(|m| m as u8).collect() };
    let mut cache = model.new_cache(b, t);
    let e = model
        .forward_step(
            &mut cache,
            &cols(0, 3, &batch.input_ids),
            &as_u8(cols(0, 3, &mask)),
        )
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "batch: ChatGLM-6B (v1) generation needs <sop> (id 44) in the first step of every row: \
         its prompt ends with [gMASK] <sop> (the chatglm template adds them)"
    );
    let mut cache = model.new_cache(b, t);
    let split = 7; // row 0's <sop> is at 6, row 1's at 4
    let mut got = vec![0.0; b * t * v];
    let mut put = |a: usize, z: usize, l: &[f32]| {
        for r in 0..b {
            for i in a..z {
                got[(r * t + i) * v..][..v].copy_from_slice(&l[(r * (z - a) + i - a) * v..][..v]);
            }
        }
    };
    let l = model
        .forward_step(
            &mut cache,
            &cols(0, split, &batch.input_ids),
            &as_u8(cols(0, split, &mask)),
        )
        .unwrap();
    put(0, split, &l);
    for i in split..t {
        let l = model
            .forward_step(
                &mut cache,
                &cols(i, i + 1, &batch.input_ids),
                &as_u8(cols(i, i + 1, &mask)),
            )
            .unwrap();
        put(i, i + 1, &l);
    }
    close(
        "glm6b kv-cache logits",
        &valid_logits(&got, &batch, v),
        &valid_logits(&full, &batch, v),
        1e-5,
    );
}

/// Greedy generation, base and with the adapter, equals the reference's greedy loop: each
/// prompt alone, then as one left-padded batch; the no-cache path agrees.
#[test]
fn greedy_matches_reference() {
    use crate::eval::generate::{generate, FinishReason, GenConfig, Generation};
    use crate::eval::lm::{load_model, EngineLm};
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("glm6b/greedy.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompts: Vec<Vec<u32>> = fx["prompts"].as_array().unwrap().iter().map(ids).collect();
    let eos = fx["eos"].as_u64().unwrap() as u32;
    let cfg = GenConfig {
        max_new_tokens: fx["max_new_tokens"].as_u64().unwrap() as usize,
        stop_ids: vec![eos],
        ..Default::default()
    };
    let gens = |v: &serde_json::Value| -> Vec<Generation> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| Generation {
                tokens: ids(&r["tokens"]),
                finish: if r["finish"] == "stop" {
                    FinishReason::Stop(eos)
                } else {
                    FinishReason::Length
                },
            })
            .collect()
    };
    let run = |m: &Model, ps: &[Vec<u32>], cache: bool| {
        let mut lm = if cache {
            EngineLm::new(m, 0, cfg.max_new_tokens)
        } else {
            EngineLm::no_cache(m, 0, cfg.max_new_tokens)
        };
        generate(&mut lm, ps, &cfg, |_, _| {}).unwrap()
    };
    for (variant, want) in fx["models"]["glm6b"].as_object().unwrap() {
        let d = dir(TINY);
        let adapter = (variant == "adapter").then(|| d.join("adapter"));
        let model = load_model(&d, adapter.as_deref()).unwrap();
        let single: Vec<Generation> = prompts
            .iter()
            .map(|p| run(&model, std::slice::from_ref(p), true).remove(0))
            .collect();
        assert_eq!(single, gens(&want["single"]), "{variant}: single prompts");
        let batch = run(&model, &prompts, true);
        assert_eq!(batch, gens(&want["batch"]), "{variant}: left-padded batch");
        assert_eq!(
            run(&model, &prompts, false),
            batch,
            "{variant}: no-cache path"
        );
    }
}

/// Merging the adapter keeps its logits; save_pretrained (tied head not written) loads back
/// to the same model.
#[test]
fn save_pretrained_and_merge() {
    let (mut model, r, batch) = fixture(TINY);
    lora::load_peft(&mut model, &dir(TINY).join("adapter")).unwrap();
    lora::merge(&mut model).unwrap();
    let v = model.arch.vocab;
    let merged = model.forward(&batch).unwrap().logits;
    close(
        "glm6b merged logits",
        &valid_logits(&merged, &batch, v),
        &valid_logits(&r["lora_logits"].0, &batch, v),
        1e-5,
    );
    let tmp = tempfile::tempdir().unwrap();
    model.save_pretrained(tmp.path()).unwrap();
    let names: Vec<String> = model
        .state_dict()
        .unwrap()
        .into_iter()
        .map(|(n, ..)| n)
        .collect();
    assert!(names.contains(&"transformer.word_embeddings.weight".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("lm_head")));
    let back = Model::load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(back.arch, model.arch);
    assert_eq!(back.forward(&batch).unwrap().logits, merged);
}

/// THUDM ships ChatGLM-6B as PyTorch `.bin` shards only (`pytorch_model-0000N-of-00008.bin` +
/// `pytorch_model.bin.index.json`). The tiny model in that layout
/// (tests/reference/torch_bin_make_fixtures.py) loads without conversion to the same model:
/// logits and loss equal to the reference's.
#[test]
fn thudm_bin_shards_load_as_the_same_model() {
    let (model, r, batch) = fixture(TINY);
    let bin = Model::load(&dir("torch_bin/glm6b"), &LoadOptions::default()).unwrap();
    assert_eq!(bin.arch, model.arch);
    let out = bin.forward(&batch).unwrap();
    assert_eq!(out.logits, model.forward(&batch).unwrap().logits);
    close(
        "glm6b from .bin loss",
        &[out.loss.unwrap()],
        &r["loss"].0,
        1e-5,
    );
}
