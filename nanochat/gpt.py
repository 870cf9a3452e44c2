"""
The GPT model of the series, and the one place where sizes come from.

Design choices (as in nanochat, October 2025):
- one dial, `depth`: width = 64 * depth, head_dim = 128, heads = ceil(width / 128)
- vocabulary padded up to a multiple of 64 (tensor-core friendly shapes)
- token embedding only: no learned positional embedding; positions enter through rotary embeddings
  (RoPE, base 10,000, cos/sin tables precomputed once for 10x sequence_len)
- pre-norm residual blocks, x + attn(norm(x)) and x + mlp(norm(x)), with a parameter-free RMSNorm
  (F.rms_norm, no gain), also applied to the embedding output and before the lm_head
- QK-norm: queries and keys are RMS-normalised per head, which bounds the attention logits
- grouped-query attention: n_kv_head divides n_head (MHA when equal, MQA when 1), through
  F.scaled_dot_product_attention (flash kernels on GPU; enable_gqa, no repeated K/V in memory)
- ReLU^2 MLP with 4x width
- no biases anywhere; untied input embedding and lm_head
- logits soft-capped at 15 with tanh, computed in fp32
- under autocast (bf16 on the GPU) the residual stream itself is bf16, not only the matmuls; fp32 on the CPU
- initialisation: embedding N(0, 1); linear layers N(0, s) with s = min(1, sqrt(fan_out/fan_in)) / sqrt(fan_in)
  (the spectral condition of Yang et al., arXiv 2310.17813); the two output projections of each block and the
  lm_head start at zero, so every block starts as the identity and the initial loss is exactly ln(vocab)
- built on the meta device, then materialised with `to_empty()` + `init_weights()` (no double init of big models)
- KV cache interface (nanochat.engine.KVCache): `kv_cache.get_pos()` is the position of the first new token;
  `kv_cache.insert_kv(layer_idx, k, v)` takes this step's keys/values shaped (B, n_kv_head, T, head_dim) and returns
  all keys/values of that layer so far; the cache advances its position after the last layer.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 65536
    n_layer: int = 12
    n_head: int = 6       # query heads
    n_kv_head: int = 6    # key/value heads (GQA when < n_head, MQA when 1)
    n_embd: int = 768

    def __post_init__(self):
        # Fail at config time, not deep inside a reshape on the first forward pass.
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def pad_vocab(vocab_size: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the embedding and lm_head matmuls have friendly shapes."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


def config_for_depth(depth: int, vocab_size: int = 65536, sequence_len: int = 2048,
                     n_kv_head: int | None = None) -> GPTConfig:
    """Derive every size from the one dial, `depth` (the series' d20/d26/d32)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    head_dim = 128
    n_embd = 64 * depth                       # aspect ratio 64: width grows with depth
    n_head = max(1, math.ceil(n_embd / head_dim))
    # n_embd need not be a multiple of 128 (d20 -> 1280 = 10 heads of 128, d26 -> 1664 = 13 heads of 128)
    if n_embd % n_head != 0:
        raise ValueError(f"depth {depth} gives n_embd={n_embd} that does not split into {n_head} heads")
    return GPTConfig(sequence_len=sequence_len, vocab_size=pad_vocab(vocab_size), n_layer=depth,
                     n_head=n_head, n_kv_head=n_kv_head or n_head, n_embd=n_embd)


def count_params(config: GPTConfig) -> dict:
    """Parameter counts by part, from the config alone (no model needed).

    `matmul` excludes the input embedding (a lookup, not a matmul): it is the N in the 6N FLOPs/token rule.
    """
    d, v, L = config.n_embd, config.vocab_size, config.n_layer
    kv_dim = config.n_kv_head * config.head_dim
    attn = d * d + 2 * d * kv_dim + d * d      # q, k, v, output projection; no biases
    mlp = d * 4 * d + 4 * d * d                # up and down projection, 4x width
    wte, lm_head = v * d, d * v                # untied
    total = wte + lm_head + L * (attn + mlp)
    return {"wte": wte, "lm_head": lm_head, "attn": L * attn, "mlp": L * mlp,
            "total": total, "matmul": total - wte}


# ----------------------------------------------------------------------------------------------------------------
# The model

def check_token_ids(lo: int, hi: int, vocab_size: int) -> None:
    """Ids outside [0, vocab) get a clear error (on a GPU the embedding would fail with an opaque device assert)."""
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}); got min {lo}, max {hi}")


def norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]) by the angle whose cos/sin are given.

    x: (B, T, H, D); cos, sin: (1, T, 1, D/2). Rotating both q and k by angles proportional to their positions
    makes q_m . k_n depend only on m - n.
    """
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rotary_cos_sin(seq_len: int, head_dim: int, base: float = 10000.0, device=None):
    """Precompute RoPE tables: frequency i = base^(-2i/D), angle(t, i) = t * frequency i. Shapes (1, T, 1, D/2)."""
    if head_dim % 2 != 0:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(t, inv_freq)                      # (T, D/2)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.head_dim
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos_sin, kv_cache=None):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)        # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)     # (B, T, Hkv, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)                                        # QK-norm (commutes with the rotation)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)   # (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)           # (B, Hkv, T_past + T, D)
        Tq, Tk = q.size(2), k.size(2)
        gqa = self.n_kv_head != self.n_head
        if Tq == Tk:
            # training, or a prefill into an empty cache: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif Tq == 1:
            # one decoded token sees every cached position
            y = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)
        else:
            # a chunk after a prefix: the whole prefix, then causal within the chunk
            i = torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
            j = torch.arange(Tk, device=q.device)[None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=j <= i, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)              # (B, T, H * D)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, kv_cache=None):
        x = x + self.attn(norm(x), cos_sin, kv_cache)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    softcap = 15.0          # logits = softcap * tanh(logits / softcap)
    rotary_multiple = 10    # RoPE tables cover 10x sequence_len (room for long generations)

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.rotary_seq_len = config.sequence_len * self.rotary_multiple
        cos, sin = rotary_cos_sin(self.rotary_seq_len, config.head_dim)
        # not persistent: derived from the config, recomputed by init_weights(), never in checkpoints
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        """Initialise every parameter (and the RoPE tables) in place; call after `to_empty(device=...)`."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_out, fan_in = module.weight.shape
                std = min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in)
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=1.0)
        # Output projections start at zero: each residual branch adds nothing at step 0 and the model starts as
        # (embedding -> norm -> zero lm_head), i.e. uniform predictions. Gradients still flow into all of them.
        nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        cos, sin = rotary_cos_sin(self.rotary_seq_len, self.config.head_dim, device=self.get_device())
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def get_device(self) -> torch.device:
        return self.transformer.wte.weight.device

    def num_params(self) -> dict:
        """Parameter counts by part, from the module itself (same keys as `count_params(config)`)."""
        n = lambda ps: sum(p.numel() for p in ps)
        wte, lm_head = self.transformer.wte.weight.numel(), self.lm_head.weight.numel()
        attn = n(p for b in self.transformer.h for p in b.attn.parameters())
        mlp = n(p for b in self.transformer.h for p in b.mlp.parameters())
        total = n(self.parameters())
        return {"wte": wte, "lm_head": lm_head, "attn": attn, "mlp": mlp, "total": total, "matmul": total - wte}

    def setup_optimizers(self, **kwargs):
        """[AdamW(embedding, lm_head), Muon(block matrices)]; the recipe lives in nanochat.muon.setup_optimizers."""
        from nanochat.muon import setup_optimizers   # lazy: the model does not need the optimizer to exist
        return setup_optimizers(self, **kwargs)

    def estimate_flops(self) -> int:
        """Training FLOPs per token: 6 per matmul parameter (forward 2, backward 4) plus attention scores.

        Attention: QK^T and AV each cost 2*T*Dh multiply-adds per head per token in the forward pass, so
        4*T*Dh forward, x3 with backward = 12*T*Dh per head and layer (counted at full T, as upstream does).
        """
        c = self.config
        nparams = sum(p.numel() for p in self.parameters())
        matmul = nparams - self.transformer.wte.weight.numel()
        return 6 * matmul + 12 * c.n_layer * c.n_head * c.head_dim * c.sequence_len

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        """idx (B, T) token ids -> logits (B, T, vocab) fp32, or the loss if `targets` (B, T) is given.

        Targets equal to -1 are ignored. loss_reduction "none" returns the per-token loss shaped (B, T)
        (0 where ignored); "sum" and "mean" reduce over the non-ignored tokens.
        """
        B, T = idx.shape
        T0 = 0 if kv_cache is None else kv_cache.get_pos()
        if T0 + T > self.rotary_seq_len:
            raise ValueError(f"sequence of {T0 + T} positions is longer than the rotary tables "
                             f"({self.rotary_seq_len} = {self.rotary_multiple} x sequence_len "
                             f"{self.config.sequence_len}); the model was trained on {self.config.sequence_len}")
        # Checked on the CPU only: on a GPU it would cost a host sync per forward (the embedding's device-side
        # bounds check still catches bad ids there, as an opaque CUDA assert). The entry points that take ids
        # from outside -- GPT.generate, Engine.generate(_batch) -- check their Python lists on the host instead.
        if idx.device.type == "cpu" and not torch.compiler.is_compiling() and idx.numel() > 0:
            check_token_ids(int(idx.min()), int(idx.max()), self.config.vocab_size)
        cos_sin = self.cos[:, T0:T0 + T], self.sin[:, T0:T0 + T]
        x = self.transformer.wte(idx)                                  # (B, T, C), fp32 parameters
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            # The residual stream in the compute dtype (bf16 on the GPU), as upstream (which stores its embedding in
            # bf16): every add, norm and their gradients then move half the bytes. Measured on one H100: d12 +3.4%,
            # d20 --fp8 +6.7% tokens/s, and d20 fits at device batch 32 (benchmarks/RESULTS.md, session 6).
            x = x.to(torch.get_autocast_dtype(dev))
        x = norm(x)
        for block in self.transformer.h:
            x = block(x, cos_sin, kv_cache)
        x = norm(x)
        # An fp8 output layer (nanochat.fp8.Float8Head) computes the training loss itself, with an fp8 backward.
        fused_loss = getattr(self.lm_head, "softcap_cross_entropy", None)
        if fused_loss is not None and targets is not None and loss_reduction == "mean" and torch.is_grad_enabled():
            return fused_loss(x, targets, self.softcap)
        logits = self.lm_head(x).float()                               # (B, T, V)
        logits = self.softcap * torch.tanh(logits / self.softcap)
        # A chunked loss that never holds these (B*T, V) fp32 logits at once was measured (commit 07cbd63,
        # benchmarks/RESULTS.md): it saves memory (d20 fits at device batch 32) but costs 7% of d12's speed.
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)
        return loss.view(B, T) if loss_reduction == "none" else loss

    @torch.inference_mode()
    def generate(self, tokens, max_tokens, temperature=1.0, top_k=None, seed=42):
        """Naive sampling without a cache (the reference the Engine is tested against); yields token ids.

        Each step re-runs the whole (cropped) context, so it costs O(T^2) per token: fine for tests and chapters.
        """
        assert isinstance(tokens, list) and len(tokens) > 0
        check_token_ids(min(tokens), max(tokens), self.config.vocab_size)   # on the host: says it on a GPU too
        device = self.get_device()
        rng = None
        if temperature > 0:
            rng = torch.Generator(device=device)
            rng.manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            logits = self.forward(ids[:, -self.config.sequence_len:])[:, -1, :]   # (1, V)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=rng)
            else:
                next_id = torch.argmax(logits, dim=-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
            yield next_id.item()
