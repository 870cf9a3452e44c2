# Source me. Serve a local hub mirror (../shared/data by default) on loopback and point every download at it.
#   use_offline_data [DIR]        -> DIR: a data folder holding hf-mirror/, or the mirror itself; exports HF_ENDPOINT, TIKTOKEN_CACHE_DIR and the fixture dataset names
#   hub_reachable                 -> exit status 0 when https://huggingface.co answers within 5 s
# The mirror process is killed when the sourcing shell exits.

hub_reachable() {
  python3 - <<'PY' >/dev/null 2>&1
import urllib.request
urllib.request.urlopen("https://huggingface.co/api/health", timeout=5)
PY
}

use_offline_data() {
  local data=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/shared/data} mirror
  mirror="$data/hf-mirror"
  if [ -d "$data/datasets" ]; then mirror=$data; data=$(dirname "$data"); fi   # given the mirror itself
  [ -d "$mirror/datasets" ] || { echo "offline: no hub mirror at $mirror" >&2; return 1; }
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$mirror" >/dev/null 2>&1 &
  NANOCHAT_MIRROR_PID=$!
  trap 'kill $NANOCHAT_MIRROR_PID 2>/dev/null || true' EXIT
  python3 - "$port" <<'PY'
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close(); break
    except OSError:
        time.sleep(0.05)
PY
  export HF_ENDPOINT="http://127.0.0.1:$port"
  # names the caller already chose win; the rest point at the mirror's stand-ins and files
  export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$data/tiktoken_cache}
  export NANOCHAT_PRETRAIN_DATASET=${NANOCHAT_PRETRAIN_DATASET:-nanochat-fixtures/prose-mix}
  export NANOCHAT_CHAT_DATASET=${NANOCHAT_CHAT_DATASET:-nanochat-fixtures/chat-mix}
  export NANOCHAT_IDENTITY_PATH=${NANOCHAT_IDENTITY_PATH:-$data/identity_conversations.jsonl}
  export NANOCHAT_EVAL_BUNDLE=${NANOCHAT_EVAL_BUNDLE:-$data/eval_bundle.zip}
  echo "offline: serving $mirror at $HF_ENDPOINT; datasets: $NANOCHAT_PRETRAIN_DATASET, $NANOCHAT_CHAT_DATASET"
}
