"""Make the tiny random model dirs the recipe end-to-end tests run on (tests/recipes_e2e.rs).

Run:  /work/pyref/bin/python tests/reference/e2e_make_models.py [NAME ...]
Writes tests/fixtures/e2e/<family>/: config.json, model.safetensors (f32) and a tokenizer copied
from fixtures already in the repository (the vocab sizes match the tokenizers):

  llama   LlamaForCausalLM (GQA 4/2), SentencePiece LLaMA tokenizer (tests/fixtures/text/llama, 700)
  llama3  LlamaForCausalLM (GQA 4/2), byte-level BPE (examples/quickstart/base, 384) + LLaMA-3 chat_template
  qwen2   Qwen2ForCausalLM (GQA 4/2), byte-level BPE (384) + ChatML chat_template
  bloom   BloomForCausalLM, byte-level BPE (tests/fixtures/text/bloom, 600)
  gpt2    GPT2LMHeadModel, byte-level BPE (384)
  qwen    Qwen v1 (THUDM-style renamed/fused Qwen2 weights, as engine_make_fixtures.py), BPE (384)
  chatglm ChatGLM3 layout (fused from GlmForCausalLM), glm3 SentencePiece tokenizer (700 + 9 specials,
          padded_vocab_size 712)
  gemma3  Gemma3ForCausalLM (gemma3_text: GQA 4/2, local/global layers, sliding window 16), BPE (384)
          + Gemma 3's own chat_template (bos <|endoftext|>)

With names (`... e2e_make_models.py gemma3`), only those dirs are rewritten. The first seven draw
from one torch stream seeded 0, in the order above, so they reproduce only when all are written;
gemma3 reseeds, so it is the same either way.

hidden 32, 2 layers, 4 heads, intermediate 64. Versions are printed at start.
"""

import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

print("torch", torch.__version__, "transformers", transformers.__version__)
torch.manual_seed(0)
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
OUT = os.path.join(REPO, "tests", "fixtures", "e2e")
H, L, NH, FF = 32, 2, 4, 64
BPE = os.path.join(REPO, "examples", "quickstart", "base")
SP_LLAMA = os.path.join(REPO, "tests", "fixtures", "text", "llama")
SP_GLM = os.path.join(REPO, "tests", "fixtures", "text", "glm3")
BLOOM_TOK = os.path.join(REPO, "tests", "fixtures", "text", "bloom")
ONLY = sys.argv[1:]


def want(name):
    return not ONLY or name in ONLY

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

# Gemma 3's chat_template as its tokenizer_config.json ships it (system text folded into the
# first user turn, "assistant" spelled "model").
GEMMA3 = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n")


def fresh(name):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def copy_tok(src, d, files, chat_template=None):
    for f in files:
        shutil.copy(os.path.join(src, f), d)
    if chat_template is not None:
        p = os.path.join(d, "tokenizer_config.json")
        cfg = json.load(open(p))
        cfg["chat_template"] = chat_template
        json.dump(cfg, open(p, "w"), indent=2)


def hf_save(model, d):
    model.save_pretrained(d, safe_serialization=True)
    for f in os.listdir(d):
        if f == "generation_config.json":
            os.remove(os.path.join(d, f))


# BPE ids: 0 <|endoftext|> (bos/eos), 1 <|pad|>
BPE_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=1)
# SentencePiece ids: 0 <unk>, 1 <s>, 2 </s>
SP_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)

QWEN_MAP = [("model.embed_tokens", "transformer.wte"), ("model.norm", "transformer.ln_f"),
            ("model.layers.", "transformer.h."), ("input_layernorm", "ln_1"),
            ("post_attention_layernorm", "ln_2"), ("self_attn.o_proj", "attn.c_proj"),
            ("mlp.up_proj", "mlp.w1"), ("mlp.gate_proj", "mlp.w2"), ("mlp.down_proj", "mlp.c_proj")]


def rename(k, table):
    for a, b in table:
        k = k.replace(a, b)
    return k


def fuse(sd, table, qkv_name):
    out = {}
    for k, v in sd.items():
        if ".k_proj." in k or ".v_proj." in k:
            continue
        if ".q_proj." in k:
            kk, vv = sd[k.replace("q_proj", "k_proj")], sd[k.replace("q_proj", "v_proj")]
            out[rename(k.replace("self_attn.q_proj", qkv_name), table)] = torch.cat([v, kk, vv], 0)
        else:
            out[rename(k, table)] = v
    return {k: v.detach().contiguous() for k, v in out.items()}


# ---- llama (SentencePiece) for chinese_llama_ner
if want("llama"):
    d = fresh("llama")
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=700, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, **SP_IDS))
    hf_save(m, d)
    copy_tok(SP_LLAMA, d, ["tokenizer.model", "tokenizer_config.json"])

# ---- llama3 (byte-level BPE + LLaMA-3 template)
if want("llama3"):
    d = fresh("llama3")
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=384, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, **BPE_IDS))
    hf_save(m, d)
    copy_tok(BPE, d, ["tokenizer.json", "tokenizer_config.json"], LLAMA3)

