"""
Train the BPE tokenizer on the first `--max-chars` characters of the pretraining data.

    python -m scripts.tok_train                               # 2B chars, vocab 65,536 (the speedrun)
    python -m scripts.tok_train --max-chars 2000000 --vocab-size 4096    # the book's ci scale

Writes `<base>/tokenizer/tokenizer.pkl` (a pickled tiktoken Encoding) and `token_bytes.pt` (UTF-8 bytes per
token id, 0 for specials; the denominator of bits-per-byte). Both are written to temporary names and renamed
only after training succeeded, so an interrupted run leaves no half-written tokenizer behind.
Cost (measured): 2M chars / vocab 4096 in ~2 s on 2 laptop cores; upstream reports ~1 min for 2B chars on a
many-core GPU node (reading the parquet shards dominates).
"""
import argparse
import os
import time

import torch

from nanochat.common import get_base_dir, print0
from nanochat.report import get_report
from nanochat.tokenizer import SPECIAL_TOKENS, RustBPETokenizer, compute_token_bytes


def text_iterator(max_chars: int, doc_cap: int, stats: dict):
    """Documents of the train split, each cut to `doc_cap` chars, until `max_chars` have been yielded. Prints a
    progress line at every tenth of `max_chars` (rustbpe counts the text as it arrives), and one when it ends,
    after which rustbpe learns its merges."""
    from nanochat.dataset import parquets_iter_batched

    t0, step = time.time(), max(1, max_chars // 10)
    next_report = step

    def report(what):
        dt = time.time() - t0
        print0(f"{what}: {stats['chars']:,} of {max_chars:,} chars ({100 * stats['chars'] / max_chars:.0f}%) "
               f"from {stats['docs']:,} docs in {dt:.1f}s ({stats['chars'] / max(dt, 1e-9) / 1e6:.1f}M chars/s)")

    for batch in parquets_iter_batched(split="train"):
        for doc in batch:
            doc = doc[:doc_cap]
            stats["docs"] += 1
            stats["chars"] += len(doc)
            yield doc
            if stats["chars"] >= max_chars:
                report("read all; learning the merges")
                return
            if stats["chars"] >= next_report:
                report("read")
                next_report += step
    report("the data ran out; learning the merges")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train the BPE tokenizer (rustbpe) on the pretraining data.")
    ap.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters to train on")
    ap.add_argument("--doc-cap", type=int, default=10_000, help="characters kept per document")
    ap.add_argument("--vocab-size", type=int, default=65536, help="vocabulary size incl. special tokens (2^16)")
    args = ap.parse_args(argv)
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        ap.error(f"--vocab-size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} specials)")
    print0(f"max_chars: {args.max_chars:,} | doc_cap: {args.doc_cap:,} | vocab_size: {args.vocab_size:,} "
           f"({args.vocab_size - 256 - len(SPECIAL_TOKENS):,} merges + 256 bytes + {len(SPECIAL_TOKENS)} specials)")

    stats = {"docs": 0, "chars": 0}
    t0 = time.time()
    tokenizer = RustBPETokenizer.train_from_iterator(text_iterator(args.max_chars, args.doc_cap, stats),
                                                     args.vocab_size)
    train_time = time.time() - t0
    print0(f"trained on {stats['chars']:,} chars from {stats['docs']:,} docs in {train_time:.2f}s "
           f"-> vocab {tokenizer.get_vocab_size():,}")
    if tokenizer.get_vocab_size() < args.vocab_size:
        print0(f"warning: the text ran out of pairs to merge; vocab is {tokenizer.get_vocab_size():,}, "
               f"not {args.vocab_size:,} (train on more characters)")

    # Sanity check before anything is written: round trip through the trained tokenizer.
    probe = "Hello world! 12345 안녕하세요 <|bos|> \t\n  x"
    assert tokenizer.decode(tokenizer.encode(probe)) == probe

    token_bytes = compute_token_bytes(tokenizer)
    out_dir = os.path.join(get_base_dir(), "tokenizer")
    os.makedirs(out_dir, exist_ok=True)
    tb_path = os.path.join(out_dir, "token_bytes.pt")
    torch.save(token_bytes, tb_path + ".tmp")
    os.replace(tb_path + ".tmp", tb_path)
    pkl_path = tokenizer.save(out_dir)   # last: tokenizer.pkl existing means the directory is complete
    print0(f"saved {pkl_path} and {tb_path}")

    ordinary = token_bytes[token_bytes > 0].float()
    summary = {
        "max_chars": args.max_chars, "doc_cap": args.doc_cap, "vocab_size": tokenizer.get_vocab_size(),
        "chars_trained": stats["chars"], "docs_trained": stats["docs"], "train_time_s": round(train_time, 2),
        "num_special_tokens": len(SPECIAL_TOKENS), "token_bytes_min": int(ordinary.min()),
        "token_bytes_max": int(ordinary.max()), "token_bytes_mean": round(ordinary.mean().item(), 3),
        "token_bytes_std": round(ordinary.std().item(), 3),
    }
    print0(", ".join(f"{k}={v}" for k, v in summary.items() if k.startswith("token_bytes")))
    get_report().log(section="Tokenizer training", data=[summary])
    return tokenizer


if __name__ == "__main__":
    main()
