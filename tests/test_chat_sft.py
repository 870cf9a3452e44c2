"""SFT collation and masked loss (hand-computed), the chat renderer's mask, then chat_sft end to end."""
import math

import pytest
import torch

from nanochat.posttrain import IGNORE_INDEX, sft_collate, sft_loss


def test_collate_hand_made_rows():
    rows = [([1, 2, 3, 4], [0, 0, 1, 1]), ([5, 6], [0, 1])]
    inputs, targets = sft_collate(rows, pad_id=0)
    assert inputs.tolist() == [[1, 2, 3], [5, 0, 0]]
    # the target at position t is ids[t+1], kept only where mask[t+1] == 1; padding is ignored
    assert targets.tolist() == [[-1, 3, 4], [6, -1, -1]]


def test_collate_rejects_ragged_mask():
    with pytest.raises(ValueError):
        sft_collate([([1, 2, 3], [0, 1])], pad_id=0)


def test_loss_uniform_logits_is_log_vocab():
    targets = torch.tensor([[3, IGNORE_INDEX, 1]])
    assert sft_loss(torch.zeros(1, 3, 8), targets).item() == pytest.approx(math.log(8))


def test_loss_is_mean_over_kept_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[1, IGNORE_INDEX, 2, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 6, 0]])
    lsm = torch.log_softmax(logits, -1)
    kept = [(0, 0, 1), (0, 2, 2), (1, 2, 6), (1, 3, 0)]
    want = -sum(lsm[b, t, v] for b, t, v in kept) / len(kept)
    assert sft_loss(logits, targets).item() == pytest.approx(want.item(), rel=1e-6)
    assert sft_loss(logits, targets, reduction="sum").item() == pytest.approx(want.item() * 4, rel=1e-6)


def test_loss_ignores_masked_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 9)
    rows_a = [([1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 1])]
    rows_b = [([1, 7, 8, 4, 5, 6], [0, 0, 0, 1, 1, 1])]   # masked (prompt) tokens changed
    _, ta = sft_collate(rows_a, pad_id=0)
    _, tb = sft_collate(rows_b, pad_id=0)
    assert torch.equal(ta, tb)
    # changing the logits at a position whose target is ignored leaves the loss unchanged
    other = logits.clone()
    other[0, 0] += 100.0
    assert sft_loss(logits, ta).item() == pytest.approx(sft_loss(other, ta).item())


def test_model_sum_loss_ignores_masked_targets():
    """chat_sft trains through the model's own loss, `model(x, y, loss_reduction="sum")` / count, not sft_loss:
    that sum must run over the unmasked positions only."""
    from nanochat.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=50, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    model.init_weights()
    with torch.no_grad():   # init_weights zeroes lm_head (uniform logits): give every position its own logits
        for p in model.parameters():
            if p.dim() == 2 and p.abs().max() == 0:
                p.normal_(0, 0.5)
    model.eval()
    x = torch.randint(0, 50, (2, 6))
    y = torch.tensor([[4, IGNORE_INDEX, 7, 9, IGNORE_INDEX, IGNORE_INDEX],
                      [IGNORE_INDEX, IGNORE_INDEX, 1, 2, 3, 49]])
    with torch.no_grad():
        lsm = torch.log_softmax(model(x), -1)
        kept = (y != IGNORE_INDEX).nonzero().tolist()
        want = -sum(lsm[b, t, y[b, t]] for b, t in kept)
        total = model(x, y, loss_reduction="sum")
        assert total.item() == pytest.approx(want.item(), rel=1e-5)
        # the masked positions would add to the loss if they were counted: the check above can tell
        assert model(x, y.clamp(min=0), loss_reduction="sum").item() > total.item() + 1.0
        # a new token at the last position changes only that position's logits (causal), whose target is masked
        x2 = x.clone()
        x2[0, -1] = (x[0, -1] + 1) % 50
        assert not torch.allclose(torch.log_softmax(model(x2), -1)[0, -1], lsm[0, -1])
        assert model(x2, y, loss_reduction="sum").item() == pytest.approx(total.item(), rel=1e-6)


# ---- the chat renderer's mask on hand-made conversations -----------------------------------------------------------

