#!/bin/bash
# Puts bitsandbytes (the QLoRA reference of tests/reference/gpu_train_ref.py --qlora) in .gpu/py,
# trimmed to its Python files and CUDA 13 libraries (~9 MB instead of the wheel's 124 MB), so it
# travels with the device call (`carry: [".gpu"]`, 64 MiB in all with the stripped binary).
# Run here, with network, before a GPU session:  bash kernels/gpu/pack_bnb.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ver=${BNB_VERSION:-0.50.2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" "bitsandbytes==$ver"
mkdir -p "$tmp/x" && (cd "$tmp/x" && python3 -m zipfile -e "$tmp"/bitsandbytes-*.whl .)
find "$tmp/x/bitsandbytes" -name 'libbitsandbytes_*.so' \
    ! -name 'libbitsandbytes_cuda13*.so' ! -name 'libbitsandbytes_cpu.so' -delete
rm -rf .gpu/py/bitsandbytes && mkdir -p .gpu/py && mv "$tmp/x/bitsandbytes" .gpu/py/
du -sh .gpu/py/bitsandbytes .gpu
