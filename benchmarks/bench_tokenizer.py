"""
Tokenizer benchmark: training time and encode throughput of rustbpe vs HF `tokenizers` vs tiktoken vs the
Python reference, on the offline prose fixture (../shared/data; 16M chars of train shards).

    python -m benchmarks.bench_tokenizer                       # the full run (~1-2 min on 2 cores)
    python -m benchmarks.bench_tokenizer --max-chars 2000000 --vocab-sizes 4096 --py-max-chars 100000
    python -m benchmarks.bench_tokenizer --max-chars 500000 --vocab-sizes 1024 --py-max-chars 20000 \
        --py-vocab-size 300 --encode-chars 200000 --repeats 1     # smoke (~2 s)

Training: rustbpe (`rustbpe.Tokenizer.train_from_iterator`) vs HF `tokenizers` (BpeTrainer, same split regex,
byte-level alphabet, no specials) at each vocab size; the Python reference (`nanochat.bpe`, full recount per
merge) only on a slice (`--py-max-chars`, `--py-vocab-size`) because it is ~1000x slower, with rustbpe
timed on the same slice. Every timing prints wall seconds and process CPU seconds (all threads): on a busy
shared machine the CPU seconds are the steadier number. Encoding: MB/s of UTF-8 input for single calls
(one text at a time) and batch calls (all texts at once, parallel) with ranks trained by rustbpe.
Each section prints a markdown table for benchmarks/RESULTS.md and one JSON line per measurement (tests read them).
"""
import argparse
import glob
import json
import os
import platform
import resource
import time

PROSE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hf-mirror", "datasets",
                     "nanochat-fixtures", "prose-mix", "resolve", "main")


def record(what, **fields):
    """One JSON line per measurement, so tests and scripts need not parse the tables."""
    print(json.dumps({"what": what, **fields}), flush=True)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, repeats=1):
    """(result, best wall seconds, CPU seconds of that run)."""
    best = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), cpu_seconds()
        out = fn()
        w, c = time.perf_counter() - w0, cpu_seconds() - c0
        if best is None or w < best[1]:
            best = (out, w, c)
    return best


def load_texts(max_chars: int, prose_dir: str = PROSE) -> list:
    """Documents of the train shards (all but the last) until `max_chars` characters."""
    import pyarrow.parquet as pq
    paths = sorted(glob.glob(os.path.join(prose_dir, "shard_*.parquet")))[:-1]
    if not paths:
        raise FileNotFoundError(f"no prose fixture under {prose_dir} (needs ../shared/data)")
    out, n = [], 0
    for p in paths:
        for t in pq.read_table(p, columns=["text"]).column("text").to_pylist():
            out.append(t[: max_chars - n])
            n += len(out[-1])
            if n >= max_chars:
                return out
    return out


def train_rust(texts, vocab_size, pattern):
    import rustbpe
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size, pattern=pattern)
    return tok


