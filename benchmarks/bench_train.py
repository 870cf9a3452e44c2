"""
Pretraining throughput on one GPU: median step time, tokens/s and MFU of the real training step
(8 micro-batches of 32 x 2048 = 524,288 tokens, bf16 autocast, Muon + AdamW), plus the levers that move it,
plus the dataloader's own tokens/s on the machine's CPUs.

    python -m benchmarks.bench_train                           # everything (d12, d20, levers, loader) ~7 min H100
    python -m benchmarks.bench_train --only d12 --steps 3      # one configuration
    python -m benchmarks.bench_train --only d20 --fp8          # d20 with fp8 matmuls (H100)
    python -m benchmarks.bench_train --only d12 --fp8 --profile --no-loader   # + one step's kernels by kind
    python -m benchmarks.bench_train --device cpu --depths 2 --seq-len 128 --device-batch-size 2 \\
        --total-batch-size 512 --only default --no-loader --profile     # smoke test on a laptop

Data: synthetic token ids for the model (the step's cost does not depend on the values) and real parquet text
for the loader benchmark (NANOCHAT_BASE_DIR / NANOCHAT_PRETRAIN_DATASET, tokenizer from --loader-tokenizer).
FLOPs per token come from GPT.estimate_flops() (6N + 12*L*H*Dh*T, as upstream); MFU is against the card's
dense bf16 datasheet peak (nanochat.common.peak_flops, 989 TFLOP/s for an H100 SXM).
Writes one JSON line per measurement to --out (default: stdout only).
"""
import argparse
import json
import os
import statistics
import time

import torch

from nanochat.common import peak_flops
from nanochat.gpt import GPT, config_for_depth
from nanochat.muon import setup_optimizers


def log(out, rec):
    line = json.dumps(rec)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def sdpa_context(backend):
    if backend == "default":
        from contextlib import nullcontext
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend])


