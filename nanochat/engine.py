"""
Inference: the KV cache, sampling, the calculator tool, and the Engine that ties them together.

Design choices:
- the KV cache is preallocated per layer, shape (n_layer, 2, B, n_kv_head, T_max, head_dim), and allocated
  lazily on the first insert so it takes the dtype/device of the model's keys (bf16 under autocast on GPU)
- the prompt is prefilled ONCE at batch 1, then the cache is copied into `num_samples` rows: every sample shares
  the prompt's work, and each sample draws its own first token from the same logits
- the model talks to the cache through two calls: `insert_kv(layer_idx, k, v)` -> (k, v) so far for that layer,
  and `get_pos()` (the rotary offset); the position advances after the last layer has inserted
- the calculator tool is a tiny state machine per row: `<|python_start|>expr<|python_end|>` makes the engine
  force `<|output_start|>result<|output_end|>` into the stream; the expression is evaluated by an AST walker that
  knows numbers, + - * / // % **, unary minus and `"str".count("x")` -- never `eval`
- temperature 0 is greedy (argmax, no RNG); otherwise a per-call torch.Generator seeded with `seed` draws
  exponential noise for the Gumbel-max trick (the same distribution as multinomial, half the GPU time)
- streaming detokenisation holds back tokens until they decode to whole UTF-8 characters
- on CUDA the Engine decodes with `StaticDecoder` (fast=None picks it): a static-shape cache, a tensor position
  and a CUDA graph of the one-token step; it computes what the plain path computes (tests compare them)

Measured on one H100 (benchmarks/bench_infer.py, d20, see benchmarks/RESULTS.md): 1,057 tok/s at batch 1 and
33,603 tok/s at batch 64 with StaticDecoder and the fused kernels, against 66 tok/s at batch 1 for the plain
cached loop.
torch.compile of the step was measured and made it slower (1.88 vs 1.50 ms per graph replay at batch 1): the
step's elementwise work is fused by hand instead (nanochat/kernels.py).
"""
import ast
import math
import operator
from collections import deque
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from nanochat import kernels
from nanochat.gpt import check_token_ids


# ----------------------------------------------------------------------------------------------------------------
# The calculator tool

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPR_CHARS = 256          # a tool call longer than this is not arithmetic a chat model should be doing
MAX_ABS_RESULT = 10 ** 30     # keep 9**9**9-style requests from eating the CPU


class CalculatorError(ValueError):
    pass


def _walk(node):
    """Evaluate a parsed expression, allowing only arithmetic on numbers and str.count on string literals."""
    if isinstance(node, ast.Expression):
        return _walk(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        val = _walk(node.operand)
        if isinstance(val, str):
            raise CalculatorError("unary operator on a string")
        return _UNARY[type(node.op)](val)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(left, str) or isinstance(right, str):
            raise CalculatorError("arithmetic on strings is not allowed")
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10 ** 6):
            raise CalculatorError("exponent too large")
        out = _BINOPS[type(node.op)](left, right)
        if isinstance(out, complex) or abs(out) > MAX_ABS_RESULT:
            raise CalculatorError("result out of range")
        return out
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "count"
            and not node.keywords and len(node.args) == 1):
        target, arg = _walk(node.func.value), _walk(node.args[0])
        if isinstance(target, str) and isinstance(arg, str):
            return target.count(arg)
        raise CalculatorError(".count() needs a string literal and a string argument")
    raise CalculatorError(f"not allowed: {type(node).__name__}")


