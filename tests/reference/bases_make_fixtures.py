"""Fixtures for the bases people fine-tune now: RoPE scaling (linear, dynamic NTK, llama3, yarn) on
one tiny LLaMA, Qwen3 (per-head q/k RMSNorm, head_dim != hidden/heads), and sliding-window
attention (Mistral, Qwen2 with use_sliding_window), and Gemma 3 text (local/global layers).
For each: logits and
loss of a left-padded batch, full fine-tuning gradients (autograd), LoRA logits/gradients (peft),
and greedy `generate` outputs (KV cache), as engine_make_fixtures.py / gen_make_fixtures.py do.

Run:  /work/pyref/bin/python tests/reference/bases_make_fixtures.py [NAME ...]
(names given: only those fixtures are rewritten and their entries replaced in greedy.json; PEFT's
lora_A init draws from torch's global generator, seeded per fixture since gemma3 was added, so
the fixtures made before then change when rewritten).
Writes tests/fixtures/bases/<name>/{config.json, model.safetensors, ref.safetensors, adapter/} and
tests/fixtures/bases/greedy.json.

Versions used: torch 2.15.0, transformers 5.24.0, peft 0.21.2 (printed at start).

The sizes make the scaling matter on short sequences: llama3 with rope_theta 100 and
original_max_position_embeddings 32 puts one frequency in each band (high, smooth, low); dynamic
has max_position_embeddings 8 under a 12-token batch (and generation crosses 8); yarn has factor
4. `llama3` and `yarn` are rewritten to the transformers-4 form (`rope_scaling` + top-level
`rope_theta`), the others keep transformers 5's `rope_parameters`.
"""

import json
import os
import shutil
import sys

import torch
import transformers
import peft
from safetensors.torch import save_file

print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
torch.set_default_dtype(torch.float32)

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "bases")
V, H, HD, FF, L = 48, 16, 8, 32, 2
B, T = 2, 12
PAD, EOS, MAX_NEW = 0, 2, 8
PROMPTS = [[5, 9, 17, 3, 22, 40], [7, 30, 11], [44, 12, 8, 19]]
ONLY = sys.argv[1:]


def batch(t=T):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (B, t), generator=g)
    mask = torch.ones(B, t, dtype=torch.long)
    mask[1, :3] = 0
    ids[1, :3] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, :2] = -100
    labels[1, 3:5] = -100  # the first real token's label would be predicted from padding
    labels[1, 8] = -100
    return ids, mask, labels


