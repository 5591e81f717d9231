"""PyTorch eager + peft twin of examples/bench_train_cpu.rs (issue 4 benchmark).

Random LlamaForCausalLM (float32, eager attention), hidden 512, 6 layers, 8 heads, ffn 1376,
vocab 8000 (untied), LoRA r 8 alpha 16 on q_proj,v_proj, batch 4 x seq 256 with every label
trained; times forward + backward + AdamW step over a few warmup + measured steps.

    /work/pyenv/bin/python tests/reference/bench_train_torch.py [--steps N --warmup W]
"""

import argparse
import resource
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

HIDDEN, LAYERS, HEADS, FFN, VOCAB, BATCH, SEQ = 512, 6, 8, 1376, 8000, 4, 256


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).float()
    params = sum(p.numel() for p in model.parameters())
    model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    print(
        f"versions: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}; threads {torch.get_num_threads()}"
    )
    print(
        f"shape: llama hidden {HIDDEN}, layers {LAYERS}, heads {HEADS}, ffn {FFN}, vocab {VOCAB} "
        f"(untied), {params / 1e6:.1f}M params; LoRA r 8 alpha 16 on q_proj,v_proj "
        f"({sum(p.numel() for p in trainable)} trainable); batch {BATCH} x seq {SEQ}"
    )
    times = []
    for s in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        tag = " (warmup)" if s < args.warmup else ""
        print(f"step {s}{tag}: loss {loss.item():.4f}  {dt * 1e3:.0f} ms")
        if s >= args.warmup:
            times.append(dt)
    times.sort()
    med = times[len(times) // 2]
    print(
        f"RESULT engine=torch tokens_per_s={BATCH * SEQ / med:.1f} "
        f"ms_per_step={med * 1e3:.1f} peak_rss_mib={peak_rss_mib():.0f}"
    )


if __name__ == "__main__":
    main()
