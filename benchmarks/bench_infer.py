"""
Decode speed of the Engine on one GPU: TTFT, per-token latency, tok/s and memory-bandwidth utilisation.

    python -m benchmarks.bench_infer                       # d20, batches 1 8 32 64 128, on the current GPU
    python -m benchmarks.bench_infer --depth 4 --batches 1 4 --gen 32 --device cpu   # a smoke run anywhere

Random weights (speed does not depend on what the weights say), a stand-in tokenizer with no stop tokens (every
row generates exactly --gen tokens). For each batch size: one warm-up generation (captures the CUDA graphs of
every attention bucket), then a timed one.
- TTFT: call -> first column of tokens (prefill of --prompt tokens at batch 1 + the first sample)
- per-token latency: mean time per decode step after the first token; tok/s = batch / latency
- bandwidth: bytes one step must move (bf16 matmul weights + the K/V the step attends over) / latency, against
  the card's peak (H100 SXM 3.35 TB/s). This is the number that says how close to the hardware decode is.
Measured on one H100 80GB HBM3: see benchmarks/RESULTS.md ("## Inference") and chapter 10.
"""
import argparse
import json
import os
import time

import torch

from nanochat import kernels
from nanochat.engine import Engine, StaticDecoder
from nanochat.gpt import GPT, config_for_depth

