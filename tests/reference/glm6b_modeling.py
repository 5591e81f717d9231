"""A torch transcription of THUDM's modeling_chatglm.py for ChatGLM-6B (v1), the model of seed 001's
AdvertiseGen workflow. transformers has no native v1, so this file is the numeric reference of our
GLM block (src/model/block.rs, `Family::Glm`). Written from THUDM/chatglm-6b's modeling_chatglm.py
(the 130k-vocabulary version: config mask_token_id / gmask_token_id, position ids from
get_position_ids, masks from get_masks), kept to what training, evaluation and greedy generation
use (no p-tuning prefix encoder, no quantization, no KV cache: a cached step gives the same
numbers as recomputing the whole sequence, which is what `greedy` does).

What it follows, line by line in the original:
- word_embeddings -> num_layers GLMBlocks -> final_layernorm -> lm_head (tied to the embedding:
  ChatGLMForConditionalGeneration defines get_output_embeddings and transformers ties it);
- GLMBlock: attention_input = input_layernorm(x); h = attention_input * alpha + attention(...);
  mlp_input = post_attention_layernorm(h); out = mlp_input * alpha + mlp(mlp_input), with
  alpha = (2 * num_layers) ** 0.5 where num_layers is GLMBlock's default 28: ChatGLMModel's
  get_layer never passes the config's num_layers, so every v1 model uses sqrt(56);
- query_key_value output viewed per head as [heads, 3 * head_dim] and split into q | k | v;
- 2D rotary: each head's q/k split in two halves; the first rotated (rotate_half layout) by
  position_ids, the second by block_position_ids, rotary dim hidden // (heads * 2), base 10000,
  inv_freq rounded to float16 (RotaryEmbedding stores it as .half(); `model.float()`, THUDM's CPU
  recipe, turns the buffer back to f32 with the rounded values, and the angles are then f32);
- attention_fn: q / (sqrt(hd) * (layer_id + 1)), scores masked_fill(-10000), * (layer_id + 1),
  softmax in f32;
- GLU: dense_4h_to_h(gelu(dense_h_to_4h(x))), gelu = OpenAI's tanh form, all linears with bias;
- get_position_ids (2D): arange, then every position from <sop> on set to the [gMASK] (or [MASK])
  index; block positions 0 before <sop>, 1, 2, ... from it;
- get_masks: causal, plus every key before <sop> visible to every query.
Left padding follows the tokenizer's `_pad` (tokenization_chatglm.py): masks and positions are
computed on the unpadded sequence, then padding is prepended (masked keys, position 0).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Config:
    def __init__(self, **kw):
        self.vocab_size = kw["vocab_size"]
        self.hidden_size = kw["hidden_size"]
        self.num_layers = kw["num_layers"]
        self.num_attention_heads = kw["num_attention_heads"]
        self.inner_hidden_size = kw["inner_hidden_size"]
        self.layernorm_epsilon = kw.get("layernorm_epsilon", 1e-5)
        self.bos_token_id = kw["bos_token_id"]
        self.eos_token_id = kw["eos_token_id"]
        self.mask_token_id = kw["mask_token_id"]
        self.gmask_token_id = kw["gmask_token_id"]
        self.pad_token_id = kw["pad_token_id"]
        self.position_encoding_2d = kw.get("position_encoding_2d", True)
        self.model_type = "chatglm"
        self.kw = kw

    def get(self, k, d=None):
        return getattr(self, k, d)

    def to_dict(self):
        return dict(self.kw)


def gelu(x):
    """OpenAI's gelu implementation (modeling_chatglm.py gelu_impl)."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, base=10000):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        # stored as half in the original; f32 (rounded values) after model.float()
        self.register_buffer("inv_freq", inv_freq.half().float(), persistent=False)

    def forward(self, seq_len):
        t = torch.arange(seq_len, dtype=self.inv_freq.dtype)
        freqs = torch.einsum("i,j->ij", t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None, :], emb.sin()[:, None, :]


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=x1.ndim - 1)


def apply_rotary_pos_emb_index(q, k, cos, sin, position_id):
    # position_id: [sq, b], q, k: [sq, b, np, hn], cos: [sq, 1, hn] -> [sq, b, 1, hn]
    cos = F.embedding(position_id, cos.squeeze(1)).unsqueeze(2)
    sin = F.embedding(position_id, sin.squeeze(1)).unsqueeze(2)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class SelfAttention(nn.Module):
    def __init__(self, hidden_size, num_heads, layer_id):
        super().__init__()
        self.layer_id = layer_id
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.hd = hidden_size // num_heads
        self.rotary_emb = RotaryEmbedding(hidden_size // (num_heads * 2))
        self.query_key_value = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.dense = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, hidden_states, position_ids, attention_mask):
        # hidden_states [sq, b, h]; position_ids [b, 2, sq]; attention_mask [b, 1, sq, sk] (True = masked)
        mixed = self.query_key_value(hidden_states)
        mixed = mixed.view(*mixed.size()[:-1], self.num_heads, 3 * self.hd)
        q, k, v = torch.split(mixed, self.hd, dim=-1)
        q1, q2 = q.chunk(2, dim=q.ndim - 1)
        k1, k2 = k.chunk(2, dim=k.ndim - 1)
        cos, sin = self.rotary_emb(int(position_ids.max()) + 1)
        pos, block = position_ids[:, 0, :].transpose(0, 1).contiguous(), position_ids[:, 1, :].transpose(0, 1).contiguous()
        q1, k1 = apply_rotary_pos_emb_index(q1, k1, cos, sin, pos)
        q2, k2 = apply_rotary_pos_emb_index(q2, k2, cos, sin, block)
        q = torch.concat([q1, q2], dim=q1.ndim - 1)
        k = torch.concat([k1, k2], dim=k1.ndim - 1)
        # attention_fn
        sq, b, nh, hd = k.shape
        coeff = float(self.layer_id + 1)
        q = q / (math.sqrt(hd) * coeff)
        scores = torch.einsum("ibnd,jbnd->bnij", q, k)
        if not (attention_mask == 0).all():
            scores = scores.masked_fill(attention_mask, -10000.0)
        scores = scores.float() * coeff
        probs = F.softmax(scores, dim=-1)
        ctx = torch.einsum("bnij,jbnd->ibnd", probs, v)
        ctx = ctx.reshape(sq, b, nh * hd)
        return self.dense(ctx)


