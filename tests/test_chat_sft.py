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
