"""rustbpe against the Python reference (identical merges), tiktoken (identical ids) and bad input."""
import glob
import os
import time

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import HAVE_SHARED, SHARED_DATA, SKIP_NO_SHARED
from nanochat.bpe import BPE, GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN

rustbpe = pytest.importorskip("rustbpe", reason="build it first: pip install ./rustbpe")
tiktoken = pytest.importorskip("tiktoken")

NANOCHAT_PATTERN = GPT4_SPLIT_PATTERN.replace("{1,3}", "{1,2}")
PROSE = os.path.join(SHARED_DATA, "hf-mirror/datasets/nanochat-fixtures/prose-mix/resolve/main")

# Characters assigned in Python's own Unicode tables. Code points assigned only in newer Unicode versions are
# classified differently by the `regex` module (newer tables) and Rust's regex-syntax / tiktoken (older ones).
ASSIGNED = st.characters(exclude_categories=("Cn", "Cs"))


def prose_texts(max_chars):
    if not HAVE_SHARED:
        pytest.skip(SKIP_NO_SHARED)
    import pyarrow.parquet as pq
    out, n = [], 0
    for path in sorted(glob.glob(os.path.join(PROSE, "shard_*.parquet"))):
        for t in pq.read_table(path, columns=["text"]).column("text").to_pylist():
            t = t[: max_chars - n]
            out.append(t)
            n += len(t)
            if n >= max_chars:
                return out
    return out


def train_rust(texts, vocab_size, pattern=None, buffer_size=8192):
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size, buffer_size=buffer_size, pattern=pattern)
    return tok


def as_encoding(tok):
    ranks = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
    return tiktoken.Encoding(name="t", pat_str=tok.get_pattern(), mergeable_ranks=ranks, special_tokens={})


# ------------------------------------------------------------------------------------------- equality
def test_prose_slice_same_merges_as_python():
    texts = prose_texts(100_000)
    t0 = time.time()
    ref = BPE().train(texts, 400, pattern=NANOCHAT_PATTERN)
    t_py = time.time() - t0
    tok = train_rust(texts, 400, pattern=NANOCHAT_PATTERN, buffer_size=7)   # many batches: tests the merging
    assert tok.get_merges() == ref.merges
    assert [bytes(b) for b, _ in tok.get_mergeable_ranks()] == ref.vocab
    assert t_py < 60


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(ASSIGNED, max_size=40), max_size=30), st.integers(256, 330))
def test_random_unicode_same_merges_as_python(texts, vocab_size):
    ref = BPE().train(iter(texts), vocab_size)
    tok = train_rust(texts, vocab_size, buffer_size=4)
    assert tok.get_merges() == ref.merges
    assert tok.vocab_size == len(ref.vocab)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet="ab c\n", max_size=30), min_size=1, max_size=20))
def test_custom_pattern_goes_through_regex_engine(texts):
    tok = train_rust(texts, 300, pattern=r"\w+|\s+|[^\w\s]+")
    assert not tok.uses_fast_split()
    assert tok.get_merges() == BPE().train(texts, 300, pattern=r"\w+|\s+|[^\w\s]+").merges


@settings(max_examples=300, deadline=None)
@given(st.text(ASSIGNED, max_size=60))
def test_fast_split_equals_python_regex(s):
    for pattern, tok in _SPLITTERS.items():
        assert tok.split(s) == regex.findall(pattern, s)


def _splitter(pattern):
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter([]), 256, pattern=pattern)
    return tok


_SPLITTERS = {p: _splitter(p) for p in (GPT4_SPLIT_PATTERN, NANOCHAT_PATTERN, GPT2_SPLIT_PATTERN)}


def test_known_patterns_use_the_scanner():
    assert _SPLITTERS[GPT4_SPLIT_PATTERN].uses_fast_split() and _SPLITTERS[NANOCHAT_PATTERN].uses_fast_split()
    assert not _SPLITTERS[GPT2_SPLIT_PATTERN].uses_fast_split()
    assert rustbpe.Tokenizer().get_pattern() == GPT4_SPLIT_PATTERN == rustbpe.GPT4_PATTERN


@pytest.fixture(scope="module")
def prose_tok():
    texts = prose_texts(400_000)
    return train_rust(texts, 2000, pattern=NANOCHAT_PATTERN), texts


