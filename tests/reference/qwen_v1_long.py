"""Qwen v1 past `seq_length`: a torch transcription of modeling_qwen.py's eval-mode forward
(QWenModel.forward, QWenAttention.forward, RotaryEmbedding, the greedy `generate` loop with its
KV cache), run on the tiny engine/qwen weights with `seq_length` 8 so that the test sequences pass
it. transformers has no Qwen v1 class; engine_make_fixtures.py checks these weights against
Qwen2ForCausalLM (same math up to seq_length), and this script checks its transcription against
that fixture before writing its own.

What Qwen v1 does in eval mode only (training uses neither):
- logn attention: the query at slot i (0-based, left padding counted) is multiplied by
  log(i+1)/log(seq_length) when i+1 > seq_length (`logn_tensor`, computed in Python doubles,
  stored as f32), once the keys are longer than seq_length.
- dynamic NTK: the rotary base becomes base * alpha^(dim/(dim-2)),
  alpha = max(2^ceil(log2(len/seq_length) + 1) - 1, 1). `len` is each row's real-token count when
  an attention mask is given and the keys are longer than seq_length, else the key length. With
  a KV cache alpha is chosen at the prefill (keys length == query length) and kept for every
  later step (`_ntk_alpha_cached_list`); cached keys keep the rotation they were stored with.
- rotary positions are slot indices (left padding counted); RoPE is relative, so with one alpha
  per row this equals transformers' cumsum(mask) - 1 positions.

Run:  /work/pyref/bin/python tests/reference/qwen_v1_long.py  (engine_make_fixtures.py runs it last)
Writes tests/fixtures/engine/qwen_long/{config.json, model.safetensors, ref.safetensors, greedy.json}.
"""

import json
import math
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "fixtures", "engine", "qwen")
DST = os.path.join(HERE, "..", "fixtures", "engine", "qwen_long")
SEQ_LENGTH = 8


