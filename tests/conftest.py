"""Fixtures every test file can use: the loopback hub mirror, a fresh base dir, and tiny trained artifacts.

The tiny artifacts are built once per session by running the real scripts (tok_train, base_train, mid_train,
chat_sft) at depth 2, so tests downstream of training exercise the same code paths a reader runs.
"""
import os
import subprocess
import sys

import pytest

from helpers import HAVE_SHARED, SHARED_DATA, SKIP_NO_SHARED, free_port, run_script, wait_for_port

# Sizes of the session's tiny artifacts (depth 2 => n_embd 128, one head).
TINY = dict(vocab_size=1024, max_chars=400_000, depth=2, seq=128, device_batch=4, total_batch=512, steps=8)


@pytest.fixture(scope="session")
def hub_mirror():
    """Serve ../shared/data/hf-mirror on loopback and point the download env vars at it."""
    if not HAVE_SHARED:
        pytest.skip(SKIP_NO_SHARED)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", os.path.join(SHARED_DATA, "hf-mirror")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        env = {
            "HF_ENDPOINT": url,
            "TIKTOKEN_CACHE_DIR": os.path.join(SHARED_DATA, "tiktoken_cache"),
            "NANOCHAT_PRETRAIN_DATASET": "nanochat-fixtures/prose-mix",
            "NANOCHAT_CHAT_DATASET": "nanochat-fixtures/chat-mix",
            "NANOCHAT_IDENTITY_PATH": os.path.join(SHARED_DATA, "identity_conversations.jsonl"),
            "NANOCHAT_EVAL_BUNDLE": os.path.join(SHARED_DATA, "eval_bundle.zip"),
        }
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        yield url
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    """A fresh, empty NANOCHAT_BASE_DIR for one test."""
    d = tmp_path / "base"
    d.mkdir()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory, hub_mirror):
    """The session's base dir holding the tiny artifacts below (shared, so build each once)."""
    return tmp_path_factory.mktemp("artifacts")


def _env(d):
    return {"NANOCHAT_BASE_DIR": str(d)}


@pytest.fixture(scope="session")
def tiny_tokenizer(artifacts_dir):
    """A vocab-1024 tokenizer trained on the prose fixture; returns the base dir that holds it."""
    if not os.path.exists(artifacts_dir / "tokenizer" / "tokenizer.pkl"):
        run_script("scripts.tok_train", "--max-chars", TINY["max_chars"], "--vocab-size", TINY["vocab_size"],
                   env=_env(artifacts_dir))
    return artifacts_dir


@pytest.fixture(scope="session")
def tiny_base_checkpoint(tiny_tokenizer):
    """A depth-2 base model after a few steps; returns the base dir (checkpoints under base_checkpoints/d2)."""
    d = tiny_tokenizer
    if not (d / "base_checkpoints" / "d2").is_dir():
        run_script("scripts.base_train", "--depth", TINY["depth"], "--max-seq-len", TINY["seq"],
                   "--device-batch-size", TINY["device_batch"], "--total-batch-size", TINY["total_batch"],
                   "--num-iterations", TINY["steps"], "--eval-tokens", 2048, "--core-metric-every", -1,
                   "--sample-every", -1, "--device-type", "cpu", env=_env(d))
    return d


@pytest.fixture(scope="session")
def tiny_sft_checkpoint(tiny_base_checkpoint):
    """Base -> mid -> SFT at depth 2 for a few steps each; returns the base dir."""
    d = tiny_base_checkpoint
    if not (d / "mid_checkpoints" / "d2").is_dir():
        run_script("scripts.mid_train", "--num-iterations", 4, "--max-seq-len", TINY["seq"],
                   "--device-batch-size", TINY["device_batch"], "--total-batch-size", TINY["total_batch"],
                   "--device-type", "cpu", env=_env(d))
    if not (d / "chatsft_checkpoints" / "d2").is_dir():
        run_script("scripts.chat_sft", "--num-iterations", 4, "--device-batch-size", TINY["device_batch"],
                   "--device-type", "cpu", env=_env(d))
    return d
