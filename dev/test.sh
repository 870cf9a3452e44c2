#!/usr/bin/env bash
# Every test of the book: set up, then cargo test (rustbpe), pytest (package, scripts, server, browser, website
# build), and every chapter executed as a notebook under nbval at the `ci` scale.
# Offline data: if ../shared/data exists, its hub mirror is served on loopback and the fixture datasets are used.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
declare -a TIMES=()
phase() { TIMES+=("$1: $(( $(date +%s) - $2 ))s"); echo "== $1 took $(( $(date +%s) - $2 ))s"; }

t=$(date +%s); bash dev/setup.sh; phase setup "$t"

# The UI and website tests drive a real browser: Debian's chromium and chromedriver. Install them where this
# script can (root with apt-get, as on CI); elsewhere those tests skip and say why.
if [ ! -x /usr/bin/chromium ] || [ ! -e /usr/bin/chromedriver ]; then
  t=$(date +%s)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-noto-cjk >/dev/null; } \
      || echo "note: installing chromium failed; the browser tests will skip"
  else
    echo "note: no /usr/bin/chromium + chromedriver (install Debian's chromium chromium-driver); browser tests skip"
  fi
  phase browser "$t"
fi
export PATH="$PWD/.venv/bin:$HOME/.cargo/bin:$PATH"

source dev/offline.sh
if ! use_offline_data; then
  echo "note: ../shared/data not found; tests that need the offline data will skip, chapters use the real hub"
fi

# Chapters build their artifacts from scratch into a fresh folder each run, so stale models never hide a bug.
export NANOCHAT_BOOK_SCALE=ci NANOCHAT_NO_PROGRESS=1 PYTHONHASHSEED=0 MPLBACKEND=Agg
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nanochat-test.XXXXXX")
export NANOCHAT_BASE_DIR="$WORK/base"

if [ -f rustbpe/Cargo.toml ]; then
  t=$(date +%s)
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/nanochat-book/cargo-target} \
    cargo test -q --manifest-path rustbpe/Cargo.toml
  phase "cargo test" "$t"
fi

t=$(date +%s)
set +e
python -m pytest -q -p no:cacheprovider --timeout=900 tests "$@"
rc=$?
set -e
phase pytest "$t"
[ $rc -eq 0 ] || { echo "pytest failed (exit $rc)"; exit $rc; }

t=$(date +%s)
mkdir -p "$WORK/nb"
for md in chapters/[0-9][0-9]-*.md; do
  jupytext -q --to ipynb -o "$WORK/nb/$(basename "${md%.md}").ipynb" "$md"
done
set +e
( cd "$WORK/nb" && python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=600 \
    --durations=0 -o addopts="" ./*.ipynb )
rc=$?
set -e
phase "nbval (chapters)" "$t"
[ $rc -eq 0 ] || { echo "nbval failed (exit $rc)"; exit $rc; }

rm -rf "$WORK"
echo "== timings"; printf '  %s\n' "${TIMES[@]}"; echo "  total: $(( $(date +%s) - T0 ))s"
