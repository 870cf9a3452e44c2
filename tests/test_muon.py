"""Muon: Newton-Schulz orthogonalises, the update is near-orthogonal, and 2 gloo ranks == 1 process."""
import json
import os

import pytest
import torch

from helpers import run_torchrun
from nanochat.gpt import GPT, config_for_depth
from nanochat.muon import Muon, aspect_scale, setup_optimizers, zeropower_via_newtonschulz5

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (128, 48)])
def test_newton_schulz_pushes_singular_values_to_one(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))   # spread over 2 decades
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    X = zeropower_via_newtonschulz5(G, steps=5).float()
    mapped = torch.diagonal(U.T @ X @ Vh.T)          # what each singular direction of G became
    big = S > S.norm() / 100                          # 5 steps lift anything above ~1% of the Frobenius norm
    assert S.max() / S.min() > 10 and big.sum() >= S.numel() // 2
    assert mapped[big].min() > 0.6 and mapped[big].max() < 1.25, mapped
    assert torch.linalg.svdvals(X).max() < 1.25       # and nothing overshoots


def test_newton_schulz_converges_with_more_steps():
    torch.manual_seed(1)
    G = torch.randn(48, 48)
    errs = []
    for steps in (1, 2, 3, 5):
        s = torch.linalg.svdvals(zeropower_via_newtonschulz5(G, steps=steps, dtype=torch.float32))
        errs.append((s - 1).abs().max().item())
    assert errs[0] > errs[-1] and errs[-1] < 0.35, errs
    # it keeps the singular vectors: U V^T is the exact answer up to the singular-value wobble
    U, _, Vh = torch.linalg.svd(G)
    X = zeropower_via_newtonschulz5(G, steps=5, dtype=torch.float32)
    cos = (X * (U @ Vh)).sum() / (X.norm() * (U @ Vh).norm())
    assert cos > 0.97


def test_batched_equals_one_by_one():
    torch.manual_seed(2)
    G = torch.randn(3, 32, 64)
    batched = zeropower_via_newtonschulz5(G)
    single = torch.stack([zeropower_via_newtonschulz5(g) for g in G])
    torch.testing.assert_close(batched.float(), single.float(), atol=1e-2, rtol=0)


def test_muon_update_is_near_orthogonal_and_scaled():
    torch.manual_seed(3)
    p = torch.nn.Parameter(torch.randn(96, 32))
    opt = Muon([p], lr=0.1, momentum=0.0, nesterov=False)
    before = p.detach().clone()
    p.grad = torch.randn(96, 32)
    opt.step()
    delta = (before - p.detach()) / (0.1 * aspect_scale(p.shape))
    s = torch.linalg.svdvals(delta)
    assert aspect_scale(p.shape) == pytest.approx(3 ** 0.5)
    assert s.min() > 0.5 and s.max() < 1.3
    # with momentum=0 the update is exactly -lr * scale * NS(grad) (fp32 Newton-Schulz on CPU)
    expected = zeropower_via_newtonschulz5(p.grad, dtype=torch.float32)
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-4)


def test_setup_optimizers_groups_and_lrs():
    model = GPT(config_for_depth(2, vocab_size=512, sequence_len=64))
    model.init_weights()
    adamw, muon = setup_optimizers(model, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02)
    scale = (128 / 768) ** -0.5
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([0.004 * scale, 0.2 * scale])
    n_muon = sum(p.numel() for g in muon.param_groups for p in g["params"])
    n_adam = sum(p.numel() for g in adamw.param_groups for p in g["params"])
    assert n_muon + n_adam == sum(p.numel() for p in model.parameters())
    assert n_adam == model.transformer.wte.weight.numel() + model.lm_head.weight.numel()
    assert all(g["initial_lr"] == g["lr"] for o in (adamw, muon) for g in o.param_groups)
    assert all(len({tuple(p.shape) for p in g["params"]}) == 1 for g in muon.param_groups)  # one shape per group


WORKER = r"""
import json, sys, torch, torch.distributed as dist
from nanochat.common import compute_init
from nanochat.muon import DistMuon, DistAdamW, Muon
ddp, rank, _, world, _ = compute_init("cpu")
def make():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s)) for s in [(16, 16), (16, 16), (16, 16), (48, 16), (16, 48)]]
def grads(step, r):
    g = torch.Generator().manual_seed(100 * step + r)
    return [torch.randn(p.shape, generator=g) for p in make()]
ps = make()
opt = DistMuon(ps, lr=0.05); adam = DistAdamW([torch.nn.Parameter(torch.ones(8, 4))], lr=0.1)
for step in range(3):
    for p, g in zip(ps, grads(step, rank)):
        p.grad = g.clone()
    adam.param_groups[0]["params"][0].grad = torch.full((8, 4), float(rank))
    opt.step(); adam.step()
if rank == 0:
    ref = make(); ropt = Muon(ref, lr=0.05)
    for step in range(3):
        gs = [grads(step, r) for r in range(world)]
        for i, p in enumerate(ref):
            p.grad = sum(g[i] for g in gs) / world     # one process, whole batch = mean of the ranks' grads
        ropt.step()
    diff = max((a - b).abs().max().item() for a, b in zip(ps, ref))
    same = all(torch.equal(a, b) for a, b in zip(ps, ref))
    json.dump({"diff": diff, "bitwise": same, "adam": adam.param_groups[0]["params"][0].detach().tolist()},
              open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def test_distmuon_two_gloo_ranks_equal_one_process(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "out.json"
    script.write_text(WORKER)
    run_torchrun(script, out, timeout=180)
    res = json.loads(out.read_text())
    assert res["diff"] < 1e-6, res                   # same update as one process on the mean gradient
    assert res["bitwise"]                             # (on CPU it is in fact bit-for-bit equal)
    # AdamW saw grads 0 and 1 on the two ranks: mean 0.5, identical on both -> first step moves by lr
    assert abs(res["adam"][0][0] - (1 - 3 * 0.1)) < 0.02
