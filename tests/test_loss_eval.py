"""Bits per byte on toy models whose answer we can compute by hand."""
import math
import re
import textwrap

import torch

from helpers import REPO_ROOT, run_torchrun
from nanochat.loss_eval import evaluate_bpb


class Fixed(torch.nn.Module):
    """A 'model' that predicts the same distribution `probs` at every position."""
    def __init__(self, probs):
        super().__init__()
        self.logp = torch.log(torch.tensor(probs, dtype=torch.float64))

    def forward(self, x, targets, loss_reduction="mean"):
        loss = -self.logp[targets.clamp(min=0)] * (targets >= 0)
        return loss if loss_reduction == "none" else loss.sum() / (targets >= 0).sum()


def batches_of(ys):
    for y in ys:
        yield torch.zeros_like(y), y, {"state": 0}      # dataloader-style 3-tuples work too


def test_uniform_one_byte_tokens_is_log2_vocab():
    # uniform over 4 one-byte tokens: 2 bits per token = 2 bits per byte
    model = Fixed([0.25] * 4)
    y = torch.randint(0, 4, (3, 16), generator=torch.Generator().manual_seed(0))
    bpb = evaluate_bpb(model, batches_of([y]), 1, torch.ones(4, dtype=torch.int32))   # int32, as tok_train saves
    assert math.isclose(bpb, 2.0, rel_tol=1e-9)


def test_hand_computed_with_specials_and_ignored():
    probs = [0.5, 0.25, 0.125, 0.125]      # token 3 is a special token (0 bytes)
    token_bytes = torch.tensor([1, 2, 3, 0])
    y = torch.tensor([[0, 1, 2, 3, -1], [2, 2, 0, -1, -1]])
    bits = {0: 1.0, 1: 2.0, 2: 3.0}        # -log2 p
    counted = [0, 1, 2, 2, 2, 0]
    want = sum(bits[t] for t in counted) / sum(token_bytes[t].item() for t in counted)
    got = evaluate_bpb(Fixed(probs), batches_of([y[:1], y[1:]]), 2, token_bytes)
    assert math.isclose(got, want, rel_tol=1e-9)


def test_vocab_invariance():
    # the same text as 4 one-byte tokens or as 2 two-byte tokens, with the same total probability
    one = evaluate_bpb(Fixed([0.5, 0.5]), batches_of([torch.tensor([[0, 1, 0, 1]])]), 1, torch.tensor([1, 1]))
    two = evaluate_bpb(Fixed([0.25, 0.75]), batches_of([torch.tensor([[0, 0]])]), 1, torch.tensor([2, 2]))
    assert math.isclose(one, 1.0) and math.isclose(two, 1.0)


def test_real_gpt_matches_mean_loss():
    from nanochat.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=64, n_layer=1, n_head=1, n_kv_head=1, n_embd=32))
    model.init_weights()
    model.eval()
    x = torch.randint(0, 64, (2, 32))
    y = torch.randint(0, 64, (2, 32))
    loss = model(x, y).item()
    bpb = evaluate_bpb(model, iter([(x, y)]), 1, torch.ones(64, dtype=torch.long))
    assert math.isclose(bpb, loss / math.log(2), rel_tol=1e-4)


def test_distributed_sum_over_two_ranks(tmp_path):
    """Two gloo ranks, each with half of the data, agree with one process seeing all of it."""
    script = tmp_path / "ddp_bpb.py"
    script.write_text(textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist
        sys.path.insert(0, os.environ["REPO"]); sys.path.insert(0, os.path.join(os.environ["REPO"], "tests"))
        from test_loss_eval import Fixed
        from nanochat.loss_eval import evaluate_bpb
        dist.init_process_group("gloo")
        r = dist.get_rank()
        y = torch.tensor([[0, 1, 2, 2]]) if r == 0 else torch.tensor([[1, 1, -1, 3]])
        bpb = evaluate_bpb(Fixed([0.5, 0.25, 0.125, 0.125]), iter([(y, y)]), 1, torch.tensor([2, 2, 3, 0]))
        print(f"RANK{r} {bpb:.12f}")
        dist.destroy_process_group()
    """))
    out = run_torchrun(script, env={"REPO": REPO_ROOT}, timeout=120)
    values = {f"RANK{r}": float(v) for r, v in re.findall(r"RANK(\d) (\d+\.\d{12})", out)}
    want = (1 + 2 + 3 + 3 + 2 + 2) / (2 + 2 + 3 + 3 + 2 + 2)    # pooled bits / pooled bytes, not a mean of ranks
    assert set(values) == {"RANK0", "RANK1"}
    assert all(math.isclose(v, want, rel_tol=1e-9) for v in values.values())
