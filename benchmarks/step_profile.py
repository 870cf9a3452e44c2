"""
Where one training step's time goes: run it under torch.profiler and add up the GPU kernels by kind.

Used by `python -m benchmarks.bench_train --profile` (one profiled step after the timed ones). The kinds are the
ones benchmarks/RESULTS.md reasons with: cuBLAS matmuls, attention, Inductor's generated Triton kernels, our own
Triton kernels (nanochat.fp8), optimizer kernels, copies, and the rest. On a GPU it also reports the span from
the first kernel's start to the last one's end and the idle time inside it: a step whose GPU is never idle gains
nothing from overlapping the host (loader, launches) with it. On the CPU there are no kernels; the same table is
made from the operators' self times, which is only good for checking that the code runs.
"""
import re
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

# First match wins. Inductor names its kernels after the ops they fuse ("triton_red_fused_..._attention_..."), so
# it comes first; attention before matmuls, since cuDNN's attention kernels carry "sm90" in their names too.
_RULES = [
    ("inductor", r"^triton_"),
    ("attention", r"sdpa|fmha|flash|attention|attn"),
    ("matmul", r"gemm|nvjet|xmma|cutlass|cublas|splitkreduce|^aten::(mm|addmm|bmm|_scaled_mm)$"),
    ("optimizer", r"multi_tensor_apply|foreach|adam"),
    ("copies", r"^memcpy|^memset|copy_kernel|^aten::copy_$"),
    ("aten elementwise", r"at::native|elementwise|reduce_kernel"),
]


def _our_kernels() -> set[str]:
    """The names of the Triton kernels nanochat.fp8 defines (their launches carry these names)."""
    from nanochat import fp8
    return {name for name, v in vars(fp8).items() if type(v).__name__ == "JITFunction"}


def kind_of(name: str, ours: frozenset[str] | set[str] = frozenset()) -> str:
    """The kind of one kernel (or, on the CPU, one operator) from its name."""
    if name in ours:
        return "ours (Triton)"
    for kind, pattern in _RULES:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def profile_step(step, device: torch.device, top: int = 12) -> dict:
    """Run `step()` once under the profiler; milliseconds by kind, the largest kernels, and idle time."""
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    sync()
    with profile(activities=activities) as prof:
        step()
        sync()
    ours = _our_kernels()
    if on_gpu:
        spans = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA]
    else:   # operators' self times (nested operators would otherwise count twice)
        spans = [(0.0, e.self_cpu_time_total, e.name) for e in prof.events() if e.self_cpu_time_total > 0]
    by_kind, by_name, calls = defaultdict(float), defaultdict(float), defaultdict(int)
    for start, end, name in spans:
        by_kind[kind_of(name, ours)] += (end - start) / 1000
        by_name[name] += (end - start) / 1000
        calls[name] += 1
    rec = {"what": "profile", "device": str(device), "events": len(spans),
           "busy_ms": round(sum(by_kind.values()), 2),
           "by_kind_ms": {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
           "top": [[name[:90], kind_of(name, ours), round(ms, 2), calls[name]]
                   for name, ms in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]]}
    if on_gpu and spans:
        spans.sort()
        gaps, end = [], spans[0][1]
        for s, e, _ in spans[1:]:
            gaps.append(max(0.0, s - end))
            end = max(end, e)
        rec.update(span_ms=round((end - spans[0][0]) / 1000, 2), idle_ms=round(sum(gaps) / 1000, 2),
                   largest_gap_ms=round(max(gaps, default=0.0) / 1000, 3))
    return rec


def markdown(rec: dict) -> str:
    """The by-kind table of one profile record, for benchmarks/RESULTS.md."""
    busy = rec["busy_ms"] or 1.0
    rows = [f"| {k} | {ms:.1f} | {100 * ms / busy:.0f}% |" for k, ms in rec["by_kind_ms"].items()]
    head = "| kind | ms per step | share |\n|---|---|---|"
    tail = (f"\n\nkernel time {rec['busy_ms']:.1f} ms over a span of {rec['span_ms']:.1f} ms "
            f"(idle {rec['idle_ms']:.1f} ms, largest gap {rec['largest_gap_ms']:.2f} ms)" if "span_ms" in rec else "")
    return "\n".join([head, *rows]) + tail
