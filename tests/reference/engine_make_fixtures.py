"""Make the engine's reference fixtures: tiny random models per family, their logits and loss
for a left-padded batch, LoRA gradients (peft, autograd) and full fine-tuning gradients.

Run:  /work/pyenv/bin/python tests/reference/engine_make_fixtures.py
Writes tests/fixtures/engine/<family>/{config.json, model.safetensors, ref.safetensors, adapter/}.

Versions used: torch 2.15.0, transformers 5.23.0, peft 0.21.2 (printed at start).

ChatGLM2/3 has no class in transformers: its numeric reference is transformers' GlmForCausalLM
(same math, q/k/v split and gate_up fused); the checkpoint is renamed/fused into THUDM's layout.
Qwen v1 likewise: Qwen2ForCausalLM with MHA and q/k/v bias is the same math as modeling_qwen.py
(c_attn = [q; k; v] with bias, no other bias, mlp: c_proj(w1(x) * silu(w2(x))), so w2 is the gate).
"""

import json
import os
import shutil

import torch
import transformers
import peft
from safetensors.torch import save_file, load_file

print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
torch.manual_seed(0)
torch.set_default_dtype(torch.float32)

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "engine")
V, H, NH, HD, FF, L = 48, 16, 4, 4, 32, 2
HS = H
B, T = 2, 8


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0
    ids[1, :3] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, :2] = -100
    labels[1, 3:5] = -100
    return ids, mask, labels


