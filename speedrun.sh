#!/usr/bin/env bash
# The whole pipeline, from an empty machine to a chat model and its report card:
#   setup -> data -> tokenizer (train, eval) -> base model (train, loss, CORE) -> midtraining (+ chat eval)
#   -> SFT (+ chat eval) -> RL on GSM8K (+ eval) -> report.md
#
#   bash speedrun.sh                      # tier picked by the hardware: 8+ GPUs -> d20, 1-7 GPUs -> d12, none -> cpu
#   TIER=d26 bash speedrun.sh             # or choose: smoke | cpu | d12 | d20 | d26 | d32
#   DRY_RUN=1 bash speedrun.sh            # print the tier and its sizes, run nothing
#   OFFLINE_MIRROR=../shared/data/hf-mirror TIER=cpu bash speedrun.sh   # no internet: serve a hub mirror
#                                         (found by itself in ../shared/data when the hub is unreachable)
#
# Tiers (time and cost as measured or as the series reports them; see chapter 10):
#   smoke  every stage for a few steps, depth 2            60 s wall on 2 idle cores, venv in place (2026-12-08)
#   cpu    depth 4, a real (small) run end to end          9 min 27 s on 2 CPU cores, venv in place (README)
#   d12    186M params, 20 tokens/param (3.7B tokens)      pretraining ~2.3 h on one H100 (456k tok/s; FP8=1 519k: 2 h)
#   d20    561M params, 20 tokens/param (the "$100" run)   ~4 h on 8xH100 (~$24/h)
#   d26    ~1.1B params, beats GPT-2 on CORE               ~12 h on 8xH100 (~$300)
#   d32    ~1.9B params                                    more than a day on 8xH100
# Other knobs: NANOCHAT_BASE_DIR (artifacts; cpu/smoke default to ~/.cache/nanochat/speedrun-<tier>),
# NPROC (GPUs to use), WANDB_RUN (wandb run name; default off), SKIP_SETUP=1 (use the current .venv as is),
# FORCE=1 (rerun stages an earlier run of the same commands finished; by default they are skipped),
# SKIP_RL=1 (stop after SFT), FP8=1 (GPU tiers: pretrain with fp8 matmuls, nanochat/fp8.py; +23% tok/s
# at d20 on one H100, benchmarks/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")"
T_START=$(date +%s)

# ---------------------------------------------------------------------------------------------- tier & hardware
NGPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
  NGPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l || echo 0)
fi
if [ -z "${TIER:-}" ]; then
  # d20 is the series' 8-GPU run (~4 h); on fewer GPUs it takes 8/N times as long, so they get d12 unless asked
  if [ "$NGPU" -ge 8 ]; then TIER=d20
  elif [ "$NGPU" -ge 1 ]; then TIER=d12
    echo "speedrun: $NGPU GPU(s): tier d12 (TIER=d20 runs the series' model: ~$(( 32 / NGPU )) h here, 8/$NGPU x its 4 h)"
  else TIER=cpu; fi
fi
case "$TIER" in smoke|cpu|d12|d20|d26|d32) ;; *) echo "speedrun: unknown TIER=$TIER (smoke|cpu|d12|d20|d26|d32)" >&2; exit 2;; esac
NPROC=${NPROC:-$([ "$NGPU" -ge 1 ] && echo "$NGPU" || echo 1)}
WANDB_RUN=${WANDB_RUN:-dummy}
if [ "$TIER" = smoke ] || [ "$TIER" = cpu ]; then
  export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat/speedrun-$TIER}
  DEV=(--device-type cpu)
else
  export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
  [ "$NGPU" -ge 1 ] || { echo "speedrun: TIER=$TIER needs CUDA GPUs (nvidia-smi found none)" >&2; exit 2; }
  DEV=(--device-type cuda)
fi
mkdir -p "$NANOCHAT_BASE_DIR"
if [ "$TIER" = smoke ] || [ "$TIER" = cpu ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
else
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}    # torchrun: one process per GPU, leave the cores to dataloaders
fi
export NANOCHAT_NO_PROGRESS=${NANOCHAT_NO_PROGRESS:-1}
echo "speedrun: tier=$TIER gpus=$NGPU nproc=$NPROC base_dir=$NANOCHAT_BASE_DIR"

