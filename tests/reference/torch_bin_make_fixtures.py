"""Fixtures for reading PyTorch `.bin` checkpoints (torch.save's zip format) without Python.

Run:  /work/pyref/bin/python tests/reference/torch_bin_make_fixtures.py
Writes tests/fixtures/torch_bin/:
- glm6b/: the tiny ChatGLM-6B of tests/fixtures/glm6b/tiny in THUDM's checkpoint layout, two
  shards `pytorch_model-0000N-of-00002.bin` + `pytorch_model.bin.index.json` (how
  THUDM/chatglm-6b ships: .bin only), with its config.json.
- mixed.bin + mixed.safetensors: one state dict of every storage dtype a checkpoint holds
  (f32, f16, bf16, i64, i32, u8, bool as u8), a view with a storage offset, two tensors sharing one
  storage, an nn.Parameter, a 0-d tensor and an empty one; the safetensors file holds the same
  tensors (contiguous copies) to compare bytes with.
- adapter/: tests/fixtures/engine/llama/adapter as `adapter_model.bin` (peft < 0.7's default).
- noncontig.bin: a transposed (non-contiguous) tensor, which the reader refuses.
- legacy.bin: the pre-1.6 (non-zip) format, which the reader refuses.

Versions used: torch 2.15.0, safetensors (printed at start).
"""

import json
import os
import shutil
from collections import OrderedDict

import safetensors
import torch
from safetensors.torch import load_file, save_file

print("torch", torch.__version__, "safetensors", safetensors.__version__)
root = os.path.join(os.path.dirname(__file__), "..", "fixtures")
out = os.path.join(root, "torch_bin")
os.makedirs(out, exist_ok=True)

# ChatGLM-6B tiny, sharded like THUDM's repo.
src = os.path.join(root, "glm6b", "tiny")
glm = os.path.join(out, "glm6b")
shutil.rmtree(glm, ignore_errors=True)
os.makedirs(glm)
shutil.copy(os.path.join(src, "config.json"), glm)
sd = load_file(os.path.join(src, "model.safetensors"))
names = list(sd.keys())
half = len(names) // 2
weight_map = {}
for i, part in enumerate([names[:half], names[half:]]):
    fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
    torch.save(OrderedDict((n, sd[n]) for n in part), os.path.join(glm, fname))
    weight_map.update({n: fname for n in part})
total = sum(t.numel() * t.element_size() for t in sd.values())
with open(os.path.join(glm, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

# A PEFT adapter as peft < 0.7 saved it by default: adapter_model.bin (+ its config).
src = os.path.join(root, "engine", "llama", "adapter")
ad = os.path.join(out, "adapter")
shutil.rmtree(ad, ignore_errors=True)
os.makedirs(ad)
shutil.copy(os.path.join(src, "adapter_config.json"), ad)
torch.save(OrderedDict(load_file(os.path.join(src, "adapter_model.safetensors"))), os.path.join(ad, "adapter_model.bin"))

# Every dtype, views and sharing.
g = torch.Generator().manual_seed(0)
base = torch.randn(20, generator=g)
shared = torch.randn(6, 4, generator=g)
mixed = OrderedDict()
mixed["f32"] = torch.randn(3, 5, generator=g)
mixed["f16"] = torch.randn(4, 2, generator=g).half()
mixed["bf16"] = torch.randn(2, 3, 2, generator=g).bfloat16()
mixed["i64"] = torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4)
mixed["i32"] = torch.arange(0, 7, dtype=torch.int32)
mixed["u8"] = torch.arange(250, 256, dtype=torch.uint8)
mixed["bool"] = torch.tensor([True, False, True])
mixed["offset_view"] = base[7:13]  # storage offset 7
mixed["shared_a"] = shared[1:3]  # rows 1..3 of one storage
mixed["shared_b"] = shared[4]  # row 4 of the same storage
mixed["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
mixed["scalar"] = torch.tensor(2.5)
mixed["empty"] = torch.zeros(0, 3)
torch.save(mixed, os.path.join(out, "mixed.bin"))
save_file(
    {k: (v.detach().to(torch.uint8) if v.dtype == torch.bool else v.detach()).contiguous().clone()
     for k, v in mixed.items()},
    os.path.join(out, "mixed.safetensors"),
)

torch.save({"w": torch.randn(3, 4, generator=g).t()}, os.path.join(out, "noncontig.bin"))
torch.save({"w": torch.ones(2)}, os.path.join(out, "legacy.bin"), _use_new_zipfile_serialization=False)
for f in sorted(os.listdir(out)):
    p = os.path.join(out, f)
    print(f, os.path.getsize(p) if os.path.isfile(p) else sorted(os.listdir(p)))
