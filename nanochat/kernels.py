"""
Fused elementwise kernels for the one-token decode step (Triton on CUDA, plain PyTorch everywhere else).

Why: at batch 1 a d20 decode step is not limited by arithmetic or bandwidth but by the number of kernels. The
unfused step launches ~440 of them, ~340 of which are tiny elementwise ops (norm, cast, rotary, cache write, add,
relu, square) at 1-3 us each, as much GPU time as all the matmuls together (benchmarks/RESULTS.md). Each
function here does one such group in a single kernel. torch.compile was measured as the alternative and made
the step slower (graph replay 1.88 vs 1.50 ms at batch 1), so the fusion is written by hand.

Every function has a PyTorch reference path with the same arithmetic; it runs on the CPU (and on any device
without Triton) and is what the tests compare the kernels against (Triton's interpreter runs them on the CPU:
TRITON_INTERPRET=1).

>>> x, y = torch.randn(2, 8), torch.randn(2, 8)
>>> h = add_rms_norm(x, y, torch.float32)            # x += y in place, then h = rmsnorm(x)
>>> torch.allclose(h.pow(2).mean(-1), torch.ones(2), atol=1e-5)
True
"""
import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:          # CPU-only installs: the reference paths below do all the work
    triton = None


def use_triton(t: torch.Tensor) -> bool:
    """Triton on CUDA tensors; on CPU tensors only under Triton's interpreter (the tests)."""
    if triton is None or os.environ.get("NANOCHAT_NO_TRITON") == "1":
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _eps(dtype) -> float:
    return torch.finfo(dtype).eps        # what F.rms_norm uses when eps=None


# ------------------------------------------------------------------------------------------------------------
# residual add + RMSNorm + cast: x += y (the residual stream), h = x / rms(x) in the matmul dtype

def add_rms_norm(x: torch.Tensor, y, out_dtype) -> torch.Tensor:
    """x (B, C) is updated in place with y (B, C) (any float dtypes, or None); returns rmsnorm(x) cast.

    The norm is taken of x as stored (rounded to x's dtype), as the model's forward does with a bf16 stream."""
    if not use_triton(x):
        if y is not None:
            x.add_(y)
        return F.rms_norm(x, (x.size(-1),)).to(out_dtype)
    assert x.is_contiguous() and (y is None or y.is_contiguous()), "the kernel indexes rows as row * C"
    B, C = x.shape
    out = torch.empty((B, C), dtype=out_dtype, device=x.device)
    _add_rms_norm_kernel[(B,)](x, x if y is None else y, out, C, _eps(x.dtype), HAS_Y=y is not None,
                               BLOCK=triton.next_power_of_2(C))
    return out


# ------------------------------------------------------------------------------------------------------------
# rotary + QK-norm + cache write: the fused q|k|v projection of one token -> q, and k, v into the cache at pos

def rope_norm_cache(qkv, cos, sin, pos, k_cache, v_cache, n_head, n_kv_head):
    """qkv (B, (H + 2 Hkv) D); cos, sin (T_rot, D/2) tables; pos a 1-element long tensor on the device;
    k_cache, v_cache (B, Hkv, T, D). Writes k and v at `pos`, returns q (B, H, 1, D) in qkv's dtype."""
    B = qkv.size(0)
    D = k_cache.size(-1)
    H, Hkv, d = n_head, n_kv_head, D // 2
    if not use_triton(qkv):
        c = cos.index_select(0, pos).float()                          # (1, d)
        s = sin.index_select(0, pos).float()
        qk = qkv[:, :(H + Hkv) * D].reshape(B, H + Hkv, D).float()
        x1, x2 = qk[..., :d], qk[..., d:]
        qk = F.rms_norm(torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1), (D,)).to(qkv.dtype)
        v = qkv[:, (H + Hkv) * D:].reshape(B, Hkv, 1, D)
        k_cache.index_copy_(2, pos, qk[:, H:, None, :].to(k_cache.dtype))
        v_cache.index_copy_(2, pos, v.to(v_cache.dtype))
        return qk[:, :H, None, :]
    assert qkv.is_contiguous() and cos.is_contiguous() and sin.is_contiguous() and k_cache.stride(-1) == 1
    q = torch.empty((B, H, 1, D), dtype=qkv.dtype, device=qkv.device)
    _rope_norm_cache_kernel[(B, H + 2 * Hkv)](
        qkv, cos, sin, pos, q, k_cache, v_cache, qkv.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), H, Hkv, _eps(torch.float32), D=D)
    return q