# ---------------------------------------------------------------------------------------------- offline mirror
# OFFLINE_MIRROR=<folder laid out like the hub> serves it on loopback; with no route to the hub, a mirror in
# ../shared/data (this project's offline machines) is used the same way. dev/offline.sh does the serving.
source dev/offline.sh
if [ "${DRY_RUN:-0}" = 1 ]; then
  :   # (no network, no servers: only the plan below is printed)
elif [ -n "${OFFLINE_MIRROR:-}" ]; then
  use_offline_data "$(cd "$OFFLINE_MIRROR" && pwd)"
elif [ -z "${HF_ENDPOINT:-}" ] && ! hub_reachable; then
  echo "speedrun: https://huggingface.co is not reachable"
  use_offline_data || { echo "speedrun: and no offline mirror in ../shared/data; set HF_ENDPOINT or OFFLINE_MIRROR" >&2; exit 2; }
fi

# ---------------------------------------------------------------------------------------------- sizes per tier
# tokenizer: chars, vocab | base: depth, seq, device batch, total batch, iterations (-1 = 20 tokens/param)
# eval: eval tokens, CORE examples per task (-1 all), chat-eval problems per task (-1 all)
case "$TIER" in
  smoke) TOK_CHARS=400000;     VOCAB=1024;  DEPTH=2;  SEQ=128;  DBS=4;  TBS=512;    BASE_IT=8;   MID_IT=4;   SFT_IT=4;   RL_IT=2;
         EVAL_TOK=2048;      CORE_N=4;   CHAT_N=4;   SHARDS=2;   SFT_DBS=4 ;;
  cpu)   TOK_CHARS=10000000;   VOCAB=4096;  DEPTH=4;  SEQ=256;  DBS=16; TBS=4096;   BASE_IT=200; MID_IT=60;  SFT_IT=60;  RL_IT=6;
         EVAL_TOK=16384;     CORE_N=20;  CHAT_N=20;  SHARDS=5;   SFT_DBS=8 ;;
  d12)   TOK_CHARS=2000000000; VOCAB=65536; DEPTH=12; SEQ=2048; DBS=32; TBS=524288; BASE_IT=-1;  MID_IT=-1;  SFT_IT=-1;  RL_IT=-1;
         EVAL_TOK=10485760;  CORE_N=-1;  CHAT_N=-1;  SHARDS=90;  SFT_DBS=4 ;;
  d20)   TOK_CHARS=2000000000; VOCAB=65536; DEPTH=20; SEQ=2048; DBS=32; TBS=524288; BASE_IT=-1;  MID_IT=-1;  SFT_IT=-1;  RL_IT=-1;
         EVAL_TOK=10485760;  CORE_N=-1;  CHAT_N=-1;  SHARDS=240; SFT_DBS=4 ;;
  d26)   TOK_CHARS=2000000000; VOCAB=65536; DEPTH=26; SEQ=2048; DBS=16; TBS=524288; BASE_IT=-1;  MID_IT=-1;  SFT_IT=-1;  RL_IT=-1;
         EVAL_TOK=10485760;  CORE_N=-1;  CHAT_N=-1;  SHARDS=450; SFT_DBS=4 ;;
  d32)   TOK_CHARS=2000000000; VOCAB=65536; DEPTH=32; SEQ=2048; DBS=8;  TBS=524288; BASE_IT=-1;  MID_IT=-1;  SFT_IT=-1;  RL_IT=-1;
         EVAL_TOK=10485760;  CORE_N=-1;  CHAT_N=-1;  SHARDS=800; SFT_DBS=2 ;;
esac
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "speedrun: DRY_RUN tier=$TIER depth=$DEPTH vocab=$VOCAB seq=$SEQ device_batch=$DBS total_batch=$TBS" \
       "base_iterations=$BASE_IT shards=$SHARDS nproc=$NPROC"
  exit 0
