"""Make the fixtures for the `export` module tests (tests/fixtures/export/).

Run from the repository root:
    /work/pyenv/bin/python tests/reference/export_make_fixtures.py
Check a directory of models exported by our Rust code (see `write_fixture_exports` in
src/export/fixture_tests.rs) against peft's merged logits:
    /work/pyenv/bin/python tests/reference/export_make_fixtures.py --check-export DIR

Versions used: torch 2.15.0, transformers 5.23.0, peft 0.21.2, bitsandbytes 0.50.2 (printed below).

Writes, for each case in CASES (llama, llama_rs, gpt2, bloom):
- <model>/base/: `save_pretrained` of a tiny random model (f32) plus a tokenizer_config.json
  stand-in (to test that tokenizer files are copied).
- <case>/adapter/: a PEFT LoRA adapter with NONZERO lora_B (init_lora_weights=False).
  llama: q_proj,v_proj r4 alpha8. llama_rs: rsLoRA, rank_pattern q_proj:2, alpha_pattern
  v_proj:16, plus a LoRA on embed_tokens. gpt2: c_attn (Conv1D, fan_in_fan_out).
  bloom: query_key_value + modules_to_save word_embeddings.
- <case>/expected.safetensors: `merge_and_unload().state_dict()` (f32) and, as `logits`, the
  merged model's logits (f32 [1, T, V]) for `input_ids` (i64 [1, T]).
And for the 4-bit path:
- llama_nf4/base/: the llama base loaded with BitsAndBytesConfig(nf4, double quant,
  compute dtype bf16) on the CPU and saved (bitsandbytes serialized layout).
- llama_nf4/expected.safetensors: `requant.<name>.weight*` = bitsandbytes `quantize_4bit` (nf4,
  double quant) of the merged bf16 weights, in transformers' serialized layout; `dequant.<name>` = bitsandbytes `dequantize_4bit` of each
  4-bit weight (bf16 values, stored as f32); `merged.<name>` = bf16(f32(dequant) + s*B@A) for
  the llama adapter's modules; `logits` of the llama model with those merged weights (f32 compute).
- quant4.safetensors: `quantize_4bit` of odd-sized f32 vectors (fp4 without double quant, nf4
  with double quant, partial last blocks), raw pieces plus `*.expected` dequantized f32.
"""
import json
import os
import shutil
import sys

import bitsandbytes as bnb
import bitsandbytes.functional as F
import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, BloomConfig,
                          BloomForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM)

print("torch", torch.__version__, "transformers", transformers.__version__, "peft",
      peft.__version__, "bitsandbytes", bnb.__version__)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "export")
INPUT_IDS = torch.tensor([[1, 5, 9, 20, 33, 7, 2, 40]])


def make_base(name):
    torch.manual_seed({"llama": 1, "gpt2": 2, "bloom": 3}[name])
    if name == "llama":
        cfg = LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, bos_token_id=1,
                          eos_token_id=2, pad_token_id=0, max_position_embeddings=64)
        model = LlamaForCausalLM(cfg)
    elif name == "gpt2":
        cfg = GPT2Config(vocab_size=48, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = BloomConfig(vocab_size=48, hidden_size=16, n_layer=2, n_head=2, bos_token_id=1,
                          eos_token_id=2, pad_token_id=3)
        model = BloomForCausalLM(cfg)
    # Random non-trivial norms and biases (they are constant at init).
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def lora_config(case):
    if case == "llama":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          init_lora_weights=False, task_type="CAUSAL_LM")
    if case == "llama_rs":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"],
                          use_rslora=True, rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 16},
                          init_lora_weights=False, task_type="CAUSAL_LM")
    if case == "gpt2":
        return LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True,
                          init_lora_weights=False, task_type="CAUSAL_LM")
    return LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"],
                      modules_to_save=["word_embeddings"], init_lora_weights=False,
                      task_type="CAUSAL_LM")


def tokenizer_stub(path):
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "model_max_length": 64}, f)


def make_case(case, model_name):
    base_dir = os.path.join(OUT, model_name, "base")
    if not os.path.exists(base_dir):
        make_base(model_name).save_pretrained(base_dir)
        tokenizer_stub(base_dir)
    torch.manual_seed(100 + len(case))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    pm = get_peft_model(base, lora_config(case))
    if case == "bloom":  # make the saved module differ from the base embedding
        with torch.no_grad():
            emb = pm.base_model.model.transformer.word_embeddings.modules_to_save["default"]
            emb.weight.add_(0.05 * torch.randn_like(emb.weight))
    pm.save_pretrained(os.path.join(OUT, case, "adapter"))
    os.remove(os.path.join(OUT, case, "adapter", "README.md"))  # peft's model card
    merged = pm.merge_and_unload().eval()
    with torch.no_grad():
        logits = merged(INPUT_IDS).logits
    sd = {k: v.detach().contiguous().clone() for k, v in merged.state_dict().items()}
    if merged.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    # bloom: peft unties the embeddings (lm_head keeps the old word_embeddings).
    print(case, "tie_word_embeddings after merge:", merged.config.tie_word_embeddings)
    sd["logits"] = logits.contiguous()
    sd["input_ids"] = INPUT_IDS.clone()
    save_file(sd, os.path.join(OUT, case, "expected.safetensors"))


