#!/usr/bin/env bash
# Set up everything the book needs in ./.venv: the nanochat package (editable, with the dev/book/serve extras)
# and the rustbpe extension built from ./rustbpe with cargo.
# Idempotent: a hash of the inputs (pyproject, the Rust sources) is stamped into the venv, and a second run with
# nothing changed returns in about a second. Needs python3 (>= 3.10) and cargo (https://rustup.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "setup: need Python >= 3.10, $PYTHON is $("$PYTHON" --version)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
inputs=$( (cat pyproject.toml; [ -d rustbpe ] && find rustbpe -path rustbpe/target -prune -o -type f \
  \( -name '*.rs' -o -name '*.toml' -o -name Cargo.lock \) -print | sort | xargs cat) | sha256sum | cut -c1-16)
stamp=.venv/.nanochat-setup
if [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
t0=$(date +%s)
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,book,serve]"
if [ -d rustbpe ]; then
  # A target dir outside the checkout lets a fresh clone reuse compiled crates.
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/nanochat-book/cargo-target}
  .venv/bin/python -m pip install -q ./rustbpe
fi
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
# JupyterLab opens the MyST chapters as notebooks by default (jupytext's viewer), not as plain Markdown.
mkdir -p .venv/share/jupyter/lab/settings
cat > .venv/share/jupyter/lab/settings/overrides.json <<'JSON'
{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}}}
JSON
echo "$inputs" > "$stamp"
echo "setup: done in $(( $(date +%s) - t0 ))s"
