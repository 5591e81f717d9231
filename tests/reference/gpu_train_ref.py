"""GPU side-by-side for `recipe` training speed (issue 15): transformers + peft on the same model.

Two verbs, both run on the lent GPU machine by `kernels/gpu/run.sh` (kernels/NOTES.md):

    python3 tests/reference/gpu_train_ref.py make DIR [--layers 4]
        A random LLaMA-7B-shaped model dir (hidden 4096, ffn 11008, 32 heads, vocab 32000,
        bf16 safetensors) with `layers` decoder layers, plus the quickstart tokenizer, so that
        `recipe run` can load it. Per-layer cost is the 7B's; the head is the 7B's.

    python3 tests/reference/gpu_train_ref.py make DIR --family chatglm3 [--layers 28]
        A random ChatGLM3-6B-shaped dir (hidden 4096, ffn 13696, 32 heads, 2 kv groups, vocab
        65024) in THUDM's layout, for `recipe` only (transformers has no ChatGLM3 class).

    python3 tests/reference/gpu_train_ref.py train DIR [--seq 2048 --batch 4 --r 16 --steps 5]
        peft LoRA r 16 on all linear layers, bf16 weights and compute, gradient checkpointing,
        torch AdamW (fused), every label trained; 3 warm-up + `steps` timed steps (CUDA events).
        Prints one JSON line: tokens/s, ms/step, peak device memory.

    python3 tests/reference/gpu_train_ref.py train DIR --qlora [...]
        QLoRA as its users run it: the base loaded 4-bit by bitsandbytes (NF4, double quant, bf16
        compute), peft's prepare_model_for_kbit_training (gradient checkpointing), LoRA r 16 on
        all linear layers, bitsandbytes' PagedAdamW8bit. bitsandbytes is not on the GPU machine:
        kernels/gpu/pack_bnb.sh puts a trimmed wheel in .gpu/py, which run.sh adds to PYTHONPATH.
"""

import argparse
import json
import os
import shutil
import sys
import time

import torch


def copy_tokenizer(d):
    here = os.path.dirname(os.path.abspath(__file__))
    qs = os.path.join(here, "..", "..", "examples", "quickstart", "base")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(qs, f), os.path.join(d, f))


def make_chatglm3(args):
    """ChatGLM3-6B's shape (THUDM config and tensor names; 28 layers at full size), random bf16
    weights (std 0.02) drawn on the device. No modeling code is needed to write it; `recipe`
    loads it as the `chatglm` family. The quickstart tokenizer stands in for ChatGLM3's."""
    from safetensors.torch import save_file

    h, f, nh, groups, vocab = args.hidden, args.ffn, args.heads, 2, 65024
    kv = h // nh
    cfg = {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "num_layers": args.layers,
        "padded_vocab_size": vocab,
        "hidden_size": h,
        "ffn_hidden_size": f,
        "kv_channels": kv,
        "num_attention_heads": nh,
        "seq_length": 8192,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "layernorm_epsilon": 1e-5,
        "rmsnorm": True,
        "apply_residual_connection_post_layernorm": False,
        "post_layer_norm": True,
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "bias_dropout_fusion": True,
        "multi_query_attention": True,
        "multi_query_group_num": groups,
        "apply_query_key_layer_scaling": True,
        "attention_softmax_in_fp32": True,
        "fp32_residual_connection": False,
        "original_rope": True,
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "bfloat16",
    }
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=dev) * 0.02).to(torch.bfloat16).cpu()

    def ones(n):
        return torch.ones(n, dtype=torch.bfloat16)

    t = {
        "transformer.embedding.word_embeddings.weight": rnd(vocab, h),
        "transformer.rotary_pos_emb.inv_freq": (
            1.0 / (10000 ** (torch.arange(0, kv // 2, 2, dtype=torch.float32) / (kv // 2)))
        ).to(torch.bfloat16),
        "transformer.encoder.final_layernorm.weight": ones(h),
        "transformer.output_layer.weight": rnd(vocab, h),
    }
    qkv = nh * kv + 2 * groups * kv
    for i in range(args.layers):
        p = f"transformer.encoder.layers.{i}."
        t[p + "input_layernorm.weight"] = ones(h)
        t[p + "post_attention_layernorm.weight"] = ones(h)
        t[p + "self_attention.query_key_value.weight"] = rnd(qkv, h)
        t[p + "self_attention.query_key_value.bias"] = rnd(qkv)
        t[p + "self_attention.dense.weight"] = rnd(h, nh * kv)
        t[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * f, h)
        t[p + "mlp.dense_4h_to_h.weight"] = rnd(h, f)
    os.makedirs(args.dir, exist_ok=True)
    save_file(t, os.path.join(args.dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.dir, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    copy_tokenizer(args.dir)
    n = sum(x.numel() for x in t.values())
    print(json.dumps({"made": args.dir, "family": "chatglm3", "params": n, "layers": args.layers}))


def make(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    defaults = {"llama": (4096, 11008, 32), "chatglm3": (4096, 13696, 32)}[args.family]
    args.hidden = args.hidden or defaults[0]
    args.ffn = args.ffn or defaults[1]
    args.heads = args.heads or defaults[2]
    if args.family == "chatglm3":
        return make_chatglm3(args)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        torch_dtype="bfloat16",
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    os.makedirs(args.dir, exist_ok=True)
    model.save_pretrained(args.dir, safe_serialization=True)
    copy_tokenizer(args.dir)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"made": args.dir, "params": n, "layers": args.layers}))


def train(args):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    ckpt = {"use_reentrant": False}
    if args.qlora:
        import bitsandbytes as bnb
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = LlamaForCausalLM.from_pretrained(
            args.dir,
            quantization_config=q,
            torch_dtype=torch.bfloat16,
            attn_implementation="sdpa",
            device_map={"": 0},
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=ckpt
        )
    else:
        model = LlamaForCausalLM.from_pretrained(
            args.dir, torch_dtype=torch.bfloat16, attn_implementation="sdpa"
        ).cuda()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
        model.enable_input_require_grads()
    cfg = LoraConfig(
        r=args.r,
        lora_alpha=2 * args.r,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.qlora:
        opt = bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ids = torch.randint(2, 384, (args.batch, args.seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        loss = step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    ms = times[len(times) // 2]
    tokens = args.batch * args.seq
    print(
        json.dumps(
            {
                "ref": (
                    "transformers+peft+bitsandbytes QLoRA nf4 dq, grad ckpt, paged AdamW 8-bit, sdpa"
                    if args.qlora
                    else "transformers+peft LoRA bf16, grad ckpt, fused AdamW, sdpa"
                ),
                "torch": torch.__version__,
                "bitsandbytes": bnb.__version__ if args.qlora else None,
                "seq": args.seq,
                "batch": args.batch,
                "r": args.r,
                "ms_per_step": ms,
                "tokens_per_s": tokens / (ms / 1e3),
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                "loss": float(loss),
            }
        )
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("verb", choices=["make", "train"])
    ap.add_argument("dir")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--family", choices=["llama", "chatglm3"], default="llama")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--ffn", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--qlora", action="store_true")
    args = ap.parse_args()
    t = time.time()
    {"make": make, "train": train}[args.verb](args)
    print(f"# {args.verb} took {time.time() - t:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
