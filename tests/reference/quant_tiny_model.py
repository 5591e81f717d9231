"""A tiny LLaMA saved by transformers with BitsAndBytesConfig(load_in_4bit=True) on the CPU.

    /work/pyenv/bin/python tests/reference/quant_tiny_model.py

Writes tests/fixtures/quant/tiny_llama/{f32,nf4_dq,fp4}/ : the original f32 weights and two
pre-quantized saves (NF4 + double quant, FP4 without). The Rust test quantizes the f32 linear
weights itself and must reproduce every 4-bit tensor of the saved files byte for byte.
"""
import json, os, shutil, tempfile
import torch

torch.manual_seed(0)
torch.set_num_threads(1)
import bitsandbytes as bnb
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "quant", "tiny_llama")
shutil.rmtree(OUT, ignore_errors=True)
cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=72, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
model = LlamaForCausalLM(cfg).to(torch.float32)
src = os.path.join(OUT, "f32")
model.save_pretrained(src, safe_serialization=True)
for name, qt, dq in [("nf4_dq", "nf4", True), ("fp4", "fp4", False)]:
    q = AutoModelForCausalLM.from_pretrained(
        src, device_map="cpu", dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt,
                                               bnb_4bit_use_double_quant=dq,
                                               bnb_4bit_compute_dtype=torch.float32))
    q.save_pretrained(os.path.join(OUT, name), safe_serialization=True)
with open(os.path.join(OUT, "versions.json"), "w") as f:
    json.dump({"torch": torch.__version__, "bitsandbytes": bnb.__version__,
               "transformers": transformers.__version__}, f)
for root, _, files in os.walk(OUT):
    for fn in files:
        print(os.path.join(root, fn), os.path.getsize(os.path.join(root, fn)))