def train_hf(texts, vocab_size, pattern):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(byte_fallback=False, unk_token=None, fuse_unk=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=0,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    return tok


def train_python(texts, vocab_size, pattern):
    from nanochat.bpe import BPE
    return BPE().train(texts, vocab_size, pattern=pattern)


def fmt_row(cells, widths):
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"


def print_table(head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print(fmt_row(head, widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(fmt_row(r, widths))


def bench_training(texts, vocab_sizes, pattern, repeats):
    n_chars = sum(map(len, texts))
    rows, ratios, recs = [], [], []
    for v in vocab_sizes:
        tr, wr, cr = timed(lambda: train_rust(texts, v, pattern), repeats)
        th, wh, ch = timed(lambda: train_hf(texts, v, pattern), repeats)
        rows.append([f"{n_chars / 1e6:.1f}M", v, f"{wr:.2f} ({cr:.2f})", f"{wh:.2f} ({ch:.2f})",
                     f"{wh / wr:.1f}x ({ch / cr:.1f}x)"])
        ratios.append((v, wh / wr, ch / cr))
        recs.append(dict(chars=n_chars, vocab=v, rustbpe_s=wr, rustbpe_cpu_s=cr, hf_s=wh, hf_cpu_s=ch,
                         hf_over_rustbpe_wall=wh / wr, hf_over_rustbpe_cpu=ch / cr))
    print_table(["chars", "vocab", "rustbpe s (cpu)", "HF tokenizers s (cpu)", "HF / rustbpe wall (cpu)"], rows)
    for r in recs:
        record("train", **r)
    return ratios


def bench_python(texts, vocab_size, pattern):
    from nanochat.bpe import BPE
    n_chars = sum(map(len, texts))
    rust, wr, cr = timed(lambda: train_rust(texts, vocab_size, pattern), 3)
    ref, wp, cp = timed(lambda: train_python(texts, vocab_size, pattern))
    same = rust.get_merges() == ref.merges
    assert isinstance(ref, BPE)
    print_table(["chars", "vocab", "rustbpe s", "python s", "python / rustbpe", "identical merges"],
                [[f"{n_chars / 1e6:.2f}M", vocab_size, f"{wr:.3f}", f"{wp:.1f}", f"{wp / wr:.0f}x", same]])
    record("train_python", chars=n_chars, vocab=vocab_size, rustbpe_s=wr, python_s=wp, python_over_rustbpe=wp / wr,
           identical_merges=same)
    return wp / wr, same


def estimate_python_full(texts, vocab_size, pattern, probe_merges=4):
    """The Python reference on the full text would take hours; time its chunk counting plus `probe_merges`
    merges and extrapolate linearly to `vocab_size`. Later merges touch shorter words, so this overestimates."""
    from nanochat.bpe import BPE
    _, w_count, _ = timed(lambda: BPE().train(texts, 256, pattern=pattern))
    _, w_probe, _ = timed(lambda: BPE().train(texts, 256 + probe_merges, pattern=pattern))
    per_merge = (w_probe - w_count) / probe_merges
    return w_count + per_merge * (vocab_size - 256), w_count, per_merge


def bench_encode(texts, vocab_size, pattern, repeats):
    import tiktoken
    rust = train_rust(texts, vocab_size, pattern)
    ranks = {bytes(b): r for b, r in rust.get_mergeable_ranks()}
    enc = tiktoken.Encoding(name="bench", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    hf = train_hf(texts, vocab_size, pattern)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    threads = os.cpu_count() or 1
    cases = {
        "rustbpe": (lambda: [rust.encode(t) for t in texts], lambda: rust.batch_encode(texts)),
        "tiktoken": (lambda: [enc.encode_ordinary(t) for t in texts],
                     lambda: enc.encode_ordinary_batch(texts, num_threads=threads)),
        "HF tokenizers": (lambda: [hf.encode(t, add_special_tokens=False).ids for t in texts],
                          lambda: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]),
    }
    rows, speeds = [], {}
    for name, (single, batch) in cases.items():
        _, ws, _ = timed(single, repeats)
        _, wb, _ = timed(batch, repeats)
        speeds[name] = (mb / ws, mb / wb)
        rows.append([name, f"{mb / ws:.1f}", f"{mb / wb:.1f}"])
    assert rust.batch_encode(texts[:50]) == enc.encode_ordinary_batch(texts[:50]), "rustbpe != tiktoken ids"
    print_table([f"encoder ({mb:.1f} MB, vocab {vocab_size})", "single MB/s", f"batch MB/s ({threads} threads)"], rows)
    for name, (single, batch) in speeds.items():
        record("encode", encoder=name, mb=mb, vocab=vocab_size, single_mb_s=single, batch_mb_s=batch)
    return speeds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-chars", type=int, default=16_000_000)
    ap.add_argument("--vocab-sizes", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--py-max-chars", type=int, default=300_000)
    ap.add_argument("--py-vocab-size", type=int, default=1024)
    ap.add_argument("--encode-chars", type=int, default=4_000_000)
    ap.add_argument("--py-estimate", action="store_true",
                    help="also extrapolate the Python reference to the full text at the largest vocab")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prose-dir", default=PROSE)
    args = ap.parse_args(argv)
    from nanochat.tokenizer import SPLIT_PATTERN
    pattern = SPLIT_PATTERN
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}")
    texts = load_texts(args.max_chars, args.prose_dir)
    print("\n## Training")
    ratios = bench_training(texts, args.vocab_sizes, pattern, args.repeats)
    print("\n## Python reference (slice)")
    py_ratio, same = bench_python(load_texts(args.py_max_chars, args.prose_dir), args.py_vocab_size, pattern)
    est = None
    if args.py_estimate:
        v = args.vocab_sizes[-1]
        est, w_count, per_merge = estimate_python_full(texts, v, pattern)
        w_rust = timed(lambda: train_rust(texts, v, pattern))[1]
        print(f"Python reference, full text, vocab {v} (extrapolated): counting {w_count:.1f}s + "
              f"{per_merge:.2f}s/merge x {v - 256} merges = {est / 3600:.1f} h, {est / w_rust:,.0f}x rustbpe ({w_rust:.2f}s)")
    print("\n## Encoding")
    speeds = bench_encode(load_texts(args.encode_chars, args.prose_dir), args.vocab_sizes[-1], pattern, args.repeats)
    print("\n## Ratios")
    for v, rw, rc in ratios:
        print(f"training, vocab {v}: rustbpe is {rw:.1f}x faster than HF tokenizers (wall), {rc:.1f}x (CPU)")
    print(f"training, Python slice: rustbpe is {py_ratio:.0f}x faster than the Python reference; merges identical: {same}")
    if est is not None:
        print(f"training, full text (Python extrapolated): rustbpe is ~{est / w_rust:,.0f}x faster than the Python reference")
    r, t = speeds["rustbpe"], speeds["tiktoken"]
    print(f"encoding: rustbpe/tiktoken = {r[0] / t[0]:.2f}x single, {r[1] / t[1]:.2f}x batch")


if __name__ == "__main__":
    main()
