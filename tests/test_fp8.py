"""nanochat.fp8: scaling, the three fp8 matmuls against a dequantised reference, and the model conversion.

PyTorch implements torch._scaled_mm on the CPU too, so the same code path runs here as on an H100 (where cuBLAS
does it); the H100 numbers are in benchmarks/RESULTS.md.
"""
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.fp8 import (E4M3, E5M2, Float8Head, Float8Linear, Float8MLP, amax_histories, convert_to_float8,
                          fp8_supported, load_amax_histories, relu2_fp8, relu2_grad_fp8, to_fp8)
from nanochat.gpt import GPT, MLP, GPTConfig, config_for_depth

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
            # q, k, v, attn proj, fc, mlp proj in every block, and the lm_head's loss gradient
            assert convert_to_float8(m) == 6 * config.n_layer + 1
            assert type(m.lm_head) is Float8Head and list(m.state_dict()) == keys
            # the layers fed by the parameter-free RMSNorm get a fixed input scale; the others measure theirs
            bounds = {name.rsplit(".", 1)[-1]: mod.input_bound for name, mod in m.named_modules()
                      if isinstance(mod, Float8Linear)}
            d = config.n_embd
            assert bounds == {"c_q": d ** 0.5, "c_k": d ** 0.5, "c_v": d ** 0.5, "c_fc": d ** 0.5,
                              "c_proj": None}
            # the MLPs train through the fused path; their amax history is outside the state_dict (base_train saves it)
            assert all(type(b.mlp) is Float8MLP and b.mlp.amax.tolist() == [0, 0] for b in m.transformer.h)
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


def _softcap_ce_reference(x, w, targets, softcap):
    """The GPT's own loss path in fp32: logits, softcap, F.cross_entropy(ignore_index=-1)."""
    logits = softcap * torch.tanh((x @ w.t()) / softcap)
    return F.cross_entropy(logits, targets, ignore_index=-1)


