"""Engine tests: cached decoding equals naive decoding, sampling, the tool state machine, UTF-8-safe streaming.

Everything here runs on CPU with a randomly initialised tiny GPT and a byte-level stand-in tokenizer, so it
needs neither ../shared nor trained artifacts.
"""
import pytest
import torch

from nanochat.engine import Engine, KVCache, StaticDecoder, StreamDecoder, sample_next_token, use_calculator
from nanochat.gpt import GPT, GPTConfig

SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
            "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]


class ByteTokenizer:
    """Ids 0..255 are bytes, then the special tokens: enough of the tokenizer API for the engine."""

    def __init__(self):
        self.special = {s: 256 + i for i, s in enumerate(SPECIALS)}

    def encode_special(self, s):
        return self.special[s]

    def get_bos_token_id(self):
        return self.special["<|bos|>"]

    def get_vocab_size(self):
        return 256 + len(SPECIALS)

    def encode(self, text, prepend=None, append=None):
        ids = list(text.encode("utf-8"))
        return ([prepend] if prepend is not None else []) + ids + ([append] if append is not None else [])

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tiny_model(n_kv_head=2, seed=0, seq=128):
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=seq, vocab_size=320, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=64)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():   # init_weights zeroes the output projections: give the model something to say
        for p in model.parameters():
            if p.dim() == 2 and p.abs().max() == 0:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return ByteTokenizer()


PROMPT = [256, 72, 101, 108, 108, 111]


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_cached_greedy_equals_naive(tok, n_kv_head):
    model = tiny_model(n_kv_head)
    naive = list(model.generate(PROMPT, max_tokens=40, temperature=0.0))
    engine = Engine(model, tok, fast=False)
    cached = [col[0] for col, _ in engine.generate(PROMPT, max_tokens=40, temperature=0.0)]
    cached = cached[:len(naive)]
    assert len(cached) >= 30 or tok.special["<|assistant_end|>"] in naive or tok.special["<|bos|>"] in naive
    assert cached == naive[:len(cached)]


def test_static_decoder_equals_plain_path_on_cpu(tok):
    model = tiny_model(2)
    plain = Engine(model, tok, fast=False).generate_batch(PROMPT, num_samples=3, max_tokens=35, temperature=0.8,
                                                         seed=7)
    fast_engine = Engine(model, tok, fast=True)
    fast_engine._static = StaticDecoder(model, dtype=torch.float32, use_graphs=False)
    fast = fast_engine.generate_batch(PROMPT, num_samples=3, max_tokens=35, temperature=0.8, seed=7)
    assert plain == fast


def test_kv_cache_positions_and_overflow():
    cache = KVCache(batch_size=2, num_heads=1, seq_len=4, head_dim=8, num_layers=2)
    k = torch.randn(2, 1, 3, 8)
    for layer in range(2):
        assert cache.get_pos() == 0
        k_all, v_all = cache.insert_kv(layer, k, k + 1)
        assert k_all.shape == (2, 1, 3, 8) and torch.equal(v_all, k + 1)
    assert cache.get_pos() == 3
    with pytest.raises(ValueError, match="KV cache is full"):
        cache.insert_kv(0, torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8))


def test_prefill_broadcasts_rows():
    src = KVCache(batch_size=1, num_heads=2, seq_len=3, head_dim=4, num_layers=1)
    k = torch.randn(1, 2, 3, 4)
    src.insert_kv(0, k, -k)
    dst = KVCache(batch_size=5, num_heads=2, seq_len=10, head_dim=4, num_layers=1)
    dst.prefill(src)
    assert dst.get_pos() == 3
    assert torch.equal(dst.kv[0, 0, :, :, :3], k.expand(5, -1, -1, -1))


def test_samples_differ_and_seed_reproducible(tok):
    model = tiny_model()
    engine = Engine(model, tok, fast=False)
    first = [col for col, _ in engine.generate(PROMPT, num_samples=16, max_tokens=1, temperature=1.0, seed=1)][0]
    assert len(set(first)) > 1, "each sample must draw its own first token"
    a = engine.generate_batch(PROMPT, num_samples=4, max_tokens=20, temperature=1.0, top_k=50, seed=3)
    b = engine.generate_batch(PROMPT, num_samples=4, max_tokens=20, temperature=1.0, top_k=50, seed=3)
    c = engine.generate_batch(PROMPT, num_samples=4, max_tokens=20, temperature=1.0, top_k=50, seed=4)
    assert a == b and a != c


def test_temperature_zero_rows_identical_and_max_tokens(tok):
    model = tiny_model()
    engine = Engine(model, tok, fast=False)
    results, masks = engine.generate_batch(PROMPT, num_samples=3, max_tokens=9, temperature=0.0)
    assert results[0] == results[1] == results[2]
    for r, m in zip(results, masks):
        assert len(r) <= len(PROMPT) + 9 and len(r) == len(m)
    steps = list(engine.generate(PROMPT, max_tokens=9, temperature=0.0))
    assert len(steps) <= 9