fi
MAX_PROBLEMS=()
[ "$CHAT_N" -gt 0 ] && MAX_PROBLEMS=(--max-problems "$CHAT_N")
CORE_ARGS=()
[ "$CORE_N" -gt 0 ] && CORE_ARGS=(--max-per-task "$CORE_N")
iters() { [ "$1" -gt 0 ] && echo "--num-iterations $1" || true; }

# ---------------------------------------------------------------------------------------------- stage runner
# A second run is fast: a stage whose exact command already finished (a marker in speedrun_done/) is skipped,
# until the first stage that has to run; from there on everything runs, since it reads that stage's output.
# FORCE=1 runs every stage.
TIMINGS="$NANOCHAT_BASE_DIR/speedrun_timings.tsv"
DONE="$NANOCHAT_BASE_DIR/speedrun_done"
mkdir -p "$DONE"
: > "$TIMINGS"
REDO=${FORCE:-0}
stage() {   # stage NAME command... : run (or skip, see above), time, and stop the run on failure with its name
  local name=$1; shift
  local marker="$DONE/$name"
  if [ "$REDO" != 1 ] && [ -f "$marker" ] && [ "$(head -n 1 "$marker")" = "$*" ]; then
    local prev; prev=$(sed -n 2p "$marker")
    echo; echo "=== [$TIER] $name: done by an earlier run of the same command (${prev}s); skipped (FORCE=1 redoes it)"
    printf '%s\t%s\n' "$name" "$prev (earlier run)" >> "$TIMINGS"
    return 0
  fi
  REDO=1
  rm -f "$marker"
  echo; echo "=== [$TIER] $name: $*"
  local t0; t0=$(date +%s)
  if ! "$@"; then
    echo "speedrun: stage '$name' failed after $(( $(date +%s) - t0 ))s" >&2
    exit 1
  fi
  local dt=$(( $(date +%s) - t0 ))
  printf '%s\t%s\n' "$name" "$dt" >> "$TIMINGS"
  printf '%s\n%s\n' "$*" "$dt" > "$marker"
  echo "=== [$TIER] $name done in ${dt}s"
}
have() { [ -f "scripts/$1.py" ] || { echo "speedrun: scripts/$1.py not present; skipping"; return 1; }; }

# ---------------------------------------------------------------------------------------------- setup
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  REDO_BEFORE=$REDO; REDO=1      # setup always runs (it is idempotent and fast when done) and invalidates nothing
  stage setup bash dev/setup.sh
  REDO=$REDO_BEFORE
fi
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if [ "$NPROC" -gt 1 ] && [ "${DEV[1]}" = cuda ]; then
  RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m)
else
  RUN=("$PY" -m)
fi
# a fresh report card, unless earlier stages are about to be skipped: their sections stay, later ones are rewritten
if [ "$REDO" = 1 ] || [ ! -f "$DONE/data" ]; then "$PY" -m nanochat.report reset; fi

# ---------------------------------------------------------------------------------------------- data
# The first shards now (the tokenizer needs ~2B chars = 8 shards); the rest in the background while it trains.
FIRST=$(( SHARDS < 8 ? SHARDS : 8 ))
stage data "$PY" -m nanochat.dataset -n "$FIRST"
DATA_PID=
if [ "$SHARDS" -gt "$FIRST" ]; then
  "$PY" -m nanochat.dataset -n "$SHARDS" > "$NANOCHAT_BASE_DIR/dataset_download.log" 2>&1 &
  DATA_PID=$!
fi

# ---------------------------------------------------------------------------------------------- tokenizer
stage tok_train "$PY" -m scripts.tok_train --max-chars "$TOK_CHARS" --vocab-size "$VOCAB"
if have tok_eval; then stage tok_eval "$PY" -m scripts.tok_eval; fi

# ---------------------------------------------------------------------------------------------- base model
if [ -n "$DATA_PID" ]; then
  echo "speedrun: waiting for the dataset download ($SHARDS shards)"; wait "$DATA_PID"
