"""
The GPT model of the series, and the one place where sizes come from.

Design choices (as in nanochat, October 2025):
- one dial, `depth`: width = 64 * depth, head_dim = 128, heads = ceil(width / 128)
- vocabulary padded up to a multiple of 64 (tensor-core friendly shapes)
- untied input embedding and lm_head
"""
import math
from dataclasses import dataclass


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 65536
    n_layer: int = 12
    n_head: int = 6       # query heads
    n_kv_head: int = 6    # key/value heads (GQA when < n_head, MQA when 1)
    n_embd: int = 768

    def __post_init__(self):
        # Fail at config time, not deep inside a reshape on the first forward pass.
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def pad_vocab(vocab_size: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the embedding and lm_head matmuls have friendly shapes."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


def config_for_depth(depth: int, vocab_size: int = 65536, sequence_len: int = 2048,
                     n_kv_head: int | None = None) -> GPTConfig:
    """Derive every size from the one dial, `depth` (the series' d20/d26/d32)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    head_dim = 128
    n_embd = 64 * depth                       # aspect ratio 64: width grows with depth
    n_head = max(1, math.ceil(n_embd / head_dim))
    # n_embd need not be a multiple of 128 (d20 -> 1280 = 10 heads of 128, d26 -> 1664 = 13 heads of 128)
    if n_embd % n_head != 0:
        raise ValueError(f"depth {depth} gives n_embd={n_embd} that does not split into {n_head} heads")
    return GPTConfig(sequence_len=sequence_len, vocab_size=pad_vocab(vocab_size), n_layer=depth,
                     n_head=n_head, n_kv_head=n_kv_head or n_head, n_embd=n_embd)


def count_params(config: GPTConfig) -> dict:
    """Parameter counts by part, from the config alone (no model needed).

    `matmul` excludes the input embedding (a lookup, not a matmul): it is the N in the 6N FLOPs/token rule.
    """
    d, v, L = config.n_embd, config.vocab_size, config.n_layer
    kv_dim = config.n_kv_head * config.head_dim
    attn = d * d + 2 * d * kv_dim + d * d      # q, k, v, output projection; no biases
    mlp = d * 4 * d + 4 * d * d                # up and down projection, 4x width
    wte, lm_head = v * d, d * v                # untied
    total = wte + lm_head + L * (attn + mlp)
    return {"wte": wte, "lm_head": lm_head, "attn": L * attn, "mlp": L * mlp,
            "total": total, "matmul": total - wte}
