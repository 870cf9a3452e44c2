"""
The tokenizer the rest of nanochat uses: trained with rustbpe, run with tiktoken.

Design choices:
- training and inference are separate tools: rustbpe learns the merges fast (Rust, parallel), then its
  ranks are loaded into a `tiktoken.Encoding`, the fastest encoder around, for everything after.
- the split pattern is GPT-4's with one change: numbers split into groups of at most 2 digits, not 3
  (a small vocabulary should not spend thousands of tokens on 3-digit numbers).
- nine special tokens for the chat format, appended after the ordinary tokens; plain text never turns
  into a special token (`encode` uses `encode_ordinary`), only `encode_special` makes one.
- `render_conversation` returns (ids, mask) with mask 1 exactly on the tokens the assistant must learn
  to produce: its text, its python tool calls, and `<|assistant_end|>`; tool outputs come from the
  tool, so they are masked 0, as are user turns and `<|assistant_start|>`.
- `token_bytes` (bytes per token id, 0 for specials) turns a loss into bits per byte, a number that
  does not depend on the vocabulary, so models with different tokenizers can be compared.
"""
import copy
import os
import pickle
from functools import lru_cache

import tiktoken

SPECIAL_TOKENS = [
    "<|bos|>",              # every document starts with it
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",    # the assistant calls the python tool
    "<|output_start|>", "<|output_end|>",    # the tool's output, written back into the conversation
]

SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""