fi
SMALL=0
if [ "$TIER" = smoke ] || [ "$TIER" = cpu ]; then SMALL=1; fi
# the CPU tiers evaluate less often and on fewer examples; the GPU tiers use the scripts' defaults (the series')
BASE_X=(); MID_X=(); SFT_X=(); RL_X=()
if [ "$SMALL" = 1 ]; then
  BASE_X=(--core-metric-every -1 --sample-every -1 --eval-every -1)
  MID_X=(--eval-every -1 --eval-tokens "$EVAL_TOK")
  SFT_X=(--eval-every -1 --eval-steps 2 --target-examples-per-step 8 --eval-max-problems "$CHAT_N")
  RL_X=(--device-batch-size 4 --examples-per-step 2 --num-samples 4 --max-new-tokens 48 --eval-every -1
        --eval-examples "$CHAT_N" --eval-samples 2)
elif [ "${FP8:-0}" = 1 ]; then
  BASE_X=(--fp8)
fi
stage base_train "${RUN[@]}" scripts.base_train --depth "$DEPTH" --max-seq-len "$SEQ" --device-batch-size "$DBS" \
  --total-batch-size "$TBS" $(iters $BASE_IT) --eval-tokens "$EVAL_TOK" --run "$WANDB_RUN" "${DEV[@]}" "${BASE_X[@]}"
stage base_loss "${RUN[@]}" scripts.base_loss --device-batch-size "$DBS" --split-tokens "$EVAL_TOK" "${DEV[@]}"
stage base_eval "${RUN[@]}" scripts.base_eval "${CORE_ARGS[@]}" "${DEV[@]}"

# ---------------------------------------------------------------------------------------------- midtraining
stage mid_train "${RUN[@]}" scripts.mid_train $(iters $MID_IT) --max-seq-len "$SEQ" --device-batch-size "$DBS" \
  --total-batch-size "$TBS" --run "$WANDB_RUN" "${DEV[@]}" "${MID_X[@]}"
stage chat_eval_mid "${RUN[@]}" scripts.chat_eval -i mid "${MAX_PROBLEMS[@]}" "${DEV[@]}"

# ---------------------------------------------------------------------------------------------- SFT
stage chat_sft "${RUN[@]}" scripts.chat_sft $(iters $SFT_IT) --device-batch-size "$SFT_DBS" --run "$WANDB_RUN" \
  "${DEV[@]}" "${SFT_X[@]}"
stage chat_eval_sft "${RUN[@]}" scripts.chat_eval -i sft "${MAX_PROBLEMS[@]}" "${DEV[@]}"

# ---------------------------------------------------------------------------------------------- RL (GSM8K)
if [ "${SKIP_RL:-0}" != 1 ]; then
  stage chat_rl "${RUN[@]}" scripts.chat_rl $(iters $RL_IT) --run "$WANDB_RUN" "${DEV[@]}" "${RL_X[@]}"
  stage chat_eval_rl "${RUN[@]}" scripts.chat_eval -i rl -a GSM8K "${MAX_PROBLEMS[@]}" "${DEV[@]}"
fi

# ---------------------------------------------------------------------------------------------- report card
TOTAL=$(( $(date +%s) - T_START ))
"$PY" - "$TIMINGS" "$TIER" "$TOTAL" <<'PY'
import sys
from nanochat.report import get_report
path, tier, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
table = ["| stage | seconds |", "|---|---|"] + [f"| {name} | {sec} |" for name, sec in rows]
get_report().log("Speedrun", [{"tier": tier, "total seconds": total, "total time": f"{total // 3600}h{total % 3600 // 60:02d}m{total % 60:02d}s"}, "\n".join(table)])
PY
REPORT=$("$PY" -m nanochat.report generate)
echo
echo "speedrun: tier $TIER finished in ${TOTAL}s; report card: $REPORT"
echo "chat with it:  NANOCHAT_BASE_DIR=$NANOCHAT_BASE_DIR $PY -m scripts.chat_web -i sft   (or scripts.chat_cli)"
