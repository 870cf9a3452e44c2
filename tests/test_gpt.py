"""Tests for nanochat.gpt: shapes, causality, KV cache == full forward, sizes, FLOPs, init, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.gpt import (GPT, GPTConfig, CausalSelfAttention, apply_rotary_emb, config_for_depth,
                          count_params, norm, rotary_cos_sin)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is much faster than a contended pool (restored after each test)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ListKVCache:
    """Minimal cache with the interface gpt.py expects (the real one is nanochat.engine.KVCache)."""

    def __init__(self, n_layer):
        self.k, self.v, self.pos, self.n_layer = [None] * n_layer, [None] * n_layer, 0, n_layer

    def get_pos(self):
        return self.pos

    def insert_kv(self, layer_idx, k, v):
        old_k, old_v = self.k[layer_idx], self.v[layer_idx]
        self.k[layer_idx] = k if old_k is None else torch.cat([old_k, k], dim=2)
        self.v[layer_idx] = v if old_v is None else torch.cat([old_v, v], dim=2)
        if layer_idx == self.n_layer - 1:
            self.pos += k.size(2)
        return self.k[layer_idx], self.v[layer_idx]


def make_cache(kind, cfg, batch_size, seq_len):
    if kind == "list":
        return ListKVCache(cfg.n_layer)
    engine = pytest.importorskip("nanochat.engine", reason="nanochat.engine not written yet")
    try:
        return engine.KVCache(batch_size=batch_size, num_heads=cfg.n_kv_head, seq_len=seq_len,
                              head_dim=cfg.head_dim, num_layers=cfg.n_layer)
    except TypeError as e:  # the engine owner chose another constructor; the list cache still covers gpt.py
        pytest.skip(f"engine.KVCache constructor differs from the upstream one: {e}")


def tiny_config(n_kv_head=4, **kw):
    base = dict(sequence_len=64, vocab_size=256, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=128)
    return GPTConfig(**{**base, **kw})


def tiny_model(cfg=None, device="cpu", randomize=True, seed=0):
    """A tiny model; `randomize` replaces the zero-init projections so every path carries signal."""
    torch.manual_seed(seed)
    cfg = cfg or tiny_config()
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.1)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# config

def test_config_rejects_kv_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=6, n_kv_head=4, n_embd=768)
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=6, n_kv_head=0, n_embd=768)


def test_config_for_depth_sizes():
    c = config_for_depth(20, vocab_size=65000)
    assert (c.n_embd, c.n_head, c.head_dim, c.n_layer, c.vocab_size) == (1280, 10, 128, 20, 65024)
    assert config_for_depth(32).n_head == 16 and config_for_depth(26).n_embd == 1664


@pytest.mark.parametrize("depth,total", [(20, 560_988_160), (26, 1_081_999_360), (32, 1_879_048_192)])
def test_param_counts_match_formula_and_module(depth, total):
    cfg = config_for_depth(depth)
    d, V, L = cfg.n_embd, cfg.vocab_size, depth
    # hand formula: two V x d tables + per layer 4 d^2 (attention) + 8 d^2 (MLP); e.g. d20: 2*65536*1280 + 20*12*1280^2
    assert 2 * V * d + L * 12 * d * d == total
    assert count_params(cfg)["total"] == total
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == count_params(cfg)


def test_param_counts_gqa():
    cfg = tiny_config(n_kv_head=1)
    d, kv = 128, 32   # one kv head of head_dim 32
    assert count_params(cfg)["attn"] == 2 * (2 * d * d + 2 * d * kv)
    assert tiny_model(cfg).num_params() == count_params(cfg)


def test_estimate_flops_hand_count():
    cfg = tiny_config()
    model = tiny_model(cfg)
    d, L, T, V = 128, 2, 64, 256
    matmul_params = V * d + L * 12 * d * d          # lm_head + blocks (the wte lookup costs no FLOPs)
    attention = 12 * L * 4 * 32 * T                  # 12 * layers * heads * head_dim * T
    assert model.estimate_flops() == 6 * matmul_params + attention == 6 * 425_984 + 196_608


# ---------------------------------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("device", DEVICES)
def test_shapes_and_loss_reductions(device):
    model = tiny_model(device=device)
    x = torch.randint(0, 256, (3, 17), device=device)
    y = torch.randint(0, 256, (3, 17), device=device)
    y[0, :5] = -1
    logits = model(x)
    assert logits.shape == (3, 17, 256) and logits.dtype == torch.float32
    assert logits.abs().max() <= GPT.softcap
    per_tok = model(x, y, loss_reduction="none")
    assert per_tok.shape == (3, 17) and torch.all(per_tok[0, :5] == 0)
    ref = F.cross_entropy(logits.view(-1, 256), y.view(-1), ignore_index=-1, reduction="none").view(3, 17)
    torch.testing.assert_close(per_tok, ref)
    torch.testing.assert_close(model(x, y, loss_reduction="sum"), ref.sum())
    torch.testing.assert_close(model(x, y), ref.sum() / (y != -1).sum())


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_causality(n_kv_head):
    model = tiny_model(tiny_config(n_kv_head))
    x = torch.randint(0, 256, (2, 40))
    base = model(x)
    for t in (0, 13, 39):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % 256
        out = model(x2)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t], base[:, t])


def reference_attention(attn: CausalSelfAttention, x, cos, sin):
    """Slow, explicit attention: repeated K/V heads, masked softmax(q k^T / sqrt(d)) v."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    q = norm(apply_rotary_emb(attn.c_q(x).view(B, T, H, D), cos, sin)).transpose(1, 2)
    k = norm(apply_rotary_emb(attn.c_k(x).view(B, T, Hkv, D), cos, sin)).transpose(1, 2)
    v = attn.c_v(x).view(B, T, Hkv, D).transpose(1, 2)
    k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_attention_matches_explicit_reference(n_kv_head):
    model = tiny_model(tiny_config(n_kv_head))
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 24, 128)
    cos, sin = model.cos[:, :24], model.sin[:, :24]
    torch.testing.assert_close(attn(x, (cos, sin)), reference_attention(attn, x, cos, sin), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_kind", ["list", "engine"])
@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
def test_kv_cache_prefill_and_decode_match_full_forward(n_kv_head, cache_kind):
    cfg = tiny_config(n_kv_head)
    model = tiny_model(cfg)
    x = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        full = model(x)
        cache = make_cache(cache_kind, cfg, batch_size=2, seq_len=30)
        pieces = [model(x[:, :11], kv_cache=cache)]                 # prefill
        pieces.append(model(x[:, 11:16], kv_cache=cache))           # a chunk after a prefix
        pieces += [model(x[:, t:t + 1], kv_cache=cache) for t in range(16, 30)]   # decode one by one
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_rotary_is_relative():
    """q_m . k_n after rotation depends only on m - n."""
    torch.manual_seed(0)
    cos, sin = rotary_cos_sin(64, 32)
    q, k = torch.randn(32), torch.randn(32)
    rot = lambda v, p: apply_rotary_emb(v.view(1, 1, 1, 32), cos[:, p:p + 1], sin[:, p:p + 1]).view(32)
    dots = [rot(q, m) @ rot(k, m - 5) for m in (5, 17, 40, 63)]
    torch.testing.assert_close(torch.stack(dots), dots[0].expand(4), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rot(q, 0), q)                        # position 0 is the identity
    torch.testing.assert_close(rot(q, 37).norm(), q.norm())          # a rotation keeps the length


def test_qk_norm_commutes_with_rotary():
    torch.manual_seed(0)
    cos, sin = rotary_cos_sin(16, 32)
    x = torch.randn(2, 16, 3, 32)
    torch.testing.assert_close(norm(apply_rotary_emb(x, cos, sin)), apply_rotary_emb(norm(x), cos, sin))


# ---------------------------------------------------------------------------------------------------------------
# init and training

@pytest.mark.parametrize("device", DEVICES)
def test_meta_init_is_finite_and_loss_is_ln_vocab(device):
    cfg = tiny_config(vocab_size=512)
    model = tiny_model(cfg, device=device, randomize=False)
    assert not any(p.is_meta for p in model.parameters()) and not model.cos.is_meta
    torch.testing.assert_close(model.cos, rotary_cos_sin(cfg.sequence_len * 10, cfg.head_dim, device=device)[0])
    for p in model.parameters():
        assert torch.isfinite(p).all()
    assert model.lm_head.weight.abs().sum() == 0
    assert model.transformer.wte.weight.std().item() == pytest.approx(1.0, abs=0.02)
    x = torch.randint(0, 512, (4, 64), device=device)
    loss = model(x, x)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(512), abs=1e-4)


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = tiny_model(randomize=False).train()
    x = torch.randint(0, 256, (4, 32))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(256), abs=1e-4)
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradients_reach_every_parameter_by_the_third_step():
    """Zero-init output layers delay, but never block, learning: step 0 trains only the lm_head (the residual
    stream sees no gradient through a zero lm_head), step 1 adds the embedding and the zero-init projections,
    and from step 2 on every parameter has a gradient."""
    torch.manual_seed(0)
    model = tiny_model(randomize=False).train()
    x = torch.randint(0, 256, (2, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    live = []
    for _ in range(3):
        opt.zero_grad()
        model(x, torch.roll(x, -1, 1)).backward()
        live.append({n for n, p in model.named_parameters() if p.grad.abs().sum() > 0})
        opt.step()
    names = {n for n, _ in model.named_parameters()}
    assert live[0] == {"lm_head.weight"}
    assert live[1] == {n for n in names if n.endswith("c_proj.weight")} | {"lm_head.weight", "transformer.wte.weight"}
    assert live[2] == names


# ---------------------------------------------------------------------------------------------------------------
# generation and bad input

def test_generate_greedy_matches_argmax_and_seeded_sampling_repeats():
    model = tiny_model()
    prompt = [1, 2, 3, 4]
    out = list(model.generate(prompt, max_tokens=6, temperature=0.0))
    ids = list(prompt)
    for _ in range(6):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[4:]
    a = list(model.generate(prompt, 8, temperature=1.0, top_k=5, seed=7))
    assert a == list(model.generate(prompt, 8, temperature=1.0, top_k=5, seed=7))
    assert all(0 <= t < 256 for t in a)


def test_bad_token_ids_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[1, 2, 256]]))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[-1, 2]]))