class GLU(nn.Module):
    def __init__(self, hidden_size, inner_hidden_size):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden_size, inner_hidden_size, bias=True)
        self.dense_4h_to_h = nn.Linear(inner_hidden_size, hidden_size, bias=True)

    def forward(self, x):
        return self.dense_4h_to_h(gelu(self.dense_h_to_4h(x)))


class GLMBlock(nn.Module):
    def __init__(self, cfg, layer_id, num_layers=28):
        super().__init__()
        self.layer_id = layer_id
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_attention_heads, layer_id)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.num_layers = num_layers  # the original's default: get_layer does not pass it
        self.mlp = GLU(cfg.hidden_size, cfg.inner_hidden_size)

    def forward(self, x, position_ids, attention_mask):
        attention_input = self.input_layernorm(x)
        attention_output = self.attention(attention_input, position_ids, attention_mask)
        alpha = (2 * self.num_layers) ** 0.5
        h = attention_input * alpha + attention_output
        mlp_input = self.post_attention_layernorm(h)
        return mlp_input * alpha + self.mlp(mlp_input)


class ChatGLMModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([GLMBlock(cfg, i) for i in range(cfg.num_layers)])
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)

    def forward(self, input_ids, position_ids, attention_mask):
        h = self.word_embeddings(input_ids).transpose(0, 1)
        for layer in self.layers:
            h = layer(h, position_ids, attention_mask)
        return self.final_layernorm(h)


class ChatGLMForConditionalGeneration(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = ChatGLMModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.word_embeddings.weight  # tied

    def prepare_inputs_for_generation(self, *a, **kw):  # peft wants the attribute
        raise NotImplementedError

    def forward(self, input_ids, labels=None, position_ids=None, attention_mask=None, **_):
        if position_ids is None or attention_mask is None:
            m, p = masks_and_positions(self.config, input_ids.tolist())
            attention_mask = m if attention_mask is None else attention_mask
            position_ids = p if position_ids is None else position_ids
        h = self.transformer(input_ids, position_ids, attention_mask)
        logits = self.lm_head(h).permute(1, 0, 2).contiguous()
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                                   ignore_index=-100)
        return Out(logits, loss)


class Out:
    def __init__(self, logits, loss):
        self.logits, self.loss = logits, loss


def row_mask_and_positions(cfg, seq):
    """get_masks + get_position_ids (2D) of one unpadded row, as the tokenizer's _pad builds them
    (no <sop>: the whole row is context; no mask token: positions stay arange)."""
    n = len(seq)
    ctx = seq.index(cfg.bos_token_id) if cfg.bos_token_id in seq else n
    m = torch.ones(n, n).tril()
    m[:, :ctx] = 1
    pos = torch.arange(n)
    mask_token = cfg.gmask_token_id if cfg.gmask_token_id in seq else cfg.mask_token_id
    if mask_token in seq:
        pos[ctx:] = seq.index(mask_token)
    block = torch.cat([torch.zeros(ctx, dtype=torch.long), torch.arange(1, n - ctx + 1)])
    return m < 0.5, torch.stack([pos, block])


def masks_and_positions(cfg, rows, pads=None):
    """[b, 1, t, t] bool mask (True = masked) and [b, 2, t] positions; row r has pads[r] left
    padding tokens (masked keys, position 0, as tokenizer._pad prepends them)."""
    t = len(rows[0])
    pads = pads or [0] * len(rows)
    masks, poss = [], []
    for seq, p in zip(rows, pads):
        m, pos = row_mask_and_positions(cfg, seq[p:])
        mm = torch.ones(t, t, dtype=torch.bool)
        mm[p:, p:] = m
        pp = torch.zeros(2, t, dtype=torch.long)
        pp[:, p:] = pos
        masks.append(mm)
        poss.append(pp)
    return torch.stack(masks).unsqueeze(1), torch.stack(poss)


@torch.no_grad()
def greedy(model, prompts, pad, eos, max_new):
    """Greedy decoding of a left-padded batch, recomputing the whole sequence each step."""
    width = max(len(p) for p in prompts)
    rows = [[pad] * (width - len(p)) + p for p in prompts]
    pads = [width - len(p) for p in prompts]
    done = [False] * len(rows)
    out = [[] for _ in rows]
    for _ in range(max_new):
        m, pos = masks_and_positions(model.config, rows, pads)
        logits = model(torch.tensor(rows), position_ids=pos, attention_mask=m).logits[:, -1, :]
        nxt = logits.argmax(-1).tolist()
        for r, tok in enumerate(nxt):
            if done[r]:
                tok = pad
            else:
                out[r].append(tok)
                done[r] = tok == eos
            rows[r].append(tok)
        if all(done):
            break
    res = []
    for o in out:
        if eos in o:
            res.append({"tokens": o[: o.index(eos)], "finish": "stop"})
        else:
            res.append({"tokens": o, "finish": "length"})
    return res
