"""RL math on hand-computed batches (advantages, token-level PG loss, pass@k), then chat_rl end to end."""
import itertools
import math

import pytest
import torch

from nanochat.posttrain import IGNORE_INDEX, pass_at_k, pg_loss, rl_advantages, rl_batch, token_logprobs


def test_advantages_are_reward_minus_group_mean():
    adv = rl_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.equal(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # a group where every sample has the same reward carries no signal
    assert torch.equal(rl_advantages(torch.tensor([1.0, 1.0, 1.0])), torch.zeros(3))
    # (questions, k): the baseline is per question, not over the whole batch
    adv2 = rl_advantages(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(adv2, torch.tensor([[0.5, -0.5], [0.0, 0.0]]))


def test_pg_loss_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -9.0, -9.0]])
    targets = torch.tensor([[5, 6, IGNORE_INDEX], [7, IGNORE_INDEX, IGNORE_INDEX]])
    adv = torch.tensor([0.5, -0.5])
    # objective = 0.5*(-1 - 2) + (-0.5)*(-0.5) = -1.25 over 3 valid tokens; loss = -objective / 3
    assert pg_loss(logp, targets, adv).item() == pytest.approx(1.25 / 3)


def test_pg_loss_gradient_only_on_sampled_tokens():
    logp = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    targets = torch.tensor([[5, 6, IGNORE_INDEX], [7, IGNORE_INDEX, IGNORE_INDEX]])
    pg_loss(logp, targets, torch.tensor([0.5, -0.5])).backward()
    # d loss / d logp = -A_i / N on valid tokens, 0 elsewhere
    expected = torch.tensor([[-0.5, -0.5, 0.0], [0.5, 0.0, 0.0]]) / 3
    assert torch.allclose(logp.grad, expected)


def test_rl_batch_masks_prompt_and_forced_tokens():
    # prompt [1, 2], sampled 3, forced tool output 4, sampled 5; a second, shorter sample
    seqs = [[1, 2, 3, 4, 5], [1, 2, 9]]
    masks = [[0, 0, 1, 0, 1], [0, 0, 1]]
    inputs, targets = rl_batch(seqs, masks, pad_id=0)
    assert inputs.tolist() == [[1, 2, 3, 4], [1, 2, 0, 0]]
    assert targets.tolist() == [[-1, 3, -1, 5], [-1, 9, -1, -1]]


def test_token_logprobs_match_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    targets = torch.tensor([[1, IGNORE_INDEX, 4], [IGNORE_INDEX, 10, 0]])
    lp = token_logprobs(logits, targets)
    ref = torch.log_softmax(logits, -1)
    assert lp[0, 1] == 0 and lp[1, 0] == 0
    assert torch.allclose(lp[0, 0], ref[0, 0, 1]) and torch.allclose(lp[1, 1], ref[1, 1, 10])


@pytest.mark.parametrize("n,c,k,want", [(4, 1, 1, 0.25), (4, 1, 2, 0.5), (4, 0, 3, 0.0), (4, 4, 1, 1.0),
                                        (5, 2, 2, 0.7)])
def test_pass_at_k_hand_values(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want)


def test_pass_at_k_equals_enumeration():
    n, c = 6, 2
    outcomes = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute)
    assert math.isclose(pass_at_k(n, c, 1), c / n)


# ---- end to end: the real script, 3 steps at depth 2 on CPU, then an exact resume ----------------------------------

import json
import os
import shutil

from helpers import run_script

RL_ARGS = ["--num-iterations", 3, "--examples-per-step", 2, "--num-samples", 2, "--device-batch-size", 2,
           "--max-new-tokens", 8, "--eval-every", 2, "--eval-examples", 2, "--eval-samples", 2,
           "--save-every", 2, "--device-type", "cpu"]


def test_chat_rl_runs_and_resumes_exactly(tiny_sft_checkpoint, tmp_path):
    for f in ("tokenizer", "chatsft_checkpoints"):
        shutil.copytree(tiny_sft_checkpoint / f, tmp_path / f)
    env = {"NANOCHAT_BASE_DIR": str(tmp_path)}
    out = run_script("scripts.chat_rl", *RL_ARGS, env=env).stdout
    assert "pass@1" in out and "reward" in out
    ckpt = tmp_path / "chatrl_checkpoints" / "d2"
    history = json.loads((ckpt / "history.json").read_text())
    assert [r["step"] for r in history["train"]] == [1, 2, 3]
    assert [r["step"] for r in history["eval"]] == [0, 2, 3]
    assert all(0.0 <= r["pass@1"] <= r["pass@2"] <= 1.0 for r in history["eval"])
    first = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    for f in ("model_000003.pt", "meta_000003.json", "optim_000003_rank0.pt"):
        os.remove(ckpt / f)
    out = run_script("scripts.chat_rl", *RL_ARGS, "--resume", env=env).stdout
    assert "resumed from" in out and "at step 2" in out
    again = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    for k in first:   # same questions, same sampling seeds, same optimizer state: the same weights
        assert torch.equal(first[k], again[k]), k
    history2 = json.loads((ckpt / "history.json").read_text())
    assert history2["train"] == history["train"]


