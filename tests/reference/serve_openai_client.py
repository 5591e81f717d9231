"""`recipe serve` against the real `openai` Python client (run by hand; CI uses tests/serve.rs).

    cargo build --release
    target/release/recipe serve --model examples/quickstart/base --template human_assistant \
        --max-new-tokens 12 --port 8765 --device cpu &
    python tests/reference/serve_openai_client.py http://127.0.0.1:8765/v1

Checked with openai 3.57.0 (pip install openai). Prints each check and exits non-zero on a
failure.
"""
import sys

import openai

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1"
c = openai.OpenAI(base_url=base, api_key="unused")

models = c.models.list()
name = models.data[0].id
print("models:", [m.id for m in models.data])

msgs = [{"role": "user", "content": "What color is the sky?"}]
r = c.chat.completions.create(model=name, messages=msgs, temperature=0)
text = r.choices[0].message.content
print("chat:", repr(text), r.choices[0].finish_reason, r.usage)
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

parts = []
for ch in c.chat.completions.create(model=name, messages=msgs, temperature=0, stream=True):
    if ch.choices and ch.choices[0].delta.content:
        parts.append(ch.choices[0].delta.content)
print("stream:", repr("".join(parts)))
assert "".join(parts) == text, "streamed text differs"

r = c.completions.create(model=name, prompt="Once upon a time", temperature=0, max_tokens=8)
print("completion:", repr(r.choices[0].text), r.choices[0].finish_reason)

try:
    c.chat.completions.create(model=name, messages=[], temperature=0)
    raise SystemExit("empty messages accepted")
except openai.BadRequestError as e:
    print("error:", e.status_code, e.body)
print("ok")
