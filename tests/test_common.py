import os
import subprocess
import sys

import pytest
import torch

from nanochat import book, common
from nanochat.gpt import config_for_depth, count_params, GPTConfig


def test_base_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "x"))
    assert common.get_base_dir() == str(tmp_path / "x") and os.path.isdir(tmp_path / "x")
    monkeypatch.delenv("NANOCHAT_BASE_DIR")
    assert common.get_base_dir().endswith(os.path.join(".cache", "nanochat"))


def test_compute_init_single_process_cpu(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert common.compute_init("cpu")[:4] == (False, 0, 0, 1)
    assert common.peak_flops("cpu") is None and common.dtype_for("cpu") is None
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            common.compute_init("cuda")


def test_config_for_depth_matches_series_tiers():
    # nanochat's d20 is the "$100" model: 1280 wide, 10 heads of 128, 561M params with a 65,536 vocab.
    c = config_for_depth(20)
    assert (c.n_embd, c.n_head, c.head_dim, c.vocab_size) == (1280, 10, 128, 65536)
    assert count_params(c)["total"] == 560_988_160
    # hand count for d2: embeddings 2*V*d, per layer 4d^2 (attn) + 8d^2 (mlp)
    c = config_for_depth(2, vocab_size=1000)
    assert c.vocab_size == 1024                       # padded to a multiple of 64
    d = 128
    assert count_params(c)["total"] == 2 * 1024 * d + 2 * 12 * d * d


def test_bad_configs_fail_at_config_time():
    with pytest.raises(ValueError, match="must divide"):
        GPTConfig(n_head=6, n_kv_head=4, n_embd=768)
    with pytest.raises(ValueError, match="depth"):
        config_for_depth(0)


def test_book_scale_env(monkeypatch):
    code = "from nanochat import book; print(book.SCALE, book.P.depth)"
    env = {**os.environ, "NANOCHAT_BOOK_SCALE": "ci"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ci", "2"]
    env["NANOCHAT_BOOK_SCALE"] = "huge"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "NANOCHAT_BOOK_SCALE='huge'" in bad.stderr


def test_gpu_preset_device_batch_fits_smaller_cards():
    # 32 rows on 40 GiB and up (d12 peaks near 34 GiB), halved per halving of memory, never below one row
    assert [book.device_batch_for_memory(g) for g in (80, 40, 39, 24, 16, 12, 6, 0.5)] == [32, 32, 16, 16, 8, 8, 4, 1]


def test_book_setup_uses_scale_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    book.setup()
    assert os.environ["NANOCHAT_BASE_DIR"] == str(tmp_path / f"book-{book.SCALE}")
    book.setup()   # re-running the first cell must not nest folders
    assert os.environ["NANOCHAT_BASE_DIR"] == str(tmp_path / f"book-{book.SCALE}")


def test_report_card(tmp_path, monkeypatch):
    from nanochat.report import get_report
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    r = get_report()
    r.reset()
    r.log("Chat evaluation sft", [{"ARC-Easy": 0.25, "GSM8K": 0.0125}])
    r.log("Base model evaluation", [{"CORE": 0.1}])
    text = open(r.generate()).read()
    assert text.index("## Header") < text.index("## Base model evaluation") < text.index("## Chat evaluation sft")
    assert "| ARC-Easy | - | 0.2500 |" in text and "| CORE | 0.1000 | - |" in text