def test_too_long_sequence_raises():
    model = tiny_model()
    model(torch.zeros(1, 64 * 2, dtype=torch.long))   # past sequence_len but inside the RoPE tables: allowed
    with pytest.raises(ValueError, match="longer than the rotary tables"):
        model(torch.zeros(1, 64 * 10 + 1, dtype=torch.long))
    cache = ListKVCache(2)
    cache.pos = 64 * 10
    with pytest.raises(ValueError, match="longer than the rotary tables"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_residual_stream_follows_autocast():
    # under autocast the blocks read and write a stream in the compute dtype (the GPU's bf16 speed lever); without
    # it, fp32; the parameters stay fp32 either way
    model = tiny_model()
    seen = []
    for block in model.transformer.h:
        block.register_forward_hook(lambda m, inp, out: seen.append((inp[0].dtype, out.dtype)))
    x = torch.randint(0, 256, (2, 16))
    model(x, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, x)
    n = len(model.transformer.h)
    assert seen[:n] == [(torch.float32, torch.float32)] * n
    assert seen[n:] == [(torch.bfloat16, torch.bfloat16)] * n
    assert loss.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_and_compile():
    model = tiny_model(device="cuda")
    x = torch.randint(0, 256, (2, 64), device="cuda")
    ref = model(x, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, x)
        compiled = torch.compile(model, dynamic=False)
        loss_c = compiled(x, x)
    assert abs(loss.item() - ref.item()) < 0.05 and abs(loss_c.item() - loss.item()) < 0.05


def test_setup_optimizers_covers_every_parameter_once():
    pytest.importorskip("nanochat.muon", reason="nanochat.muon not written yet")
    model = tiny_model(randomize=False)
    optimizers = model.setup_optimizers()
    ids = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
