"""
The training step's own Triton kernels (nanochat/fp8.py) against what PyTorch makes of the same arithmetic.

    python -m benchmarks.bench_kernels                      # d12 and d20 shapes on the GPU (~1 min on an H100)
    python -m benchmarks.bench_kernels --device cpu --tokens 512 --vocab-size 1024 --depths 2 --no-compile  # smoke

Each kernel is timed three ways in one process, on the shapes of one training micro-batch (32 x 2048 = 65,536
tokens by default):
- ours: the package's op as training calls it (Triton on a GPU);
- Inductor: torch.compile of the op's PyTorch path -- the same function the CPU runs and the tests compare
  against (`_relu2_cast_pytorch`, `_softcap_ce_pytorch`), plus the transposed copy where the op returns one;
- eager: that PyTorch path uncompiled (at the loss's full shape it needs ~10 fp32 copies of the logits and may
  not fit: the row then says so).
The ratios are peer ms / ours ms (above 1: ours is faster). `codes differ` is the fraction of fp8 codes in which
ours and eager disagree (0 where the arithmetic is the same; a GPU's approximate exp may move a code by one).
`GB/s` counts each input read once and each output written once: the least memory traffic the op can have.

Kernels: `loss` -- softcap_ce_fp8 at (tokens, vocab): each row's logsumexp and the e5m2 logits gradient in both
layouts; `mlp_act` -- relu2_fp8 at (tokens, 4C): relu(h)^2 to e4m3 with a delayed scale; `mlp_grad` --
relu2_grad_fp8: dh * 2 relu(h) to e5m2, both layouts; `transpose` -- the fp8 transposed copy (_transposed).
Writes one JSON line per measurement (and to --out), then a markdown table for benchmarks/RESULTS.md.
"""
import argparse
import os
import statistics
import time

import torch

from benchmarks.bench_train import log   # one JSON line to stdout and --out
from nanochat import fp8 as F8
from nanochat.gpt import GPT, config_for_depth
from nanochat.kernels import triton, use_triton

SOFTCAP = GPT.softcap   # the GPT's logit softcap


def time_ms(fn, device, reps):
    """Median milliseconds of fn(): Triton's do_bench on a GPU (CUDA events, the L2 cache flushed between
    calls), a wall-clock loop on a CPU."""
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=max(reps, 25) * 4, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def codes_differ(a, b):
    """Fraction of fp8 codes where two tensors disagree."""
    return (a.view(torch.uint8) != b.view(torch.uint8)).float().mean().item()


