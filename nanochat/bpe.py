"""
Byte-level BPE in plain Python: the readable reference that chapter 2 builds and `rustbpe` is tested against.

Design choices:
- bytes, not characters: text is UTF-8 encoded, so 256 base tokens cover every string ever written
  and nothing is "unknown" (a Korean syllable is three bytes until merges glue them together).
- a split regex first (GPT-4's by default): merges never cross chunk boundaries, so " dog", "dog." and
  "dog!" do not become separate tokens; each chunk is counted once with its frequency.
- one tie rule, shared exactly with rustbpe: among pairs with the highest count, the lexicographically
  smallest pair of ids (a, b) wins. Equal counts are common late in training; without a rule two
  implementations drift apart.
- no duplicate byte strings: if a pair spells bytes that are already a token, it merges into that token
  instead of minting a second id, so the vocabulary stays a bijection that tiktoken can load.
- encoding uses tiktoken's rule (merge the adjacent pair whose concatenation has the lowest rank, leftmost
  first); with tiktoken's own ranks this reproduces `gpt2` and `cl100k_base` ids exactly.
- special tokens follow tiktoken's `allowed_special` / `disallowed_special` semantics: special text in
  ordinary input raises ValueError unless allowed, and is never silently turned into a special id.

Training here does a full recount of pair statistics per merge: clear, and slow (minutes for a
million characters). rustbpe does the same thing incrementally.
"""
import json
import os
from collections import Counter

import regex