# ------------------------------------------------------------------------------------------------------------
# attention of one new token over the cache: softmax(q k^T / sqrt(D)) v over positions 0..pos

def decode_attention(q, k_cache, v_cache, pos):
    """q (B, H, 1, D); k_cache, v_cache (B, Hkv, T, D) filled up to and including `pos` (1-element tensor).
    Returns (B, H, 1, D). The kernel reads the length from `pos` on the device, so one CUDA graph serves every
    length, and it reads only the filled part of the cache (no mask tensor, no padding)."""
    B, H, _, D = q.shape
    Hkv = k_cache.size(1)
    if not use_triton(q):
        n = int(pos.item()) + 1
        return F.scaled_dot_product_attention(q, k_cache[:, :, :n], v_cache[:, :, :n], enable_gqa=H != Hkv)
    assert q.is_contiguous() and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    out = torch.empty_like(q)
    # Few (row, head) pairs cannot fill the GPU (batch 1 of d20 is 10 programs): then the keys are split into
    # up to 16 ranges, each program returns its partial softmax (max, sum, weighted values) and a second kernel
    # combines them -- "flash decoding". With many pairs one program per pair is already enough.
    splits = 1 if B * H >= 128 else 16
    part = torch.empty((B, H, splits, D + 2), dtype=torch.float32, device=q.device) if splits > 1 else out
    _decode_attention_kernel[(B, H, splits)](q, k_cache, v_cache, pos, out, part, k_cache.stride(0),
                                             k_cache.stride(1), k_cache.stride(2), H, H // Hkv, 1.0 / D ** 0.5,
                                             SPLITS=splits, BLOCK_T=32, D=D)
    if splits > 1:
        _combine_splits_kernel[(B, H)](part, out, SPLITS=splits, D=D)
    return out


# ------------------------------------------------------------------------------------------------------------
# relu(x)^2 in place, and the logit soft-cap (bf16 in, fp32 out)