def randomize(model, seed):
    """Random weights (HF init is too close to zero for norms to matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def strip(row, prompt_len):
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
    return [{"tokens": t, "finish": f} for t, f in (strip(r, width) for r in out.tolist())]


def record(model):
    model.eval()
    return {"single": [greedy(model, [p])[0] for p in PROMPTS], "batch": greedy(model, PROMPTS)}


def make(name, model, lora_cfg, v4_config=False):
    if ONLY and name not in ONLY:
        return None
    torch.manual_seed(sum(map(ord, name)))
    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model.eval()
    ids, mask, labels = batch()
    ref = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    ref["logits"] = out.logits.detach()
    ref["loss"] = out.loss.detach().reshape(1)
    for n, p in model.named_parameters():
        ref["full_grad." + n] = p.grad.detach().clone()
    model.zero_grad()

    model.save_pretrained(d, safe_serialization=True)
    for f in os.listdir(d):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(d, f))
    if v4_config:
        p = os.path.join(d, "config.json")
        c = json.load(open(p))
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp.pop("rope_theta")
        rp["type"] = rp.pop("rope_type")
        c["rope_scaling"] = rp
        json.dump(c, open(p, "w"), indent=2)

    pm = peft.get_peft_model(model, lora_cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    pm.eval()
    out = pm(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    ref["lora_logits"] = out.logits.detach()
    ref["lora_loss"] = out.loss.detach().reshape(1)
    for n, p in pm.named_parameters():
        if p.requires_grad:
            ref["lora_grad." + n.replace(".default", "")] = p.grad.detach().clone()
    pm.zero_grad()
    # After the 12-token forwards, a 10-token one: dynamic NTK keeps the base it scaled to.
    with torch.no_grad():
        ref["lora_short_logits"] = pm(input_ids=ids[:, :10], attention_mask=mask[:, :10]).logits
    ad = os.path.join(d, "adapter")
    pm.save_pretrained(ad, safe_serialization=True)
    if os.path.exists(os.path.join(ad, "README.md")):
        os.remove(os.path.join(ad, "README.md"))
    # Generation on freshly loaded models: dynamic NTK's scaled base is state that the forwards
    # above leave behind (each generate below starts below max_position_embeddings, resetting it).
    base = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager")
    gen = {"base": record(base)}
    base = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager")
    gen["adapter"] = record(peft.PeftModel.from_pretrained(base, ad))
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "ref.safetensors"))
    print(name, "loss", ref["loss"].item(), "lora_loss", ref["lora_loss"].item(), json.dumps(gen))
    return gen


def lora(targets):
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")


def llama(rope, seed, max_pos=32):
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=HD, rms_norm_eps=1e-6,
                                   max_position_embeddings=max_pos, tie_word_embeddings=False, bos_token_id=1,
                                   eos_token_id=EOS, pad_token_id=PAD, rope_parameters=rope,
                                   attn_implementation="eager")
    m = transformers.LlamaForCausalLM(cfg)
    randomize(m, seed)
    return m


gens = {}
gens["rope_linear"] = make("rope_linear", llama({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}, 20),
                           lora("all-linear"))
gens["rope_dynamic"] = make("rope_dynamic",
                            llama({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}, 21, max_pos=8),
                            lora("all-linear"))
gens["rope_llama3"] = make("rope_llama3",
                           llama({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 32, "rope_theta": 100.0}, 22, max_pos=256),
                           lora("all-linear"), v4_config=True)
gens["rope_yarn"] = make("rope_yarn",
                         llama({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                                "rope_theta": 10000.0}, 32),
                         lora("all-linear"), v4_config=True)

# Qwen3: 4 heads of 8 (q 32 wide on hidden 16), 2 kv heads, q/k norms, tied, PEFT's default targets.
cfg = transformers.Qwen3Config(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=HD, rms_norm_eps=1e-6,
                               max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=1, eos_token_id=EOS,
                               pad_token_id=PAD, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                               attn_implementation="eager")
m = transformers.Qwen3ForCausalLM(cfg)
randomize(m, 24)
gens["qwen3"] = make("qwen3", m, lora(None))

# Sliding windows of 4 under a 12-token batch (generation crosses it too). Mistral: every layer;
# Qwen2: use_sliding_window with max_window_layers 1, so layer 0 full and layer 1 windowed.
cfg = transformers.MistralConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=HD, rms_norm_eps=1e-6,
                                 max_position_embeddings=64, sliding_window=4, tie_word_embeddings=False,
                                 bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, attn_implementation="eager")
m = transformers.MistralForCausalLM(cfg)
randomize(m, 25)
gens["mistral"] = make("mistral", m, lora("all-linear"))

cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                               num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6,
                               max_position_embeddings=64, use_sliding_window=True, sliding_window=4,
                               max_window_layers=1, tie_word_embeddings=True, bos_token_id=1, eos_token_id=EOS,
                               pad_token_id=PAD, attn_implementation="eager")
m = transformers.Qwen2ForCausalLM(cfg)
randomize(m, 26)
assert m.config.layer_types == ["full_attention", "sliding_attention"], m.config.layer_types
gens["qwen2_sliding"] = make("qwen2_sliding", m, lora(None))

# Gemma 3 text: scaled embeddings, (1 + w) RMSNorms (four per layer, and per-head q/k), GeGLU with
# tanh GELU, query_pre_attn_scalar 16 (not head_dim), tied. Layer 0 local (sliding window 4 under
# the 12-token batch, rope_theta 10), layer 1 global (linear RoPE scaling on rope_theta 1000).
cfg = transformers.Gemma3TextConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=HD, rms_norm_eps=1e-6,
                                    max_position_embeddings=64, query_pre_attn_scalar=16, sliding_window=4,
                                    layer_types=["sliding_attention", "full_attention"],
                                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                                     "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                        "rope_theta": 1000.0}},
                                    tie_word_embeddings=True, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
                                    attn_implementation="eager")
m = transformers.Gemma3ForCausalLM(cfg)
randomize(m, 27)
gens["gemma3"] = make("gemma3", m, lora(None))

gens = {k: v for k, v in gens.items() if v is not None}
if ONLY:
    with open(os.path.join(ROOT, "greedy.json")) as f:
        gens = {**json.load(f)["models"], **gens}
with open(os.path.join(ROOT, "greedy.json"), "w") as f:
    json.dump({"prompts": PROMPTS, "max_new_tokens": MAX_NEW, "eos": EOS, "pad": PAD, "models": gens}, f, indent=1)
