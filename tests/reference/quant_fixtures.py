"""Regenerate tests/fixtures/quant/*.json with bitsandbytes / torch / transformers on the CPU.

    /work/pyenv/bin/python tests/reference/quant_fixtures.py

Inputs come from a tiny deterministic generator (`gen`) that the Rust tests reimplement
(`crate::quant::testgen`), so fixtures store only outputs. Float arrays are stored as hex
of little-endian f32 bytes so they round-trip bit-exactly.
"""
import json, math, os, sys
import numpy as np
import torch

torch.set_num_threads(1)
import bitsandbytes as bnb
import bitsandbytes.functional as F
import bitsandbytes.backends.default.ops as default_ops
import transformers

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "quant")
os.makedirs(OUT, exist_ok=True)
VERSIONS = {"torch": torch.__version__, "bitsandbytes": bnb.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
print(VERSIONS)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_gen import gen  # noqa: E402


def hexf(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32)).tobytes().hex()


def hex64(a):
    """f64 values as hex (serde_json's default float parsing is not always exact)."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes().hex()


def hexu8(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.uint8)).tobytes().hex()


# ---------------------------------------------------------------- 4-bit
def crafted(quant_type):
    code = F.get_4bit_type(quant_type, device="cpu")
    s = torch.sort(code).values
    mids = (s[:-1] + s[1:]) / 2
    vals = torch.cat([torch.tensor([1.0]), mids, code, -mids, torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    return vals.numpy().astype(np.float32)


cases4 = [
    # name, quant_type, shape, blocksize, double_quant, seed, scale
    ("nf4_64x32", "nf4", [64, 32], 64, False, 1, 0.05),
    ("nf4_33x17_dq", "nf4", [33, 17], 64, True, 2, 0.05),
    ("fp4_33x17", "fp4", [33, 17], 64, False, 3, 0.05),
    ("fp4_300x70_dq", "fp4", [300, 70], 64, True, 4, 0.02),
    ("nf4_300x70_dq", "nf4", [300, 70], 64, True, 5, 0.02),
    ("nf4_7_bs32_dq", "nf4", [7], 32, True, 6, 1.0),
    ("nf4_3x1500_bs4096", "nf4", [3, 1500], 4096, False, 7, 0.1),
    ("fp4_40x40_bs128_dq", "fp4", [40, 40], 128, True, 8, 0.1),
    ("nf4_crafted", "nf4", None, 64, False, 0, 0.0),
    ("fp4_crafted", "fp4", None, 64, False, 0, 0.0),
    ("nf4_zero_blocks_dq", "nf4", [2, 100], 64, True, 9, 0.05),
    ("nf4_256x160_bs32_dq", "nf4", [256, 160], 32, True, 10, 0.03),
]
out4 = []
for name, qt, shape, bs, dq, seed, scale in cases4:
    if shape is None:
        x = crafted(qt)
        shape = [len(x)]
    else:
        n = int(np.prod(shape))
        x = gen(seed, n, scale)
        if "zero_blocks" in name:
            x[:64] = 0.0
            x[192:] = 0.0
    A = torch.from_numpy(x.copy()).reshape(shape)
    packed, st = F.quantize_4bit(A, blocksize=bs, compress_statistics=dq, quant_type=qt)
    # bnb 0.50.2's C++ CPU kernel (AVX512 path) indexes absmax per row and gets it wrong when a
    # row is not a whole number of blocks (e.g. [64, 32] with blocksize 64); the pure-torch
    # default path uses flat blocks like the CUDA kernel, so it is the reference here.
    absmax_f32 = st.absmax if not dq else (F.dequantize_blockwise(st.absmax, st.state2) + st.offset)
    code4 = F.get_4bit_type(qt, device="cpu")
    deq = default_ops._dequantize_4bit_compute.__wrapped__(
        packed.reshape(-1), absmax_f32, code4, bs, list(shape), torch.float32).reshape(-1).numpy()
    deq_cpu = F.dequantize_4bit(packed, st).reshape(-1).numpy()
    if not np.array_equal(deq.view(np.uint32), deq_cpu.view(np.uint32)):
        print(f"  note: bnb CPU kernel dequant differs from flat-block dequant for {name}")
    n = x.size
    rec = {"name": name, "quant_type": qt, "shape": shape, "blocksize": bs, "double_quant": dq,
           "seed": seed, "scale": scale, "scale_f64": hex64([scale]), "packed": hexu8(packed.reshape(-1).numpy()),
           "packed_shape": list(packed.shape)}
    if shape is not None and seed == 0:
        rec["input"] = hexf(x)
    if dq:
        rec["absmax_u8"] = hexu8(st.absmax.numpy())
        rec["nested_absmax"] = hexf(st.state2.absmax.numpy())
        rec["nested_code"] = hexf(st.state2.code.numpy())
        rec["offset"] = hexf([st.offset.item()])
        rec["absmax_dequant"] = hexf((F.dequantize_blockwise(st.absmax, st.state2) + st.offset).numpy())
    else:
        rec["absmax"] = hexf(st.absmax.numpy())
    if n <= 2100:
        rec["dequant"] = hexf(deq)
        rec["dequant_stride"] = 1
    else:
        rec["dequant"] = hexf(deq[::13])
        rec["dequant_stride"] = 13
    packed_state = st.as_dict(packed=True)
    key = [k for k in packed_state if k.startswith("quant_state.")][0]
    rec["quant_state_key"] = key
    rec["quant_state_json"] = bytes(packed_state[key].numpy().tolist()).decode()
    rec["quant_map"] = hexf(packed_state["quant_map"].numpy())
    out4.append(rec)
    print(name, "ok", packed.shape, rec["quant_state_json"])

# 8-bit blockwise with the dynamic maps (the optimizer-state quantizer), for direct checks.
out8 = []
for name, signed, n, bs, seed, scale, power in [("dyn_signed_1000_bs256", True, 1000, 256, 11, 0.3, 1),
                                                ("dyn_unsigned_1000_bs256", False, 1000, 256, 12, 1.0, 4),
                                                ("dyn_signed_700_bs64", True, 700, 64, 13, 2.0, 1)]:
    x = gen(seed, n, scale)
    if power != 1:
        a = np.abs(x).astype(np.float32)
        sq = (a * a).astype(np.float32)
        x = (sq * sq).astype(np.float32)  # power 4 as two f32 squarings
    code = F.create_dynamic_map(signed=signed)
    q, am = torch.ops.bitsandbytes.quantize_blockwise(torch.from_numpy(x.copy()), code, bs)
    dq = torch.ops.bitsandbytes.dequantize_blockwise(q, am, code, bs, torch.float32)
    out8.append({"name": name, "signed": signed, "n": n, "blocksize": bs, "seed": seed, "scale": scale, "scale_f64": hex64([scale]),
                 "power": power, "code": hexf(code.numpy()), "codes": hexu8(q.numpy()), "absmax": hexf(am.numpy()),
                 "dequant": hexf(dq.numpy())})

with open(os.path.join(OUT, "quant4.json"), "w") as f:
    json.dump({"versions": VERSIONS, "cases": out4, "blockwise8": out8}, f, indent=0)

# ---------------------------------------------------------------- optimizers
def grads_for(step, sizes, base):
    return [gen(base + 100 * step + i, n, 0.5) for i, n in enumerate(sizes)]


# torch AdamW (single-tensor path), lr changes every step
sizes = [64, 96]
lrs = [1e-3, 5e-4, 2.5e-4]
params = [torch.nn.Parameter(torch.from_numpy(gen(200 + i, n, 1.0))) for i, n in enumerate(sizes)]
opt = torch.optim.AdamW(params, lr=lrs[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False)
adamw_steps = []
for s, lr in enumerate(lrs):
    for g in opt.param_groups:
        g["lr"] = lr
    for p, g in zip(params, grads_for(s, sizes, 300)):
        p.grad = torch.from_numpy(g.copy())
    opt.step()
    adamw_steps.append({"lr": lr, "lr_f64": hex64([lr]), "params": [hexf(p.detach().numpy()) for p in params],
                        "exp_avg": [hexf(opt.state[p]["exp_avg"].numpy()) for p in params],
                        "exp_avg_sq": [hexf(opt.state[p]["exp_avg_sq"].numpy()) for p in params]})
adamw = {"sizes": sizes, "param_seed": 200, "grad_seed": 300, "betas": [0.9, 0.999], "eps": 1e-8,
         "weight_decay": 0.01, "steps": adamw_steps}

# bitsandbytes AdamW8bit on the CPU: one 8-bit tensor (>= 4096) and one 32-bit (small) tensor
sizes8 = [4128, 96]
params8 = [torch.nn.Parameter(torch.from_numpy(gen(400 + i, n, 1.0))) for i, n in enumerate(sizes8)]
opt8 = bnb.optim.AdamW8bit(params8, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
steps8 = []
lrs8 = [1e-3, 1e-3, 5e-4]
for s, lr in enumerate(lrs8):
    for g in opt8.param_groups:
        g["lr"] = lr
    for p, g in zip(params8, grads_for(s, sizes8, 500)):
        p.grad = torch.from_numpy(g.copy())
    opt8.step()
    st0 = opt8.state[params8[0]]
    st1 = opt8.state[params8[1]]
    steps8.append({"lr": lr, "lr_f64": hex64([lr]), "params": [hexf(p.detach().numpy()) for p in params8],
                   "state1": hexu8(st0["state1"].numpy()), "state2": hexu8(st0["state2"].numpy()),
                   "absmax1": hexf(st0["absmax1"].numpy()), "absmax2": hexf(st0["absmax2"].numpy()),
                   "small_m": hexf(st1["state1"].numpy()), "small_v": hexf(st1["state2"].numpy())})
adamw8 = {"sizes": sizes8, "param_seed": 400, "grad_seed": 500, "betas": [0.9, 0.999], "eps": 1e-8,
          "weight_decay": 0.01, "steps": steps8}

# clip_grad_norm_
clip = []
for max_norm in [0.3, 1e9]:
    gs = [torch.from_numpy(gen(600 + i, n, 0.2)) for i, n in enumerate([64, 96, 5])]
    ps = [torch.nn.Parameter(torch.zeros_like(g)) for g in gs]
    for p, g in zip(ps, gs):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
    clip.append({"max_norm": max_norm, "sizes": [64, 96, 5], "seed": 600, "scale": 0.2, "scale_f64": hex64([0.2]),
                 "total_norm": hexf([total.item()]), "grads": [hexf(p.grad.numpy()) for p in ps]})

# schedules via transformers.get_scheduler
sched = []
for kind, total, warm in [("constant", 100, 0), ("constant_with_warmup", 100, 10), ("linear", 100, 10),
                          ("cosine", 100, 10), ("cosine", 37, 0), ("linear", 50, 60),
                          ("cosine", 100, math.ceil(100 * 0.03))]:
    p = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([p], lr=2e-4)
    s = transformers.get_scheduler(kind, o, num_warmup_steps=warm, num_training_steps=total)
    vals = []
    for _ in range(total + 1):
        vals.append(o.param_groups[0]["lr"])
        o.step()
        s.step()
    sched.append({"kind": kind, "total": total, "warmup": warm, "base_lr": 2e-4, "base_lr_f64": hex64([2e-4]), "lrs": vals,
                  "lrs_f64": hex64(vals)})

with open(os.path.join(OUT, "optim.json"), "w") as f:
    json.dump({"versions": VERSIONS, "adamw": adamw, "adamw8bit": adamw8, "clip": clip, "schedules": sched,
               "warmup_ratio_0.03_of_100": math.ceil(100 * 0.03)}, f, indent=0)
print("done")
