"""Checks that PEFT loads adapters saved by the Rust engine and computes the same logits, and
that transformers loads the merged model written by `Model::save_pretrained`.

Run:
  ENGINE_PEFT_CHECK_DIR=/tmp/peftcheck cargo test --lib write_adapters_for_peft_check -- --ignored
  /work/pyenv/bin/python tests/reference/engine_check_saved_adapter.py /tmp/peftcheck
Versions used: torch 2.15.0, transformers 5.23.0, peft 0.21.2.
"""

import os
import sys

import peft
import torch
import transformers
from safetensors.torch import load_file

root = sys.argv[1]
fixtures = os.path.join(os.path.dirname(__file__), "..", "fixtures")
ok = True
for family in sorted(os.listdir(root)):
    # engine fixtures by name, tests/fixtures/bases/X as bases_X
    fix = os.path.join(fixtures, "engine")
    if family.startswith("bases_"):
        fix = os.path.join(fixtures, "bases")
        family = family[len("bases_"):]
    ours_dir = os.path.join(root, family if fix.endswith("engine") else "bases_" + family)
    ref = load_file(os.path.join(fix, family, "ref.safetensors"))
    ours = load_file(os.path.join(ours_dir, "ours.safetensors"))
    base = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(fix, family), attn_implementation="eager")
    m = peft.PeftModel.from_pretrained(base, ours_dir).eval()
    with torch.no_grad():
        out = m(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])
    valid = ref["attention_mask"].bool()
    err = (out.logits[valid] - ours["logits"][valid]).abs().max().item()
    lerr = abs(out.loss.item() - ours["loss"].item())
    good = err < 1e-4 and lerr < 1e-5
    ok &= good
    print(f"{family}: max |logits diff| {err:.2e}, |loss diff| {lerr:.2e} {'OK' if good else 'MISMATCH'}")
    # the adapter merged and written by Model::save_pretrained loads in transformers
    merged = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(ours_dir, "merged"), attn_implementation="eager").eval()
    with torch.no_grad():
        out = merged(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"])
    err = (out.logits[valid] - ours["logits"][valid]).abs().max().item()
    ok &= err < 1e-4
    print(f"{family} merged: max |logits diff| {err:.2e} {'OK' if err < 1e-4 else 'MISMATCH'}")
sys.exit(0 if ok else 1)
