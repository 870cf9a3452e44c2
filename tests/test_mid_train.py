"""Midtraining packing (hand-made token lists, resumable packer), then mid_train end to end."""
import pytest
import torch

from nanochat.posttrain import ChatPacker, lr_multiplier_mid, pack_rows


def test_pack_rows_shifts_by_one():
    inputs, targets, leftover = pack_rows([[1, 2, 3], [4, 5], [6, 7, 8, 9]], B=2, T=3)
    assert inputs.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert targets.tolist() == [[2, 3, 4], [5, 6, 7]]
    assert leftover == [8, 9]
    with pytest.raises(ValueError):
        pack_rows([[1, 2]], B=1, T=2)


class _CountingTokenizer:
    """render_conversation returns the conversation's own list of ids (mask all ones)."""

    def render_conversation(self, conversation, max_tokens=2048):
        ids = conversation["ids"][:max_tokens]
        return ids, [1] * len(ids)


def _dataset(n=7):
    return [{"ids": [100 * i + j for j in range(i + 2)]} for i in range(n)]


def test_packer_streams_rank_strided_and_resumes_exactly():
    ds, tok = _dataset(), _CountingTokenizer()
    a = ChatPacker(ds, tok, B=2, T=4, rank=1, world_size=2)
    first, _ = a.next_batch()
    # rank 1 of 2 reads conversations 1, 3, 5, ...: 2+... tokens of conversation 1, then 3, then 5
    assert first[0].tolist() == [100, 101, 102, 300]
    state = a.state_dict()
    want = [a.next_batch() for _ in range(3)]
    b = ChatPacker(ds, tok, B=2, T=4, rank=1, world_size=2, state=state)
    got = [b.next_batch() for _ in range(3)]
    for (xw, yw), (xg, yg) in zip(want, got):
        assert torch.equal(xw, xg) and torch.equal(yw, yg)
    assert a.progress > 1.0   # wrapped into the second epoch


def test_lr_multiplier_mid():
    assert lr_multiplier_mid(0.0) == 1.0 and lr_multiplier_mid(0.79) == 1.0
    assert lr_multiplier_mid(0.9) == pytest.approx(0.5)
    assert lr_multiplier_mid(1.0) == 0.0


# ---- end to end: the real script, 3 steps at depth 2 on CPU, then an exact resume -------------------------------

import os
import shutil

from helpers import run_script


def _fresh_copy(src, dst, folders):
    """A private base dir holding copies of the session artifacts this test reads (so resuming cannot clash)."""
    for f in folders:
        shutil.copytree(src / f, dst / f)
    return {"NANOCHAT_BASE_DIR": str(dst)}


MID_ARGS = ["--num-iterations", 3, "--max-seq-len", 128, "--device-batch-size", 4, "--total-batch-size", 1024,
            "--eval-every", 2, "--eval-tokens", 1024, "--save-every", 2, "--device-type", "cpu"]


def test_mid_train_runs_and_resumes_exactly(tiny_base_checkpoint, tmp_path):
    env = _fresh_copy(tiny_base_checkpoint, tmp_path, ["tokenizer", "base_checkpoints"])
    out = run_script("scripts.mid_train", *MID_ARGS, env=env).stdout
    assert "2 micro-step(s)" in out and "val bpb" in out
    ckpt = tmp_path / "mid_checkpoints" / "d2"
    assert {"model_000002.pt", "model_000003.pt", "meta_000003.json", "optim_000003_rank0.pt"} <= set(os.listdir(ckpt))
    first = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    for f in ("model_000003.pt", "meta_000003.json", "optim_000003_rank0.pt"):
        os.remove(ckpt / f)
    out = run_script("scripts.mid_train", *MID_ARGS, "--resume", env=env).stdout
    assert "resumed from" in out and "at step 2" in out
    again = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    # model, optimizer state and data cursor all restored: the resumed step is bit-identical
    for k in first:
        assert torch.equal(first[k], again[k]), k
    assert (tmp_path / "report" / "midtraining.md").exists()


def test_two_gloo_ranks_train_and_resume_exactly(tiny_base_checkpoint, tmp_path):
    """Under torchrun each rank packs its own stride of conversations and saves its own packer position; a
    two-rank resume must put both back where they were (the resumed step is bit-identical)."""
    from helpers import run_torchrun
    env = _fresh_copy(tiny_base_checkpoint, tmp_path, ["tokenizer", "base_checkpoints"])
    args = [str(a) for a in MID_ARGS]
    args[args.index("--device-batch-size") + 1] = "2"           # 2 ranks x 2 rows x 128 = 512: 2 micro-steps
    out = run_torchrun("scripts.mid_train", *args, env=env, nproc=2)
    assert "world 2" in out and "2 micro-step(s)" in out, out[-2000:]
    ckpt = tmp_path / "mid_checkpoints" / "d2"
    assert {"optim_000003_rank0.pt", "optim_000003_rank1.pt"} <= set(os.listdir(ckpt))
    first = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    for f in ("model_000003.pt", "meta_000003.json", "optim_000003_rank0.pt", "optim_000003_rank1.pt"):
        os.remove(ckpt / f)
    out = run_torchrun("scripts.mid_train", *args, "--resume", env=env, nproc=2)
    assert "resumed from" in out and "at step 2" in out
    again = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    for k in first:
        assert torch.equal(first[k], again[k]), k
