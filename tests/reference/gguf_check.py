"""Check recipe's GGUF exports with the reference readers (run by hand; CI has no python).

Versions: torch 2.15.0, transformers 5.24.0, gguf 0.19.0 (/work/pyref; `pip install gguf`).

    RECIPE_GGUF_CHECK_DIR=/tmp/gguf_check cargo test --lib export::gguf -- --ignored
    RECIPE_GGUF_CHECK_DIR=/tmp/gguf_check cargo test --test gguf_export -- --ignored
    /work/pyref/bin/python tests/reference/gguf_check.py /tmp/gguf_check

For every tests/fixtures/e2e/<case> exported as <case>_<dtype>/model.gguf:
- gguf-py's GGUFReader lists the metadata; where tests/fixtures/gguf/<case>_<dtype>.json exists
  (what the Rust tests compare with) its summary must equal it;
- transformers loads the file (`gguf_file=`): every weight must equal the merged safetensors
  model's rounded to the file's type (f16 / bf16 casts, q8_0 through gguf-py's own
  quantize + dequantize, q4_0 likewise), and the logits on two rows of 16 ids must match the reference model
  holding those rounded weights within 1e-5 (also printed: the difference to the f32 model);
- the tokenizer transformers builds from the file encodes a sample as the source one does.

transformers maps gpt2's `feed_forward_length` to no config attribute (n_inner stays 4·n_embd),
so the gpt2 fixture (n_inner = 2·n_embd) is loaded with the source config.

Then the tests/fixtures/bases qwen3 and mistral models, merged with their adapters by
`recipe merge --gguf` (bases_<case>_<dtype>/{merged/, model.gguf}), against the merged
safetensors dir, the same way (weights, logits, committed bases_<case>_<dtype>.json); their
tokenizer is a synthetic 48-token one, not compared. Two limits of transformers' loader show:
- qwen3: it maps no `qwen3.attention.key_length`, so head_dim stays Qwen3Config's 128 (every
  released Qwen3 has 128); the fixture's head_dim 8 is loaded with the source config (the
  load without it is tried and its error printed);
- mistral: llama.cpp's arch `llama` (loaded as LlamaForCausalLM unless general.name is exactly
  "mistral") has no sliding window: the logits are compared with the reference model without
  its window on 16 tokens, and with the windowed reference on inputs up to the window (4).
"""

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = "Hello world, 你好！ The sky is blue."


def to_json(field):
    """A field as recipe's GgufFile::summary writes it (arrays > 6 items shortened)."""
    t = field.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        items = [field.contents(i) for i in range(len(field.data))]
        if len(items) > 6:
            return {"len": len(items), "head": items[:3], "tail": items[-2:]}
        return items
    return field.contents()


def summary(reader):
    meta = {}
    for k, f in reader.fields.items():
        if k.startswith("GGUF."):
            continue
        v = to_json(f)
        if f.types[0] == gguf.GGUFValueType.FLOAT32:
            v = float(np.float32(v))
        meta[k] = v
    tensors = [
        [t.name, [int(d) for d in t.shape], t.tensor_type.name] for t in reader.tensors
    ]
    return {"version": 3, "metadata": meta, "tensors": tensors}