PEAK_BW = {"H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}   # bytes/s, data sheets


class NoStopTokenizer:
    """The engine asks for special tokens; having none means no row ever stops early."""

    def encode_special(self, s):
        raise KeyError(s)

    def encode(self, text):
        return [0]

    def decode(self, ids):
        return ""


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_generate(engine, prompt, batch, gen, device):
    sync(device)
    t0 = time.perf_counter()
    times = []
    for _ in engine.generate(prompt, num_samples=batch, max_tokens=gen, temperature=1.0, seed=0):
        times.append(time.perf_counter())     # the column is already on the host: .tolist() synchronised
    ttft = times[0] - t0
    per_tok = (times[-1] - times[0]) / max(1, len(times) - 1)
    return ttft, per_tok, len(times)


def step_bytes(model, batch, ctx, kv_bytes=2, w_bytes=2):
    c = model.config
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wte" not in n)
    kv = 2 * c.n_layer * batch * c.n_kv_head * (c.n_embd // c.n_head) * ctx * kv_bytes
    return matmul * w_bytes + kv, matmul * w_bytes, kv


def logit_gap(model, prompt):
    """Max |logits_fast - logits_plain| of one decode step after the same prefill, relative to the logits' std."""
    from nanochat.engine import KVCache
    c = model.config
    dims = dict(num_heads=c.n_kv_head, head_dim=c.n_embd // c.n_head, num_layers=c.n_layer)
    with torch.inference_mode(), torch.amp.autocast("cuda", dtype=torch.bfloat16):
        pre = KVCache(1, seq_len=len(prompt), **dims)
        model(torch.tensor([prompt], device="cuda"), kv_cache=pre)
        nxt = torch.tensor([[7]], device="cuda")
        plain = KVCache(1, seq_len=len(prompt) + 1, **dims)
        plain.prefill(pre)
        ref = model(nxt, kv_cache=plain)[:, -1].float()
        fast = StaticDecoder(model).start(1, len(prompt) + 1, pre)(nxt[:, 0]).float()
    gap = (ref - fast).abs().max().item()
    return f"max abs diff {gap:.4f}, logit std {ref.std().item():.4f}, argmax equal {bool(ref.argmax() == fast.argmax())}"


def profile(model, prompt):
    """Where a decode step's time goes: kernels of one eager step; replay-only time vs the full Engine step."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    from nanochat.engine import KVCache
    c = model.config
    for batch in (1, 64):
        dec = StaticDecoder(model)
        pre = KVCache(1, c.n_kv_head, len(prompt), c.n_embd // c.n_head, c.n_layer)
        with torch.inference_mode(), torch.amp.autocast("cuda", dtype=torch.bfloat16):
            model(torch.tensor([prompt], device="cuda"), kv_cache=pre)
            step = dec.start(batch, len(prompt) + 200, pre)
            ids = torch.zeros(batch, dtype=torch.long, device="cuda")
            for _ in range(5):
                step(ids)
            graph, _ = dec.graphs[max(dec.graphs)]
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(100):
                graph.replay()
            torch.cuda.synchronize()
            print(f"B={batch}: graph replay alone {(time.perf_counter() - t) * 10:.3f} ms/step", flush=True)
            if batch == 1:
                bucket = max(dec.graphs)
                with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                    dec._forward(bucket)
                    torch.cuda.synchronize()
                events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                print(f"eager step: {len(events)} kernels, {sum(e.device_time for e in events) / 1e3:.3f} ms of kernel time")
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compare-eager", type=int, nargs="*", default=[1, 64],
                    help="batches at which to also time the plain (eager, dynamic-shape cache) path")
    ap.add_argument("--compare-unfused", type=int, nargs="*", default=[1, 64],
                    help="batches at which to also time StaticDecoder with the Triton kernels off (before/after)")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--profile", action="store_true", help="kernel table of one eager decode step, graph-only timing")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = config_for_depth(args.depth)
    with torch.device(device):
        model = GPT(config)
    model.init_weights()
    with torch.no_grad():   # init_weights zeroes the output projections; random weights give realistic work
        for p in model.parameters():
            if p.dim() == 2 and p.abs().max() == 0:
                p.normal_(0, 0.02)
    model.eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((bw for key, bw in PEAK_BW.items() if key in name), None)
    print(f"device: {name}  torch {torch.__version__}  depth {args.depth}  params "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M  prompt {args.prompt}  gen {args.gen}")
    prompt = torch.randint(0, config.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    tok = NoStopTokenizer()

    rows = []

    def run(label, engine, batch, gen):
        engine.generate_batch(prompt, num_samples=batch, max_tokens=gen)            # warm-up / graph capture
        ttft, per_tok, n = timed_generate(engine, prompt, batch, gen, device)
        ctx = args.prompt + n / 2                                                  # mean attended length
        # without the Triton kernels, SDPA reads whole 128-position buckets; the fused kernel reads what is filled
        if isinstance(engine._static, StaticDecoder) and not kernels.use_triton(engine._static.k_cache):
            b = StaticDecoder.bucket_size
            ctx = sum(((args.prompt + i) // b + 1) * b for i in range(n - 1)) / max(1, n - 1)
        total, w, kv = step_bytes(model, batch, ctx)
        bw = total / per_tok
        row = dict(path=label, batch=batch, ttft_ms=ttft * 1e3, ms_per_token=per_tok * 1e3,
                   tok_per_s=batch / per_tok, GB_per_step=total / 1e9, TB_per_s=bw / 1e12,
                   bw_util=(bw / peak) if peak else None)
        rows.append(row)
        util = f"{row['bw_util'] * 100:5.1f}%" if peak else "  n/a"
        print(f"{label:>14} B={batch:<4} TTFT {row['ttft_ms']:8.2f} ms  {row['ms_per_token']:7.3f} ms/token  "
              f"{row['tok_per_s']:10.0f} tok/s  {row['GB_per_step']:.3f} GB/step  {row['TB_per_s']:.2f} TB/s  {util}",
              flush=True)

    fast = Engine(model, tok, fast=device.type == "cuda")
    for batch in args.batches:
        run("static+graphs" if fast.fast else "plain", fast, batch, args.gen)
    print("\nwhat the paths are: plain = model.forward with the growing KVCache (eager, like upstream); "
          "static+graphs = StaticDecoder, CUDA graph per attention bucket, "
          "Triton-fused elementwise kernels (nanochat/kernels.py); graphs, unfused = the same without them", flush=True)
    if device.type == "cuda":
        plain = Engine(model, tok, fast=False)
        for batch in args.compare_eager:
            run("plain (eager)", plain, batch, min(args.gen, 64))
        # the fast path must agree with the model: first-step logits and greedy tokens
        with torch.inference_mode():
            a = plain.generate_batch(prompt, max_tokens=32, temperature=0.0)[0][0][args.prompt:]
            b = fast.generate_batch(prompt, max_tokens=32, temperature=0.0)[0][0][args.prompt:]
        agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        print(f"greedy agreement fast vs plain (bf16): first {agree} of {len(a)} tokens identical")
        print(f"first decode step, fast vs plain logits: {logit_gap(model, prompt)}")
        os.environ["NANOCHAT_NO_TRITON"] = "1"      # the same decoder, elementwise ops unfused (as before)
        try:
            unfused = Engine(model, tok, fast=True)
            for batch in args.compare_unfused:
                run("graphs, unfused", unfused, batch, args.gen)
        finally:
            del os.environ["NANOCHAT_NO_TRITON"]
    if args.profile and device.type == "cuda":
        profile(model, prompt)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, depth=args.depth, prompt=args.prompt,
                           gen=args.gen, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
