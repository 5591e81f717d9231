"""Greedy-generation references for the engine's KV-cache generation loop.

Loads the tiny random models of tests/fixtures/engine/<family>/ (written by
engine_make_fixtures.py) with transformers and records `generate(do_sample=False)` outputs:
each prompt alone, and the prompts as one left-padded batch; with the family's PEFT adapter
too where PEFT loads it directly (llama, qwen2, gpt2, bloom).

Run:  /work/pyenv/bin/python tests/reference/gen_make_fixtures.py
Writes tests/fixtures/gen/greedy.json.

Versions used: torch 2.15.0, transformers 5.23.0, peft 0.21.2 (printed at start).

ChatGLM and Qwen v1 have no transformers class: as in engine_make_fixtures.py their reference is
GlmForCausalLM / Qwen2ForCausalLM, loaded here by undoing the rename/fuse of their checkpoints.
transformers computes position ids as cumsum(mask) - 1 for a left-padded batch; the engine counts
slots. RoPE and ALiBi only see relative positions, so both agree; GPT-2 (learned positions) is
batched by prompt length in the engine instead.
"""

import json
import os

import torch
import transformers
import peft
from safetensors.torch import load_file

print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
torch.set_default_dtype(torch.float32)

HERE = os.path.dirname(__file__)
ENGINE = os.path.join(HERE, "..", "fixtures", "engine")
OUT = os.path.join(HERE, "..", "fixtures", "gen")
V, H, NH, HD, FF, L = 48, 16, 4, 4, 32, 2
PAD, EOS = 0, 2
MAX_NEW = 8
PROMPTS = [[5, 9, 17, 3, 22, 40], [7, 30, 11], [44, 12, 8, 19]]


def glm_model(d):
    cfg = transformers.GlmConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                 num_attention_heads=NH, num_key_value_heads=2, head_dim=2 * HD, rms_norm_eps=1e-5,
                                 tie_word_embeddings=False, attention_bias=True, bos_token_id=1, eos_token_id=2,
                                 pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 20000.0,
                                                                  "partial_rotary_factor": 0.5},
                                 attn_implementation="eager")
    m = transformers.GlmForCausalLM(cfg)
    sd = load_file(os.path.join(d, "model.safetensors"))
    sd.pop("transformer.rotary_pos_emb.inv_freq", None)
    back = [("transformer.embedding.word_embeddings", "model.embed_tokens"),
            ("transformer.encoder.final_layernorm", "model.norm"),
            ("transformer.output_layer", "lm_head"),
            ("transformer.encoder.layers.", "model.layers."),
            ("self_attention.dense", "self_attn.o_proj"),
            ("mlp.dense_h_to_4h", "mlp.gate_up_proj"),
            ("mlp.dense_4h_to_h", "mlp.down_proj")]
    qd, kd = NH * 2 * HD, 2 * 2 * HD
    out = {}
    for k, v in sd.items():
        if "query_key_value" in k:
            base = k.replace("self_attention.query_key_value", "self_attn.{}")
            for a, b in back:
                base = base.replace(a, b)
            q, kk, vv = v.split([qd, kd, kd], 0)
            out[base.format("q_proj")], out[base.format("k_proj")], out[base.format("v_proj")] = q, kk, vv
            continue
        for a, b in back:
            k = k.replace(a, b)
        out[k] = v
    m.load_state_dict(out, strict=True)
    return m


def qwen_model(d):
    cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                   num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e-6,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                   attn_implementation="eager")
    m = transformers.Qwen2ForCausalLM(cfg)
    sd = load_file(os.path.join(d, "model.safetensors"))
    back = [("transformer.wte", "model.embed_tokens"), ("transformer.ln_f", "model.norm"),
            ("transformer.h.", "model.layers."), ("ln_1", "input_layernorm"),
            ("ln_2", "post_attention_layernorm"), ("attn.c_proj", "self_attn.o_proj"),
            ("mlp.w1", "mlp.up_proj"), ("mlp.w2", "mlp.gate_proj"), ("mlp.c_proj", "mlp.down_proj")]
    out = {}
    for k, v in sd.items():
        if "attn.c_attn" in k:
            base = k.replace("attn.c_attn", "self_attn.{}")
            for a, b in back:
                base = base.replace(a, b)
            q, kk, vv = v.split([H, H, H], 0)
            out[base.format("q_proj")], out[base.format("k_proj")], out[base.format("v_proj")] = q, kk, vv
            continue
        for a, b in back:
            k = k.replace(a, b)
        out[k] = v
    m.load_state_dict(out, strict=True)
    return m


def strip(row, prompt_len):
    """Generated ids after the prompt, up to (without) the first eos; and the finish reason."""
    gen = row[prompt_len:]
    if EOS in gen:
        return gen[:gen.index(EOS)], "stop"
    return gen, "length"


@torch.no_grad()
def greedy(model, prompts):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                         eos_token_id=EOS, pad_token_id=PAD, num_beams=1)
    return [strip(r, width) for r in out.tolist()]


def record(model):
    model.eval()
    single = [greedy(model, [p])[0] for p in PROMPTS]
    batch = greedy(model, PROMPTS)
    return {"single": [{"tokens": t, "finish": f} for t, f in single],
            "batch": [{"tokens": t, "finish": f} for t, f in batch]}


fixtures = {"prompts": PROMPTS, "max_new_tokens": MAX_NEW, "eos": EOS, "pad": PAD, "families": {}}
for fam in ["llama", "qwen2", "gpt2", "bloom", "chatglm", "qwen"]:
    d = os.path.join(ENGINE, fam)
    if fam == "chatglm":
        m = glm_model(d)
    elif fam == "qwen":
        m = qwen_model(d)
    else:
        m = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager")
    entry = {"base": record(m)}
    if fam in ("llama", "qwen2", "gpt2", "bloom"):
        pm = peft.PeftModel.from_pretrained(m, os.path.join(d, "adapter"))
        entry["adapter"] = record(pm)
    fixtures["families"][fam] = entry
    print(fam, json.dumps(entry))

os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "greedy.json"), "w") as f:
    json.dump(fixtures, f, indent=1)