def bench_step(depth, args, device, compile_model=True, backend="default", compile_ns=True, fp8=False,
               profile=False):
    """Median time of full optimizer steps (grad accumulation included) for one configuration; with `profile`,
    one more step under torch.profiler, its kernel time by kind in rec["profile"] (benchmarks/step_profile.py)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = config_for_depth(depth, vocab_size=args.vocab_size, sequence_len=args.seq_len)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    if fp8:
        from nanochat.fp8 import convert_to_float8
        convert_to_float8(model)
    opts = setup_optimizers(model)
    opts[1].compiled = compile_ns and device.type == "cuda"
    cmodel = torch.compile(model, dynamic=False) if compile_model else model
    B, T = args.device_batch_size, args.seq_len
    accum = args.total_batch_size // (B * T)
    x = torch.randint(0, args.vocab_size, (B, T), device=device)
    y = torch.randint(0, args.vocab_size, (B, T), device=device)
    amp = torch.amp.autocast(device_type=device.type, dtype=torch.bfloat16) if device.type == "cuda" else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        for _ in range(accum):
            if amp:
                with amp:
                    loss = cmodel(x, y)
            else:
                loss = cmodel(x, y)
            (loss / accum).backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)

    times = []
    t_compile = time.time()
    with sdpa_context(backend):
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.time()
            step()
            sync()
            if i == 0:
                t_compile = time.time() - t_compile
            if i >= args.warmup:
                times.append(time.time() - t0)
        # the optimizer step alone (grads left in place from a last backward)
        if amp:
            with amp:
                loss = cmodel(x, y)
        else:
            loss = cmodel(x, y)
        loss.backward()
        opt_times = []
        for _ in range(5):
            sync()
            t0 = time.time()
            for o in opts:
                o.step()
            sync()
            opt_times.append(time.time() - t0)
        prof = None
        if profile:
            from benchmarks.step_profile import profile_step
            model.zero_grad(set_to_none=True)
            prof = profile_step(step, device)
    dt = statistics.median(times)
    fpt = model.estimate_flops()
    peak = peak_flops(device)
    rec = {"what": "train_step", "depth": depth, "params": sum(p.numel() for p in model.parameters()),
           "compile": compile_model, "sdpa": backend, "fp8": fp8, "ns_compiled": opts[1].compiled,
           "device_batch": B, "seq": T, "total_batch": accum * B * T, "accum": accum,
           "step_s_median": round(dt, 4), "step_s_all": [round(t, 4) for t in times],
           "tok_per_s": round(accum * B * T / dt), "flops_per_token": fpt,
           "mfu_pct": round(100 * fpt * accum * B * T / dt / peak, 2) if peak else None,
           "opt_step_ms": round(1000 * statistics.median(opt_times), 2),
           "first_step_s": round(t_compile, 1),
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}
    if prof:
        rec["profile"] = prof
    model = cmodel = opts = x = y = None   # release the GPU memory before emptying the cache (step() holds cells)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return rec


def bench_loader(args, device, threads):
    from nanochat.dataloader import tokenizing_distributed_data_loader
    from nanochat.tokenizer import RustBPETokenizer, get_tokenizer
    tok = RustBPETokenizer.from_pretrained(args.loader_tokenizer) if args.loader_tokenizer else get_tokenizer()
    stats = {}
    loader = tokenizing_distributed_data_loader(args.device_batch_size, args.seq_len, "train",
                                                tokenizer_threads=threads, device=device, tokenizer=tok,
                                                stats=stats)
    t0 = time.time()
    next(loader)
    first = time.time() - t0
    for _ in range(3):
        next(loader)
    n, t0 = 0, time.time()
    while time.time() - t0 < args.loader_seconds:
        x, y, _ = next(loader)
        n += x.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    loader.close()
    return {"what": "loader", "threads": threads, "cpus": os.cpu_count(), "tokenizer": args.loader_tokenizer or "base",
            "vocab": tok.get_vocab_size(), "B": args.device_batch_size, "T": args.seq_len,
            "tok_per_s": round(n / dt), "first_batch_s": round(first, 2), "seconds": round(dt, 1),
            "crop_frac": round(stats["cropped"] / max(1, stats["tokens"] + stats["cropped"]), 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--depths", default="12,20")
    ap.add_argument("--vocab-size", type=int, default=65536)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--device-batch-size", type=int, default=32)
    ap.add_argument("--total-batch-size", type=int, default=524288)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma list of: default, levers, d12, d20 (empty = all)")
    ap.add_argument("--fp8", action="store_true", help="the headline rows with fp8 block matmuls (nanochat.fp8)")
    ap.add_argument("--profile", action="store_true",
                    help="the headline rows also profile one step: GPU kernel time by kind, idle time, top kernels")
    ap.add_argument("--loader", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--loader-threads", default="16,4")
    ap.add_argument("--loader-seconds", type=float, default=15)
    ap.add_argument("--loader-tokenizer", default="", help="a tiktoken name (e.g. cl100k_base); empty = <base>")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    info = {"what": "env", "torch": torch.__version__, "device": torch.cuda.get_device_name(0)
            if device.type == "cuda" else "cpu", "cpus": os.cpu_count(), "peak_flops": peak_flops(device)}
    log(args.out, info)
    only = set(filter(None, args.only.split(",")))
    depths = [int(d) for d in args.depths.split(",")]
    headline = [dict(depth=d, fp8=args.fp8, profile=args.profile) for d in depths
                if not only or "default" in only or f"d{d}" in only]
    levers = []
    if not only or "levers" in only:
        d = depths[0]
        levers = [dict(depth=d, backend="cudnn"), dict(depth=d, backend="flash"), dict(depth=d, compile_ns=False),
                  dict(depth=d, compile_model=False), dict(depth=d, fp8=not args.fp8)]
    def run_step(kw):
        try:
            rec = bench_step(args=args, device=device, **kw)
        except Exception as e:   # keep measuring the rest
            log(args.out, {"what": "train_step", **kw, "error": repr(e)[:800]})
            return
        prof = rec.pop("profile", None)
        log(args.out, rec)
        if prof:
            from benchmarks.step_profile import markdown
            log(args.out, {**prof, "depth": rec["depth"], "fp8": rec["fp8"]})
            print(markdown(prof), flush=True)

    for kw in headline:                  # the headline numbers first, then the loader, then the levers
        run_step(kw)
    if args.loader and (not only or "loader" in only):
        for th in [int(t) for t in args.loader_threads.split(",")]:
            try:
                log(args.out, bench_loader(args, device, th))
            except Exception as e:
                log(args.out, {"what": "loader", "threads": th, "error": repr(e)[:500]})
    for kw in levers:
        run_step(kw)


if __name__ == "__main__":
    main()