def dequant_flat(packed, st):
    """bitsandbytes' generic (flat-blocked) dequant. NOTE: bitsandbytes 0.50.2's CPU kernel
    (cdequantize_blockwise_cpu_nf4_*) blocks each ROW separately, which is wrong when the last
    dim is smaller than the blocksize (our tiny [16, 32] weights): its error against the original
    f32 weights is 2.5x larger than the flat dequant's. The flat one is what CUDA computes."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    absmax = st.absmax
    if st.nested:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
    return _dequantize_4bit_compute(packed.reshape(-1), absmax.float(), st.code.float(),
                                    st.blocksize, st.shape, st.dtype).float()


def make_nf4():
    base_dir = os.path.join(OUT, "llama", "base")
    nf4_dir = os.path.join(OUT, "llama_nf4", "base")
    q = AutoModelForCausalLM.from_pretrained(
        base_dir, device_map="cpu", dtype=torch.bfloat16,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True,
                                               bnb_4bit_compute_dtype=torch.bfloat16))
    q.save_pretrained(nf4_dir)
    tokenizer_stub(nf4_dir)
    expected = {}
    for name, mod in q.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            expected["dequant." + name + ".weight"] = dequant_flat(mod.weight.data, mod.weight.quant_state)
    ad = load_file(os.path.join(OUT, "llama", "adapter", "adapter_model.safetensors"))
    cfg = json.load(open(os.path.join(OUT, "llama", "adapter", "adapter_config.json")))
    s = cfg["lora_alpha"] / cfg["r"]
    merged_sd = {}
    for k, v in load_file(os.path.join(nf4_dir, "model.safetensors")).items():
        if v.dtype == torch.bfloat16:
            merged_sd[k] = v.float()
    for k, w in expected.items():
        merged_sd[k[len("dequant."):]] = w
    for k in list(expected):
        mod = k[len("dequant."):-len(".weight")]
        a = ad.get("base_model.model." + mod + ".lora_A.weight")
        if a is None:
            continue
        b = ad["base_model.model." + mod + ".lora_B.weight"]
        m = (expected[k] + (b @ a) * s).to(torch.bfloat16).float()
        expected["merged." + mod + ".weight"] = m
        # Re-quantized like transformers does it (nf4, double quant, blocksize 64).
        packed, st = F.quantize_4bit(m.to(torch.bfloat16), blocksize=64, quant_type="nf4",
                                     compress_statistics=True)
        expected["requant." + mod + ".weight"] = packed.contiguous()
        for kk, v in st.as_dict(packed=True).items():
            if isinstance(v, torch.Tensor):
                expected["requant." + mod + ".weight." + kk] = v.contiguous()
        merged_sd[mod + ".weight"] = m
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    model.load_state_dict(merged_sd, strict=True)
    with torch.no_grad():
        expected["logits"] = model(INPUT_IDS).logits.contiguous()
    expected["input_ids"] = INPUT_IDS.clone()
    save_file(expected, os.path.join(OUT, "llama_nf4", "expected.safetensors"))


def make_quant4():
    torch.manual_seed(7)
    out = {}
    for tag, n, qt, nested, bs in [("fp4", 101, "fp4", False, 64), ("nf4", 1000, "nf4", True, 128)]:
        x = torch.randn(n)
        packed, st = F.quantize_4bit(x, blocksize=bs, quant_type=qt, compress_statistics=nested)
        out[f"{tag}.weight"] = packed.contiguous()
        for k, v in st.as_dict(packed=True).items():
            if isinstance(v, torch.Tensor):
                out[f"{tag}.weight.{k}"] = v.contiguous()
        out[f"{tag}.expected"] = F.dequantize_4bit(packed, st).float().contiguous()
    save_file(out, os.path.join(OUT, "quant4.safetensors"))


def check_export(export_dir):
    worst = 0.0
    for case in sorted(os.listdir(export_dir)):
        if case.endswith("_requant"):
            # A 4-bit export: transformers must load it as Linear4bit with our exact bytes.
            # (Its logits are not compared: they carry the 4-bit error, and bitsandbytes 0.50.2's
            # CPU dequant kernel blocks tiny rows wrongly, see dequant_flat.)
            model = AutoModelForCausalLM.from_pretrained(os.path.join(export_dir, case),
                                                         device_map="cpu")
            ours = load_file(os.path.join(export_dir, case, "model.safetensors"))
            n = 0
            for name, mod in model.named_modules():
                if isinstance(mod, bnb.nn.Linear4bit):
                    assert torch.equal(mod.weight.data.view(-1), ours[name + ".weight"].view(-1)), name
                    n += 1
            print(f"{case}: transformers loaded {n} Linear4bit layers with our bytes")
            continue
        exp = load_file(os.path.join(OUT, case, "expected.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(os.path.join(export_dir, case),
                                                     dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(exp["input_ids"]).logits
        diff = (logits - exp["logits"]).abs().max().item()
        worst = max(worst, diff)
        print(f"{case}: max |logits - peft merge_and_unload logits| = {diff:.3g}")
    print(f"worst {worst:.3g}")
    return worst


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-export":
        sys.exit(0 if check_export(sys.argv[2]) < 1e-4 else 1)
    os.makedirs(OUT, exist_ok=True)
    for entry in os.listdir(OUT):  # keep README.md
        path = os.path.join(OUT, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif entry != "README.md":
            os.remove(path)
    for case, model_name in [("llama", "llama"), ("llama_rs", "llama"), ("gpt2", "gpt2"),
                             ("bloom", "bloom")]:
        make_case(case, model_name)
    make_nf4()
    make_quant4()