def randomize(model, seed):
    """Random weights (HF init is too close to zero for norms/biases to matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def run(model, ids, mask, labels):
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    return out.logits, out.loss


def peft_key(name):
    return name.replace("modules_to_save.", "").replace(".default", "")


def make(family, model, lora_cfg, rename=None, convert_full=None, save_model=None):
    """rename: maps a reference (HF) module path to ours; convert_full: grads dict -> our names."""
    d = os.path.join(ROOT, family)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model.eval()
    ids, mask, labels = batch()
    ref = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # base forward + full fine-tuning grads
    model.zero_grad()
    logits, loss = run(model, ids, mask, labels)
    loss.backward()
    ref["logits"] = logits.detach()
    ref["loss"] = loss.detach().reshape(1)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    if convert_full:
        grads = convert_full(grads)
    for n, g in grads.items():
        ref["full_grad." + n] = g
    model.zero_grad()

    if save_model:
        save_model(model, d)
    else:
        model.save_pretrained(d, safe_serialization=True)
        for f in os.listdir(d):
            if f not in ("config.json", "model.safetensors"):
                os.remove(os.path.join(d, f))

    # LoRA with nonzero B
    pm = peft.get_peft_model(model, lora_cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    pm.eval()
    logits, loss = run(pm, ids, mask, labels)
    loss.backward()
    ref["lora_logits"] = logits.detach()
    ref["lora_loss"] = loss.detach().reshape(1)
    for n, p in pm.named_parameters():
        if p.requires_grad:
            k = peft_key(n)
            if rename:
                k = rename(k)
            ref["lora_grad." + k] = p.grad.detach().clone()
    ad = os.path.join(d, "adapter")
    pm.save_pretrained(ad, safe_serialization=True)
    if os.path.exists(os.path.join(ad, "README.md")):
        os.remove(os.path.join(ad, "README.md"))
    if rename:
        sd = load_file(os.path.join(ad, "adapter_model.safetensors"))
        save_file({rename(k): v.contiguous() for k, v in sd.items()}, os.path.join(ad, "adapter_model.safetensors"))
        cfgp = os.path.join(ad, "adapter_config.json")
        c = json.load(open(cfgp))
        c["target_modules"] = sorted({rename(k).split(".lora_")[0].split(".")[-1] for k in sd if ".lora_" in k})
        json.dump(c, open(cfgp, "w"), indent=2)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "ref.safetensors"))
    print(family, "loss", ref["loss"].item(), "lora_loss", ref["lora_loss"].item(), "keys", len(ref))


def lora(targets, **kw):
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM", **kw)


# ---------------------------------------------------------------- llama (GQA, untied, all-linear, modules_to_save)
cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                               num_attention_heads=NH, num_key_value_heads=2, rms_norm_eps=1e-6,
                               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                               attn_implementation="eager")
m = transformers.LlamaForCausalLM(cfg)
randomize(m, 10)
make("llama", m, lora("all-linear", modules_to_save=["embed_tokens"]))

# ---------------------------------------------------------------- qwen2 (MQA, q/k/v bias, tied, regex, rslora)
cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                               num_attention_heads=NH, num_key_value_heads=1, rms_norm_eps=1e-6,
                               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                               attn_implementation="eager")
m = transformers.Qwen2ForCausalLM(cfg)
randomize(m, 11)
make("qwen2", m, lora(r"model\.layers\.1\..*_proj", use_rslora=True))

# ---------------------------------------------------------------- gpt2 (Conv1D, learned positions, tied)
cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=HS, n_layer=L, n_head=NH, n_inner=2 * HS,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
                              pad_token_id=0, attn_implementation="eager")
m = transformers.GPT2LMHeadModel(cfg)
randomize(m, 12)
make("gpt2", m, lora(["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True))

# ---------------------------------------------------------------- bloom (ALiBi, embedding layernorm, tied)
cfg = transformers.BloomConfig(vocab_size=V, hidden_size=HS, n_layer=L, n_head=NH, hidden_dropout=0.0,
                               attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                               attn_implementation="eager")
m = transformers.BloomForCausalLM(cfg)
randomize(m, 13)
make("bloom", m, lora(["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]))


# ---------------------------------------------------------------- chatglm via GlmForCausalLM
NG = 2
cfg = transformers.GlmConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                             num_attention_heads=NH, num_key_value_heads=NG, head_dim=2 * HD, rms_norm_eps=1e-5,
                             tie_word_embeddings=False, attention_bias=True, bos_token_id=1, eos_token_id=2,
                             pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 20000.0,
                                                              "partial_rotary_factor": 0.5},
                             attn_implementation="eager")
m = transformers.GlmForCausalLM(cfg)
randomize(m, 14)

GLM_MAP = [("model.embed_tokens", "transformer.embedding.word_embeddings"),
           ("model.norm", "transformer.encoder.final_layernorm"),
           ("lm_head", "transformer.output_layer"),
           ("model.layers.", "transformer.encoder.layers."),
           ("self_attn.o_proj", "self_attention.dense"),
           ("mlp.gate_up_proj", "mlp.dense_h_to_4h"),
           ("mlp.down_proj", "mlp.dense_4h_to_h")]


def glm_rename(k):
    for a, b in GLM_MAP:
        k = k.replace(a, b)
    return k


def glm_fuse(sd):
    out = {}
    for k, v in sd.items():
        if ".k_proj." in k or ".v_proj." in k:
            continue
        if ".q_proj." in k:
            kk, vv = sd[k.replace("q_proj", "k_proj")], sd[k.replace("q_proj", "v_proj")]
            out[glm_rename(k.replace("self_attn.q_proj", "self_attention.query_key_value"))] = torch.cat([v, kk, vv], 0)
        else:
            out[glm_rename(k)] = v
    return out


def glm_save(model, d):
    sd = glm_fuse({k: v.detach() for k, v in model.state_dict().items()})
    sd["transformer.rotary_pos_emb.inv_freq"] = torch.ones(HD // 2)  # present in real checkpoints, unused
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(d, "model.safetensors"))
    json.dump({"architectures": ["ChatGLMModel"], "model_type": "chatglm", "num_layers": L,
               "padded_vocab_size": V, "hidden_size": H, "ffn_hidden_size": FF, "kv_channels": 2 * HD,
               "num_attention_heads": NH, "seq_length": 64, "hidden_dropout": 0.0, "attention_dropout": 0.0,
               "layernorm_epsilon": 1e-5, "rmsnorm": True, "apply_residual_connection_post_layernorm": False,
               "post_layer_norm": True, "add_bias_linear": False, "add_qkv_bias": True,
               "bias_dropout_fusion": True, "multi_query_attention": True, "multi_query_group_num": NG,
               "apply_query_key_layer_scaling": True, "attention_softmax_in_fp32": True,
               "fp32_residual_connection": False, "rope_ratio": 2, "original_rope": True,
               "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32"},
              open(os.path.join(d, "config.json"), "w"), indent=2)


make("chatglm", m, lora(["o_proj", "gate_up_proj", "down_proj"]), rename=glm_rename, convert_full=glm_fuse,
     save_model=glm_save)

# ---------------------------------------------------------------- qwen v1 via Qwen2ForCausalLM (MHA)
cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                               num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e-6,
                               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                               attn_implementation="eager")
m = transformers.Qwen2ForCausalLM(cfg)
randomize(m, 15)
QWEN_MAP = [("model.embed_tokens", "transformer.wte"), ("model.norm", "transformer.ln_f"),
            ("model.layers.", "transformer.h."), ("input_layernorm", "ln_1"),
            ("post_attention_layernorm", "ln_2"), ("self_attn.o_proj", "attn.c_proj"),
            ("mlp.up_proj", "mlp.w1"), ("mlp.gate_proj", "mlp.w2"), ("mlp.down_proj", "mlp.c_proj")]


def qwen_rename(k):
    for a, b in QWEN_MAP:
        k = k.replace(a, b)
    return k


def qwen_fuse(sd):
    out = {}
    for k, v in sd.items():
        if ".k_proj." in k or ".v_proj." in k:
            continue
        if ".q_proj." in k:
            kk, vv = sd[k.replace("q_proj", "k_proj")], sd[k.replace("q_proj", "v_proj")]
            out[qwen_rename(k.replace("self_attn.q_proj", "attn.c_attn"))] = torch.cat([v, kk, vv], 0)
        else:
            out[qwen_rename(k)] = v
    return out


def qwen_save(model, d):
    sd = qwen_fuse({k: v.detach() for k, v in model.state_dict().items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(d, "model.safetensors"))
    json.dump({"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": H,
               "num_attention_heads": 2, "num_hidden_layers": L, "intermediate_size": 2 * FF,
               "kv_channels": H // 2, "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000, "rotary_pct": 1.0,
               "no_bias": True, "vocab_size": V, "seq_length": 64, "max_position_embeddings": 64,
               "tie_word_embeddings": False, "use_dynamic_ntk": True, "use_logn_attn": True,
               "emb_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "torch_dtype": "float32"},
              open(os.path.join(d, "config.json"), "w"), indent=2)


make("qwen", m, lora(["o_proj", "up_proj", "gate_proj", "down_proj"]), rename=qwen_rename, convert_full=qwen_fuse,
     save_model=qwen_save)

# ---------------------------------------------------------------- qwen v1 past seq_length
# Eval-mode logn attention and dynamic NTK, which Qwen2ForCausalLM lacks: a transcription of
# modeling_qwen.py run on the qwen weights above (writes engine/qwen_long).
import qwen_v1_long  # noqa: E402

qwen_v1_long.main()
