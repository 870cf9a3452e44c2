"""
FP8 matmuls for training: a drop-in for the transformer blocks' linear layers (opt-in, `--fp8`).

Why: a Hopper GPU multiplies float8 matrices at twice its bf16 rate (H100 SXM datasheet: 1,979 vs 989 dense
TFLOP/s), and half of a d12-d20 training step is matmuls (benchmarks/RESULTS.md). Nothing else in the step gets
faster, so the gain is bounded by that half.

The recipe ("tensorwise" scaling, as in NVIDIA's Transformer Engine and torchao; written out here):
- every operand gets one scale, chosen each call from its current largest |value| so that value lands at the top
  of the fp8 range, and is then rounded to fp8: activations and weights to e4m3 (3 mantissa bits, |x| <= 448),
  gradients to e5m2 (2 mantissa bits but range to 57,344: gradients span more orders of magnitude);
- all three matmuls of a linear layer run in fp8 through `torch._scaled_mm`, which accumulates in fp32 and
  multiplies the result by the two inverse scales: forward y = x W^T, input gradient dx = g W, weight gradient
  dW = g^T x;
- master weights, optimizer state, norms, attention and the loss stay as they were (fp32 parameters, bf16
  autocast); the lm_head's forward too, as the logits are the most precision-sensitive matmul and feed the loss
  directly. Its two backward matmuls do run in fp8 (Float8Head): their operand, the logits gradient, has a bound
  known in advance (|softmax - one-hot| <= 1), so it needs no amax pass; d20: +1.4% tokens/s, d12 (bf16 blocks): +1.1%.
Scales are recomputed from the data every call, with two kinds of exception that each save a pass over a
tensor before its cast (current scaling needs the amax of the whole tensor first):
- a layer whose input comes straight out of the parameter-free RMSNorm (q, k, v and the MLP's up projection)
  knows a bound in advance -- a row of K values with RMS <= 1 has no |value| above sqrt(K) -- so its input scale
  is a constant and the cast fuses into the norm's kernel (d20: +3.5% tokens/s);
- the MLP's two 4C-wide tensors, the activation relu(h)^2 and its gradient, use delayed scaling: the amax the
  layer saw on its previous call, with 2x headroom, so one kernel casts them in one pass (Float8MLP; d20: +4.8%).
  That history is the only state here; it lives outside the checkpoint, so checkpoints, resume and the bf16
  model used for evaluation are unchanged. Measurements: benchmarks/RESULTS.md.
Under `torch.no_grad()` (evaluation, sampling) the layers run the ordinary bf16 matmuls:
fp8 is a training-speed device, and what we evaluate is the model we ship.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.gpt import MLP
from nanochat.kernels import triton, use_triton

if triton is not None:
    import triton.language as tl

E4M3 = torch.float8_e4m3fn   # forward operands
E5M2 = torch.float8_e5m2     # gradients
_LOG2E = 1.4426950408889634  # the kernels compute exp(x) as exp2(x * log2(e)), with the constant folded in


def to_fp8(x: torch.Tensor, dtype: torch.dtype, bound=None):
    """Scale x so its largest |value| maps to dtype's max, round to fp8; return (x_fp8, inverse scale).

    `bound`, when given (a float or 0-d tensor known in advance), replaces the largest |value|: no reduction over
    x has to finish before the cast, so the cast can fuse into the kernel that produces x.
    """
    fmax = torch.finfo(dtype).max
    if bound is None:
        bound = x.detach().abs().amax().float()
    elif not torch.is_tensor(bound):
        bound = torch.full((), bound, device=x.device)
    # An all-zero tensor (a zero-initialised projection at step 0) would give an infinite scale: clamp it.
    scale = fmax / bound.clamp(min=1e-12)
    # The clamp matters: e4m3fn has no infinity, so an out-of-range value would become NaN instead of saturating.
    x8 = (x.float() * scale).clamp(-fmax, fmax).to(dtype)
    return x8, scale.reciprocal()


def _out_dtype(x):
    """The dtype nn.Linear would return for x: autocast's (bf16 on the GPU) when it is on, else x's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def _mm(a8, a_inv, b8, b_inv, out_dtype):
    """a @ b in fp8 with fp32 accumulation; a must be row-major and b column-major (cuBLAS's fp8 layout rule)."""
    return torch._scaled_mm(a8, b8, scale_a=a_inv, scale_b=b_inv, out_dtype=out_dtype)