def test_chat_rl_update_moves_weights_and_resumes_exactly(tiny_sft_checkpoint, tmp_path, monkeypatch):
    """The test above never updates (GSM8K rewards are all 0 at this scale, so every advantage is 0). Here the
    reward is the parity of the answer's length, so a group's samples disagree and the real training step of
    chat_rl.main runs with non-zero advantages: the weights must move, and a resume must still be exact."""
    import scripts.chat_rl as chat_rl
    from tasks.gsm8k import GSM8K
    for f in ("tokenizer", "chatsft_checkpoints"):
        shutil.copytree(tiny_sft_checkpoint / f, tmp_path / f)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("NANOCHAT_NO_PROGRESS", "1")
    # main() imports GSM8K when it runs, so patching the class reaches both the train and the test task
    monkeypatch.setattr(GSM8K, "reward", lambda self, conversation, response: float(len(response) % 2))
    advantages = []

    def spy(rewards):   # what the training step is handed, to show the signal is really there
        adv = rl_advantages(rewards)
        advantages.append(adv)
        return adv
    monkeypatch.setattr(chat_rl, "rl_advantages", spy)
    args = [str(a) for a in RL_ARGS]
    args[args.index("--eval-every") + 1] = "-1"   # pass@k only at the end: this test is about the update
    chat_rl.main(args)
    assert any(a.abs().sum() > 0 for a in advantages), advantages

    sft_dir = tmp_path / "chatsft_checkpoints" / "d2"
    sft = torch.load(sorted(sft_dir.glob("model_*.pt"))[-1], map_location="cpu")
    ckpt = tmp_path / "chatrl_checkpoints" / "d2"
    mid = torch.load(ckpt / "model_000002.pt", map_location="cpu")
    first = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    assert sft.keys() == first.keys()
    moved = [k for k in sft if not torch.equal(sft[k], first[k])]
    assert moved, "three RL steps with non-zero advantages left every weight as the SFT model had it"
    # the step a resume has to redo is a real update too (its lr multiplier is 1/3, not 0)
    assert any(not torch.equal(mid[k], first[k]) for k in first)

    # stop after step 2: the step-3 files never got written; resume from the step-2 checkpoint
    for f in ("model_000003.pt", "meta_000003.json", "optim_000003_rank0.pt"):
        os.remove(ckpt / f)
    chat_rl.main(args + ["--resume"])
    again = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    for k in first:   # same samples, same rewards, same optimizer state (Adam moments, Muon momentum)
        assert torch.equal(first[k], again[k]), k


def test_questions_per_step_do_not_depend_on_the_world_size():
    """Ranks split a step's questions, and sampling seeds are functions of (step, question index): two ranks
    sample exactly what one process samples, so DDP's averaged gradient is the single-process one."""
    from scripts.chat_rl import question_indices
    n = 50
    for step in range(30):     # 30 x 4 > n: the wrap-around too
        one = question_indices(step, 4, 0, 1, n)
        two = question_indices(step, 2, 0, 2, n) + question_indices(step, 2, 1, 2, n)
        four = sum((question_indices(step, 1, r, 4, n) for r in range(4)), [])
        assert sorted(one) == sorted(two) == sorted(four) and len(set(one)) == 4


def test_two_gloo_ranks_run_the_ddp_path(tiny_sft_checkpoint, tmp_path):
    """The two-process path end to end: split questions, per-rank optimizer state, reduced statistics and
    pass@k. (At this scale every GSM8K reward is 0, so the update itself is covered by the test above.)"""
    from helpers import run_torchrun
    for f in ("tokenizer", "chatsft_checkpoints"):
        shutil.copytree(tiny_sft_checkpoint / f, tmp_path / f)
    out = run_torchrun("scripts.chat_rl", *RL_ARGS, env={"NANOCHAT_BASE_DIR": str(tmp_path)}, nproc=2)
    assert "world 2" in out and "pass@1" in out, out[-2000:]
    ckpt = tmp_path / "chatrl_checkpoints" / "d2"
    assert {"model_000003.pt", "optim_000003_rank0.pt", "optim_000003_rank1.pt"} <= set(os.listdir(ckpt))
    history = json.loads((ckpt / "history.json").read_text())
    assert [r["step"] for r in history["train"]] == [1, 2, 3]
    assert [r["step"] for r in history["eval"]] == [0, 2, 3]
