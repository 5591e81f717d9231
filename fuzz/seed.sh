#!/usr/bin/env bash
# Seeds each fuzz target's corpus (fuzz/corpus/<target>/) with the repo files listed in
# src/fuzzing.rs (TARGETS) and the regression inputs in tests/fuzz/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE_FUZZ_SEED_DIR="$PWD/fuzz/corpus" cargo test --locked --test fuzz_regressions write_seed_corpora
