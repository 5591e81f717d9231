"""Reference for tests/train_parity.rs: 3 LoRA training steps of peft + torch.optim.AdamW on a
dense tiny LLaMA with gradient clipping (max_grad_norm 0.1) and a linear schedule with 1 warmup
step (transformers.get_scheduler), from an adapter with NONZERO lora_B.

Run: /work/pyenv/bin/python tests/reference/train_make_fixtures.py
Writes tests/fixtures/train/{base,adapter_init,ref.json}.
"""
import json, os, shutil
import torch, transformers, peft
from transformers import LlamaConfig, LlamaForCausalLM, get_scheduler

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "train")
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
base = LlamaForCausalLM(cfg).to(torch.float32)
shutil.rmtree(OUT, ignore_errors=True)
base.save_pretrained(os.path.join(OUT, "base"), safe_serialization=True)

g = torch.Generator().manual_seed(5)
input_ids = torch.randint(3, 64, (3, 12), generator=g)
labels = input_ids.clone()
labels[:, :4] = -100  # prompt tokens are not trained

model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj", "down_proj"],
                                                  task_type="CAUSAL_LM", bias="none"))
gi = torch.Generator().manual_seed(99)
with torch.no_grad():
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.copy_(torch.randn(p.shape, generator=gi) * 0.2)
model.save_pretrained(os.path.join(OUT, "adapter_init"))
os.remove(os.path.join(OUT, "adapter_init", "README.md"))

params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
opt = torch.optim.AdamW([p for _, p in params], lr=5e-2, weight_decay=0.01, foreach=False)
sched = get_scheduler("linear", opt, num_warmup_steps=1, num_training_steps=3)
losses, norms, lrs = [], [], []
for step in range(3):
    opt.zero_grad()
    out = model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    losses.append(out.loss.item())
    norms.append(torch.nn.utils.clip_grad_norm_([p for _, p in params], 0.1).item())
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()


def key(n):
    return n.replace("base_model.model.", "", 1).replace(".default.weight", "")


ref = {
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    "input_ids": input_ids.tolist(), "labels": labels.tolist(),
    "losses": losses, "grad_norms": norms, "lrs": lrs,
    "adapter_after": {key(n): p.detach().flatten().tolist() for n, p in params},
}
with open(os.path.join(OUT, "ref.json"), "w") as f:
    json.dump(ref, f)
print(ref["versions"], "losses", losses, "norms", norms, "lrs", lrs)
