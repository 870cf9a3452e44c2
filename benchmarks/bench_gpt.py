"""
Forward + backward of the GPT at one size: step time, tokens/s, MFU and peak memory.

The chapter 5 "on a GPU" check: d20, batch 8 x 2048, bf16 autocast, with torch.compile.

    python -m benchmarks.bench_gpt                       # d20, 8 x 2048, compiled, on cuda
    python -m benchmarks.bench_gpt --no-compile          # eager, for comparison
    python -m benchmarks.bench_gpt --depth 2 --batch-size 2 --seq-len 128 --device cpu --steps 3   # smoke test

Prints one line per setting and a markdown row for benchmarks/RESULTS.md. No optimizer step: this measures the
model (the optimizer is the pretrain benchmark's business), and peak memory counts parameters + gradients +
activations, not optimizer state.
"""
import argparse
import time

import torch

from nanochat.common import peak_flops
from nanochat.gpt import GPT, config_for_depth


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--vocab-size", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after warmup)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = config_for_depth(args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    n = model.num_params()
    flops_per_token = model.estimate_flops()
    print(f"d{args.depth}: n_embd={cfg.n_embd} n_head={cfg.n_head} params={n['total']:,} "
          f"(matmul {n['matmul']:,}) flops/token={flops_per_token:.3e}")
    step_model = torch.compile(model, dynamic=False) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    x = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), device=device)
    y = torch.roll(x, -1, dims=1)

    def step():
        with autocast:
            loss = step_model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=False)   # keep the grad buffers, as training does between steps
        return loss

    t0 = time.time()
    for _ in range(args.warmup):
        step()
    sync(device)
    print(f"warmup ({args.warmup} steps{', incl. compile' if args.compile else ''}): {time.time() - t0:.1f}s")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    for _ in range(args.steps):
        loss = step()
    sync(device)
    dt = (time.time() - t0) / args.steps
    tokens = args.batch_size * args.seq_len
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    promised = peak_flops(device) if device.type == "cuda" else None
    mfu = flops_per_token * tokens / dt / promised if promised else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"step {dt * 1000:.1f} ms | {tokens / dt:,.0f} tok/s | MFU {100 * mfu:.1f}% | "
          f"peak mem {peak:.2f} GiB | loss {loss.item():.3f} | {name} torch {torch.__version__}")
    print(f"| bench_gpt fwd+bwd | d{args.depth} B={args.batch_size} T={args.seq_len} {'bf16' if device.type == 'cuda' else 'fp32'} "
          f"{'compiled' if args.compile else 'eager'} | {name} | {dt * 1000:.1f} ms/step | "
          f"{tokens / dt:,.0f} tok/s | MFU {100 * mfu:.1f}% | peak {peak:.2f} GiB |")


if __name__ == "__main__":
    main()