class QwenV1:
    def __init__(self, cfg, w):
        self.cfg, self.w = cfg, w
        self.nh = cfg["num_attention_heads"]
        self.hd = cfg["kv_channels"]
        self.L = cfg["seq_length"]
        self.eps = cfg["layer_norm_epsilon"]
        self.dim = int(self.hd * cfg["rotary_pct"]) if cfg["rotary_pct"] != 1.0 else self.hd
        self.base = cfg["rotary_emb_base"]
        logn = [math.log(i, self.L) if i > self.L else 1 for i in range(1, 32768)]
        self.logn_tensor = torch.tensor(logn)[None, :, None, None]
        self.ntk_alpha_cached_list = [1.0]

    # RotaryEmbedding.update_rotary_pos_emb_cache / forward
    def rotary(self, seqlen, ntk_alpha):
        base = self.base * ntk_alpha ** (self.dim / (self.dim - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2).float() / self.dim))
        seq = torch.arange(max(2 * seqlen, 16))
        freqs = torch.outer(seq.type_as(inv_freq), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]
        return emb.cos()[:, :seqlen], emb.sin()[:, :seqlen]

    def get_ntk_alpha(self, true_seq_len):
        context_value = math.log(true_seq_len / self.L, 2) + 1
        ntk_alpha = 2 ** math.ceil(context_value) - 1
        return max(ntk_alpha, 1)

    def rmsnorm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    @staticmethod
    def rope(t, cos, sin):
        rot_dim = cos.shape[-1]
        t_, t_pass = t[..., :rot_dim], t[..., rot_dim:]
        x1, x2 = t_.chunk(2, dim=-1)
        t_ = t_ * cos + torch.cat((-x2, x1), dim=-1) * sin
        return torch.cat((t_, t_pass), dim=-1)

    def forward(self, ids, attention_mask=None, past=None):
        """ids [B, Tn]; attention_mask [B, past + Tn] or None; past: per layer (k, v) [B, S, NH, HD].
        Returns logits [B, Tn, V] and the new past."""
        w = self.w
        b, tn = ids.shape
        x = w["transformer.wte.weight"][ids]
        kv_seq_len = tn + (past[0][0].shape[1] if past is not None else 0)
        if attention_mask is not None:
            attention_mask = attention_mask.view(b, -1)[:, None, None, :].to(torch.float32)
            attention_mask = (1.0 - attention_mask) * torch.finfo(torch.float32).min
        if not self.cfg["use_dynamic_ntk"]:
            alphas = [1.0]
        elif kv_seq_len != tn:
            alphas = self.ntk_alpha_cached_list
        else:
            alphas = []
            if attention_mask is not None and kv_seq_len > self.L:
                true_seq_lens = attention_mask.squeeze(1).squeeze(1).eq(0).sum(dim=-1, dtype=torch.int32)
                for i in range(b):
                    alphas.append(self.get_ntk_alpha(true_seq_lens[i].item()))
            else:
                alphas.append(self.get_ntk_alpha(kv_seq_len))
        self.ntk_alpha_cached_list = alphas
        rot = [self.rotary(kv_seq_len, a) for a in alphas]
        presents = []
        for l in range(self.cfg["num_hidden_layers"]):
            p = "transformer.h.%d." % l
            h = self.rmsnorm(x, w[p + "ln_1.weight"])
            qkv = h @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]
            q, k, v = [t.reshape(b, tn, self.nh, self.hd) for t in qkv.split(self.nh * self.hd, dim=2)]
            if len(rot) == 1:
                cos, sin = [t[:, -tn:] for t in rot[0]]
                q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            else:
                qs, ks = [], []
                for i, (cos, sin) in enumerate(rot):
                    cos, sin = cos[:, -tn:], sin[:, -tn:]
                    qs.append(self.rope(q[i:i + 1], cos, sin))
                    ks.append(self.rope(k[i:i + 1], cos, sin))
                q, k = torch.cat(qs, 0), torch.cat(ks, 0)
            if past is not None:
                k = torch.cat((past[l][0], k), dim=1)
                v = torch.cat((past[l][1], v), dim=1)
            presents.append((k, v))
            if k.shape[1] > self.L and self.cfg["use_logn_attn"]:
                q = q * self.logn_tensor[:, k.shape[1] - tn:k.shape[1]].type_as(q).expand_as(q)
            qh, kh, vh = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
            att = torch.matmul(qh, kh.transpose(-1, -2)) / (vh.size(-1) ** 0.5)
            ks = kh.shape[2]
            if tn == ks:
                causal = torch.tril(torch.ones((ks, ks), dtype=torch.bool)).view(1, 1, ks, ks)
                att = torch.where(causal, att, torch.finfo(att.dtype).min)
            if attention_mask is not None:
                att = att + attention_mask
            att = torch.softmax(att, dim=-1)
            o = torch.matmul(att, vh).transpose(1, 2).reshape(b, tn, self.nh * self.hd)
            x = x + o @ w[p + "attn.c_proj.weight"].T
            h = self.rmsnorm(x, w[p + "ln_2.weight"])
            a1 = h @ w[p + "mlp.w1.weight"].T
            a2 = h @ w[p + "mlp.w2.weight"].T
            x = x + (a1 * torch.nn.functional.silu(a2)) @ w[p + "mlp.c_proj.weight"].T
        x = self.rmsnorm(x, w["transformer.ln_f.weight"])
        return x @ w["lm_head.weight"].T, presents

    def greedy(self, prompts, new_tokens, pad_id=0, steps=None):
        """HF generate's greedy loop as Qwen v1 runs it: left padding, the prompt as one prefill,
        then one token per step; the attention mask is passed only for a batch of more than one
        row (QWenLMHeadModel.prepare_inputs_for_generation)."""
        b, t = len(prompts), max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (t - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
        out = [[] for _ in prompts]
        logits, past = self.forward(ids, mask if b > 1 else None)
        for step in range(new_tokens):
            nxt = logits[:, -1].argmax(-1)
            if steps is not None:
                steps.append(logits[:, -1])
            for r in range(b):
                out[r].append(int(nxt[r]))
            if step + 1 == new_tokens:
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype)], 1)
            logits, past = self.forward(nxt[:, None], mask if b > 1 else None, past)
        return out