def test_context_limit_stops_generation(tok):
    model = tiny_model(seq=16)
    engine = Engine(model, tok, fast=False)
    steps = list(engine.generate(PROMPT, max_tokens=100, temperature=0.0))
    assert len(steps) <= 16 - len(PROMPT)
    with pytest.raises(ValueError, match="context"):
        list(engine.generate(list(range(16)), max_tokens=4))


@pytest.mark.parametrize("bad", [[1, 2, 10_000], [-1, 5]])
def test_bad_token_ids_are_refused_on_the_host(tok, bad, monkeypatch):
    # before any tensor reaches the model: on a GPU the model's own check would be an opaque device assert
    model = tiny_model()
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the model ran on bad ids"))
    for run in (lambda: list(Engine(model, tok, fast=False).generate(bad, max_tokens=2)),
                lambda: Engine(model, tok, fast=False).generate_batch(bad, max_tokens=2),
                lambda: list(model.generate(bad, max_tokens=2))):
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, "):
            run()


def test_sample_next_token_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    rng = torch.Generator().manual_seed(0)
    draws = {sample_next_token(logits, rng, 1.0, top_k=2).item() for _ in range(200)}
    assert draws == {1, 2}
    assert sample_next_token(logits, rng, 0.0).item() == 1


class ScriptedModel(torch.nn.Module):
    """Predicts script[i] for the i-th generated position, whatever came before (tool outputs included)."""

    def __init__(self, prompt_len, script, vocab):
        super().__init__()
        self.config = GPTConfig(sequence_len=256, vocab_size=vocab, n_layer=1, n_head=1, n_kv_head=1, n_embd=8)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.prompt_len, self.script, self.vocab = prompt_len, script, vocab
        self.seen = []

    def forward(self, idx, kv_cache=None):
        B, T = idx.shape
        pos = kv_cache.get_pos()
        z = torch.zeros(B, 1, T, 8)
        kv_cache.insert_kv(0, z, z)
        self.seen.append(idx[:, -1].tolist())
        i = pos + T - self.prompt_len            # index into the script of the token to predict
        logits = torch.full((B, T, self.vocab), -1e9)
        logits[:, -1, self.script[i] if i < len(self.script) else 0] = 0.0
        return logits


def test_tool_use_state_machine(tok):
    S = tok.special
    expr = tok.encode("12*(3+4)")
    forced = [S["<|output_start|>"]] + tok.encode("84") + [S["<|output_end|>"]]
    script = [S["<|python_start|>"], *expr, S["<|python_end|>"], *([0] * len(forced)), *tok.encode("ok"),
              S["<|assistant_end|>"]]
    model = ScriptedModel(len(PROMPT), script, tok.get_vocab_size())
    engine = Engine(model, tok, fast=False)
    (result,), (mask,) = engine.generate_batch(PROMPT, max_tokens=50, temperature=0.0)
    gen, gen_mask = result[len(PROMPT):], mask[len(PROMPT):]
    want = [S["<|python_start|>"], *expr, S["<|python_end|>"], *forced, *tok.encode("ok")]
    assert gen == want
    assert gen_mask == [1] * (len(expr) + 2) + [0] * len(forced) + [1, 1]
    # the forced tokens were fed back to the model, so it saw the tool's output
    fed = [row[0] for row in model.seen[1:]]
    assert forced[0] in fed and forced[-1] in fed


def test_tool_call_rejected_forces_nothing(tok):
    S = tok.special
    expr = tok.encode("__import__('os').system('true')")
    script = [S["<|python_start|>"], *expr, S["<|python_end|>"], *tok.encode("x"), S["<|assistant_end|>"]]
    model = ScriptedModel(len(PROMPT), script, tok.get_vocab_size())
    (result,), (mask,) = Engine(model, tok, fast=False).generate_batch(PROMPT, max_tokens=80, temperature=0.0)
    assert S["<|output_start|>"] not in result and all(mask[len(PROMPT):])


@pytest.mark.parametrize("expr,want", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("7 / 2", 3.5), ("7 // 2", 3), ("-3 ** 2", -9), ("10 % 4", 2),
    ("1,234 + 1", 1235), ("0.1 + 0.2", 0.3), ("'strawberry'.count('r')", 3), ('"a,b,c".count(",")', 2),
    ("2 ** 10", 1024), ("6 / 3", 2),
])
def test_calculator_allows_arithmetic(expr, want):
    assert use_calculator(expr) == want


@pytest.mark.parametrize("expr", [
    "__import__('os')", "open('/etc/passwd')", "().__class__", "9 ** 9 ** 9", "1 / 0", "x + 1", "'a' * 10",
    "[1, 2]", "lambda: 1", "'abc'.upper()", "print(1)", "1 if 1 else 2", "", "1" * 300, "'abc'.count(1)",
])
def test_calculator_rejects(expr):
    assert use_calculator(expr) is None


def test_stream_decoder_utf8(tok):
    text = "안녕하세요 👋🏽 nanochat! é"
    ids = tok.encode(text)                   # byte tokens: every multi-byte char is split across tokens
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10   # it streams, it does not wait for the end
