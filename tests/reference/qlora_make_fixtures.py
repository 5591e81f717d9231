"""QLoRA references on the CPU: transformers' 4-bit logits and peft + bitsandbytes LoRA
gradients / AdamW steps over the tiny LLaMA of tests/fixtures/quant/tiny_llama.

    /work/pyenv/bin/python tests/reference/qlora_make_fixtures.py            # write fixtures
    /work/pyenv/bin/python tests/reference/qlora_make_fixtures.py --check OURS THEIRS
        # load a 4-bit dir written by `recipe` (the quantize step) and transformers' own save
        # of the same weights, both in transformers, and compare their logits.

Writes tests/fixtures/qlora/ref.json and tests/fixtures/qlora/adapter_init/ (the PEFT adapter
with NONZERO lora_B both sides start from). compute dtype float32 so f32 parity is possible.
"""
import json, os, shutil, sys, tempfile
import torch

torch.manual_seed(0)
torch.set_num_threads(1)
import bitsandbytes as bnb
import peft
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "fixtures", "quant", "tiny_llama")
OUT = os.path.join(HERE, "..", "fixtures", "qlora")
# Rows of whole 64-blocks: bnb 0.50's C++ CPU dequant kernel indexes absmax per row and is
# wrong otherwise (tests/fixtures/quant/README.md), so tiny_llama's 32-wide rows cannot serve
# as a logits reference. Untied head (stays dense), 2 layers.
MODEL = os.path.join(OUT, "llama64_nf4_dq")

g = torch.Generator().manual_seed(1234)
input_ids = torch.randint(3, 64, (2, 8), generator=g)
labels = input_ids.clone()
labels[0, :3] = -100
labels[1, 6:] = -100


def load4(d):
    m = AutoModelForCausalLM.from_pretrained(d, device_map="cpu", dtype=torch.float32)
    # bnb's AVX512-bf16 inference repacking assumes rows of whole blocks (in_features 32 <
    # blocksize 64 breaks it); the generic path dequantizes and multiplies in f32.
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False
    return m


def logits_of(m):
    with torch.no_grad():
        return m(input_ids=input_ids).logits


if len(sys.argv) == 4 and sys.argv[1] == "--check":
    ours = logits_of(load4(sys.argv[2]))
    theirs = logits_of(load4(sys.argv[3]))
    err = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    print("max |ours - transformers| / max |transformers| =", err)
    sys.exit(0 if err <= 1e-5 else 1)

os.makedirs(OUT, exist_ok=True)
shutil.rmtree(MODEL, ignore_errors=True)
cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
src = tempfile.mkdtemp()
LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(src, safe_serialization=True)
AutoModelForCausalLM.from_pretrained(
    src, device_map="cpu", dtype=torch.float32,
    quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_use_double_quant=True,
                                           bnb_4bit_compute_dtype=torch.float32),
).save_pretrained(MODEL, safe_serialization=True)
ref = {
    "versions": {"torch": torch.__version__, "bitsandbytes": bnb.__version__,
                 "transformers": transformers.__version__, "peft": peft.__version__},
    "input_ids": input_ids.tolist(),
    "labels": labels.tolist(),
}
ref["logits"] = logits_of(load4(MODEL)).flatten().tolist()

# QLoRA: peft on the pre-quantized NF4 + double-quant model.
model = load4(MODEL)
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM", bias="none")
model = peft.get_peft_model(model, cfg)
gi = torch.Generator().manual_seed(99)
with torch.no_grad():
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.copy_(torch.randn(p.shape, generator=gi) * 0.2)
model.save_pretrained(os.path.join(OUT, "adapter_init"))
os.remove(os.path.join(OUT, "adapter_init", "README.md"))


def key(n):  # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
    return n.replace("base_model.model.", "", 1).replace(".default.weight", "")


params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
opt = torch.optim.AdamW([p for _, p in params], lr=1e-2, weight_decay=0.01, foreach=False)
losses = []
for step in range(3):
    opt.zero_grad()
    out = model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    losses.append(out.loss.item())
    if step == 0:
        ref["grads"] = {key(n): p.grad.flatten().tolist() for n, p in params}
    opt.step()
ref["losses"] = losses
ref["adapter_after"] = {key(n): p.detach().flatten().tolist() for n, p in params}
ref["lr"] = 1e-2
ref["weight_decay"] = 0.01
with open(os.path.join(OUT, "ref.json"), "w") as f:
    json.dump(ref, f)
print("losses", losses)
for root, _, files in os.walk(OUT):
    for fn in files:
        print(os.path.join(root, fn), os.path.getsize(os.path.join(root, fn)))