def _linear_fp8(x8, x_inv, w, out_dtype):
    """y = x @ w.T (x (M, K) already in fp8, w (N, K)); returns y and what the backward needs: (x8, x_inv, w8, w_inv)."""
    w8, w_inv = to_fp8(w, E4M3)
    return _mm(x8, x_inv, w8.t(), w_inv, out_dtype), (x8, x_inv, w8, w_inv)   # w8.t(): a column-major view


def _linear_fp8_backward(saved, g8, g_inv, g8t, dtypes, needs=(True, True)):
    """(dx, dw) of y = x @ w.T from the output gradient in e5m2: g8 (M, N) and, if already made, g8t = g8^T."""
    x8, x_inv, w8, w_inv = saved
    dx = dw = None
    if needs[0]:
        # dx (M, K) = g (M, N) @ w (N, K); w must be column-major: transpose-copy the (small) fp8 weight
        dx = _mm(g8, g_inv, w8.t().contiguous().t(), w_inv, dtypes[0])
    if needs[1]:
        # dW (N, K) = g^T (N, M) @ x (M, K): both big operands need their transposed layouts
        g8t = g8.t().contiguous() if g8t is None else g8t
        dw = _mm(g8t, g_inv, x8.t().contiguous().t(), x_inv, dtypes[1])
    return dx, dw


class _Float8Matmul(torch.autograd.Function):
    """y = x @ w.T with x (M, K), w (N, K); all three matmuls in fp8. x_bound: a known bound on |x|, or None."""

    @staticmethod
    def forward(ctx, x, w, out_dtype, x_bound):
        y, saved = _linear_fp8(*to_fp8(x, E4M3, x_bound), w, out_dtype)
        ctx.save_for_backward(*saved)
        ctx.dtypes = x.dtype, w.dtype
        return y

    @staticmethod
    def backward(ctx, g):
        g8, g_inv = to_fp8(g, E5M2)
        dx, dw = _linear_fp8_backward(ctx.saved_tensors, g8, g_inv, None, ctx.dtypes, ctx.needs_input_grad[:2])
        return dx, dw, None, None


class Float8Linear(nn.Linear):
    """nn.Linear (no bias) whose training matmuls run in fp8; same parameters and state_dict as nn.Linear."""

    input_bound = None   # a known bound on |input| (set by convert_to_float8 for RMS-normalised inputs)

    def forward(self, x):
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight)
        y = _Float8Matmul.apply(x.reshape(-1, x.size(-1)), self.weight, _out_dtype(x), self.input_bound)
        return y.view(*x.shape[:-1], y.size(-1))


class _Float8ReluSquaredMLP(torch.autograd.Function):
    """y = relu(x @ w_fc.T)^2 @ w_proj.T, the GPT's MLP, with all six matmuls in fp8.

    The same two fp8 linears as Float8Linear, except where the MLP's 4C-wide tensors meet fp8: the activation
    a = relu(h)^2 going into c_proj, and the gradient g = dh * 2 relu(h) coming out of it -- the largest tensors
    of a block. Each is cast by one pass of one kernel with a delayed scale (relu2_fp8, relu2_grad_fp8) instead
    of an amax pass followed by a cast pass; the gradient's kernel pair also writes its transposed layout.
    `amax` (2,), fp32, carries the two tensors' amaxes from one call to the next.
    """

    @staticmethod
    def forward(ctx, x, w_fc, w_proj, out_dtype, x_bound, amax):
        h, fc = _linear_fp8(*to_fp8(x, E4M3, x_bound), w_fc, out_dtype)
        y, proj = _linear_fp8(*relu2_fp8(h, amax), w_proj, out_dtype)
        ctx.save_for_backward(h, amax, *fc, *proj)
        ctx.dtypes = x.dtype, w_fc.dtype, w_proj.dtype
        return y

    @staticmethod
    def backward(ctx, gy):
        h, amax, *saved = ctx.saved_tensors
        x_dtype, fc_dtype, proj_dtype = ctx.dtypes
        gy8, gy_inv = to_fp8(gy, E5M2)
        dh, dw_proj = _linear_fp8_backward(saved[4:], gy8, gy_inv, None, (h.dtype, proj_dtype))
        g8, g8t, g_inv = relu2_grad_fp8(dh, h, amax)
        dx, dw_fc = _linear_fp8_backward(saved[:4], g8, g_inv, g8t, (x_dtype, fc_dtype),
                                         (ctx.needs_input_grad[0], True))
        return dx, dw_fc, dw_proj, None, None, None


