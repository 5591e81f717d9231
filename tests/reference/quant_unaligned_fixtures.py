"""bitsandbytes 4-bit on shapes whose rows are NOT a whole number of blocks (issue 12).

    /work/pyref/bin/python tests/reference/quant_unaligned_fixtures.py

Made with torch 2.15.0, bitsandbytes 0.50.2, transformers 5.24.0, peft 0.21.2 on an AVX-512 CPU
(versions inside the files). Writes tests/fixtures/quant_unaligned/:

- cases.json: for every blocksize 32..4096, NF4 and FP4, with and without double quant, two
  shapes [rows, cols] with cols % blocksize != 0 and numel % blocksize != 0 (one with even cols
  that are a multiple of 16, one with an odd numel), plus the [5, 576] / blocksize 128 shape of
  the report. Inputs come from `quant_gen.gen` (reimplemented in `crate::quant::testgen`);
  outputs are bnb's quantization (absmax in hex, packed bytes as an FNV-1a 64 hash) and its
  dequantization (FNV-1a 64 of the f32 bytes, plus a strided sample in hex).
- llama48_nf4_dq/, adapter_init/, ref.json: a 2-layer LLaMA with 48-wide rows (blocksize 64)
  saved by transformers with load_in_4bit (NF4, double quant, compute float32), and peft +
  bitsandbytes QLoRA on it: loss, LoRA gradients of the first backward, adapter after 3 AdamW
  steps.

WHICH DEQUANTIZATION IS THE REFERENCE. bitsandbytes quantizes over the FLATTENED tensor: block b
holds elements [b*blocksize, (b+1)*blocksize) of the row-major weight, so blocks straddle rows
when cols % blocksize != 0 (the CUDA kernels kQuantizeBlockwise / kDequantizeBlockwise and the
generic torch ops in backends/default/ops.py all index absmax[flat_index // blocksize]). On the
CPU, bnb 0.50.2 dispatches `dequantize_4bit` to a C++ kernel (backends/cpu/ops.py ->
cdequantize_blockwise_cpu_{nf4,fp4}_* (blocksize, m=rows, n=cols)) whose AVX-512 branch (taken
when cols is even, cols % 16 == 0 and blocksize < 2048) reads absmax[row * (cols // blocksize)
+ col // blocksize]: per-row blocks, which is NOT how the data was quantized. For such shapes it
returns wrong weights (for [40, 48] / blocksize 64 every row gets block 0's scale), so
transformers' 4-bit model on an AVX-512 CPU computes with wrong weights and peft QLoRA trains
against them. This script therefore re-registers bnb's own generic flattened implementation
(`_dequantize_4bit_compute`, CUDA-equivalent) as the CPU kernel before any reference number is
taken, and records how far the C++ kernel is from it (`cpu_kernel_max_diff`, printed).
"""
import json, os, shutil, sys, tempfile
import numpy as np
import torch

torch.manual_seed(0)
torch.set_num_threads(1)
import bitsandbytes as bnb
import bitsandbytes.functional as F
import bitsandbytes.backends.cpu.ops  # noqa: F401  (registers the C++ CPU kernels first)
from bitsandbytes.backends.default import ops as default_ops
from bitsandbytes.backends.utils import _get_4bit_code
import peft
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quant_gen import gen  # noqa: E402

OUT = os.path.join(HERE, "..", "fixtures", "quant_unaligned")
VERSIONS = {"torch": torch.__version__, "bitsandbytes": bnb.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
print(VERSIONS)

# bnb's generic flattened dequantization, without its torch.compile wrapper.
_flat_compute = default_ops._dequantize_4bit_compute.__wrapped__


def flat_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    """bitsandbytes.backends.default.ops' dequantize_4bit: flattened blocks, as on CUDA."""
    if A.dtype != torch.uint8:
        A = A.view(torch.uint8)
    return _flat_compute(A.reshape(-1), absmax, _get_4bit_code(quant_type, A.device), blocksize, shape, dtype)


def cpu_kernel_dequantize(packed, st):
    """What bnb 0.50.2 does on this CPU (the C++ kernel where it applies): the wrong path."""
    return F.dequantize_4bit(packed, st)


def fnv64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def fnv64_np(a):
    """FNV-1a 64 of a byte array (vectorised enough for ~100 KB)."""
    return fnv64(np.ascontiguousarray(a).view(np.uint8).tobytes())


def hexf(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32)).tobytes().hex()


