"""transformers twin of examples/bench_generate.rs: greedy `generate` throughput on the CPU for a
random LLaMA (hidden 512, 6 layers, 8 heads, FFN 1408, vocab 8000), batch 1 and 8, 16 prompt
tokens + 64 new tokens per row, 2 threads, best of 3 after a warmup.

Run:  /work/pyenv/bin/python tests/reference/bench_generate_hf.py
"""
import time

import torch
import transformers

torch.set_num_threads(2)
print("torch", torch.__version__, "transformers", transformers.__version__, "threads", torch.get_num_threads())
H, L, NH, FF, V, PROMPT, NEW = 512, 6, 8, 1408, 8000, 16, 64
cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                               num_attention_heads=NH, num_key_value_heads=NH, max_position_embeddings=512,
                               rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                               pad_token_id=0)
torch.manual_seed(0)
model = transformers.LlamaForCausalLM(cfg).eval()
for batch in (1, 8):
    ids = torch.tensor([[(r * 131 + i * 17) % (V - 3) + 3 for i in range(PROMPT)] for r in range(batch)])
    mask = torch.ones_like(ids)
    best = float("inf")
    with torch.inference_mode():
        for rep in range(4):
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                                 do_sample=False, pad_token_id=0)
            dt = time.perf_counter() - t0
            assert out.shape[1] == PROMPT + NEW
            if rep > 0:
                best = min(best, dt)
    print(f"batch {batch}: {best:.3f} s for {batch * NEW} tokens = {batch * NEW / best:.1f} tokens/s")