def main():
    torch.set_default_dtype(torch.float32)
    cfg = json.load(open(os.path.join(SRC, "config.json")))
    w = load_file(os.path.join(SRC, "model.safetensors"))

    # The transcription reproduces the Qwen2ForCausalLM reference within seq_length.
    ref = load_file(os.path.join(SRC, "ref.safetensors"))
    ids, mask = ref["input_ids"].long(), ref["attention_mask"].long()
    with torch.no_grad():
        logits, _ = QwenV1(cfg, w).forward(ids, mask)
    m = mask.bool()
    diff = (logits[m] - ref["logits"][m]).abs().max().item()
    print("transcription vs Qwen2ForCausalLM (within seq_length): max |diff|", diff)
    assert diff < 1e-5, diff

    cfg = dict(cfg, seq_length=SEQ_LENGTH, max_position_embeddings=SEQ_LENGTH)
    shutil.rmtree(DST, ignore_errors=True)
    os.makedirs(DST)
    json.dump(cfg, open(os.path.join(DST, "config.json"), "w"), indent=2)
    shutil.copy(os.path.join(SRC, "model.safetensors"), os.path.join(DST, "model.safetensors"))
    V = cfg["vocab_size"]

    # Eval forward: two rows of 20 slots, the second left-padded to 15 real tokens, so the rows
    # get alpha 7 (20 tokens) and 3 (15), and logn from slot 8 on.
    g = torch.Generator().manual_seed(7)
    B, T = 2, 20
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :5] = 0
    ids[1, :5] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[1, 5] = -100  # predicted from a padding slot, whose logits are undefined
    with torch.no_grad():
        model = QwenV1(cfg, w)
        logits, _ = model.forward(ids, mask)
        print("eval alphas", model.ntk_alpha_cached_list)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
        # The same rows without logn / NTK (what the model computed before): they must differ.
        plain, _ = QwenV1(dict(cfg, use_logn_attn=False, use_dynamic_ntk=False), w).forward(ids, mask)
        print("eval: max |logits - plain rope logits|", (logits - plain)[mask.bool()].abs().max().item())
    fx = {"input_ids": ids.to(torch.int64), "attention_mask": mask.to(torch.int64),
               "labels": labels.to(torch.int64), "logits": logits.contiguous(), "loss": loss.reshape(1)}

    # Greedy generation with the KV cache: a prompt within seq_length (alpha stays 1 while the
    # sequence grows past it; logn applies), one past it (alpha 3 kept for all steps), and both
    # as one left-padded batch (per-row alphas 1 and 3).
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (5, 12)]
    new = 14
    gens, steps = {}, []
    with torch.no_grad():
        gens["single"] = [QwenV1(cfg, w).greedy([p], new)[0] for p in prompts]
        gens["batch"] = QwenV1(cfg, w).greedy(prompts, new, steps=steps)
        plain = [QwenV1(dict(cfg, use_logn_attn=False, use_dynamic_ntk=False), w).greedy([p], new)[0]
                 for p in prompts]
    print("greedy", gens, "plain rope", plain)
    # last-position logits of every step of the batched run: [steps, B, V]
    fx["greedy_logits"] = torch.stack(steps).contiguous()
    save_file(fx, os.path.join(DST, "ref.safetensors"))
    json.dump({"prompts": prompts, "max_new_tokens": new, "pad_id": 0, **gens},
              open(os.path.join(DST, "greedy.json"), "w"))


if __name__ == "__main__":
    main()
