"""Reference values for the CUDA twins (src/cuda/twins), from bitsandbytes and torch on the CPU.

Writes tests/fixtures/cuda/twins.json:
  dynamic_map_signed / dynamic_map_unsigned: bnb.functional.create_dynamic_map (256 floats each)
  nf4: a small tensor quantized by bnb.functional.quantize_4bit (blocksize 64), its packed bytes,
       absmax and bnb's dequantization
  attention: torch scaled_dot_product_attention (causal, GQA by repeat) on a tiny seeded input
  cross_entropy: torch.nn.functional.cross_entropy(reduction="none", ignore_index=-100)
Run: /work/pyenv/bin/python tests/reference/cuda_twins.py
"""
import json
import os

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch

torch.manual_seed(0)
out = {"versions": {"torch": torch.__version__, "bitsandbytes": bnb.__version__}}
out["dynamic_map_signed"] = F.create_dynamic_map(signed=True).tolist()
out["dynamic_map_unsigned"] = F.create_dynamic_map(signed=False).tolist()

x = torch.randn(2, 100)  # 200 elements: 3 full blocks + a partial one
q, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
deq = F.dequantize_4bit(q, st, quant_type="nf4")
out["nf4"] = {
    "x": x.flatten().tolist(),
    "packed": q.flatten().tolist(),
    "absmax": st.absmax.flatten().tolist(),
    "dequant": deq.flatten().tolist(),
}

B, T, HQ, HKV, D = 1, 6, 4, 2, 8
qq = torch.randn(B, T, HQ, D)
kk = torch.randn(B, T, HKV, D)
vv = torch.randn(B, T, HKV, D)
rep = HQ // HKV
o = torch.nn.functional.scaled_dot_product_attention(
    qq.transpose(1, 2), kk.repeat_interleave(rep, dim=2).transpose(1, 2),
    vv.repeat_interleave(rep, dim=2).transpose(1, 2), is_causal=True).transpose(1, 2)
out["attention"] = {"dims": [B, T, HQ, HKV, D], "q": qq.flatten().tolist(), "k": kk.flatten().tolist(),
                    "v": vv.flatten().tolist(), "o": o.flatten().tolist()}

z = torch.randn(4, 11) * 3
t = torch.tensor([3, -100, 10, 0])
out["cross_entropy"] = {"v": 11, "logits": z.flatten().tolist(), "targets": t.tolist(),
                        "loss": torch.nn.functional.cross_entropy(z, t, reduction="none", ignore_index=-100).tolist()}

path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "cuda", "twins.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", os.path.normpath(path), out["versions"])
