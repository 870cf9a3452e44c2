"""
The pretraining dataloader: parquet text in, (inputs, targets) token batches out, forever.

Design choices:
- every document is tokenized as `<|bos|> + tokens`; documents longer than a row (T+1 tokens) are cut to one row
- rows are packed best-fit from a buffer of ~1000 documents: a row takes the longest document that still fits
  the space left, and when none fits, the shortest one is cropped to fill it. Every row starts with `<|bos|>`,
  there is no padding, and only the crops are lost (the loader counts them: `stats["crop_frac"]`)
- DDP: rank r takes documents r, r+W, r+2W, ... of every row group, so any number of ranks works on any shard
- tokenization runs in a thread pool (tiktoken releases the GIL) several row groups ahead of the packer
- one host->device copy per batch: inputs and targets are written into one pinned (2, B, T) buffer (two such
  buffers, alternating, each guarded by a CUDA event) and copied with non_blocking=True
- resumable exactly: each batch comes with a state dict (the next row group to read and the ids of the documents
  waiting in the buffer, in order); resuming re-reads just those documents, so the batches that follow are the
  same as if the run had never stopped
"""
import bisect
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import torch

from nanochat.common import get_dist_info
from nanochat.dataset import ensure_split


class _Source:
    """The split's row groups in order, epoch after epoch, as positions (epoch, shard, row_group)."""

    def __init__(self, split):
        self.paths = ensure_split(split)
        metas = [pq.ParquetFile(p).metadata for p in self.paths]
        self.num_row_groups = [m.num_row_groups for m in metas]
        self.num_docs = sum(m.num_rows for m in metas)

    def advance(self, pos):
        e, s, rg = pos
        rg += 1
        if rg >= self.num_row_groups[s]:
            s, rg = s + 1, 0
            if s >= len(self.paths):
                e, s = e + 1, 0
        return (e, s, rg)

    def texts(self, pos, rank, world):
        _, s, rg = pos
        texts = pq.ParquetFile(self.paths[s]).read_row_group(rg, columns=["text"]).column("text").to_pylist()
        return texts[rank::world]


def _tokenize(tokenizer, texts, bos, max_len):
    """<|bos|> + tokens, cut to max_len. A long text is tokenized from a prefix of 8 chars per token needed
    (a book need not be tokenized whole to fill one row); if the prefix falls short, the whole text is used."""
    out = []
    for t in texts:
        ids = None
        if len(t) > 8 * max_len:
            ids = tokenizer.encode(t[:8 * max_len], prepend=bos)
            if len(ids) < max_len + 32:       # a token-dense prefix: fall back to the whole text
                ids = None
        if ids is None:
            ids = tokenizer.encode(t, prepend=bos)
        out.append(np.asarray(ids[:max_len], dtype=np.int64))
    return out


class _Buffer:
    """Documents sorted by length (stable for equal lengths), with their ids, for best-fit picks."""

    def __init__(self):
        self.lens, self.docs, self.ids = [], [], []

    def __len__(self):
        return len(self.lens)

    def add(self, doc_id, tokens):
        i = bisect.bisect_right(self.lens, len(tokens))
        self.lens.insert(i, len(tokens))
        self.docs.insert(i, tokens)
        self.ids.insert(i, doc_id)

    def take_fitting(self, space):
        """Pop the longest document with len <= space, or None."""
        i = bisect.bisect_right(self.lens, space) - 1
        if i < 0:
            return None
        self.lens.pop(i)
        self.ids.pop(i)
        return self.docs.pop(i)

    def take_shortest(self):
        self.lens.pop(0)
        self.ids.pop(0)
        return self.docs.pop(0)