# Delayed scaling (as in NVIDIA's Transformer Engine): a tensor is scaled by the amax its layer saw one call
# earlier -- in training the previous micro-step, with the same weights or one optimizer step apart -- times this
# headroom. A power of two, so that it moves exponents and leaves mantissas as they were; a value beyond the
# headroom saturates at the top of the format. The first call (history 0) measures its own amax.
DELAYED_MARGIN = 2.0


def _relu2_cast(h, dh, history, dtype):
    """relu(h)^2 (dh None) or dh * 2 relu(h) cast to fp8 with the delayed scale; history[...] := this amax.

    Returns (x8, inverse scale). On a GPU: one Triton pass that casts and reduces the amax as it goes, preceded
    by an amax pass only when the history is empty -- the kernel checks, so the host never has to wait."""
    fmax = torch.finfo(dtype).max
    if not use_triton(h):
        return _relu2_cast_pytorch(h, dh, history, dtype)
    assert h.is_contiguous() and (dh is None or (dh.is_contiguous() and dh.shape == h.shape))
    x8 = torch.empty(h.shape, dtype=dtype, device=h.device)
    inv = torch.empty((), dtype=torch.float32, device=h.device)
    amax = torch.zeros((), dtype=torch.float32, device=h.device)
    n = h.numel()
    grid = (min(triton.cdiv(n, _FLAT_BLOCK), _FLAT_PROGRAMS),)
    args = (h, h if dh is None else dh, history, amax)
    _relu2_amax_kernel[grid](*args, n, GRAD=dh is not None, BLOCK=_FLAT_BLOCK, num_warps=_FLAT_WARPS)
    _relu2_fp8_kernel[grid](*args, x8, inv, n, DELAYED_MARGIN, fmax, GRAD=dh is not None, BLOCK=_FLAT_BLOCK,
                            num_warps=_FLAT_WARPS)
    history.copy_(amax)
    return x8, inv


def _relu2_cast_pytorch(h, dh, history, dtype):
    """_relu2_cast's arithmetic in PyTorch: the CPU path, the kernels' reference, and what the benchmark
    (benchmarks/bench_kernels.py) hands to torch.compile as the kernels' peer."""
    x = 2 * F.relu(h.float()) * dh.float() if dh is not None else F.relu(h.float()).square()
    amax = x.abs().amax()
    x8, inv = to_fp8(x, dtype, bound=torch.where(history > 0, history * DELAYED_MARGIN, amax))
    history.copy_(amax)
    return x8, inv


