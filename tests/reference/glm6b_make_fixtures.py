"""Fixtures for ChatGLM-6B (v1): a tiny random model in THUDM's checkpoint layout and its reference
numbers from glm6b_modeling.py (our transcription of modeling_chatglm.py; transformers has none).

Run:  /work/pyref/bin/python tests/reference/glm6b_make_fixtures.py
Writes tests/fixtures/glm6b/tiny/{config.json, model.safetensors, ref.safetensors, adapter/} and
tests/fixtures/glm6b/greedy.json.

Versions used: torch 2.15.0, peft 0.21.2 (printed at start).

The batch is two right-padded rows shaped as seed 001's preprocessing builds them:
prompt + [gMASK] <sop> + answer + <eop>, labels -100 up to <sop>, padding (pad id 3) -100, with
different context lengths so the per-row bidirectional prefix and the 2D positions differ. The
ids of the special tokens are the config's (a 64-token vocabulary cannot hold 130001).
ref.safetensors: logits, loss, full fine-tuning gradients (autograd), LoRA logits/loss/gradients
(peft, target query_key_value, B randomized). greedy.json: greedy decoding (8 new tokens) of
prompts ending in [gMASK] <sop>, each alone then as one left-padded batch, base and with the
adapter.

The tokenizer part writes tests/fixtures/glm6b/tokenizer/{tokenizer.model, tokenizer_config.json}:
a small SentencePiece BPE model (trained here on text_make_fixtures.py's corpus) with ChatGLM-6B's
special-token rules: <n>, <|tab|>, <|blank_2|>..<|blank_80|> and [MASK] [gMASK] [sMASK]
<unused_0> <sop> <eop> <ENC> <dBLOCK> as user-defined pieces inside the SP vocab, <pad> 3; and
tests/fixtures/glm6b/tokenizer_ids.json: ids of test strings through SPTokenizer.encode's rules
(_preprocess then sentencepiece, as tokenization_chatglm.py does with num_image_tokens 0) and
SPTokenizer.decode's text.

The e2e part writes tests/fixtures/glm6b/e2e/: a tiny random ChatGLM-6B (hidden 16, vocab 900)
whose special ids are that tokenizer's, with the tokenizer files, for the recipe test
(tests/recipes_e2e.rs, recipes/chatglm6b_advertisegen.toml).
"""

import json
import os
import shutil
import sys

import tempfile

import sentencepiece as spm
import torch
import peft
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import glm6b_modeling as glm  # noqa: E402

print("torch", torch.__version__, "peft", peft.__version__)
torch.manual_seed(0)
torch.set_default_dtype(torch.float32)

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "glm6b")
MODEL = os.path.join(ROOT, "tiny")
V, H, NH, FF, L = 64, 32, 2, 64, 2
MASK, GMASK, SOP, EOP, PAD = 40, 41, 44, 45, 3
CONFIG = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "vocab_size": V,
    "hidden_size": H,
    "num_layers": L,
    "num_attention_heads": NH,
    "inner_hidden_size": FF,
    "layernorm_epsilon": 1e-5,
    "position_encoding_2d": True,
    "max_sequence_length": 64,
    "bos_token_id": SOP,
    "eos_token_id": EOP,
    "mask_token_id": MASK,
    "gmask_token_id": GMASK,
    "pad_token_id": PAD,
    "pre_seq_len": None,
    "prefix_projection": False,
    "quantization_bit": 0,
    "use_cache": True,
    "torch_dtype": "float32",
}
MAX_NEW = 8
PROMPTS = [[5, 9, 17, 30, 22, GMASK, SOP], [7, 30, GMASK, SOP], [12, 8, 19, 50, GMASK, SOP]]


def example(a, b, t):
    ids = a + [GMASK, SOP] + b + [EOP]
    ctx = ids.index(SOP)
    labels = [-100] * ctx + ids[ctx:]
    pad = t - len(ids)
    return ids + [PAD] * pad, labels + [-100] * pad, [1] * len(ids) + [0] * pad