def tokenizing_distributed_data_loader(B, T, split, tokenizer_threads=4, tokenizer_batch_size=128, device="cuda",
                                       resume_state_dict=None, buffer_size=1000, tokenizer=None, prefetch=None,
                                       stats=None):
    """Yield (inputs, targets, state_dict) forever; inputs/targets are (B, T) int64 on `device`.

    `state_dict` can be passed back as `resume_state_dict` to continue with exactly the next batch.
    `stats`, if a dict, is filled with running counts (tokens, cropped tokens, documents).
    """
    assert split in ("train", "val"), split
    if tokenizer is None:
        from nanochat.tokenizer import get_tokenizer
        tokenizer = get_tokenizer()
    bos = tokenizer.get_bos_token_id()
    _, rank, _, world = get_dist_info()
    device = torch.device(device)
    row_len = T + 1
    src = _Source(split)
    stats = stats if stats is not None else {}
    stats.update(tokens=0, cropped=0, docs=0)

    # a buffer of at most half an epoch, so a small split (the val shard) never holds a document twice
    buffer_size = max(1, min(buffer_size, src.num_docs // world // 2))
    buf = _Buffer()
    pos = (0, 0, 0)  # the next row group to read into the buffer
    if resume_state_dict is not None:
        st = resume_state_dict
        if (st.get("world_size", world), st.get("rank", rank)) != (world, rank):
            raise ValueError(f"loader state is for rank {st.get('rank')}/{st.get('world_size')}, "
                             f"this is rank {rank}/{world}: resume with the same number of processes")
        if st.get("num_shards", len(src.paths)) != len(src.paths):
            raise ValueError(f"loader state was saved with {st['num_shards']} {split} shards, now there are "
                             f"{len(src.paths)}: download the same shards to resume exactly")
        pos = tuple(st["pos"])
        wanted = {}
        for doc_id in map(tuple, st["buffer"]):
            wanted.setdefault(doc_id[:3], []).append(doc_id[3])
        docs = {}
        for rg_pos, idxs in wanted.items():
            share = src.texts(rg_pos, rank, world)
            for i, toks in zip(idxs, _tokenize(tokenizer, [share[i] for i in idxs], bos, row_len)):
                docs[rg_pos + (i,)] = toks
        for doc_id in map(tuple, st["buffer"]):   # saved in buffer order, so appending keeps it sorted
            buf.lens.append(len(docs[doc_id]))
            buf.docs.append(docs[doc_id])
            buf.ids.append(doc_id)

    pool = ThreadPoolExecutor(max_workers=max(1, tokenizer_threads), thread_name_prefix="tokenize")
    pending = deque()   # (pos, [futures]) of row groups being tokenized, in order
    read_pos = pos      # the next row group to submit

    def submit_more():
        nonlocal read_pos
        while len(pending) < (prefetch or max(2, 2 * tokenizer_threads)):
            share = src.texts(read_pos, rank, world)
            futs = [pool.submit(_tokenize, tokenizer, share[i:i + tokenizer_batch_size], bos, row_len)
                    for i in range(0, len(share), tokenizer_batch_size)]
            pending.append((read_pos, futs))
            read_pos = src.advance(read_pos)

    def ingest():
        nonlocal pos
        submit_more()
        rg_pos, futs = pending.popleft()
        assert rg_pos == pos
        i = 0
        for f in futs:
            for toks in f.result():
                buf.add(rg_pos + (i,), toks)
                i += 1
        stats["docs"] += i
        pos = src.advance(pos)

    use_cuda = device.type == "cuda"
    if use_cuda:
        pinned = [torch.empty((2, B, T), dtype=torch.int64, pin_memory=True) for _ in range(2)]
        events = [None, None]
    k = 0
    try:
        while True:
            if use_cuda:
                if events[k] is not None:
                    events[k].synchronize()        # the copy that last read this pinned buffer is done
                host = pinned[k]
            else:
                host = torch.empty((2, B, T), dtype=torch.int64)
            arr = host.numpy()
            row = np.empty(row_len, dtype=np.int64)
            for b in range(B):
                filled = 0
                while filled < row_len:
                    while len(buf) < buffer_size:
                        ingest()
                    doc = buf.take_fitting(row_len - filled)
                    if doc is None:                    # nothing fits: crop the shortest to fill the row
                        doc = buf.take_shortest()
                        stats["cropped"] += len(doc) - (row_len - filled)
                        doc = doc[:row_len - filled]
                    row[filled:filled + len(doc)] = doc
                    filled += len(doc)
                arr[0, b] = row[:-1]
                arr[1, b] = row[1:]
            stats["tokens"] += B * row_len
            state = {"pos": pos, "buffer": list(buf.ids), "rank": rank, "world_size": world,
                     "num_shards": len(src.paths), "split": split}
            if use_cuda:
                dev = torch.empty((2, B, T), dtype=torch.int64, device=device)
                dev.copy_(host, non_blocking=True)
                events[k] = torch.cuda.Event()
                events[k].record()
                k ^= 1
            else:
                dev = host.to(device)
            yield dev[0], dev[1], state
    finally:
        try:
            pool.shutdown(wait=False, cancel_futures=True)
        except Exception:   # at interpreter exit the threading module may already be torn down
            pass


def position_of(state_dict) -> dict:
    """The human-readable part of a loader state (for meta.json and logs)."""
    e, s, rg = state_dict["pos"]
    return {"epoch": e, "shard": s, "row_group": rg, "buffered_docs": len(state_dict["buffer"])}
