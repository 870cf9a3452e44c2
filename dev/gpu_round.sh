#!/usr/bin/env bash
# One measuring round on a GPU machine: every GPU-only test, the kernel benchmark, and the training-step benchmark
# with its kernel profile, for this tree and, beside it in the same run, a baseline tree (the same card and the
# same minutes, so the two can be compared; benchmarks/RESULTS.md only compares numbers from one run).
#
#   bash dev/gpu_round.sh prepare [REV]   # here: .gpu_carry/base = nanochat/ benchmarks/ tests/ at REV (default
#                                         # HEAD), .gpu_carry/wheels = pytest for Python 3.12 (GPU images often lack it)
#   bash dev/gpu_round.sh run [PATCH]     # there: the round, logged to ${OUT:-gpu_round_out}/log; with PATCH (a
#                                         # git diff) applied to this tree first, so the round decides it
#   PARTS=tests,kernels bash dev/gpu_round.sh run   # a subset (tests, kernels, train, base-train): the whole round
#                                         # takes ~15 min on one H100, so split it where a call is capped at 10
#
# The GPU machine needs no internet and no Rust: these benchmarks use synthetic tokens and the installed torch.
# Each part is bounded by `timeout`, so one hang does not eat the round.
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
  local rev=${1:-HEAD}
  rm -rf .gpu_carry/base .gpu_carry/wheels
  mkdir -p .gpu_carry/base .gpu_carry/wheels
  git archive "$rev" nanochat benchmarks tests | tar -x -C .gpu_carry/base
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d .gpu_carry/wheels pytest pluggy iniconfig packaging
  echo "prepared .gpu_carry (baseline $(git rev-parse --short "$rev")): carry it with the tree"
}

run() {
  local out=${OUT:-gpu_round_out} patch=${1:-}
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  exec > >(tee -a "$out/log") 2>&1
  if [ -d .gpu_carry/wheels ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/gpu_round_site .gpu_carry/wheels/*.whl
    export PYTHONPATH=/tmp/gpu_round_site
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  if [ -n "$patch" ]; then
    (git apply "$patch" || patch -p1 < "$patch") && echo "applied $patch" || { echo "could not apply $patch"; return 1; }
  fi
  local parts=",${PARTS:-tests,kernels,train,base-train},"
  want() { [[ $parts == *",$1,"* ]]; }
  local train=(python3 -m benchmarks.bench_train --depths 12,20 --only d12,d20 --no-loader --steps 4 --warmup 2)
  if want tests; then
    echo "== tests on the GPU (this tree)"
    timeout 300 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_fp8.py tests/test_gpt.py \
      tests/test_kernels.py tests/test_engine.py
  fi
  if want kernels; then
    echo "== kernels (this tree)";          timeout 200 python3 -m benchmarks.bench_kernels
    if [ -d .gpu_carry/base ]; then
      echo "== kernels (baseline)";         (cd .gpu_carry/base && PYTHONPATH= timeout 200 python3 -m benchmarks.bench_kernels)
    fi
  fi
  if want train; then
    echo "== train --fp8 (this tree)";     timeout 420 "${train[@]}" --fp8 --profile
  fi
  if want base-train && [ -d .gpu_carry/base ]; then
    echo "== train --fp8 (baseline)";      (cd .gpu_carry/base && PYTHONPATH= timeout 420 "${train[@]}" --fp8)
  fi
  echo "== done"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash dev/gpu_round.sh prepare [REV] | run [PATCH]" >&2; exit 2 ;;
esac