def floats_equal(a, b):
    """JSON equality, f32 values compared as f32."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(floats_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(floats_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return np.float32(a) == np.float32(b)
    return a == b


def rounded(name, p, dtype, family):
    """The weight as the file stores it, back in f32 (convert_hf_to_gguf.py's type rules)."""
    if p.dim() <= 1 or "norm" in name or name.endswith(".bias") or name.endswith("wpe.weight"):
        return p
    if dtype == "f16":
        return p.half().float()
    if dtype == "bf16":
        return p.bfloat16().float()
    qt = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[dtype]
    conv1d = family == "gpt2" and any(s in name for s in ("c_attn", "c_proj", "c_fc"))
    w = p.T.contiguous() if conv1d else p
    a = w.numpy().astype(np.float32)
    if a.shape[-1] % 32 != 0:  # q8_0 / q4_0 fall back to f16
        return p.half().float()
    q = gguf.quants.quantize(a, qt)
    d = torch.from_numpy(gguf.quants.dequantize(q, qt).copy())
    d = d.reshape(w.shape)
    return d.T.contiguous() if conv1d else d


def check(out_dir, case, dtype):
    src = ROOT / "tests/fixtures/e2e" / case
    d = out_dir / f"{case}_{dtype}"
    reader = gguf.GGUFReader(d / "model.gguf")
    s = summary(reader)
    want = ROOT / "tests/fixtures/gguf" / f"{case}_{dtype}.json"
    committed = "-"
    if want.exists():
        committed = "equal" if floats_equal(s, json.loads(want.read_text())) else "DIFFERENT"
    m = s["metadata"]
    arch = m["general.architecture"]
    keys = [k for k in m if k.startswith(arch + ".")]
    tok = m["tokenizer.ggml.tokens"]

    kw = {"config": AutoConfig.from_pretrained(src)} if case == "gpt2" else {}
    g = AutoModelForCausalLM.from_pretrained(
        d, gguf_file="model.gguf", dtype=torch.float32, **kw
    ).eval()
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.randint(0, ref.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        l_f32 = ref(ids).logits
        sd = ref.state_dict()
        exp = {k: rounded(k, v, dtype, case) for k, v in sd.items()}
        gsd = g.state_dict()
        w_diff = max((gsd[k].float() - exp[k]).abs().max().item() for k in exp if k in gsd)
        missing = [k for k in exp if k not in gsd]
        ref.load_state_dict(exp)
        l_exp = ref(ids).logits
        l_g = g(ids).logits
    d_exp = (l_g - l_exp).abs().max().item()
    d_f32 = (l_g - l_f32).abs().max().item()

    t_g = AutoTokenizer.from_pretrained(d, gguf_file="model.gguf")
    if (src / "tokenizer.model").exists():
        # transformers 5.23 asks for tiktoken on this dir; the sentencepiece library is the truth.
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
        want_ids = [sp.bos_id()] + sp.encode(SAMPLE)
    else:
        want_ids = AutoTokenizer.from_pretrained(src)(SAMPLE)["input_ids"]
    same_tok = want_ids == t_g(SAMPLE)["input_ids"]
    ok = w_diff == 0 and d_exp <= 1e-5 and not missing and committed != "DIFFERENT"
    print(
        f"{case:6} {dtype:4} arch={arch} {len(reader.tensors)} tensors, {len(keys)} {arch}.* keys, "
        f"tokenizer.ggml.model={m['tokenizer.ggml.model']} tokens={tok['len']} "
        f"chat_template={'yes' if 'tokenizer.chat_template' in m else 'no'} committed-json={committed} | "
        f"max|w - rounded|={w_diff:.1e} max|logits - rounded ref|={d_exp:.1e} "
        f"max|logits - f32 ref|={d_f32:.1e} tokenizer-same={same_tok} {'OK' if ok else 'FAIL'}"
    )
    return ok


def logits_diff(a, b, ids):
    with torch.no_grad():
        return (a(ids).logits - b(ids).logits).abs().max().item()


def check_base(out_dir, case, dtype):
    d = out_dir / f"bases_{case}_{dtype}"
    src = d / "merged"
    reader = gguf.GGUFReader(d / "model.gguf")
    s = summary(reader)
    want = ROOT / "tests/fixtures/gguf" / f"bases_{case}_{dtype}.json"
    committed = "-"
    if want.exists():
        committed = "equal" if floats_equal(s, json.loads(want.read_text())) else "DIFFERENT"
    m = s["metadata"]
    arch = m["general.architecture"]
    keys = {k: v for k, v in m.items() if k.startswith(arch + ".")}

    bare = "-"
    try:
        g = AutoModelForCausalLM.from_pretrained(d, gguf_file="model.gguf", dtype=torch.float32)
        bare = f"{type(g).__name__} head_dim={g.config.head_dim}"
    except Exception as e:  # noqa: BLE001 - printed: what the loader makes of it alone
        hd = AutoConfig.from_pretrained(d, gguf_file="model.gguf").head_dim
        bare = f"fails ({type(e).__name__}, size mismatch): its config has head_dim={hd}"
        g = None
    if case == "qwen3":
        g = AutoModelForCausalLM.from_pretrained(
            d, gguf_file="model.gguf", dtype=torch.float32, config=AutoConfig.from_pretrained(src)
        )
    g = g.eval()
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    window = getattr(ref.config, "sliding_window", None) if case == "mistral" else None
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, ref.config.vocab_size, (2, 16), generator=gen)
    sd = ref.state_dict()
    exp = {k: rounded(k, v, dtype, case) for k, v in sd.items()}
    gsd = g.state_dict()
    w_diff = max((gsd[k].float() - exp[k]).abs().max().item() for k in exp if k in gsd)
    missing = [k for k in exp if k not in gsd]
    extra = ""
    if window:
        full = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, sliding_window=None)
        d_f32 = logits_diff(g, full.eval(), ids)
        ref.load_state_dict(exp)
        full.load_state_dict(exp)
        d_exp = logits_diff(g, full.eval(), ids)
        d_short = logits_diff(g, ref, ids[:, :window])
        d_long = logits_diff(g, ref, ids[:, : window + 1])
        extra = (
            f" | vs windowed ref: {window} tokens {d_short:.1e}, {window + 1} tokens {d_long:.1e}"
        )
        ok_window = d_short <= 1e-5
    else:
        d_f32 = logits_diff(g, ref, ids)
        ref.load_state_dict(exp)
        d_exp = logits_diff(g, ref, ids)
        ok_window = True
    ok = w_diff == 0 and d_exp <= 1e-5 and ok_window and not missing and committed != "DIFFERENT"
    print(
        f"{case:7} {dtype:4} arch={arch} {len(reader.tensors)} tensors, "
        f"key_length={keys.get(arch + '.attention.key_length', '-')} "
        f"committed-json={committed} | alone: {bare} | max|w - rounded|={w_diff:.1e} "
        f"max|logits - rounded ref{' without window' if window else ''}|={d_exp:.1e} "
        f"max|logits - f32 ref{' without window' if window else ''}|={d_f32:.1e}{extra} "
        f"{'OK' if ok else 'FAIL'}"
    )
    return ok


def main():
    out_dir = Path(sys.argv[1])
    r = gguf.GGUFReader(out_dir / "llama_f16" / "model.gguf")
    print("gguf-py metadata of llama_f16/model.gguf:")
    for k, f in r.fields.items():
        v = to_json(f)
        if isinstance(v, dict):
            v = f"[{v['len']} items] {v['head']}..."
        print(f"  {k} = {v}")
    ok = True
    for case in ["llama", "llama3", "qwen2", "bloom", "gpt2"]:
        for dtype in ["f16", "bf16", "q8_0", "q4_0"]:
            ok &= check(out_dir, case, dtype)
    for case in ["qwen3", "mistral"]:
        for dtype in ["f16", "bf16", "q8_0", "q4_0"]:
            ok &= check_base(out_dir, case, dtype)
    print("ALL OK" if ok else "SOME FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