def batch():
    rows = [example([5, 9, 17, 30, 22], [11, 13, 6], 12), example([7, 30, 12], [21, 8, 33, 19, 6], 12)]
    ids = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    mask = torch.tensor([r[2] for r in rows])
    return ids, mask, labels


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "dense" in name and name.endswith("weight"):
                # large enough that attention and MLP outweigh the alpha-scaled residual
                p.copy_(1.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def main():
    shutil.rmtree(MODEL, ignore_errors=True)
    os.makedirs(MODEL)
    cfg = glm.Config(**CONFIG)
    model = glm.ChatGLMForConditionalGeneration(cfg)
    randomize(model, 7)
    model.eval()
    ids, mask, labels = batch()
    ref = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    out = model(ids, labels=labels)
    out.loss.backward()
    ref["logits"] = out.logits.detach()
    ref["loss"] = out.loss.detach().reshape(1)
    for n, p in model.named_parameters():
        ref["full_grad." + n] = p.grad.detach().clone()
    model.zero_grad()

    # THUDM's checkpoint also stores lm_head.weight (equal to the embedding).
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(MODEL, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(MODEL, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)

    base_gen = {"single": [glm.greedy(model, [p], PAD, EOP, MAX_NEW)[0] for p in PROMPTS],
                "batch": glm.greedy(model, PROMPTS, PAD, EOP, MAX_NEW)}

    lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query_key_value"],
                           task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    pm.eval()
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    ref["lora_logits"] = out.logits.detach()
    ref["lora_loss"] = out.loss.detach().reshape(1)
    for n, p in pm.named_parameters():
        if p.requires_grad:
            ref["lora_grad." + n.replace(".default", "")] = p.grad.detach().clone()
    pm.zero_grad()
    ad = os.path.join(MODEL, "adapter")
    pm.save_pretrained(ad, safe_serialization=True)
    if os.path.exists(os.path.join(ad, "README.md")):
        os.remove(os.path.join(ad, "README.md"))
    inner = pm.base_model.model
    lora_gen = {"single": [glm.greedy(inner, [p], PAD, EOP, MAX_NEW)[0] for p in PROMPTS],
                "batch": glm.greedy(inner, PROMPTS, PAD, EOP, MAX_NEW)}
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(MODEL, "ref.safetensors"))
    with open(os.path.join(ROOT, "greedy.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "max_new_tokens": MAX_NEW, "eos": EOP, "pad": PAD,
                   "models": {"glm6b": {"base": base_gen, "adapter": lora_gen}}}, f, indent=1)
    print("loss", ref["loss"].item(), "lora_loss", ref["lora_loss"].item())
    print(json.dumps(base_gen), json.dumps(lora_gen))


SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
MAX_BLANK = 80
TOKENIZER_TESTS = [
    "类型#上衣*材质#牛仔布*颜色#白色",
    "line one\nline two\n\n",
    "\tindented\ttab",
    "two  spaces, three   and four    end",
    "  a  b \t c\n  d  ",
    " " * 85 + "x",
    "混合 English 和中文，标点！",
    "[Round 0]\n问：你好\n答：",
    "",
]


def glm1_preprocess(text):
    """SPTokenizer._preprocess (linebreak and whitespaces on)."""
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for i in range(MAX_BLANK, 1, -1):
        text = text.replace(" " * i, f"<|blank_{i}|>")
    return text


def glm1_decode(sp, ids):
    """SPTokenizer.decode."""
    text = sp.decode(ids)
    text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
    for i in range(2, MAX_BLANK + 1):
        text = text.replace(f"<|blank_{i}|>", " " * i)
    return text


def tokenizer():
    import text_make_fixtures as tf
    out = os.path.join(ROOT, "tokenizer")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tmp = tempfile.mkdtemp()
    user = ["<n>", "<|tab|>"] + [f"<|blank_{i}|>" for i in range(2, MAX_BLANK + 1)] + SPECIAL
    path = tf.train_sp(tmp, "glm6b", vocab_size=900, pad_id=3, bos_id=1, eos_id=2, unk_id=0,
                       user_defined_symbols=user)
    sp = spm.SentencePieceProcessor(model_file=path)
    shutil.copy(path, os.path.join(out, "tokenizer.model"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
                   "tokenizer_class": "ChatGLMTokenizer", "bos_token": "<sop>", "eos_token": "<eop>",
                   "end_token": "</s>", "gmask_token": "[gMASK]", "mask_token": "[MASK]", "pad_token": "<pad>",
                   "unk_token": "<unk>", "padding_side": "left", "remove_space": False,
                   "do_lower_case": False, "num_image_tokens": 0}, f, indent=2)
    cases = []
    for t in TOKENIZER_TESTS:
        ids = sp.encode(glm1_preprocess(t))
        cases.append({"text": t, "ids": ids, "pieces": [sp.id_to_piece(i) for i in ids],
                      "decoded": glm1_decode(sp, ids)})
    ids = {p: sp.piece_to_id(p) for p in ["<n>", "<|tab|>", "<|blank_2|>", "[gMASK]", "<sop>", "<eop>", "<pad>"]}
    with open(os.path.join(ROOT, "tokenizer_ids.json"), "w") as f:
        json.dump({"special": ids, "cases": cases}, f, ensure_ascii=False, indent=1)
    print("tokenizer", sp.get_piece_size(), ids)


def e2e():
    tok = os.path.join(ROOT, "tokenizer")
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok, "tokenizer.model"))
    out = os.path.join(ROOT, "e2e")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cfg = dict(CONFIG, vocab_size=sp.get_piece_size(), hidden_size=16, inner_hidden_size=32,
               mask_token_id=sp.piece_to_id("[MASK]"), gmask_token_id=sp.piece_to_id("[gMASK]"),
               bos_token_id=sp.piece_to_id("<sop>"), eos_token_id=sp.piece_to_id("<eop>"),
               pad_token_id=sp.piece_to_id("<pad>"), max_sequence_length=256)
    torch.manual_seed(0)
    model = glm.ChatGLMForConditionalGeneration(glm.Config(**cfg))
    randomize(model, 11)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for n in ["tokenizer.model", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tok, n), os.path.join(out, n))
    print("e2e", cfg["vocab_size"])


if __name__ == "__main__":
    if sys.argv[1:] == ["tokenizer"]:
        tokenizer()
    elif sys.argv[1:] == ["e2e"]:
        e2e()
    else:
        main()
        tokenizer()
        e2e()