def test_render_mask_hand_made(tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_tokenizer))
    from nanochat.tokenizer import get_tokenizer
    tok = get_tokenizer()
    s = tok.encode_special
    conv = {"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is "},
                                          {"type": "python", "text": "2+2"},
                                          {"type": "python_output", "text": "4"},
                                          {"type": "text", "text": "4."}]},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "ok"},
    ]}
    ids, mask = tok.render_conversation(conv)
    e = tok.encode
    want = [(tok.get_bos_token_id(), 0), (s("<|user_start|>"), 0), *[(t, 0) for t in e("2+2?")], (s("<|user_end|>"), 0),
            (s("<|assistant_start|>"), 0), *[(t, 1) for t in e("It is ")],
            (s("<|python_start|>"), 1), *[(t, 1) for t in e("2+2")], (s("<|python_end|>"), 1),
            (s("<|output_start|>"), 0), *[(t, 0) for t in e("4")], (s("<|output_end|>"), 0),
            *[(t, 1) for t in e("4.")], (s("<|assistant_end|>"), 1),
            (s("<|user_start|>"), 0), *[(t, 0) for t in e("thanks")], (s("<|user_end|>"), 0),
            (s("<|assistant_start|>"), 0), *[(t, 1) for t in e("ok")], (s("<|assistant_end|>"), 1)]
    assert ids == [t for t, _ in want] and mask == [m for _, m in want]
    # what SFT trains on, decoded: exactly the assistant's words, its tool call and its end-of-turn tokens
    _, targets = sft_collate([(ids, mask)], pad_id=0)
    kept = [t for t in targets[0].tolist() if t != IGNORE_INDEX]
    assert tok.decode(kept) == "It is <|python_start|>2+2<|python_end|>4.<|assistant_end|>ok<|assistant_end|>"


# ---- end to end: the real script, 3 steps at depth 2 on CPU, then an exact resume ----------------------------------

import os
import shutil

from helpers import run_script

SFT_ARGS = ["--num-iterations", 3, "--device-batch-size", 2, "--target-examples-per-step", 4, "--max-seq-len", 128,
            "--eval-every", 2, "--eval-steps", 2, "--save-every", 2, "--eval-max-problems", 4,
            "--device-type", "cpu"]


def test_chat_sft_runs_and_resumes_exactly(tiny_sft_checkpoint, tmp_path):
    for f in ("tokenizer", "mid_checkpoints"):
        shutil.copytree(tiny_sft_checkpoint / f, tmp_path / f)
    env = {"NANOCHAT_BASE_DIR": str(tmp_path)}
    out = run_script("scripts.chat_sft", *SFT_ARGS, env=env).stdout
    assert "2 micro-step(s)" in out and "[before SFT]" in out and "[after SFT]" in out and "val loss" in out
    ckpt = tmp_path / "chatsft_checkpoints" / "d2"
    first = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    for f in ("model_000003.pt", "meta_000003.json", "optim_000003_rank0.pt"):
        os.remove(ckpt / f)
    out = run_script("scripts.chat_sft", *SFT_ARGS, "--resume", env=env).stdout
    assert "resumed from" in out and "at step 2" in out
    again = torch.load(ckpt / "model_000003.pt", map_location="cpu")
    for k in first:
        assert torch.equal(first[k], again[k]), k
    assert (tmp_path / "report" / "chat-sft.md").exists()


def test_two_gloo_ranks_train_like_one_process(tiny_sft_checkpoint, tmp_path):
    """Same examples per step whatever the world size (global example index = step, micro-batch, rank), and DDP
    averages what gradient accumulation averages: two ranks x 1 micro-batch == one process x 2 micro-batches."""
    from helpers import run_torchrun
    args = list(SFT_ARGS)
    args[args.index("--save-every") + 1] = -1
    models = {}
    for world in (1, 2):
        d = tmp_path / f"world{world}"
        for f in ("tokenizer", "mid_checkpoints"):
            shutil.copytree(tiny_sft_checkpoint / f, d / f)
        env = {"NANOCHAT_BASE_DIR": str(d)}
        out = run_torchrun("scripts.chat_sft", *args, env=env, nproc=world)
        assert f"world {world}" in out and f"{2 // world} micro-step(s)" in out, out[-2000:]
        ckpt = d / "chatsft_checkpoints" / "d2"
        models[world] = torch.load(ckpt / "model_000003.pt", map_location="cpu")
        assert os.path.exists(ckpt / f"optim_000003_rank{world - 1}.pt")
    for k, v in models[1].items():
        torch.testing.assert_close(models[2][k], v, rtol=1e-4, atol=1e-5, msg=k)