# ---- qwen2 (byte-level BPE + ChatML)
if want("qwen2"):
    d = fresh("qwen2")
    m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=384, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, **BPE_IDS))
    hf_save(m, d)
    copy_tok(BPE, d, ["tokenizer.json", "tokenizer_config.json"], CHATML)

# ---- bloom
if want("bloom"):
    d = fresh("bloom")
    m = transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=600, hidden_size=H, n_layer=L, n_head=NH, bos_token_id=1, eos_token_id=2, pad_token_id=3))
    hf_save(m, d)
    copy_tok(BLOOM_TOK, d, ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])

# ---- gpt2
if want("gpt2"):
    d = fresh("gpt2")
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=384, n_embd=H, n_layer=L, n_head=NH, n_inner=FF, n_positions=512, **BPE_IDS))
    hf_save(m, d)
    copy_tok(BPE, d, ["tokenizer.json", "tokenizer_config.json"])

# ---- qwen v1: Qwen2 math with MHA, renamed/fused into Qwen's layout
if want("qwen"):
    V = 384
    m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH,
        num_key_value_heads=NH, tie_word_embeddings=False, **BPE_IDS))
    d = fresh("qwen")
    save_file(fuse(m.state_dict(), QWEN_MAP, "attn.c_attn"), os.path.join(d, "model.safetensors"))
    json.dump({"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": H,
               "num_attention_heads": NH, "num_hidden_layers": L, "intermediate_size": 2 * FF,
               "kv_channels": H // NH, "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000, "rotary_pct": 1.0,
               "no_bias": True, "vocab_size": V, "seq_length": 2048, "max_position_embeddings": 2048,
               "tie_word_embeddings": False, "use_dynamic_ntk": True, "use_logn_attn": True,
               "emb_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "torch_dtype": "float32",
               "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1},
              open(os.path.join(d, "config.json"), "w"), indent=2)
    copy_tok(BPE, d, ["tokenizer.json", "tokenizer_config.json"])

# ---- chatglm3 via GlmForCausalLM, fused into THUDM's layout
if want("chatglm"):
    V, NG, HD = 712, 2, 8
    m = transformers.GlmForCausalLM(transformers.GlmConfig(
        vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH,
        num_key_value_heads=NG, head_dim=HD, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 20000.0, "partial_rotary_factor": 0.5}))
    GLM_MAP = [("model.embed_tokens", "transformer.embedding.word_embeddings"),
               ("model.norm", "transformer.encoder.final_layernorm"),
               ("lm_head", "transformer.output_layer"),
               ("model.layers.", "transformer.encoder.layers."),
               ("self_attn.o_proj", "self_attention.dense"),
               ("mlp.gate_up_proj", "mlp.dense_h_to_4h"),
               ("mlp.down_proj", "mlp.dense_4h_to_h")]
    d = fresh("chatglm")
    sd = fuse(m.state_dict(), GLM_MAP, "self_attention.query_key_value")
    sd["transformer.rotary_pos_emb.inv_freq"] = torch.ones(HD // 4)
    save_file(sd, os.path.join(d, "model.safetensors"))
    json.dump({"architectures": ["ChatGLMModel"], "model_type": "chatglm", "num_layers": L,
               "padded_vocab_size": V, "hidden_size": H, "ffn_hidden_size": FF, "kv_channels": HD,
               "num_attention_heads": NH, "seq_length": 2048, "hidden_dropout": 0.0, "attention_dropout": 0.0,
               "layernorm_epsilon": 1e-5, "rmsnorm": True, "apply_residual_connection_post_layernorm": False,
               "post_layer_norm": True, "add_bias_linear": False, "add_qkv_bias": True,
               "bias_dropout_fusion": True, "multi_query_attention": True, "multi_query_group_num": NG,
               "apply_query_key_layer_scaling": True, "attention_softmax_in_fp32": True,
               "fp32_residual_connection": False, "rope_ratio": 1, "original_rope": True,
               "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32"},
              open(os.path.join(d, "config.json"), "w"), indent=2)
    copy_tok(SP_GLM, d, ["tokenizer.model", "tokenizer_config.json"])

# ---- gemma3 (gemma3_text): layer 0 local (sliding window 16, rope_theta 1e4), layer 1 global
# (linear RoPE scaling x8 on rope_theta 1e6, as Gemma 3 4B and up), query_pre_attn_scalar = head_dim,
# tied; byte-level BPE with <|endoftext|> as bos (the template writes it) + Gemma 3's chat_template.
if want("gemma3"):
    torch.manual_seed(0)
    d = fresh("gemma3")
    m = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        vocab_size=384, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH,
        num_key_value_heads=2, head_dim=H // NH, query_pre_attn_scalar=H // NH, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=2048,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}},
        tie_word_embeddings=True, **BPE_IDS))
    hf_save(m, d)
    copy_tok(BPE, d, ["tokenizer.json", "tokenizer_config.json"], GEMMA3)
    p = os.path.join(d, "tokenizer_config.json")
    cfg = json.load(open(p))
    cfg["bos_token"] = "<|endoftext|>"
    json.dump(cfg, open(p, "w"), indent=2)

print("wrote", sorted(os.listdir(OUT)))
