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
- master weights, optimizer state, norms, attention, the loss and the lm_head stay as they were (fp32 parameters,
  bf16 autocast): the logits are the most precision-sensitive matmul and they feed the loss directly.
Scales are recomputed from the data every call (no amax history), so the layer has no state: checkpoints, resume
and the bf16 model used for evaluation are unchanged. One exception saves a pass over the data: a layer whose
input comes straight out of the parameter-free RMSNorm (q, k, v and the MLP's up projection) knows a bound in
advance -- a row of K values with RMS <= 1 has no |value| above sqrt(K) -- so its input scale is a constant and
the cast fuses into the norm's kernel instead of waiting for a global amax (d20: +3.5% tokens/s, measured in
benchmarks/RESULTS.md). Under `torch.no_grad()` (evaluation, sampling) the layer runs the ordinary bf16 matmul:
fp8 is a training-speed device, and what we evaluate is the model we ship.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn   # forward operands
E5M2 = torch.float8_e5m2     # gradients


def to_fp8(x: torch.Tensor, dtype: torch.dtype, bound=None):
    """Scale x so its largest |value| maps to dtype's max, round to fp8; return (x_fp8, inverse scale).

    `bound`, when given (a float known in advance), replaces the largest |value|: no reduction over x has to
    finish before the cast, so the cast can fuse into the kernel that produces x.
    """
    fmax = torch.finfo(dtype).max
    if bound is None:
        bound = x.detach().abs().amax().float()
    else:
        bound = torch.full((), bound, device=x.device)
    # An all-zero tensor (a zero-initialised projection at step 0) would give an infinite scale: clamp it.
    scale = fmax / bound.clamp(min=1e-12)
    # The clamp matters: e4m3fn has no infinity, so an out-of-range value would become NaN instead of saturating.
    x8 = (x.float() * scale).clamp(-fmax, fmax).to(dtype)
    return x8, scale.reciprocal()


def _mm(a8, a_inv, b8, b_inv, out_dtype):
    """a @ b in fp8 with fp32 accumulation; a must be row-major and b column-major (cuBLAS's fp8 layout rule)."""
    return torch._scaled_mm(a8, b8, scale_a=a_inv, scale_b=b_inv, out_dtype=out_dtype)


class _Float8Matmul(torch.autograd.Function):
    """y = x @ w.T with x (M, K), w (N, K); all three matmuls in fp8. x_bound: a known bound on |x|, or None."""

    @staticmethod
    def forward(ctx, x, w, out_dtype, x_bound):
        x8, x_inv = to_fp8(x, E4M3, x_bound)
        w8, w_inv = to_fp8(w, E4M3)
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.dtypes = x.dtype, w.dtype
        return _mm(x8, x_inv, w8.t(), w_inv, out_dtype)      # w8.t() is a column-major view: no copy

    @staticmethod
    def backward(ctx, g):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        g8, g_inv = to_fp8(g, E5M2)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            # dx (M, K) = g (M, N) @ w (N, K); w must be column-major: transpose-copy the (small) fp8 weight
            dx = _mm(g8, g_inv, w8.t().contiguous().t(), w_inv, x_dtype)
        if ctx.needs_input_grad[1]:
            # dW (N, K) = g^T (N, M) @ x (M, K): both big operands need their transposed layouts
            dw = _mm(g8.t().contiguous(), g_inv, x8.t().contiguous().t(), x_inv, w_dtype)
        return dx, dw, None, None


class Float8Linear(nn.Linear):
    """nn.Linear (no bias) whose training matmuls run in fp8; same parameters and state_dict as nn.Linear."""

    input_bound = None   # a known bound on |input| (set by convert_to_float8 for RMS-normalised inputs)

    def forward(self, x):
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight)
        # autocast decides the output dtype as it would for nn.Linear (bf16 on the GPU), else the input's
        dev = x.device.type
        out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        y = _Float8Matmul.apply(x.reshape(-1, x.size(-1)), self.weight, out_dtype, self.input_bound)
        return y.view(*x.shape[:-1], y.size(-1))


def convert_to_float8(model: nn.Module, skip=("lm_head",), unit_rms_inputs=("c_q", "c_k", "c_v", "c_fc")) -> int:
    """Turn the model's nn.Linear layers (except those named in `skip`) into Float8Linear, in place.

    Layers named in `unit_rms_inputs` read the output of the parameter-free RMSNorm (in the GPT: q, k, v and the
    MLP's up projection), whose rows have RMS <= 1, so |x| <= sqrt(in_features): their input scale is fixed from
    that bound. Pass `unit_rms_inputs=()` for a model where that does not hold.
    The class is swapped on the existing modules, so parameters, optimizer groups and checkpoint keys stay the
    same. Returns how many layers were converted.
    """
    n = 0
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if type(module) is not nn.Linear or short in skip:
            continue
        if module.bias is not None:
            raise ValueError(f"{name}: Float8Linear has no bias path (the GPT has no biases)")
        out_f, in_f = module.weight.shape
        if in_f % 16 or out_f % 16:
            # cuBLAS fp8 needs every matrix dimension that is a leading dimension to be a multiple of 16
            raise ValueError(f"{name}: fp8 matmuls need both dimensions divisible by 16, got {out_f} x {in_f}")
        module.__class__ = Float8Linear
        if short in unit_rms_inputs:
            module.input_bound = math.sqrt(in_f)
        n += 1
    return n


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