def relu_square_(x: torch.Tensor) -> torch.Tensor:
    if not use_triton(x):
        return x.relu_().square_()
    assert x.is_contiguous()
    n = x.numel()
    _relu_square_kernel[(triton.cdiv(n, 1024),)](x, n, BLOCK=1024)
    return x


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap) in fp32."""
    if not use_triton(logits):
        return cap * torch.tanh(logits.float() / cap)
    assert logits.is_contiguous()
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    n = logits.numel()
    _softcap_kernel[(triton.cdiv(n, 4096),)](logits, out, n, cap, BLOCK=4096)
    return out


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, y_ptr, out_ptr, C, eps, HAS_Y: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < C
        x = tl.load(x_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_Y:
            xs = (x + tl.load(y_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)).to(x_ptr.dtype.element_ty)
            tl.store(x_ptr + row * C + cols, xs, mask=m)
            x = xs.to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / C + eps)
        tl.store(out_ptr + row * C + cols, (x * r).to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _rope_norm_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, stride_row,
                                stride_cb, stride_ch, stride_ct, H, Hkv, eps, D: tl.constexpr):
        b = tl.program_id(0)
        j = tl.program_id(1)                       # head index in q | k | v order
        pos = tl.load(pos_ptr)
        half = tl.arange(0, D // 2)
        src = qkv_ptr + b * stride_row + j * D
        if j < H + Hkv:                            # q or k: rotate, normalise, store
            x1 = tl.load(src + half).to(tl.float32)
            x2 = tl.load(src + D // 2 + half).to(tl.float32)
            c = tl.load(cos_ptr + pos * (D // 2) + half).to(tl.float32)
            s = tl.load(sin_ptr + pos * (D // 2) + half).to(tl.float32)
            y1 = x1 * c - x2 * s
            y2 = x1 * s + x2 * c
            r = 1.0 / tl.sqrt((tl.sum(y1 * y1, axis=0) + tl.sum(y2 * y2, axis=0)) / D + eps)
            if j < H:
                dst = q_ptr + (b * H + j) * D
            else:
                dst = k_ptr + b * stride_cb + (j - H) * stride_ch + pos * stride_ct
            tl.store(dst + half, (y1 * r).to(q_ptr.dtype.element_ty))
            tl.store(dst + D // 2 + half, (y2 * r).to(q_ptr.dtype.element_ty))
        else:                                      # v: straight into the cache
            full = tl.arange(0, D)
            dst = v_ptr + b * stride_cb + (j - H - Hkv) * stride_ch + pos * stride_ct
            tl.store(dst + full, tl.load(src + full))

    @triton.jit
    def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, part_ptr, stride_cb, stride_ch, stride_ct,
                                 H, GROUP, scale, SPLITS: tl.constexpr, BLOCK_T: tl.constexpr, D: tl.constexpr):
        # program (row, query head, split): an online softmax over its range of keys, in blocks of BLOCK_T
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        n = tl.load(pos_ptr) + 1
        chunk = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK_T) * BLOCK_T
        lo = sp * chunk
        hi = tl.minimum(lo + chunk, n)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (b * H + h) * D + d).to(tl.float32) * scale
        base = b * stride_cb + (h // GROUP) * stride_ch
        m_i = tl.max(tl.full([BLOCK_T], float("-inf"), tl.float32), axis=0)     # running max (a scalar)
        l_i = tl.sum(tl.zeros([BLOCK_T], tl.float32), axis=0)                  # running sum of exp
        acc = tl.zeros([D], tl.float32)
        for start in range(lo, hi, BLOCK_T):
            t = start + tl.arange(0, BLOCK_T)
            live = t < hi
            offs = base + t[:, None] * stride_ct + d[None, :]
            k = tl.load(k_ptr + offs, mask=live[:, None], other=0.0).to(tl.float32)
            s = tl.where(live, tl.sum(k * q[None, :], axis=1), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            v = tl.load(v_ptr + offs, mask=live[:, None], other=0.0).to(tl.float32)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m_i = m_new
        if SPLITS == 1:
            tl.store(out_ptr + (b * H + h) * D + d, (acc / l_i).to(out_ptr.dtype.element_ty))
        else:                                      # partial: [acc (D), max, sum]; an empty range leaves -inf, 0
            row = part_ptr + ((b * H + h) * SPLITS + sp) * (D + 2)
            tl.store(row + d, acc)
            tl.store(row + D, m_i)
            tl.store(row + D + 1, l_i)

    @triton.jit
    def _combine_splits_kernel(part_ptr, out_ptr, SPLITS: tl.constexpr, D: tl.constexpr):
        b_h = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        rows = part_ptr + (b_h * SPLITS + tl.arange(0, SPLITS)) * (D + 2)
        m = tl.load(rows + D)                                          # (SPLITS,)
        w = tl.exp(m - tl.max(m, axis=0))                              # empty ranges: exp(-inf) = 0
        l = tl.sum(w * tl.load(rows + D + 1), axis=0)
        acc = tl.load(rows[:, None] + tl.arange(0, D)[None, :])        # (SPLITS, D)
        out = tl.sum(w[:, None] * acc, axis=0) / l
        tl.store(out_ptr + b_h * D + tl.arange(0, D), out.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _relu_square_kernel(x_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        x = tl.maximum(tl.load(x_ptr + i, mask=m, other=0.0).to(tl.float32), 0.0)
        tl.store(x_ptr + i, (x * x).to(x_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _softcap_kernel(x_ptr, out_ptr, n, cap, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        z = tl.load(x_ptr + i, mask=m, other=0.0).to(tl.float32) / cap
        # tanh(z) = 1 - 2 / (exp(2z) + 1): exact in the limits (exp overflow -> 1, underflow -> -1)
        t = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
        tl.store(out_ptr + i, cap * t, mask=m)
