#!/usr/bin/env bash
# .ci/nvrtc.sh: make NVRTC and the CUDA headers available without a GPU or a CUDA toolkit, so
# tests/cuda_compile.rs can compile every kernel for real.
#
# Installs the CUDA 13 NVRTC and runtime wheels into .ci/py (skipped when already there) and
# prints the environment to export. Usage (from the repository root):
#   eval "$(.ci/nvrtc.sh)"
#   RECIPE_REQUIRE_NVRTC=1 cargo test --test cuda_compile
#
# Wheel layout (checked with nvidia-cuda-nvrtc / nvidia-cuda-runtime 13.5.37):
#   .ci/py/nvidia/cu13/lib/libnvrtc.so.13, libnvrtc-builtins.so.13.*   (nvidia-cuda-nvrtc)
#   .ci/py/nvidia/cu13/include/cuda_bf16.h, cuda_fp16.h, ...           (nvidia-cuda-runtime)
# The library major (13) must match cudarc's CUDA feature (cuda-13000 in Cargo.toml). The version
# is pinned: tests/cuda_compile.rs asserts ptxas's register allocation spills nothing, which a
# newer compiler could change; bump it on purpose and rerun that test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.ci/py"
lib="$dir/nvidia/cu13/lib"
inc="$dir/nvidia/cu13/include"
if [ ! -e "$lib/libnvrtc.so.13" ] || [ ! -e "$inc/cuda_bf16.h" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir" \
        'nvidia-cuda-nvrtc==13.5.37' 'nvidia-cuda-runtime==13.5.37' >&2
fi
for f in "$lib/libnvrtc.so.13" "$inc/cuda_bf16.h" "$inc/cuda_fp16.h"; do
    [ -e "$f" ] || { echo "nvrtc.sh: expected $f after installing the wheels" >&2; exit 1; }
done
echo "export LD_LIBRARY_PATH=\"$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
echo "export RECIPE_CUDA_INCLUDE=\"$inc\""