@needs_fp8
def test_float8_head_loss_is_exact_and_its_gradient_is_the_dequantised_one():
    torch.manual_seed(0)
    M, K, V, softcap = 48, 32, 80, 15.0
    x = F.rms_norm(torch.randn(M, K), (K,)).requires_grad_(True)
    targets = torch.randint(0, V, (M,))
    targets[:7] = -1                                              # ignored positions (padding)
    layer = nn.Linear(K, V, bias=False)
    nn.init.normal_(layer.weight, std=0.5)                        # logits spread enough to exercise the softcap
    w = layer.weight.detach().clone()
    # a lone layer is the root module, whose name is ""
    assert convert_to_float8(layer, head="", blocks=False, unit_rms_inputs=("",)) == 1
    assert type(layer) is Float8Head and layer.input_bound == K ** 0.5
    loss = layer.softcap_cross_entropy(x, targets, softcap)
    (2.0 * loss).backward()                                       # an upstream gradient other than 1
    # the forward is the ordinary loss
    xr = x.detach().clone().requires_grad_(True)
    wr = w.clone().requires_grad_(True)
    ref = _softcap_ce_reference(xr, wr, targets, softcap)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    # the exact logits gradient respects the bound the layer scales by: |dloss| / n, n = non-ignored tokens
    logits = (xr @ wr.t()).detach().requires_grad_(True)
    (2.0 * F.cross_entropy(softcap * torch.tanh(logits / softcap), targets, ignore_index=-1)).backward()
    n = (targets >= 0).sum()
    bound = 2.0 / n
    assert logits.grad.abs().max() <= bound and logits.grad[:7].abs().max() == 0
    # the backward's matmuls use exactly that gradient, rounded to e5m2 with that bound's scale
    gd = dequant(*to_fp8(logits.grad, E5M2, bound=bound))
    wd = dequant(*to_fp8(w, E4M3))
    xd = dequant(*to_fp8(x.detach(), E4M3, K ** 0.5))
    torch.testing.assert_close(x.grad, gd @ wd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.weight.grad, gd.t() @ xd, rtol=1e-5, atol=1e-6)
    assert x.grad[:7].abs().max() == 0                            # ignored rows pass nothing back
    # and a few percent from the exact fp32 gradients
    (2.0 * ref).backward()
    for got, exact in ((x.grad, xr.grad), (layer.weight.grad, wr.grad)):
        assert ((got - exact).norm() / exact.norm()).item() < 0.08
    # the gradient is made in the forward, before dloss is known: a negative dloss must still flip it exactly
    grads = x.grad.clone(), layer.weight.grad.clone()
    x.grad = layer.weight.grad = None
    (-0.5 * layer.softcap_cross_entropy(x, targets, softcap)).backward()
    torch.testing.assert_close(x.grad, -0.25 * grads[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(layer.weight.grad, -0.25 * grads[1], rtol=1e-6, atol=0)


@needs_fp8
def test_gpt_with_an_fp8_head_reports_the_same_loss_and_logits():
    torch.manual_seed(0)
    config = config_for_depth(2, vocab_size=256, sequence_len=32)
    ref = GPT(config)
    ref.init_weights()
    nn.init.normal_(ref.lm_head.weight, std=0.02)                 # a trained-looking head (init is zeros)
    m = GPT(config)
    m.load_state_dict(ref.state_dict())
    keys = list(m.state_dict())
    assert convert_to_float8(m, head="lm_head", blocks=False) == 1
    assert type(m.lm_head) is Float8Head and m.lm_head.input_bound == config.n_embd ** 0.5
    assert type(m.transformer.h[0].attn.c_q) is nn.Linear and list(m.state_dict()) == keys
    x = torch.randint(0, 256, (4, 32))
    y = torch.roll(x, -1, dims=1)
    y[:, -3:] = -1
    loss, loss_ref = m(x, y), ref(x, y)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    loss.backward()
    loss_ref.backward()
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        if q.grad.norm() > 0:                                     # c_q/k/v/fc get none: zero-initialised c_proj
            assert ((p.grad - q.grad).norm() / q.grad.norm()).item() < 0.08, name
    # evaluation paths are the ordinary ones: per-token losses and logits
    with torch.no_grad():
        torch.testing.assert_close(m(x, y, loss_reduction="none"), ref(x, y, loss_reduction="none"))
        torch.testing.assert_close(m(x), ref(x))
        torch.testing.assert_close(m(x, y), loss_ref)


def test_the_mlp_casts_scale_by_the_previous_calls_amax():
    torch.manual_seed(0)
    h, dh = torch.randn(64, 32), torch.randn(64, 32) * 1e-3
    fmax = torch.finfo(E4M3).max
    hist = torch.zeros(2)                    # [activation, gradient]; 0 = no history yet
    a8, a_inv = relu2_fp8(h, hist)           # the first call measures its own amax...
    amax = F.relu(h).square().max()
    assert a8.float().abs().max() == fmax and hist[0] == amax
    a8b, a_inv_b = relu2_fp8(h, hist)        # ...later ones use the history, with a 2x (power of two) margin:
    assert a8b.float().abs().max() == fmax / 2
    normal = a8.float().abs() >= 2 ** -5     # away from the subnormals the same fp8 codes, one binade lower
    assert torch.equal(dequant(a8b, a_inv_b)[normal], dequant(a8, a_inv)[normal])
    hist[0] = amax / 8                       # a stale history: the top values saturate; nothing becomes NaN
    a8c, _ = relu2_fp8(h, hist)
    assert a8c.float().abs().max() == fmax and not a8c.float().isnan().any() and hist[0] == amax
    g = 2 * F.relu(h) * dh                   # the gradient, in slot 1, in both layouts
    g8, g8t, g_inv = relu2_grad_fp8(dh, h, hist)
    assert hist[1] == g.abs().max() and torch.equal(g8t.float(), g8.t().float())
    assert (dequant(g8, g_inv) - g).abs().max() <= 0.125 * g.abs().max()


@needs_fp8
def test_the_fp8_mlp_under_torch_compile_updates_its_history_and_matches_eager():
    torch.manual_seed(0)
    mlp = MLP(GPTConfig(n_embd=64, n_head=4, n_kv_head=4))
    nn.init.normal_(mlp.c_proj.weight, std=0.05)
    convert_to_float8(mlp)
    x = F.rms_norm(torch.randn(2, 16, 64), (64,))
    grads = []
    for fn in (mlp, torch.compile(mlp)):
        mlp.amax.zero_()
        for p in mlp.parameters():
            p.grad = None
        fn(x).square().sum().backward()
        assert (mlp.amax > 0).all()          # the compiled backward wrote the buffer, as eager does
        grads.append([p.grad for p in mlp.parameters()])
    for eager, compiled in zip(*grads):
        assert ((eager - compiled).norm() / eager.norm()).item() < 1e-2


def test_amax_histories_round_trip_for_a_resumed_run():
    config = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    a, b = GPT(config), GPT(config)
    convert_to_float8(a)
    convert_to_float8(b)
    for i, m in enumerate(m for m in a.modules() if isinstance(m, Float8MLP)):
        m.amax.copy_(torch.tensor([1.5 + i, 2.0 ** -20]))            # any float32 comes back bit for bit
    saved = amax_histories(a)
    assert sorted(saved) == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    load_amax_histories(b, saved)
    assert all(torch.equal(x.amax, y.amax) for x, y in zip(a.modules(), b.modules()) if isinstance(x, Float8MLP))
    with pytest.raises(ValueError, match="for 1 MLPs, this model has 2"):
        load_amax_histories(b, {"transformer.h.0.mlp": saved["transformer.h.0.mlp"]})


# The fp8 Triton kernels against their PyTorch paths, on the same inputs (device set by the caller)
KERNEL_CHECKS = textwrap.dedent(r"""
    import os, torch
    from nanochat import fp8 as F8

    def ce_both(device):
        # the loss op: each row's logsumexp and the fp8 logits gradient, kernel vs PyTorch, on the same logits
        torch.manual_seed(0)
        M, V, cap = 200, 2500, 15.0                      # not multiples of the kernel's row blocks and loads
        z = (torch.randn(M, V, device=device) * 20).bfloat16()    # many saturated softcaps
        t = torch.randint(0, V, (M,), device=device)
        t[:5] = -1
        out = []
        for off in ("1", "0"):
            os.environ["NANOCHAT_NO_TRITON"] = off
            out.append(F8.softcap_ce_fp8(z, t, cap))
        (lse_r, ref, ref_t), (lse_k, tri, tri_t) = out
        assert tri.dtype == F8.E5M2 and tri.shape == (M, V) and tri_t.shape == (V, M)
        assert torch.equal(tri_t.view(torch.uint8), tri.t().view(torch.uint8)), "the two layouts disagree"
        assert torch.equal(ref_t.view(torch.uint8), ref.t().view(torch.uint8))
        assert (tri[:5].float() == 0).all()              # ignored rows
        exact = torch.logsumexp(cap * torch.tanh(z.double() / cap), -1)
        lse_err = [(o.double() - exact).abs().max().item() for o in (lse_r, lse_k)]
        return ref.view(torch.uint8).int(), tri.view(torch.uint8).int(), lse_err

    def relu2_both(device):
        # the MLP's two delayed-scale casts, forward (relu(h)^2, e4m3) and backward (dh * 2 relu(h), e5m2), with an
        # empty history (the kernel measures first), a usable one, and a stale one (a quarter of the amax: saturates)
        torch.manual_seed(2)
        h = torch.randn(300, 176, device=device).bfloat16()              # 52,800 values: not a multiple of a block
        dh = (torch.randn(300, 176, device=device) * 1e-3).bfloat16()
        codes = []
        for frac in (0.0, 1.4, 0.25):
            start = torch.tensor([1.0, 1.0], device=device)
            F8.relu2_fp8(h, start)
            F8.relu2_grad_fp8(dh, h, start)                              # start := the true amaxes
            start *= frac
            out = []
            for off in ("1", "0"):
                os.environ["NANOCHAT_NO_TRITON"] = off
                hist = start.clone()
                a8, a_inv = F8.relu2_fp8(h, hist)
                g8, g8t, g_inv = F8.relu2_grad_fp8(dh, h, hist)
                assert torch.equal(g8t.view(torch.uint8), g8.t().contiguous().view(torch.uint8))
                out.append((a8, g8, a_inv, g_inv, hist))
            (a_r, g_r, ai_r, gi_r, h_r), (a_t, g_t, ai_t, gi_t, h_t) = out
            torch.testing.assert_close(torch.stack([ai_t, gi_t]), torch.stack([ai_r, gi_r]), rtol=1e-6, atol=0)
            torch.testing.assert_close(h_t, h_r, rtol=1e-6, atol=0)       # both record this call's amaxes
            codes += [(r.view(torch.uint8).int(), t.view(torch.uint8).int(), r.dtype) for r, t in ((a_r, a_t), (g_r, g_t))]
        return codes

    def assert_interpreter_rounding(ref, tri, fmt):
        # Triton's interpreter (not the GPU) mis-rounds to fp8 where rounding up would cross a power of two: it
        # turns 1.9 into 1.0 where PyTorch and the GPU give 2.0. So where the two differ, the interpreter's value
        # must be smaller in magnitude, by at most half (the smallest subnormal, code 1, may become 0), or one code
        # away: it divides in float64, so a scale may differ from the GPU's in the last bit.
        diff = ref != tri
        smallest = torch.ones((), dtype=torch.uint8).view(fmt).float()
        r, s = (c[diff].to(torch.uint8).view(fmt).float().abs() for c in (ref, tri))
        ok = ((s < r) & (s >= r / 2 - smallest)) | ((ref - tri)[diff].abs() == 1)
        assert ok.all(), (r[~ok][:8], s[~ok][:8])
        assert diff.float().mean() < 0.1, diff.float().mean()
""")


def test_ce_kernel_matches_its_reference_under_triton_interpreter():
    child = KERNEL_CHECKS + textwrap.dedent("""
        ref, tri, (ref_err, tri_err) = ce_both("cpu")
        assert_interpreter_rounding(ref, tri, F8.E5M2)
        assert ref_err < 1e-5 and tri_err < 1e-5, (ref_err, tri_err)
        print("ok")
    """)
    from helpers import run_under_triton_interpreter
    run_under_triton_interpreter(child, timeout=300)


def _kernel_checks_on_cuda():
    """KERNEL_CHECKS's functions, to run on the GPU; skips where there is none."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (the interpreter test above covers the kernel code on CPU)")
    scope = {}
    exec(KERNEL_CHECKS, scope)
    return scope


def test_ce_kernel_on_cuda_matches_its_reference():
    ref, tri, (ref_err, tri_err) = _kernel_checks_on_cuda()["ce_both"]("cuda")
    diff = ref != tri
    # the GPU's exp is approximate: a value on a rounding boundary may land one code away, rarely
    assert ((ref - tri).abs()[diff] == 1).all() and diff.float().mean() < 0.01, diff.float().mean()
    assert ref_err < 1e-5 and tri_err < 1e-5, (ref_err, tri_err)      # ~5 fp32 ulps of a logsumexp near 20


def test_relu2_kernels_match_their_reference_under_triton_interpreter():
    from helpers import run_under_triton_interpreter
    run_under_triton_interpreter(KERNEL_CHECKS + textwrap.dedent("""
        for ref, tri, fmt in relu2_both("cpu"):
            assert_interpreter_rounding(ref, tri, fmt)
        print("ok")
    """), timeout=300)


def test_relu2_kernels_on_cuda_give_the_reference_codes():
    for ref, tri, fmt in _kernel_checks_on_cuda()["relu2_both"]("cuda"):
        assert torch.equal(ref, tri), ((ref != tri).float().mean(), fmt)   # products only: the same bits