@torch.library.custom_op("nanochat::relu2_fp8", mutates_args=("amax",))
def relu2_fp8(h: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """relu(h)^2 in e4m3 with a delayed scale: (a8, a_inv). amax[0] is the history (see _relu2_cast).
    A custom op, so that torch.compile calls it as it is rather than tracing into it."""
    return _relu2_cast(h, None, amax[0], E4M3)


@relu2_fp8.register_fake
def _(h, amax):
    return h.new_empty(h.shape, dtype=E4M3), h.new_empty((), dtype=torch.float32)


@torch.library.custom_op("nanochat::relu2_grad_fp8", mutates_args=("amax",))
def relu2_grad_fp8(dh: torch.Tensor, h: torch.Tensor, amax: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """relu(h)^2's input gradient g = dh * 2 relu(h) in e5m2 with a delayed scale, in both layouts:
    (g8 (M, N), g8^T (N, M), g_inv). amax[1] is the history. The transposed copy is a second kernel (the loss's)."""
    g8, g_inv = _relu2_cast(h, dh, amax[1], E5M2)
    return g8, _transposed(g8), g_inv


@relu2_grad_fp8.register_fake
def _(dh, h, amax):
    M, N = dh.shape
    return dh.new_empty((M, N), dtype=E5M2), dh.new_empty((N, M), dtype=E5M2), dh.new_empty((), dtype=torch.float32)


# The two kernels' programs stride over the flat tensor. Tuned on an H100 at 65,536 x 5,120 (d20): the backward
# pair (cast + transpose) 0.83 ms, the forward 0.37 ms; Inductor's amax + cast (+ transposed copy) 1.21 and 0.58 ms.
_FLAT_BLOCK, _FLAT_PROGRAMS, _FLAT_WARPS = 2048, 4224, 8


class _Float8SoftcapCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softcap(x @ w.T) against targets (-1 ignored), with an fp8 backward.

    The forward computes the logits as nn.Linear does (bf16 under autocast), so the loss is the one the bf16
    model reports. The backward's two matmuls over the (M, V) logits gradient -- the largest tensor of the step
    -- run in fp8, and that gradient's scale is known without looking at it: each entry is
    (softmax - one-hot) * softcap' * dloss / n with |softmax - one-hot| <= 1 and 0 < softcap' <= 1, so no entry
    exceeds |dloss| / n. dloss / n is one number for the whole tensor, so the gradient can be made -- in fp8,
    by the same kernel that reduces the loss -- before dloss is known: the forward writes it and frees the
    logits, and the backward only rescales (softcap_ce_fp8).
    """

    @staticmethod
    def forward(ctx, x, w, targets, softcap, x_bound):
        logits = F.linear(x, w)                                   # (M, V)
        lse, g8, g8t = softcap_ce_fp8(logits, targets, softcap)   # the logits are not needed after this
        valid = targets >= 0
        z_t = logits.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)    # each row's target logit
        picked = softcap * torch.tanh(z_t.float() / softcap)
        n = valid.sum()
        x8, x_inv = to_fp8(x, E4M3, x_bound)
        ctx.save_for_backward(x8, x_inv, w, g8, g8t, n)
        ctx.x_dtype = x.dtype
        return torch.where(valid, lse - picked, 0.0).sum() / n

    @staticmethod
    def backward(ctx, dloss):
        x8, x_inv, w, g8, g8t, n = ctx.saved_tensors
        g_inv = dloss.float() / n / torch.finfo(E5M2).max        # g8 holds g * fmax / (dloss / n); the sign too
        w8, w_inv = to_fp8(w, E4M3)
        dx, dw = _linear_fp8_backward((x8, x_inv, w8, w_inv), g8, g_inv, g8t, (ctx.x_dtype, w.dtype))
        return dx, dw, None, None, None


@torch.library.custom_op("nanochat::softcap_ce_fp8", mutates_args=())
def softcap_ce_fp8(logits: torch.Tensor, targets: torch.Tensor, softcap: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean softcapped cross-entropy's two halves from the logits (M, V), for dloss / n = 1:
    each row's logsumexp of softcap * tanh(logits / softcap) (fp32, (M,)), and the logits gradient
    (softmax - one-hot) * softcap' in e5m2, scaled by its bound 1 to the top of the format, 0 in rows whose
    target is -1 -- in both layouts, (M, V) and (V, M), as the two backward matmuls need.

    |softcapped logit| <= softcap, so exp(s - softcap) lies in (e^(-2 softcap), 1] and a row's sum needs no
    running maximum. On a GPU one Triton kernel takes each row through two sweeps over the vocabulary -- the
    sum, then the gradient -- so the second sweep can find the row (128 KB at V = 65,536) still in cache; a second
    kernel transposes. A custom op, so that torch.compile calls it as it is rather than tracing into it.
    """
    M, V = logits.shape
    fmax = torch.finfo(E5M2).max
    if not use_triton(logits):
        lse, g8 = _softcap_ce_pytorch(logits, targets, softcap)
        return lse, g8, _transposed(g8)
    assert logits.is_contiguous() and targets.is_contiguous()
    lse = torch.empty(M, dtype=torch.float32, device=logits.device)
    g8 = torch.empty((M, V), dtype=E5M2, device=logits.device)
    _softcap_ce_fp8_kernel[(triton.cdiv(M, _CE_ROWS),)](logits, targets, lse, g8, M, V, *_exp2_constants(softcap),
                                                        fmax, BM=_CE_ROWS, BV=_CE_COLS, num_warps=_CE_WARPS)
    return lse, g8, _transposed(g8)


@softcap_ce_fp8.register_fake
def _(logits, targets, softcap):
    M, V = logits.shape
    return (logits.new_empty((M,), dtype=torch.float32), logits.new_empty((M, V), dtype=E5M2),
            logits.new_empty((V, M), dtype=E5M2))


def _softcap_ce_pytorch(logits, targets, softcap):
    """softcap_ce_fp8's arithmetic in PyTorch, one layout: (lse, g8). The CPU path, the kernel's reference and
    its peer in benchmarks/bench_kernels.py."""
    # tanh and its derivative 1 - tanh^2 from e = exp(-2|a|): 1 - u*u would cancel catastrophically where the
    # softcap saturates (|u| -> 1), and the kernel computes the same expressions
    a = logits.float() / softcap
    e = torch.exp(-2 * a.abs())
    u = torch.sign(a) * (1 - e) / (1 + e)
    lse = torch.logsumexp(softcap * u, dim=-1)
    p = torch.exp(softcap * u - lse.unsqueeze(1))
    onehot = targets.unsqueeze(1) == torch.arange(logits.size(1), device=logits.device)
    g = (p - onehot.float()) * (4 * e / ((1 + e) * (1 + e))) * (targets >= 0).unsqueeze(1)
    return lse, to_fp8(g, E5M2, bound=1.0)[0]


# The loss kernel's shape: _CE_ROWS rows per program, _CE_COLS columns per load. On an H100 at 65,536 x 65,536
# (one d12/d20 micro-batch) it takes 7.9 ms (7.9-9.1 over 11 shapes; persistent grids that keep fewer rows in
# flight were slower, 9.5-19 ms), where session 6's pair -- a logsumexp kernel in the forward, a gradient kernel
# in the backward, each reading the logits from memory -- took 10.5 (13.6 with the transpose, 3.1 ms, added to
# both). By our count its bound is the special-function unit, not memory: three exp2/reciprocals per logit
# and sweep (a ~6.7 ms floor at 16 results per SM and clock).
_CE_ROWS, _CE_COLS, _CE_WARPS = 1, 2048, 4


def _transposed(x8: torch.Tensor) -> torch.Tensor:
    """x8^T, contiguous: the layout the weight gradient's fp8 matmul needs. On a GPU a Triton kernel (2.8 TB/s
    at 128 x 128 tiles; Inductor's transposed fp8 copy took 0.326 vs its 0.243 ms at 65,536 x 5,120)."""
    if not use_triton(x8):
        return x8.t().contiguous()
    M, N = x8.shape
    out = torch.empty((N, M), dtype=x8.dtype, device=x8.device)
    _transpose_kernel[(triton.cdiv(M, 128), triton.cdiv(N, 128))](x8.view(torch.uint8), out.view(torch.uint8), M, N,
                                                                  BM=128, BV=128, num_warps=8)
    return out


def _exp2_constants(softcap: float) -> tuple[float, float]:
    """(k_e, k_p) = (-2 log2(e) / cap, cap log2(e)): the kernels' exp(x) is exp2(x log2 e) with these folded in."""
    return -2 * _LOG2E / softcap, softcap * _LOG2E


if triton is not None:
    @triton.jit
    def _softcap_tanh(z, k_e):
        """tanh(z / cap) from e = exp(-2 |z / cap|), with no IEEE division: returns (u, e, r = 1 / (1 + e)).

        The same e also gives the slope, 1 - tanh^2 = 4 e r^2, without the cancellation of 1 - u * u where the
        softcap saturates."""
        e = tl.exp2(tl.abs(z) * k_e)
        r = tl.fdiv(1.0, 1.0 + e)                                          # approximate division: ample here
        return tl.where(z < 0, -1.0, 1.0) * (1.0 - e) * r, e, r

    @triton.jit
    def _softcap_ce_fp8_kernel(z_ptr, t_ptr, lse_ptr, g_ptr, M, V, k_e, k_p, fmax,
                               BM: tl.constexpr, BV: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        rm = rows < M
        z_row = z_ptr + rows[:, None].to(tl.int64) * V
        g_row = g_ptr + rows[:, None].to(tl.int64) * V
        total = tl.zeros([BM], dtype=tl.float32)
        for start in range(0, V, BV):                                       # sweep 1: sum of exp(s - cap)
            cols = start + tl.arange(0, BV)
            mask = rm[:, None] & (cols < V)[None, :]
            u, _, _ = _softcap_tanh(tl.load(z_row + cols[None, :], mask=mask, other=0.0).to(tl.float32), k_e)
            total += tl.sum(tl.where(mask, tl.exp2(k_p * u - k_p), 0.0), axis=1)
        lse2 = tl.where(rm, k_p + tl.log2(total), 0.0)                      # the logsumexp in base 2
        tl.store(lse_ptr + rows, lse2 * 0.6931471805599453, mask=rm)      # x ln 2: back to base e
        t = tl.load(t_ptr + rows, mask=rm, other=-1)
        row = tl.where(t >= 0, fmax, 0.0)                                   # ignored rows get no gradient
        for start in range(0, V, BV):                                       # sweep 2: the gradient
            cols = start + tl.arange(0, BV)
            mask = rm[:, None] & (cols < V)[None, :]
            u, e, r = _softcap_tanh(tl.load(z_row + cols[None, :], mask=mask, other=0.0).to(tl.float32), k_e)
            p = tl.exp2(k_p * u - lse2[:, None])                            # exp(cap * u - lse)
            onehot = (cols[None, :] == t[:, None]).to(tl.float32)
            g = (p - onehot) * (4.0 * e * r * r) * row[:, None]              # softcap' = 1 - tanh^2 = 4 e r^2
            g8 = tl.minimum(tl.maximum(g, -fmax), fmax).to(g_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
            tl.store(g_row + cols[None, :], g8, mask=mask)

    @triton.jit
    def _relu2_value(h_ptr, dh_ptr, offs, mask, GRAD: tl.constexpr):
        h = tl.maximum(tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
        if GRAD:
            return 2.0 * h * tl.load(dh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        return h * h

    @triton.jit
    def _relu2_amax_kernel(h_ptr, dh_ptr, hist_ptr, amax_ptr, n, GRAD: tl.constexpr, BLOCK: tl.constexpr):
        if tl.load(hist_ptr) == 0.0:                                        # no history: measure first
            m = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
                offs = start + tl.arange(0, BLOCK)
                m = tl.maximum(m, tl.abs(_relu2_value(h_ptr, dh_ptr, offs, offs < n, GRAD)))
            tl.atomic_max(amax_ptr, tl.max(m))

    @triton.jit
    def _relu2_fp8_kernel(h_ptr, dh_ptr, hist_ptr, amax_ptr, x8_ptr, inv_ptr, n, margin, fmax,
                          GRAD: tl.constexpr, BLOCK: tl.constexpr):
        hist = tl.load(hist_ptr)
        scale = fmax / tl.maximum(tl.where(hist > 0.0, hist * margin, tl.load(amax_ptr)), 1e-12)
        if tl.program_id(0) == 0:
            tl.store(inv_ptr, 1.0 / scale)
        m = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            x = _relu2_value(h_ptr, dh_ptr, offs, mask, GRAD)
            m = tl.maximum(m, tl.abs(x))
            x8 = tl.minimum(tl.maximum(x * scale, -fmax), fmax).to(x8_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
            tl.store(x8_ptr + offs, x8, mask=mask)
        tl.atomic_max(amax_ptr, tl.max(m))      # this call's amax, for the next call's scale; in the first call
                                                # it equals what the amax pass stored, which is why the read above
                                                # is safe while other programs update it

    @triton.jit
    def _transpose_kernel(x_ptr, y_ptr, M, V, BM: tl.constexpr, BV: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        cols = tl.program_id(1) * BV + tl.arange(0, BV)
        mask = (rows < M)[:, None] & (cols < V)[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * V + cols[None, :], mask=mask)
        tl.store(y_ptr + cols[:, None].to(tl.int64) * M + rows[None, :], tl.trans(x), mask=tl.trans(mask))


class Float8Head(nn.Linear):
    """The output layer (no bias) whose training loss has an fp8 backward; same parameters as nn.Linear.

    Calling it gives the ordinary logits (evaluation, sampling). The GPT calls `softcap_cross_entropy` instead
    when it trains, so that the loss and its gradient come out of one function that knows the gradient's bound.
    """

    input_bound = None   # a known bound on |input| (the GPT's final RMSNorm: sqrt(in_features))

    def softcap_cross_entropy(self, x, targets, softcap):
        return _Float8SoftcapCrossEntropy.apply(x.reshape(-1, x.size(-1)), self.weight, targets.reshape(-1),
                                                softcap, self.input_bound)


class Float8MLP(MLP):
    """The GPT's MLP trained through _Float8ReluSquaredMLP; c_fc and c_proj are Float8Linear (plain bf16 matmuls
    under no_grad). Its one piece of state, the amax history `amax` (activation, gradient), is a non-persistent
    buffer, so the model's checkpoint stays that of a plain GPT; a training run that resumes carries the
    histories beside its optimizer state instead (`amax_histories` / `load_amax_histories`)."""

    amax: torch.Tensor

    def forward(self, x):
        if not torch.is_grad_enabled():
            return super().forward(x)
        y = _Float8ReluSquaredMLP.apply(x.reshape(-1, x.size(-1)), self.c_fc.weight, self.c_proj.weight,
                                        _out_dtype(x), self.c_fc.input_bound, self.amax)
        return y.view(*x.shape[:-1], y.size(-1))


def convert_to_float8(model: nn.Module, skip=("lm_head",), unit_rms_inputs=("c_q", "c_k", "c_v", "c_fc", "lm_head"),
                      head="lm_head", blocks=True) -> int:
    """Turn the model's nn.Linear layers (except those named in `skip`) into Float8Linear, in place.

    `head`, the name of the output layer ("lm_head" in the GPT; None for none), turns that one into a Float8Head
    instead: its forward stays bf16 and its loss gradient goes through fp8. `blocks=False` converts only the head.
    Layers named in `unit_rms_inputs` read the output of the parameter-free RMSNorm (in the GPT: q, k, v, the
    MLP's up projection and the lm_head), whose rows have RMS <= 1, so |x| <= sqrt(in_features): their input
    scale is fixed from that bound. Pass `unit_rms_inputs=()` for a model where that does not hold.
    The class is swapped on the existing modules, so parameters, optimizer groups and checkpoint keys stay the
    same. Returns how many layers were converted.
    """
    n = 0
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        is_head = head is not None and short == head
        if type(module) is not nn.Linear or not (is_head or (blocks and short not in skip)):
            continue
        if module.bias is not None:
            raise ValueError(f"{name}: the fp8 layers have no bias path (the GPT has no biases)")
        out_f, in_f = module.weight.shape
        if in_f % 16 or out_f % 16:
            # cuBLAS fp8 needs every matrix dimension that is a leading dimension to be a multiple of 16
            raise ValueError(f"{name}: fp8 matmuls need both dimensions divisible by 16, got {out_f} x {in_f}")
        module.__class__ = Float8Head if is_head else Float8Linear
        if short in unit_rms_inputs:
            module.input_bound = math.sqrt(in_f)
        n += 1
    for name, module in model.named_modules():
        if blocks and type(module) is MLP and type(module.c_fc) is type(module.c_proj) is Float8Linear:
            if module.c_fc.weight.is_meta:
                raise ValueError(f"{name}: convert after the weights are materialised (the MLP gets a buffer)")
            module.__class__ = Float8MLP
            module.register_buffer("amax", torch.zeros(2, device=module.c_fc.weight.device), persistent=False)
    return n


def amax_histories(model: nn.Module) -> dict[str, torch.Tensor]:
    """The delayed-scaling state of every Float8MLP, by module name: what a resumable checkpoint must keep so the
    first micro-step after a resume casts with the same scales as the uninterrupted run would. Each DDP rank
    measures its own gradients, so each rank saves its own."""
    return {name: m.amax.detach().cpu().clone() for name, m in model.named_modules() if isinstance(m, Float8MLP)}


def load_amax_histories(model: nn.Module, histories: dict[str, torch.Tensor]) -> None:
    """Put back what amax_histories saved; the model must have the same Float8MLP modules."""
    mlps = {name: m for name, m in model.named_modules() if isinstance(m, Float8MLP)}
    if mlps.keys() != histories.keys():
        raise ValueError(f"the checkpoint's fp8 amax histories are for {len(histories)} MLPs, "
                         f"this model has {len(mlps)} fp8 MLPs")
    for name, m in mlps.items():
        m.amax.copy_(histories[name])


def fp8_supported(device) -> bool:
    """Whether torch._scaled_mm runs here: Hopper or newer GPUs (compute capability >= 8.9), and CPUs whose
    PyTorch build implements it (tests use the CPU path)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 9)
    try:
        a = torch.zeros(16, 16, dtype=E4M3)
        one = torch.ones((), dtype=torch.float32)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
        return True
    except (RuntimeError, NotImplementedError):
        return False
