"""
Scale presets for the book, and the artifacts chapters need.

Design choices:
- one environment variable, `NANOCHAT_BOOK_SCALE` = ci | laptop | gpu, picks every size a chapter uses; unset,
  the hardware decides (a CUDA GPU -> gpu, else laptop). CI pins `ci`, the smallest sizes that still teach.
  The gpu preset's rows per micro-batch shrink on cards under 40 GiB (the total batch stays the same)
- each scale keeps its artifacts in its own folder, `<base>/book-<scale>`, so a tiny CI model never shadows a
  real one
- a chapter that needs a tokenizer or a trained model builds it with the real scripts (the same commands the
  speedrun runs), so any chapter runs on its own
"""
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from nanochat.common import autodetect_device_type, get_base_dir, seed_everything

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    tok_max_chars: int
    depth: int
    max_seq_len: int
    device_batch_size: int
    total_batch_size: int
    base_iterations: int
    mid_iterations: int
    sft_iterations: int
    rl_iterations: int
    eval_tokens: int
    max_problems: int
    device_type: str


PRESETS = {
    "ci": Preset(vocab_size=4096, tok_max_chars=2_000_000, depth=2, max_seq_len=256, device_batch_size=8,
                 total_batch_size=2048, base_iterations=60, mid_iterations=30, sft_iterations=30,
                 rl_iterations=4, eval_tokens=8192, max_problems=16, device_type="cpu"),
    "laptop": Preset(vocab_size=8192, tok_max_chars=20_000_000, depth=4, max_seq_len=512, device_batch_size=16,
                     total_batch_size=8192, base_iterations=400, mid_iterations=100, sft_iterations=100,
                     rl_iterations=20, eval_tokens=65536, max_problems=100, device_type="cpu"),
    "gpu": Preset(vocab_size=65536, tok_max_chars=2_000_000_000, depth=12, max_seq_len=2048,
                  device_batch_size=32, total_batch_size=524288, base_iterations=-1, mid_iterations=-1,
                  sft_iterations=-1, rl_iterations=-1, eval_tokens=10 * 1048576, max_problems=-1,
                  device_type="cuda"),
}


def detect_scale() -> str:
    scale = os.environ.get("NANOCHAT_BOOK_SCALE")
    if scale:
        if scale not in PRESETS:
            raise ValueError(f"NANOCHAT_BOOK_SCALE={scale!r}; choose one of {sorted(PRESETS)}")
        return scale
    return "gpu" if autodetect_device_type() == "cuda" else "laptop"


def device_batch_for_memory(gib: float, full: int = 32) -> int:
    """Rows per micro-batch for the gpu preset on a card with `gib` GiB: d12 at 32 x 2048 peaks near 34 GiB on an
    H100 (benchmarks/RESULTS.md), so smaller cards halve it; gradient accumulation keeps the total batch."""
    rows = full
    while rows > 1 and gib < 40 * rows / full:
        rows //= 2
    return rows


SCALE = detect_scale()
P = PRESETS[SCALE]
if SCALE == "laptop" and autodetect_device_type() == "mps":
    P = Preset(**{**asdict(P), "device_type": "mps"})
if SCALE == "gpu" and autodetect_device_type() == "cuda":
    import torch
    _gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    P = Preset(**{**asdict(P), "device_batch_size": device_batch_for_memory(_gib, P.device_batch_size)})


def setup(seed: int = 42) -> None:
    """First cell of every chapter: seeds, the scale's artifact folder, and what we are running on."""
    import torch
    seed_everything(seed)
    base = os.environ.get("NANOCHAT_BASE_DIR") or get_base_dir()
    if os.path.basename(os.path.normpath(base)) != f"book-{SCALE}":
        os.environ["NANOCHAT_BASE_DIR"] = os.path.join(base, f"book-{SCALE}")
    os.makedirs(os.environ["NANOCHAT_BASE_DIR"], exist_ok=True)
    print(f"scale={SCALE}  device={P.device_type}  torch={torch.__version__}  "
          f"artifacts={os.environ['NANOCHAT_BASE_DIR']}")


def _log_path(module: str) -> str:
    return os.path.join(get_base_dir(), "logs", f"{module}.log")


def _run(module: str, *args) -> None:
    """Run one of the real scripts as a subprocess, show its tail, keep its whole output (script_log), and fail
    loudly with its output."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    print("$", " ".join(cmd[1:]))
    t0 = time.time()
    env = {**os.environ, "NANOCHAT_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed (exit {proc.returncode}):\n" + "\n".join(out[-40:]))
    os.makedirs(os.path.dirname(_log_path(module)), exist_ok=True)
    with open(_log_path(module), "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out[-8:]))
    print(f"({module} took {time.time() - t0:.1f}s)")


def script_log(module: str) -> list[str]:
    """The output lines of the last run of `module` by a chapter at this scale ([] if none has run here)."""
    try:
        with open(_log_path(module), encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _has_checkpoint(folder: str) -> bool:
    root = os.path.join(get_base_dir(), folder, f"d{P.depth}")
    return os.path.isdir(root) and any(f.startswith("model_") for f in os.listdir(root))


def ensure_tokenizer() -> None:
    if not os.path.exists(os.path.join(get_base_dir(), "tokenizer", "tokenizer.pkl")):
        _run("scripts.tok_train", "--max-chars", P.tok_max_chars, "--vocab-size", P.vocab_size)


def ensure_base_model() -> None:
    ensure_tokenizer()
    if not _has_checkpoint("base_checkpoints"):
        _run("scripts.base_train", "--depth", P.depth, "--max-seq-len", P.max_seq_len,
             "--device-batch-size", P.device_batch_size, "--total-batch-size", P.total_batch_size,
             "--num-iterations", P.base_iterations, "--eval-tokens", P.eval_tokens,
             "--core-metric-every", -1, "--sample-every", -1, "--device-type", P.device_type)


def ensure_mid_model() -> None:
    ensure_base_model()
    if not _has_checkpoint("mid_checkpoints"):
        _run("scripts.mid_train", "--num-iterations", P.mid_iterations, "--max-seq-len", P.max_seq_len,
             "--device-batch-size", P.device_batch_size, "--total-batch-size", P.total_batch_size,
             "--device-type", P.device_type)


def ensure_sft_model() -> None:
    ensure_mid_model()
    if not _has_checkpoint("chatsft_checkpoints"):
        _run("scripts.chat_sft", "--num-iterations", P.sft_iterations,
             "--device-batch-size", P.device_batch_size, "--device-type", P.device_type)