def cases(args, device):
    """(name, shape, ours, peer, inputs, compare) for each kernel and shape; peer is the PyTorch path, compare
    takes (ours' result, eager's result) and returns the fraction of codes that differ."""
    M = args.tokens
    torch.manual_seed(0)
    z = (torch.randn(M, args.vocab_size, device=device) * 4).to(torch.bfloat16)
    t = torch.randint(0, args.vocab_size, (M,), device=device)
    t[: M // 64] = -1                                                   # some ignored rows, as in SFT batches

    def loss_peer(z, t):
        lse, g8 = F8._softcap_ce_pytorch(z, t, SOFTCAP)
        return lse, g8, g8.t().contiguous()

    yield ("loss", (M, args.vocab_size), lambda z, t: F8.softcap_ce_fp8(z, t, SOFTCAP), loss_peer, (z, t),
           lambda a, b: codes_differ(a[1], b[1]))
    del z, t
    for depth in args.depths:
        N = 4 * config_for_depth(depth).n_embd
        h = torch.randn(M, N, device=device).to(torch.bfloat16)
        dh = (torch.randn(M, N, device=device) * 1e-3).to(torch.bfloat16)
        # a history as training has it after its first micro-step: the amaxes of these very tensors
        hist = torch.zeros(2, device=device)
        F8.relu2_fp8(h, hist)
        F8.relu2_grad_fp8(dh, h, hist)

        def act_peer(h, hist):
            return F8._relu2_cast_pytorch(h, None, hist[0], F8.E4M3)

        def grad_peer(dh, h, hist):
            g8, inv = F8._relu2_cast_pytorch(h, dh, hist[1], F8.E5M2)
            return g8, g8.t().contiguous(), inv

        yield ("mlp_act", (M, N), F8.relu2_fp8, act_peer, (h, hist.clone()), lambda a, b: codes_differ(a[0], b[0]))
        yield ("mlp_grad", (M, N), F8.relu2_grad_fp8, grad_peer, (dh, h, hist.clone()),
               lambda a, b: codes_differ(a[0], b[0]))
        x8 = h.to(F8.E4M3)
        yield ("transpose", (M, N), F8._transposed, lambda x: x.t().contiguous(), (x8,),
               lambda a, b: codes_differ(a, b))


def measure(name, shape, ours, peer, inputs, compare, args, device):
    rec = {"what": "kernel", "kernel": name, "shape": list(shape)}
    out = ours(*inputs)
    rec["ours_ms"] = round(time_ms(lambda: ours(*inputs), device, args.reps), 4)
    rec["min_bytes"] = nbytes(*inputs) + nbytes(*(out if isinstance(out, tuple) else (out,)))
    rec["ours_gb_s"] = round(rec["min_bytes"] / rec["ours_ms"] / 1e6, 1)
    peers = {"eager": peer}
    if args.compile:
        peers["inductor"] = torch.compile(peer, dynamic=False)
    for label, fn in peers.items():
        try:
            ref = fn(*inputs)
            rec[f"{label}_ms"] = round(time_ms(lambda: fn(*inputs), device, args.reps), 4)
            rec[f"{label}_ratio"] = round(rec[f"{label}_ms"] / rec["ours_ms"], 3)
            if label == "eager":
                rec["codes_differ"] = compare(out, ref)
            del ref
        except torch.OutOfMemoryError:
            rec[f"{label}_ms"] = "out of memory"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def table(rows):
    def fmt(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else str(v) if v is not None else "-"
    lines = ["| kernel | shape | ours ms | GB/s | Inductor ms | eager ms | Inductor / ours | eager / ours "
             "| codes differ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {' x '.join(f'{d:,}' for d in r['shape'])} | {fmt(r['ours_ms'], '.3f')} "
                     f"| {fmt(r['ours_gb_s'], ',.0f')} | {fmt(r.get('inductor_ms'), '.3f')} "
                     f"| {fmt(r.get('eager_ms'), '.3f')} | {fmt(r.get('inductor_ratio'), '.2f')} "
                     f"| {fmt(r.get('eager_ratio'), '.2f')} | {fmt(r.get('codes_differ'), '.2g')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=32 * 2048, help="rows: the tokens of one micro-batch")
    ap.add_argument("--vocab-size", type=int, default=65536)
    ap.add_argument("--depths", type=lambda s: [int(d) for d in s.split(",")], default=[12, 20],
                    help="the MLP widths are 4 x n_embd of these depths")
    ap.add_argument("--reps", type=int, default=20,
                    help="timed calls on a CPU; on a GPU, do_bench times calls for 4 ms x reps (at least 100 ms)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also time torch.compile (Inductor) of each PyTorch path")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = torch.device(args.device)
    probe = torch.empty(1, device=device)
    log(args.out, {"what": "env", "torch": torch.__version__, "triton": triton.__version__ if triton else None,
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "ours_is_triton": use_triton(probe), "no_triton": os.environ.get("NANOCHAT_NO_TRITON") == "1"})
    rows = []
    for case in cases(args, device):
        rows.append(measure(*case, args=args, device=device))
        log(args.out, rows[-1])
        del case      # so that the generator's own del frees the loss's (tokens, vocab) logits before the MLP rows
    print(table(rows))


if __name__ == "__main__":
    main()