# GPT-4 (cl100k_base). nanochat's tokenizer uses \p{N}{1,2} instead of {1,3} (see nanochat.tokenizer).
GPT4_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
# GPT-2 (r50k/gpt2 encodings).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def to_utf8(text: str) -> bytes:
    """UTF-8 bytes of `text`; lone surrogates (not encodable) become U+FFFD, as tiktoken does."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def count_chunks(texts, pattern: str) -> Counter:
    """{chunk bytes: occurrences} over an iterable of strings."""
    compiled = regex.compile(pattern)
    counts = Counter()
    for text in texts:
        for chunk in compiled.findall(text):
            counts[to_utf8(chunk)] += 1
    return counts


def get_stats(words, counts) -> dict:
    """How often each adjacent pair occurs, weighted by word counts (overlaps counted: "aaa" has 2 x (a,a))."""
    stats = {}
    for ids, c in zip(words, counts):
        for pair in zip(ids, ids[1:]):
            stats[pair] = stats.get(pair, 0) + c
    return stats


def best_pair(stats: dict):
    """The most frequent pair; ties go to the smallest (a, b). The rule rustbpe shares."""
    return max(stats, key=lambda p: (stats[p], -p[0], -p[1]))


def merge(ids, pair, idx):
    """Replace every non-overlapping occurrence of `pair`, scanning left to right, by `idx`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPE:
    """A byte-level BPE tokenizer: `vocab[id]` is the token's bytes, `ranks` the inverse map."""

    def __init__(self, pattern: str | None = None, special_tokens: dict | None = None):
        self.pattern = pattern or GPT4_SPLIT_PATTERN
        self.compiled = regex.compile(self.pattern)
        self.vocab = [bytes([i]) for i in range(256)]
        self.ranks = {b: i for i, b in enumerate(self.vocab)}
        self.merges = []  # [((a, b), id)] in training order
        self.special_tokens = {}
        self.register_special_tokens(special_tokens or {})
        self._cache = {}

    # ----------------------------------------------------------------------------------------- training
    def train(self, text_or_iterator, vocab_size: int, pattern: str | None = None, verbose: bool = False):
        """Learn merges until there are `vocab_size` tokens (special tokens not included)."""
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (one token per byte), got {vocab_size}")
        if pattern is not None:
            self.pattern, self.compiled = pattern, regex.compile(pattern)
        texts = [text_or_iterator] if isinstance(text_or_iterator, str) else text_or_iterator
        chunk_counts = count_chunks(texts, self.pattern)
        items = sorted(chunk_counts.items())
        words = [list(chunk) for chunk, _ in items]
        counts = [c for _, c in items]
        vocab = [bytes([i]) for i in range(256)]
        ranks = {b: i for i, b in enumerate(vocab)}
        merges = []
        while len(vocab) < vocab_size:
            stats = get_stats(words, counts)
            if not stats:
                break
            pair = best_pair(stats)
            new_bytes = vocab[pair[0]] + vocab[pair[1]]
            if new_bytes in ranks:            # already a token: merge into it, no duplicate id
                idx = ranks[new_bytes]
            else:
                idx = len(vocab)
                vocab.append(new_bytes)
                ranks[new_bytes] = idx
            merges.append((pair, idx))
            words = [merge(w, pair, idx) if len(w) > 1 else w for w in words]
            if verbose and len(merges) % 100 == 0:
                print(f"merge {len(merges)}: {pair} -> {idx} {new_bytes!r} ({stats[pair]} times)")
        self.vocab, self.ranks, self.merges = vocab, ranks, merges
        self._cache = {}
        return self

    # ----------------------------------------------------------------------------------------- encoding
    def _encode_chunk(self, chunk: bytes) -> list:
        if chunk in self.ranks:
            return [self.ranks[chunk]]
        parts = [chunk[i:i + 1] for i in range(len(chunk))]
        while len(parts) > 1:
            best_i, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best_rank is None or r < best_rank):
                    best_i, best_rank = i, r
            if best_i is None:
                break
            parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        return [self.ranks[p] for p in parts]

    def encode_ordinary(self, text: str) -> list:
        """Encode ignoring special tokens entirely (their text is encoded as ordinary text)."""
        ids = []
        for chunk in self.compiled.findall(text):
            b = to_utf8(chunk)
            if b not in self._cache:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                self._cache[b] = self._encode_chunk(b)
            ids.extend(self._cache[b])
        return ids

    def encode(self, text: str, allowed_special=frozenset(), disallowed_special="all") -> list:
        """tiktoken semantics: allowed specials become their ids; disallowed special text raises ValueError."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        if disallowed:
            m = regex.search("|".join(regex.escape(s) for s in disallowed), text)
            if m:
                raise ValueError(f"text contains disallowed special token {m.group()!r}; pass allowed_special "
                                 f"or disallowed_special=() to encode it")
        if not allowed:
            return self.encode_ordinary(text)
        special_re = "(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
        ids = []
        for i, part in enumerate(regex.split(special_re, text)):
            if i % 2 == 1:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    # ----------------------------------------------------------------------------------------- decoding
    def decode_bytes(self, ids) -> bytes:
        inverse_special = {v: k.encode("utf-8") for k, v in self.special_tokens.items()}
        out = []
        for i in ids:
            if 0 <= i < len(self.vocab):
                out.append(self.vocab[i])
            elif i in inverse_special:
                out.append(inverse_special[i])
            else:
                raise ValueError(f"unknown token id {i}")
        return b"".join(out)

    def decode(self, ids) -> str:
        """Bytes that are not valid UTF-8 (a token can end mid-character) become U+FFFD, never an error."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ----------------------------------------------------------------------------------------- specials, io
    def register_special_tokens(self, special_tokens: dict):
        for name, idx in special_tokens.items():
            if idx < len(self.vocab) and name.encode("utf-8") != self.vocab[idx]:
                raise ValueError(f"special token {name!r} id {idx} collides with an ordinary token")
        self.special_tokens.update(special_tokens)

    @property
    def n_vocab(self) -> int:
        return max([len(self.vocab) - 1, *self.special_tokens.values()]) + 1

    @classmethod
    def from_mergeable_ranks(cls, ranks: dict, pattern: str, special_tokens: dict | None = None) -> "BPE":
        """Wrap tiktoken-style ranks {token bytes: id} (e.g. `tiktoken.get_encoding("gpt2")._mergeable_ranks`)."""
        tok = cls(pattern)
        vocab = [None] * len(ranks)
        for b, i in ranks.items():
            vocab[i] = b
        if any(v is None for v in vocab):
            raise ValueError("ranks must be the ids 0..n-1 exactly once")
        tok.vocab, tok.ranks = vocab, dict(ranks)
        tok.register_special_tokens(special_tokens or {})
        return tok

    def save(self, path: str):
        """JSON with the pattern, the tokens (hex) in id order, the merges and the special tokens."""
        state = {"format": "nanochat-bpe-1", "pattern": self.pattern, "tokens": [b.hex() for b in self.vocab],
                 "merges": [[a, b, i] for (a, b), i in self.merges], "special_tokens": self.special_tokens}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "BPE":
        with open(path) as f:
            state = json.load(f)
        tok = cls.from_mergeable_ranks({bytes.fromhex(h): i for i, h in enumerate(state["tokens"])},
                                       state["pattern"], state["special_tokens"])
        tok.merges = [((a, b), i) for a, b, i in state["merges"]]
        return tok