def hex64(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes().hex()


def hexu8(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.uint8)).tobytes().hex()


# ---------------------------------------------------------------- tensor cases
# Even cols (a multiple of 16, so the C++ AVX-512 branch is taken where blocksize < 2048), odd
# rows: cols = 1.5 blocks and numel = rows * 1.5 blocks is not a multiple of the blocksize.
ROWS_EVEN = {32: 201, 64: 201, 128: 51, 256: 25, 512: 13, 1024: 7, 2048: 3, 4096: 3}
SAMPLES = 64


def shapes(bs):
    r = ROWS_EVEN[bs]
    return [("even", [r, bs * 3 // 2]), ("odd", [r + 2, bs + 7])]


os.makedirs(OUT, exist_ok=True)
cases = []
seed = 1000
todo = []
for bs in [32, 64, 128, 256, 512, 1024, 2048, 4096]:
    for qt in ["nf4", "fp4"]:
        for dq in [False, True]:
            for tag, shape in shapes(bs):
                todo.append((f"{qt}_bs{bs}_{'dq' if dq else 'plain'}_{tag}_{shape[0]}x{shape[1]}", qt, bs, dq, shape))
todo.append(("nf4_bs128_dq_report_5x576", "nf4", 128, True, [5, 576]))
for name, qt, bs, dq, shape in todo:
    seed += 1
    scale = 0.05
    n = shape[0] * shape[1]
    assert shape[1] % bs != 0 and n % bs != 0, name
    x = gen(seed, n, scale)
    W = torch.from_numpy(x.copy()).reshape(shape)
    packed, st = F.quantize_4bit(W, blocksize=bs, compress_statistics=dq, quant_type=qt)
    absmax_f32 = st.absmax if not dq else (F.dequantize_blockwise(st.absmax, st.state2) + st.offset)
    flat = flat_dequantize_4bit(packed, absmax_f32, bs, qt, list(shape), torch.float32).reshape(-1).numpy()
    cpu = cpu_kernel_dequantize(packed, st).reshape(-1).numpy()
    cpu_diff = float(np.abs(cpu - flat).max())
    stride = max(1, n // SAMPLES)
    rec = {"name": name, "quant_type": qt, "blocksize": bs, "double_quant": dq, "shape": shape, "seed": seed,
           "scale_f64": hex64([scale]), "packed_len": int(packed.numel()), "packed_fnv": fnv64_np(packed.numpy()),
           "dequant_fnv": fnv64_np(flat), "dequant_stride": stride, "dequant_sample": hexf(flat[::stride]),
           "cpu_kernel_max_diff": cpu_diff}
    if dq:
        rec["absmax_u8"] = hexu8(st.absmax.numpy())
        rec["nested_absmax"] = hexf(st.state2.absmax.numpy())
        rec["offset"] = hexf([st.offset.item()])
        rec["absmax_dequant"] = hexf(absmax_f32.numpy())
    else:
        rec["absmax"] = hexf(st.absmax.numpy())
    packed_state = st.as_dict(packed=True)
    key = [k for k in packed_state if k.startswith("quant_state.")][0]
    rec["quant_state_json"] = bytes(packed_state[key].numpy().tolist()).decode()
    cases.append(rec)
    print(f"{name:40s} blocks {absmax_f32.numel():4d}  C++ CPU kernel vs flat: max diff {cpu_diff:.4g}")

with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump({"versions": VERSIONS, "hash": "fnv1a64", "cases": cases}, f, indent=0)

# ---------------------------------------------------------------- QLoRA on 48-wide rows
MODEL = os.path.join(OUT, "llama48_nf4_dq")
shutil.rmtree(MODEL, ignore_errors=True)
g = torch.Generator().manual_seed(1234)
input_ids = torch.randint(3, 64, (2, 8), generator=g)
labels = input_ids.clone()
labels[0, :3] = -100
labels[1, 6:] = -100
# hidden 48: q/k/v/o/gate/up rows are 48 wide (blocks straddle rows, C++ AVX-512 branch);
# intermediate 70: gate/up numel is not a multiple of 64, down's rows are 70 wide.
cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=70, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
src = tempfile.mkdtemp()
LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(src, safe_serialization=True)
BNB = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32)
AutoModelForCausalLM.from_pretrained(src, device_map="cpu", dtype=torch.float32,
                                     quantization_config=BNB).save_pretrained(MODEL, safe_serialization=True)


def load4(d):
    m = AutoModelForCausalLM.from_pretrained(d, device_map="cpu", dtype=torch.float32)
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False  # the generic dequantize + f32 matmul path
    return m


def loss_of(m):
    with torch.no_grad():
        return m(input_ids=input_ids, labels=labels).loss.item()


dense_loss = loss_of(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32))
model = load4(MODEL)
cpu_kernel_loss = loss_of(model)  # bnb's C++ CPU dequant (wrong for these rows)
# Tensor by tensor: bnb's C++ CPU kernel vs the flattened reference.
cpu_kernel_diffs = {}
flat_fnv = {}  # weight name -> FNV-1a 64 of its flattened-block f32 dequantization
for n_, mod in model.named_modules():
    if isinstance(mod, bnb.nn.Linear4bit):
        w, st = mod.weight, mod.weight.quant_state
        am = st.absmax if not st.nested else (F.dequantize_blockwise(st.absmax, st.state2) + st.offset)
        flat = flat_dequantize_4bit(w.data, am, st.blocksize, st.quant_type, list(st.shape), torch.float32)
        d = (F.dequantize_4bit(w.data, st) - flat).abs().max().item()
        cpu_kernel_diffs[n_] = d
        flat_fnv[n_ + ".weight"] = fnv64_np(flat.reshape(-1).numpy())
        print(f"  {n_:40s} {list(st.shape)}  C++ CPU kernel vs flat: max diff {d:.4g}")
# From here on every bnb dequantize_4bit on the CPU is the flattened (CUDA-equivalent) one.
torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", flat_dequantize_4bit)
model = load4(MODEL)
flat_loss = loss_of(model)
print(f"loss: dense {dense_loss:.6f}  4-bit with bnb's C++ CPU kernel {cpu_kernel_loss:.6f}  "
      f"4-bit with flattened blocks {flat_loss:.6f}")
ref = {"versions": VERSIONS, "input_ids": input_ids.tolist(), "labels": labels.tolist(),
       "dense_loss": dense_loss, "cpu_kernel_loss": cpu_kernel_loss,
       "cpu_kernel_max_diff": cpu_kernel_diffs, "dequant_fnv": flat_fnv}
with torch.no_grad():
    ref["logits"] = hexf(model(input_ids=input_ids).logits.flatten().numpy())

targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM",
                       bias="none")
model = peft.get_peft_model(model, lcfg)
gi = torch.Generator().manual_seed(99)
with torch.no_grad():
    for n_, p in model.named_parameters():
        if "lora_" in n_:
            p.copy_(torch.randn(p.shape, generator=gi) * 0.2)
ADAPTER = os.path.join(OUT, "adapter_init")
shutil.rmtree(ADAPTER, ignore_errors=True)
model.save_pretrained(ADAPTER)
os.remove(os.path.join(ADAPTER, "README.md"))
cfg_path = os.path.join(ADAPTER, "adapter_config.json")
acfg = json.load(open(cfg_path))
acfg["base_model_name_or_path"] = "llama48_nf4_dq"  # not the machine's absolute path
acfg["target_modules"] = sorted(acfg["target_modules"])  # a set in peft: stable order
json.dump(acfg, open(cfg_path, "w"), indent=2, sort_keys=True)


def key(n_):  # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
    return n_.replace("base_model.model.", "", 1).replace(".default.weight", "")


params = [(n_, p) for n_, p in model.named_parameters() if p.requires_grad]
opt = torch.optim.AdamW([p for _, p in params], lr=1e-2, weight_decay=0.01, foreach=False)
losses = []
for step in range(3):
    opt.zero_grad()
    out = model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    losses.append(out.loss.item())
    if step == 0:
        ref["grads"] = {key(n_): hexf(p.grad.flatten().numpy()) for n_, p in params}
    opt.step()
ref["losses"] = hexf(losses)
ref["losses_f64"] = losses
ref["adapter_after"] = {key(n_): hexf(p.detach().flatten().numpy()) for n_, p in params}
ref["lr"] = 1e-2
ref["weight_decay"] = 0.01
with open(os.path.join(OUT, "ref.json"), "w") as f:
    json.dump(ref, f, indent=0)
print("peft + bnb (flattened) losses", losses)
total = 0
for root, _, files in os.walk(OUT):
    for fn in files:
        total += os.path.getsize(os.path.join(root, fn))
print("fixture bytes", total)