def test_encode_equals_tiktoken_and_python(prose_tok):
    tok, texts = prose_tok
    enc = as_encoding(tok)
    ref = BPE.from_mergeable_ranks({bytes(b): r for b, r in tok.get_mergeable_ranks()}, NANOCHAT_PATTERN)
    for t in texts[:40]:
        ids = tok.encode(t)
        assert ids == enc.encode_ordinary(t)
        assert tok.decode(ids) == t
    sample = texts[3][:3000]
    assert tok.encode(sample) == ref.encode_ordinary(sample)
    assert tok.batch_encode(texts[:40]) == [tok.encode(t) for t in texts[:40]]


@settings(max_examples=100, deadline=None)
@given(st.text(ASSIGNED, max_size=100))
def test_roundtrip_and_tiktoken_on_random_unicode(prose_tok, s):
    tok, _ = prose_tok
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert ids == _enc_cache(tok).encode_ordinary(s)


_ENC = {}


def _enc_cache(tok):
    if id(tok) not in _ENC:
        _ENC[id(tok)] = as_encoding(tok)
    return _ENC[id(tok)]


def test_ranks_are_bytes_then_merges(prose_tok):
    tok, _ = prose_tok
    ranks = tok.get_mergeable_ranks()
    assert [r for _, r in ranks] == list(range(tok.vocab_size))
    assert [bytes(b) for b, _ in ranks[:256]] == [bytes([i]) for i in range(256)]
    assert len({bytes(b) for b, _ in ranks}) == len(ranks)


# ------------------------------------------------------------------------------------------- bad input
def test_fresh_tokenizer_is_bytes():
    tok = rustbpe.Tokenizer()
    assert tok.vocab_size == 256 and tok.get_merges() == []
    assert tok.encode("hé") == list("hé".encode("utf-8"))


def test_vocab_size_below_256():
    with pytest.raises(ValueError, match="at least 256"):
        rustbpe.Tokenizer().train_from_iterator(iter(["abc"]), 255)


def test_iterator_that_raises_leaves_tokenizer_unchanged():
    tok = train_rust(["hello hello hello"], 260)
    before = tok.get_merges()

    def bad():
        yield "some text"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        tok.train_from_iterator(bad(), 300, buffer_size=1)
    assert tok.get_merges() == before


def test_non_str_item():
    with pytest.raises(TypeError, match="expected str"):
        rustbpe.Tokenizer().train_from_iterator(iter(["ok", b"bytes"]), 300)


def test_empty_inputs():
    tok = train_rust(["", "", "a"], 300)
    assert tok.vocab_size == 256
    assert tok.encode("") == [] and tok.decode([]) == ""
    assert train_rust([], 300).vocab_size == 256


def test_decode_bad_ids_and_partial_utf8():
    tok = rustbpe.Tokenizer()
    with pytest.raises(ValueError, match="unknown token id 999"):
        tok.decode([104, 999])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])
    assert tok.decode([0xED, 0xA0, 0x80, 104]) == "\ufffd\ufffd\ufffdh"   # invalid UTF-8 -> U+FFFD
    assert tok.decode(list("한".encode())[:2]) == "\ufffd"


def test_lone_surrogates_become_replacement_char():
    tok = rustbpe.Tokenizer()
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
    trained = train_rust(["x\udfffy"] * 3, 260)
    assert trained.vocab_size > 256


def test_ten_megabyte_single_line_document():
    words = ["alpha", "beta", "gamma", "delta", "안녕", "42,", "(x)"]
    doc = " ".join(words[i % 7] for i in range(2_100_000))[:10_000_000]
    assert len(doc) == 10_000_000 and "\n" not in doc
    t0 = time.time()
    tok = train_rust([doc], 300)
    ids = tok.encode(doc)
    assert tok.decode(ids) == doc
    assert time.time() - t0 < 30
    # one 1 MB chunk of a single letter: the heap path of the encoder keeps this linear-ish
    long = "a" * 1_000_000
    aaaa = train_rust(["aaaa"], 260)
    t1 = time.time()
    ids = aaaa.encode(long)
    assert time.time() - t1 < 10
    assert ids == [257] * 250_000 and aaaa.decode(ids) == long
    assert aaaa.encode(long[:100_001]) == as_encoding(aaaa).encode_ordinary(long[:100_001])
