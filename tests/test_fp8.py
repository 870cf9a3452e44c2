"""nanochat.fp8: scaling, the three fp8 matmuls against a dequantised reference, and the model conversion.

PyTorch implements torch._scaled_mm on the CPU too, so the same code path runs here as on an H100 (where cuBLAS
does it); the H100 numbers are in benchmarks/RESULTS.md.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.fp8 import E4M3, E5M2, Float8Linear, convert_to_float8, fp8_supported, to_fp8
from nanochat.gpt import GPT, config_for_depth

needs_fp8 = pytest.mark.skipif(not fp8_supported("cpu"), reason="this PyTorch build has no CPU torch._scaled_mm")


def dequant(x8, inv):
    return x8.float() * inv


def test_to_fp8_maps_the_largest_value_to_the_top_of_the_range():
    x = torch.randn(64, 48) * 1e-3
    for dtype in (E4M3, E5M2):
        x8, inv = to_fp8(x, dtype)
        assert x8.dtype == dtype
        assert x8.float().abs().max() == torch.finfo(dtype).max
        # round-trip error is that of 3 (e4m3) or 2 (e5m2) mantissa bits, relative to each value
        rel = ((dequant(x8, inv) - x).abs() / x.abs().clamp(min=1e-6)).median()
        assert rel < (2 ** -4 if dtype == E4M3 else 2 ** -3)
    # an all-zero tensor (a zero-initialised projection) gives zeros and a finite scale, not NaN
    z8, zinv = to_fp8(torch.zeros(16, 16), E4M3)
    assert torch.isfinite(zinv) and (z8.float() == 0).all()


def test_a_known_bound_replaces_the_amax_and_rmsnorm_outputs_respect_sqrt_k():
    K = 768
    # the worst case for a row of RMS 1: all its mass in one element, which becomes exactly sqrt(K)
    rows = torch.zeros(3, K)
    rows[0, 5] = 7.0
    rows[1] = torch.randn(K)
    rows[2, :2] = torch.tensor([1e3, -1e3])
    normed = F.rms_norm(rows, (K,))
    assert normed.abs().max() <= K ** 0.5
    x8, inv = to_fp8(normed, E4M3, bound=K ** 0.5)
    # the scale comes from the bound, not the data: sqrt(K) maps to the top of e4m3, nothing saturates
    torch.testing.assert_close(inv, torch.tensor(K ** 0.5 / 448.0), rtol=1e-6, atol=0)
    assert x8.float().abs().max() <= 448.0
    torch.testing.assert_close(dequant(x8, inv), normed, rtol=2 ** -3, atol=K ** 0.5 / 448 * 2 ** -6)
    # a value beyond a (wrong) bound saturates at the format's max instead of becoming NaN
    big8, _ = to_fp8(torch.tensor([1.0, 100.0]), E4M3, bound=1.0)
    assert big8.float().tolist() == [448.0, 448.0]


@needs_fp8
@pytest.mark.parametrize("bound", [None, 48 ** 0.5], ids=["measured-scale", "known-bound"])
def test_float8_linear_equals_the_dequantised_reference(bound):
    torch.manual_seed(0)
    M, K, N = 64, 48, 32
    x = torch.randn(M, K)
    if bound is not None:
        x = F.rms_norm(x, (K,))       # what a layer with a known bound reads
    x.requires_grad_(True)
    layer = nn.Linear(K, N, bias=False)
    ref_w = layer.weight.detach().clone()
    assert convert_to_float8(layer, skip=()) == 1 and type(layer) is Float8Linear
    layer.input_bound = bound
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    # the same numbers, rounded the way the layer rounds them, multiplied in fp32
    xd = dequant(*to_fp8(x.detach(), E4M3, bound))
    wd = dequant(*to_fp8(ref_w, E4M3))
    gd = dequant(*to_fp8(g, E5M2))
    torch.testing.assert_close(y, xd @ wd.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, gd @ wd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, gd.t() @ xd, rtol=1e-5, atol=1e-5)
    # and close to the exact fp32 layer: a few percent, the price of 3 and 2 mantissa bits
    exact = x.detach() @ ref_w.t()
    assert ((y - exact).norm() / exact.norm()).item() < 0.08


@needs_fp8
def test_float8_linear_keeps_batch_dims_and_runs_plain_without_grad():
    torch.manual_seed(0)
    layer = nn.Linear(32, 16, bias=False)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        exact = layer(x)
    convert_to_float8(layer, skip=())
    assert layer(x).shape == (2, 5, 16)
    with torch.no_grad():                    # evaluation and sampling use the ordinary matmul
        torch.testing.assert_close(layer(x), exact, rtol=0, atol=0)


def test_convert_to_float8_rejects_what_cublas_cannot_multiply():
    with pytest.raises(ValueError, match="divisible by 16"):
        convert_to_float8(nn.Sequential(nn.Linear(24, 32, bias=False)))
    with pytest.raises(ValueError, match="no bias"):
        convert_to_float8(nn.Sequential(nn.Linear(32, 32)))


@needs_fp8
def test_converted_gpt_keeps_its_parameters_and_trains_like_the_fp32_one():
    torch.manual_seed(0)
    config = config_for_depth(2, vocab_size=256, sequence_len=32)
    models = []
    for fp8 in (False, True):
        torch.manual_seed(0)
        m = GPT(config)
        m.init_weights()
        if fp8:
            keys = list(m.state_dict())
            assert convert_to_float8(m) == 6 * config.n_layer          # q, k, v, attn proj, fc, mlp proj
            assert type(m.lm_head) is nn.Linear and list(m.state_dict()) == keys
            # the layers fed by the parameter-free RMSNorm get a fixed input scale; the others measure theirs
            bounds = {name.rsplit(".", 1)[-1]: mod.input_bound for name, mod in m.named_modules()
                      if isinstance(mod, Float8Linear)}
            d = config.n_embd
            assert bounds == {"c_q": d ** 0.5, "c_k": d ** 0.5, "c_v": d ** 0.5, "c_fc": d ** 0.5,
                              "c_proj": None}
        models.append(m)
    x = torch.randint(0, 256, (4, 32))
    y = torch.roll(x, -1, dims=1)                                         # learnable: predict the next id
    losses = []
    for m in models:
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        for _ in range(30):
            loss = m(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    first = torch.log(torch.tensor(256.0)).item()
    assert losses[1] < first - 1.0, losses             # fp8 learns...
    assert abs(losses[1] - losses[0]) < 0.25 * losses[0], losses   # ...about as fast as fp32