def use_calculator(expr: str):
    """Evaluate a tool call safely; returns int/float, or None when the expression is not allowed/invalid.

    >>> use_calculator("12 * (3 + 4)")
    84
    >>> use_calculator('"strawberry".count("r")')
    3
    >>> use_calculator("__import__('os')") is None
    True
    """
    expr = expr.strip()
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    if '"' not in expr and "'" not in expr:
        expr = expr.replace(",", "")      # "1,234 * 2" -- thousands separators, only outside string literals
    try:
        value = _walk(ast.parse(expr, mode="eval"))
    except (SyntaxError, CalculatorError, ZeroDivisionError, OverflowError, TypeError, ValueError,
            RecursionError, MemoryError):
        return None
    if isinstance(value, str):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2 ** 53:
            return int(value)
        return float(f"{value:.10g}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# The KV cache

class KVCache:
    """Keys and values of every layer for a batch of rows, preallocated to `seq_len` positions.

    The model calls `insert_kv(layer_idx, k, v)` with k, v of shape (B, n_kv_head, T_new, head_dim) and gets back
    all keys/values so far, (B, n_kv_head, pos + T_new, head_dim). `get_pos()` is the position of the first new
    token (the rotary offset). The position advances once the last layer has inserted.
    """

    def __init__(self, batch_size, num_heads, seq_len, head_dim, num_layers):
        self.kv_shape = (num_layers, 2, batch_size, num_heads, seq_len, head_dim)
        self.kv = None      # allocated on first insert, with the dtype/device of the model's keys
        self.pos = 0

    @property
    def batch_size(self):
        return self.kv_shape[2]

    @property
    def max_len(self):
        return self.kv_shape[4]

    def reset(self):
        self.pos = 0

    def get_pos(self):
        return self.pos

    def insert_kv(self, layer_idx, k, v):
        B, H, T_new, D = k.shape
        L, _, B0, H0, T_max, D0 = self.kv_shape
        if (B, H, D) != (B0, H0, D0):
            raise ValueError(f"KVCache expects (B={B0}, H={H0}, D={D0}) keys, got {tuple(k.shape)}")
        t0, t1 = self.pos, self.pos + T_new
        if t1 > T_max:
            raise ValueError(f"KV cache is full: {t0} positions cached + {T_new} new > capacity {T_max}. "
                             f"Generate fewer tokens or use a larger cache (the model's context is the limit).")
        if self.kv is None:
            self.kv = torch.empty(self.kv_shape, dtype=k.dtype, device=k.device)
        self.kv[layer_idx, 0, :, :, t0:t1] = k
        self.kv[layer_idx, 1, :, :, t0:t1] = v
        if layer_idx == L - 1:
            self.pos = t1
        return self.kv[layer_idx, 0, :, :, :t1], self.kv[layer_idx, 1, :, :, :t1]

    def prefill(self, other: "KVCache"):
        """Copy a (usually batch-1) cache into this one, broadcasting its rows to this cache's batch."""
        if self.pos != 0:
            raise ValueError("prefill() needs an empty cache")
        if other.kv is None:
            raise ValueError("prefill() source cache is empty")
        L, _, B, H, T, D = self.kv_shape
        Lo, _, Bo, Ho, To, Do = other.kv_shape
        if (L, H, D) != (Lo, Ho, Do) or Bo not in (1, B):
            raise ValueError(f"cannot prefill cache {self.kv_shape} from {other.kv_shape}")
        if other.pos > T:
            raise ValueError(f"prompt of {other.pos} positions does not fit a cache of {T}")
        if self.kv is None:
            self.kv = torch.empty(self.kv_shape, dtype=other.kv.dtype, device=other.kv.device)
        self.kv[:, :, :, :, :other.pos] = other.kv[:, :, :, :, :other.pos]   # broadcasts batch 1 -> B
        self.pos = other.pos


# ----------------------------------------------------------------------------------------------------------------
# Sampling

@torch.inference_mode()
def sample_next_token(logits, rng=None, temperature=1.0, top_k=None):
    """(B, V) logits -> (B, 1) token ids. Temperature 0 is argmax; top_k keeps the k largest logits."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    logits = logits.float()
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.size(-1))
        vals, idx = torch.topk(logits, k, dim=-1)
        return idx.gather(1, _gumbel_argmax(vals / temperature, rng))
    return _gumbel_argmax(logits / temperature, rng)


def _gumbel_argmax(scaled_logits, rng):
    """A sample of softmax(scaled_logits) per row: argmax(z - log E) with E ~ Exp(1) is distributed as
    softmax(z) (the Gumbel-max trick), and costs an elementwise pass instead of a softmax plus a multinomial."""
    noise = torch.empty_like(scaled_logits).exponential_(generator=rng)
    return torch.argmax(scaled_logits - noise.log(), dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------------
# Streaming detokenisation

class StreamDecoder:
    """Turns a stream of token ids into text pieces that are always whole UTF-8 characters.

    A byte-level BPE token can end in the middle of a multi-byte character (an emoji or a Hangul syllable split
    across tokens). Decoding such a prefix gives U+FFFD; we hold those tokens back until the character completes.
    `max_pending` bounds the wait, so a genuinely invalid byte sequence is still flushed (as U+FFFD).
    """

    def __init__(self, tokenizer, max_pending=8):
        self.tokenizer = tokenizer
        self.pending = []
        self.max_pending = max_pending

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.max_pending:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


# ----------------------------------------------------------------------------------------------------------------
# The engine

class RowState:
    """Per-sample bookkeeping: the tokens so far, tokens the tool forces next, and the tool-call state."""

    def __init__(self, tokens):
        self.current_tokens = list(tokens)
        self.forced_tokens = deque()
        self.in_python_block = False
        self.python_expr_tokens = []
        self.completed = False


def _model_device(model):
    return next(model.parameters()).device


class Engine:
    """Generation with a KV cache, batched samples and the calculator tool.

    `generate` yields one column per step: (token_column, token_masks), a token per sample and a mask that is 1
    for sampled tokens and 0 for tokens forced by the tool. `generate_batch` collects whole sequences.
    """

    def __init__(self, model, tokenizer, fast=None):
        self.model = model
        self.tokenizer = tokenizer
        device = _model_device(model)
        # the static CUDA-graph decoder pays off on GPU only; on CPU the plain path is as fast and simpler
        self.fast = (device.type == "cuda" and StaticDecoder.supports(model)) if fast is None else fast
        self._static = None
        self._specials = None

    # the special tokens the state machine reacts to (None when the tokenizer lacks them)
    def _special(self, name):
        if self._specials is None:
            self._specials = {}
            for key in ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>",
                        "<|assistant_end|>", "<|bos|>"):
                try:
                    self._specials[key] = self.tokenizer.encode_special(key)
                except Exception:
                    self._specials[key] = None
        return self._specials[name]

    def _autocast(self, device):
        if device.type == "cuda":
            return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _cache_dims(self):
        c = self.model.config
        return dict(num_heads=c.n_kv_head, head_dim=c.n_embd // c.n_head, num_layers=c.n_layer)

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) for t in tokens):
            raise TypeError("tokens must be a non-empty list of ints")
        check_token_ids(min(tokens), max(tokens), self.model.config.vocab_size)   # on the host, before any tensor
        device = _model_device(self.model)
        context = self.model.config.sequence_len
        if len(tokens) >= context:
            raise ValueError(f"prompt of {len(tokens)} tokens leaves no room in the model's context of {context}")
        # the cache holds the prompt plus every generated token but the last (which is never fed back)
        budget = context - len(tokens) if max_tokens is None else min(max_tokens, context - len(tokens))
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        python_start, python_end = self._special("<|python_start|>"), self._special("<|python_end|>")
        output_start, output_end = self._special("<|output_start|>"), self._special("<|output_end|>")
        stop_ids = {t for t in (self._special("<|assistant_end|>"), self._special("<|bos|>")) if t is not None}

        dims = self._cache_dims()
        # 1) prefill the prompt once, at batch 1. (autocast is entered per model call, never held across a
        #    `yield`: the caller's code between steps must not run under our autocast, nor ours under theirs)
        prefill_cache = KVCache(batch_size=1, seq_len=len(tokens), **dims)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        with self._autocast(device):
            logits = self.model(ids, kv_cache=prefill_cache)[:, -1, :]             # (1, V)
        logits = logits.expand(num_samples, -1)                                   # each row samples its own
        # 2) copy the prompt's keys/values into num_samples rows
        step = self._decoder(num_samples, len(tokens) + budget, prefill_cache, dims)

        rows = [RowState(tokens) for _ in range(num_samples)]
        generated = 0
        # On the GPU fast path the next step is launched before the host reads this column (see `ahead`)
        pipelined = self.fast and device.type == "cuda"
        host_ids = torch.empty(num_samples, dtype=torch.long, pin_memory=True) if pipelined else None
        while generated < budget and not all(r.completed for r in rows):
            sampled_ids = sample_next_token(logits, rng, temperature, top_k)[:, 0]
            # No row has a forced token pending, so this column is exactly what was sampled: feed it to the next
            # step right away. The copy to the host is queued before the step, so it lands while the GPU works,
            # and the Python below (tool state machine, the caller's code) overlaps with the step.
            ahead = pipelined and generated + 1 < budget and not any(r.forced_tokens for r in rows)
            if ahead:
                host_ids.copy_(sampled_ids, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record()
                with self._autocast(device):
                    next_logits = step(sampled_ids)
                copied.synchronize()
                sampled = host_ids.tolist()
            else:
                sampled = sampled_ids.tolist()
            token_column, token_masks = [], []
            for i, row in enumerate(rows):
                forced = len(row.forced_tokens) > 0
                tok = row.forced_tokens.popleft() if forced else sampled[i]
                token_column.append(tok)
                token_masks.append(0 if forced else 1)
                row.current_tokens.append(tok)
                if tok in stop_ids:
                    row.completed = True
                # the tool-use state machine
                if tok == python_start and python_start is not None:
                    row.in_python_block, row.python_expr_tokens = True, []
                elif tok == python_end and row.in_python_block:
                    row.in_python_block = False
                    result = use_calculator(self.tokenizer.decode(row.python_expr_tokens))
                    if result is not None and output_start is not None:
                        row.forced_tokens.append(output_start)
                        row.forced_tokens.extend(self.tokenizer.encode(str(result)))
                        row.forced_tokens.append(output_end)
                    row.python_expr_tokens = []
                elif row.in_python_block:
                    row.python_expr_tokens.append(tok)
            yield token_column, token_masks
            generated += 1
            if generated >= budget or all(r.completed for r in rows):
                break
            if ahead:
                logits = next_logits
                continue
            # feed the sampled ids straight back unless the tool forced a token (saves a host->device copy)
            if any(m == 0 for m in token_masks):
                sampled_ids = torch.tensor(token_column, dtype=torch.long, device=device)
            with self._autocast(device):
                logits = step(sampled_ids)

    def _decoder(self, batch, max_len, prefill_cache, dims):
        """A function (B,) next ids -> (B, V) logits that advances the cache by one position."""
        if self.fast:
            if self._static is None:
                self._static = StaticDecoder(self.model)
            return self._static.start(batch, max_len, prefill_cache)
        cache = KVCache(batch_size=batch, seq_len=max_len, **dims)
        cache.prefill(prefill_cache)
        return lambda ids: self.model(ids[:, None], kv_cache=cache)[:, -1, :]

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Whole sequences (prompt + generation, stop token excluded) and their masks, one per sample."""
        stop_ids = {t for t in (self._special("<|assistant_end|>"), self._special("<|bos|>")) if t is not None}
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (tok, m) in enumerate(zip(column, column_masks)):
                if done[i]:
                    continue
                if tok in stop_ids:
                    done[i] = True
                    continue
                results[i].append(tok)
                masks[i].append(m)
            if all(done):
                break
        return results, masks


# ----------------------------------------------------------------------------------------------------------------
# Fast decode (GPU)

class StaticDecoder:
    """The one-token decode step with static shapes, replayed as a CUDA graph.

    Why: at batch 1 a decode step of d20 moves ~1 GB of bf16 weights (~0.3 ms on an H100) but launches ~500
    small kernels; launched one by one from Python that costs several ms. With static shapes we can capture the
    whole step once as a CUDA graph and replay it with one launch.

    How:
    - the weights are copied once per `start()` into bf16 buffers (q/k/v fused into one matrix); refreshing at
      every start keeps us right when the model is being trained between generations (RL)
    - the cache is (n_layer, B, n_kv_head, T_cap, head_dim) for keys and for values; the position is a 0-d
      tensor on the device, so the graph reads it instead of baking in a Python int
    - the elementwise work between the matmuls runs in fused Triton kernels (nanochat.kernels), including the
      attention of the new token, which reads the length from `pos`: one graph per batch size serves every length
    - without Triton (CPU, or NANOCHAT_NO_TRITON=1) attention is SDPA over the first `bucket` positions (a multiple
      of `bucket_size`), masked beyond `pos`, with a graph per (batch, bucket) on CUDA, so its cost still follows
      the real length rather than T_cap
    - the residual stream and the matmuls are in `dtype` (bf16 on the GPU), as in the model's forward under autocast

    It mirrors `nanochat.gpt.GPT.forward` for a single token (the tests compare the two).
    """

    bucket_size = 128

    @staticmethod
    def supports(model):
        needed = ("transformer", "lm_head", "cos", "sin", "softcap")
        return all(hasattr(model, n) for n in needed) and hasattr(model.transformer, "h")

    def __init__(self, model, dtype=torch.bfloat16, use_graphs=None):
        self.model = model
        self.device = _model_device(model)
        self.dtype = dtype
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else use_graphs
        c = model.config
        self.L, self.H, self.Hkv, self.D = c.n_layer, c.n_head, c.n_kv_head, c.n_embd // c.n_head
        self.gqa = bool(self.H != self.Hkv)
        # rotary tables as (T_rot, D/2) rows, indexed by the device-side position inside the step
        self._cos_sin = (model.cos[0, :, 0].contiguous(), model.sin[0, :, 0].contiguous())
        self.B = self.T_cap = None
        self.graphs = {}
        self.weights = None

    @torch.inference_mode()
    def _refresh_weights(self):
        dt = self.dtype
        blocks = self.model.transformer.h
        fresh = [dict(qkv=torch.cat([b.attn.c_q.weight, b.attn.c_k.weight, b.attn.c_v.weight]).to(dt),
                      proj=b.attn.c_proj.weight.to(dt), fc=b.mlp.c_fc.weight.to(dt), down=b.mlp.c_proj.weight.to(dt))
                 for b in blocks]
        lm_head = self.model.lm_head.weight.to(dt)
        if self.weights is None:
            self.weights, self.lm_head = fresh, lm_head
        else:   # copy in place: captured graphs keep pointing at these buffers
            for old, new in zip(self.weights, fresh):
                for key in old:
                    old[key].copy_(new[key])
            self.lm_head.copy_(lm_head)

    @torch.inference_mode()
    def start(self, batch, max_len, prefill_cache):
        """Load the prompt's cache into `batch` rows; returns step(ids (B,)) -> logits (B, V)."""
        T_cap = -(-max_len // self.bucket_size) * self.bucket_size
        if self.B != batch or self.T_cap is None or self.T_cap < T_cap:
            shape = (self.L, batch, self.Hkv, T_cap, self.D)
            self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.pos = torch.zeros((), dtype=torch.long, device=self.device)
            self.ids = torch.zeros(batch, dtype=torch.long, device=self.device)
            self.B, self.T_cap, self.graphs = batch, T_cap, {}
        self._refresh_weights()
        P = prefill_cache.get_pos()
        self.k_cache[:, :, :, :P] = prefill_cache.kv[:, 0, :, :, :P].to(self.dtype)   # (L, 1 -> B, Hkv, P, D)
        self.v_cache[:, :, :, :P] = prefill_cache.kv[:, 1, :, :, :P].to(self.dtype)
        self.pos.fill_(P)
        self.host_pos = P
        return self.step

    @torch.inference_mode()
    def step(self, ids):
        if self.host_pos >= self.T_cap:
            raise ValueError(f"KV cache is full ({self.T_cap} positions)")
        if kernels.use_triton(self.k_cache):      # the fused attention reads the length itself: one graph
            bucket = self.T_cap
        else:
            bucket = min(self.T_cap, (self.host_pos // self.bucket_size + 1) * self.bucket_size)
        self.ids.copy_(ids)
        if not self.use_graphs:
            out = self._forward(bucket)
        else:
            if bucket not in self.graphs:
                self.graphs[bucket] = self._capture(bucket)
            graph, out = self.graphs[bucket]
            graph.replay()
        self.host_pos += 1
        return out

    def _capture(self, bucket):
        saved = self.pos.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):           # warm up (cuBLAS workspaces) off the capture
            self._forward(bucket)
        torch.cuda.current_stream().wait_stream(stream)
        self.pos.copy_(saved)                     # the warm-up advanced it; its cache writes get overwritten
        graph = torch.cuda.CUDAGraph()
        # thread_local: the server runs one worker thread per GPU, and another thread's allocations must not
        # invalidate this capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = self._forward(bucket)
        self.pos.copy_(saved)                     # capture records, it does not run; be explicit anyway
        return graph, out

    def _forward(self, bucket):
        """One token for every row: reads self.ids and self.pos, writes the caches, advances self.pos.

        Per layer: add+norm, qkv matmul, rotary+QK-norm+cache write, attention, proj matmul, add+norm, fc matmul,
        relu^2, down matmul -- about ten kernels instead of ~22 (nanochat.kernels fuses the elementwise work)."""
        m, H, Hkv, D, dt = self.model, self.H, self.Hkv, self.D, self.dtype
        B = self.ids.size(0)
        pos = self.pos.view(1)
        cos, sin = self._cos_sin
        # attention: the Triton kernel reads the length from pos and only the filled part of the cache; without
        # Triton, SDPA over the bucket with an additive mask (0 up to pos, -inf after), built once per step
        fused_attn = kernels.use_triton(self.k_cache)
        if not fused_attn:
            keep = torch.arange(bucket, device=self.device) <= self.pos
            mask = torch.zeros(bucket, dtype=dt, device=self.device).masked_fill(~keep, float("-inf"))
            mask = mask.view(1, 1, 1, bucket)
        x = F.rms_norm(m.transformer.wte(self.ids).to(dt), (m.config.n_embd,))            # (B, C) stream in dt
        h = kernels.add_rms_norm(x, None, dt)
        for i, w in enumerate(self.weights):
            q = kernels.rope_norm_cache(h @ w["qkv"].t(), cos, sin, pos, self.k_cache[i], self.v_cache[i], H, Hkv)
            if fused_attn:
                y = kernels.decode_attention(q, self.k_cache[i], self.v_cache[i], pos)        # (B, H, 1, D)
            else:
                kc, vc = self.k_cache[i, :, :, :bucket], self.v_cache[i, :, :, :bucket]
                y = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=self.gqa)
            h = kernels.add_rms_norm(x, y.reshape(B, H * D) @ w["proj"].t(), dt)   # x += attn; h = norm(x)
            u = kernels.relu_square_(h @ w["fc"].t())
            h = kernels.add_rms_norm(x, u @ w["down"].t(), dt)                     # x += mlp; h = norm(x)
        self.pos.add_(1)
        return kernels.softcap(h @ self.lm_head.t(), m.softcap)                     # h is the final norm(x)


if __name__ == "__main__":
    import doctest
    doctest.testmod()
