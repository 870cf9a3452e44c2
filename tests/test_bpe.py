"""The Python reference BPE: hand-computed merges, the tie rule, tiktoken's ids exactly, special-token rules."""
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import HAVE_SHARED, SHARED_DATA, SKIP_NO_SHARED
from nanochat.bpe import BPE, GPT4_SPLIT_PATTERN, best_pair, get_stats, merge

os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED_DATA, "tiktoken_cache"))

SAMPLES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog. It's 12345 o'clock, isn't it?",
    "안녕하세요, 나노챗입니다. 한국어 토크나이저 테스트 2025년 10월",
    "def f(x):\n    return x ** 2  # square\n\n\n\tprint(f(3))\r\n",
    "math: ∑ᵢ xᵢ² ≤ ½ · ∫₀^∞ e^{-t} dt; emoji 👍🏽🚀 and café naïve",
    "   leading and trailing spaces   \n\n  ",
    "'S 'LL 'Ve 'ſ I'M YOU'RE don't",
    "",
]


def test_wikipedia_example_by_hand():
    # "aaabdaaabac": (a,a) occurs 4 times (overlaps count) -> 256 = "aa"; the text becomes aa a b d aa a b a c.
    # Then (aa, a) and (a, b) both occur twice: the tie goes to the smaller pair (97, 98) -> 257 = "ab".
    # Then (aa, ab) occurs twice -> 258 = "aaab".
    tok = BPE().train("aaabdaaabac", 259)
    assert tok.merges == [((97, 97), 256), ((97, 98), 257), ((256, 257), 258)]
    assert tok.vocab[258] == b"aaab"
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]


def test_stats_and_merge_primitives():
    assert get_stats([[1, 1, 1], [1, 2]], [2, 5]) == {(1, 1): 4, (1, 2): 5}
    assert merge([1, 1, 1, 2, 1, 1], (1, 1), 9) == [9, 1, 2, 9]
    assert best_pair({(5, 6): 3, (2, 9): 3, (1, 1): 2}) == (2, 9)


def test_tie_rule_smallest_pair_wins():
    # chunks "cd" and " ab": pairs (99, 100), (32, 97), (97, 98) occur once each; the smallest wins
    tok = BPE().train("cd ab", 257)
    assert tok.merges[0][0] == (32, 97)


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="at least 256"):
        BPE().train("hello", 100)


def test_stops_when_nothing_left_to_merge():
    tok = BPE().train("ab", 1000)
    assert len(tok.vocab) == 257


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet="abcab ", min_size=1, max_size=12), min_size=1, max_size=12))
def test_vocab_bytes_are_unique(texts):
    tok = BPE().train(iter(texts), 300)
    assert len(set(tok.vocab)) == len(tok.vocab)
    assert tok.ranks == {b: i for i, b in enumerate(tok.vocab)}


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_roundtrip_arbitrary_unicode(s):
    assert _trained().decode(_trained().encode_ordinary(s)) == s


_TRAINED = {}


def _trained():
    if "t" not in _TRAINED:
        _TRAINED["t"] = BPE().train(SAMPLES * 3, 400)
    return _TRAINED["t"]


def test_decode_never_crashes_on_partial_utf8():
    tok = _trained()
    ids = list("한".encode("utf-8"))[:2]           # two of the three bytes of a Korean syllable
    assert tok.decode(ids) == "\ufffd"
    with pytest.raises(ValueError, match="123456"):
        tok.decode([123456])


def test_empty_and_lone_surrogate():
    tok = _trained()
    assert tok.encode("") == [] and tok.decode([]) == ""
    assert tok.encode_ordinary("a\ud800b") == tok.encode_ordinary("a\ufffdb")


def test_special_token_semantics():
    tok = BPE().train(SAMPLES, 300)
    tok.register_special_tokens({"<|bos|>": 300, "<|eot|>": 301})
    text = "hi<|bos|>there<|eot|>"
    with pytest.raises(ValueError, match="disallowed special"):
        tok.encode(text)
    ids = tok.encode(text, allowed_special="all")
    assert 300 in ids and 301 in ids and tok.decode(ids) == text
    only_bos = tok.encode(text, allowed_special={"<|bos|>"}, disallowed_special=())
    assert 300 in only_bos and 301 not in only_bos
    plain = tok.encode(text, disallowed_special=())
    assert plain == tok.encode_ordinary(text) and 300 not in plain


def test_save_load_roundtrip(tmp_path):
    tok = _trained()
    tok.register_special_tokens({"<|bos|>": len(tok.vocab)})
    path = str(tmp_path / "bpe.json")
    tok.save(path)
    back = BPE.load(path)
    assert back.vocab == tok.vocab and back.merges == tok.merges and back.special_tokens == tok.special_tokens
    for s in SAMPLES:
        assert back.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")


# --------------------------------------------------------------------------- tiktoken's gpt2 and cl100k_base
_ENCODINGS = {}


def _ref(name):
    if not HAVE_SHARED:
        pytest.skip(SKIP_NO_SHARED)
    import tiktoken
    if name not in _ENCODINGS:
        enc = tiktoken.get_encoding(name)
        _ENCODINGS[name] = (enc, BPE.from_mergeable_ranks(enc._mergeable_ranks, enc._pat_str, enc._special_tokens))
    return _ENCODINGS[name]


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
@pytest.mark.parametrize("text", SAMPLES)
def test_matches_tiktoken_exactly(name, text):
    enc, ref = _ref(name)
    assert ref.encode_ordinary(text) == enc.encode_ordinary(text)
    assert ref.decode(enc.encode_ordinary(text)) == text


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_matches_tiktoken_specials(name):
    enc, ref = _ref(name)
    text = "end<|endoftext|>start"
    assert ref.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    with pytest.raises(ValueError):
        ref.encode(text)
    with pytest.raises(ValueError):
        enc.encode(text)


def test_known_divergence_of_gpt4_pattern_and_tiktoken_on_line_break_then_space():
    # Found by hypothesis: on "\r\t" (and "\n ") the original pattern's `\s*[\r\n]+` backtracks to "\r" while tiktoken's
    # possessive rewrite keeps "\r\t" together. Encoding cl100k ids exactly therefore uses tiktoken's own
    # pattern string (from_mergeable_ranks takes the pattern), not GPT4_SPLIT_PATTERN.
    import regex
    enc, _ = _ref("cl100k_base")
    assert regex.findall(GPT4_SPLIT_PATTERN, "\r\t") == ["\r", "\t"]
    assert regex.findall(enc._pat_str, "\r\t") == ["\r\t"]
    assert regex.findall(GPT4_SPLIT_PATTERN, "\n ") == ["\n", " "] and regex.findall(enc._pat_str, "\n ") == ["\n "]


@settings(max_examples=80, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cn", "Cs")), max_size=60))   # see test_rustbpe.ASSIGNED
def test_matches_cl100k_on_random_unicode(s):
    enc, ref = _ref("cl100k_base")
    assert ref.encode_ordinary(s) == enc.encode_ordinary(s)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\u00a0'sSlLvVeEdx09٣½.,!?😀한\u0301\u2028ſ")), max_size=40))
def test_default_pattern_splits_like_tiktoken_cl100k(s):
    # tiktoken ships a rewritten (possessive) form of the GPT-4 pattern; it agrees with the original except
    # where a line break is followed by other whitespace (pinned above), so line breaks are left out here
    import regex
    enc, _ = _ref("cl100k_base")
    assert regex.findall(GPT4_SPLIT_PATTERN, s) == regex.findall(enc._pat_str, s)