class RustBPETokenizer:
    """A tiktoken Encoding plus the chat format. Build with `train_from_iterator`, `from_directory` or
    `from_pretrained`."""

    def __init__(self, enc: tiktoken.Encoding, bos_token: str):
        self.enc = enc
        self.bos_token_id = self.encode_special(bos_token)

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def train_from_iterator(cls, text_iterator, vocab_size: int, buffer_size: int = 8192):
        """Train on an iterator of str; `vocab_size` includes the special tokens."""
        import rustbpe  # only training needs the Rust extension

        n_ordinary = vocab_size - len(SPECIAL_TOKENS)
        if n_ordinary < 256:
            raise ValueError(f"vocab_size must be at least 256 + {len(SPECIAL_TOKENS)} special tokens "
                             f"= {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
        tok = rustbpe.Tokenizer()
        tok.train_from_iterator(text_iterator, n_ordinary, buffer_size=buffer_size, pattern=SPLIT_PATTERN)
        ranks = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
        return cls(_build_encoding(ranks, tok.get_pattern()), "<|bos|>")

    @classmethod
    def from_directory(cls, tokenizer_dir: str):
        with open(os.path.join(tokenizer_dir, "tokenizer.pkl"), "rb") as f:
            enc = pickle.load(f)
        return cls(enc, "<|bos|>")

    @classmethod
    def from_pretrained(cls, tiktoken_name: str):
        """OpenAI's encodings ("gpt2", "cl100k_base", ...) from tiktoken (offline via TIKTOKEN_CACHE_DIR).
        Their only special token is <|endoftext|>, which plays <|bos|>."""
        return cls(tiktoken.get_encoding(tiktoken_name), "<|endoftext|>")

    def save(self, tokenizer_dir: str):
        """Write `tokenizer.pkl` atomically (a crash never leaves a half-written file)."""
        os.makedirs(tokenizer_dir, exist_ok=True)
        path = os.path.join(tokenizer_dir, "tokenizer.pkl")
        with open(path + ".tmp", "wb") as f:
            pickle.dump(self.enc, f)
        os.replace(path + ".tmp", path)
        return path

    # ------------------------------------------------------------------------------------ basics
    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_special_tokens(self) -> set:
        return self.enc.special_tokens_set

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode_special(self, text: str) -> int:
        return _encode_single(self.enc, text)

    def id_to_token(self, idx: int) -> str:
        return self.enc.decode([idx])

    def get_mergeable_ranks(self) -> dict:
        return self.enc._mergeable_ranks

    def get_pattern(self) -> str:
        return self.enc._pat_str

    def _as_id(self, tok):
        return tok if isinstance(tok, int) else self.encode_special(tok)

    def encode(self, text, prepend=None, append=None, num_threads: int = 8):
        """str -> list[int]; list[str] -> list[list[int]] (batched in threads). `prepend`/`append` are a
        special token name or id. Special-token text inside `text` stays ordinary text."""
        pre = self._as_id(prepend) if prepend is not None else None
        post = self._as_id(append) if append is not None else None
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            if pre is not None:
                ids.insert(0, pre)
            if post is not None:
                ids.append(post)
            return ids
        if isinstance(text, (list, tuple)):
            out = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
            for ids in out:
                if pre is not None:
                    ids.insert(0, pre)
                if post is not None:
                    ids.append(post)
            return out
        raise TypeError(f"encode expects str or list[str], got {type(text).__name__}")

    __call__ = encode

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    # ------------------------------------------------------------------------------------ chat format
    def render_conversation(self, conversation: dict, max_tokens: int = 2048):
        """Tokenize one conversation {"messages": [...]} for supervised training -> (ids, mask).

        mask[i] == 1 where the model is trained to produce ids[i]: assistant text, python calls
        (<|python_start|> ... <|python_end|>) and <|assistant_end|>. A leading system message is merged into
        the first user turn. Both lists are truncated to `max_tokens`."""
        messages = conversation["messages"]
        if messages and messages[0]["role"] == "system":
            if len(messages) < 2 or messages[1]["role"] != "user":
                raise ValueError("a system message must be followed by a user message")
            merged = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
            messages = [merged] + list(messages[2:])
        if not messages:
            raise ValueError("conversation has no messages")
        ids, mask = [], []

        def add(tokens, m):
            tokens = [tokens] if isinstance(tokens, int) else tokens
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        s = self.encode_special
        add(self.get_bos_token_id(), 0)
        for i, message in enumerate(messages):
            want = "user" if i % 2 == 0 else "assistant"
            if message["role"] != want:
                raise ValueError(f"message {i} is from {message['role']!r}, expected {want!r} "
                                 f"(user and assistant must alternate, user first)")
            content = message["content"]
            if want == "user":
                if not isinstance(content, str):
                    raise ValueError("user content must be a string")
                add(s("<|user_start|>"), 0)
                add(self.encode(content), 0)
                add(s("<|user_end|>"), 0)
                continue
            add(s("<|assistant_start|>"), 0)
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                kind, value = part["type"], self.encode(part["text"])
                if kind == "text":
                    add(value, 1)
                elif kind == "python":
                    add(s("<|python_start|>"), 1)
                    add(value, 1)
                    add(s("<|python_end|>"), 1)
                elif kind == "python_output":
                    add(s("<|output_start|>"), 0)
                    add(value, 0)
                    add(s("<|output_end|>"), 0)
                else:
                    raise ValueError(f"unknown content part type {kind!r}")
            add(s("<|assistant_end|>"), 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: dict) -> list:
        """For RL/eval: drop the final assistant message and end with <|assistant_start|>, ready to sample."""
        conversation = copy.deepcopy(conversation)
        messages = conversation["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's (it is the one to complete)")
        messages.pop()
        ids, _ = self.render_conversation(conversation, max_tokens=10**9)
        ids.append(self.encode_special("<|assistant_start|>"))
        return ids

    def visualize_tokenization(self, ids, mask=None, with_ids: bool = False) -> str:
        """Tokens joined by '|' (mask 1 in green, 0 in red when a mask is given), for eyeballing."""
        green, red, reset = "\033[92m", "\033[91m", "\033[0m"
        out = []
        for i, t in enumerate(ids):
            s = self.id_to_token(t) + (f"({t})" if with_ids else "")
            if mask is not None:
                s = (green if mask[i] else red) + s + reset
            out.append(s)
        return "|".join(out)


def _encode_single(enc, text: str) -> int:
    try:
        return enc.encode_single_token(text)
    except KeyError:
        raise ValueError(f"{text!r} is not a single token of this tokenizer") from None


def _build_encoding(ranks: dict, pattern: str) -> tiktoken.Encoding:
    special = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name="rustbpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def compute_token_bytes(tokenizer: RustBPETokenizer):
    """int32 tensor: UTF-8 bytes per token id (from the raw token bytes), 0 for special tokens."""
    import torch

    specials = {tokenizer.encode_special(s) for s in tokenizer.get_special_tokens()}
    ranks = tokenizer.get_mergeable_ranks()
    out = torch.zeros(tokenizer.get_vocab_size(), dtype=torch.int32)
    for b, i in ranks.items():
        if i not in specials:
            out[i] = len(b)
    return out


def get_tokenizer_dir() -> str:
    from nanochat.common import get_base_dir
    return os.path.join(get_base_dir(), "tokenizer")


def get_tokenizer() -> RustBPETokenizer:
    """The tokenizer trained by scripts/tok_train.py under <base>/tokenizer."""
    d = get_tokenizer_dir()
    if not os.path.exists(os.path.join(d, "tokenizer.pkl")):
        raise FileNotFoundError(f"no tokenizer in {d}: run `python -m scripts.tok_train` first")
    return _cached_tokenizer(d, os.path.getmtime(os.path.join(d, "tokenizer.pkl")))


@lru_cache(maxsize=4)
def _cached_tokenizer(d, mtime):
    return RustBPETokenizer.from_directory(d)


def get_token_bytes(device="cpu"):
    """Bytes per token id (int32 tensor on `device`), written next to the tokenizer by tok_train."""
    import torch

    path = os.path.join(get_tokenizer_dir(), "token_bytes.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {path}: run `python -m scripts.tok_train` first")
    return torch.load(path, map_location=device)
