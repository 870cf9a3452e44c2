"""nanochat.tokenizer: specials, encode/decode, the chat format's mask, token_bytes, and the tok_train script."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import HAVE_SHARED, SHARED_DATA, SKIP_NO_SHARED, run_script
from nanochat import tokenizer as T
from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, RustBPETokenizer, compute_token_bytes

pytest.importorskip("rustbpe", reason="build it first: pip install ./rustbpe")

TEXTS = [
    "The cat sat on the mat. The dog sat on the log. " * 20,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 10,
    "안녕하세요. 나노챗은 작은 챗봇입니다. 2025년 10월에 공개되었습니다. " * 10,
    "Numbers: 1 12 123 1234 12345 3.14159 2+2=4 " * 10,
]


@pytest.fixture(scope="module")
def tok():
    return RustBPETokenizer.train_from_iterator(iter(TEXTS), 320)


def test_vocab_layout(tok):
    assert tok.get_vocab_size() == 320
    ids = [tok.encode_special(s) for s in SPECIAL_TOKENS]
    assert ids == list(range(320 - len(SPECIAL_TOKENS), 320))      # specials come last
    assert tok.get_bos_token_id() == tok.encode_special("<|bos|>") == ids[0]
    assert len(SPECIAL_TOKENS) == 9 and tok.get_special_tokens() == set(SPECIAL_TOKENS)
    assert "{1,2}" in SPLIT_PATTERN and tok.get_pattern() == SPLIT_PATTERN
    with pytest.raises(ValueError, match="not a single token"):
        tok.encode_special("<|nope|>")


def test_vocab_too_small():
    with pytest.raises(ValueError, match="at least 256 \\+ 9"):
        RustBPETokenizer.train_from_iterator(iter(TEXTS), 256 + 8)


def test_encode_decode(tok):
    text = "Hello <|bos|> world <|assistant_end|>"
    ids = tok.encode(text)
    assert not set(ids) & {tok.encode_special(s) for s in SPECIAL_TOKENS}   # plain text never becomes special
    assert tok.decode(ids) == text
    with_bos = tok.encode(text, prepend="<|bos|>", append=tok.encode_special("<|user_end|>"))
    assert with_bos == [tok.get_bos_token_id()] + ids + [tok.encode_special("<|user_end|>")]
    batch = tok.encode(TEXTS + [""], prepend="<|bos|>")
    assert batch == [tok.encode(t, prepend="<|bos|>") for t in TEXTS + [""]]
    assert tok(TEXTS[0]) == tok.encode(TEXTS[0])
    with pytest.raises(TypeError):
        tok.encode(42)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=100))
def test_roundtrip_arbitrary_unicode(s):
    tok = _module_tok()
    assert tok.decode(tok.encode(s)) == s


_TOK = {}


def _module_tok():
    if "t" not in _TOK:
        _TOK["t"] = RustBPETokenizer.train_from_iterator(iter(TEXTS), 400)
    return _TOK["t"]


def test_save_and_load(tok, tmp_path):
    tok.save(str(tmp_path))
    assert not any(p.endswith(".tmp") for p in os.listdir(tmp_path))
    back = RustBPETokenizer.from_directory(str(tmp_path))
    assert back.get_vocab_size() == tok.get_vocab_size()
    for t in TEXTS:
        assert back.encode(t) == tok.encode(t)


def test_token_bytes(tok):
    tb = compute_token_bytes(tok)
    assert tb.dtype == torch.int32 and tb.shape == (tok.get_vocab_size(),)
    for s in SPECIAL_TOKENS:
        assert tb[tok.encode_special(s)] == 0
    assert (tb[:256] == 1).all()
    for t in TEXTS:
        assert int(tb[tok.encode(t)].sum()) == len(t.encode("utf-8"))


# ------------------------------------------------------------------------------------------ chat format
def _names(tok, ids):
    return [tok.id_to_token(i) for i in ids]


def test_render_conversation_mask(tok):
    conv = {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "let me run"},
            {"type": "python", "text": "2+2"},
            {"type": "python_output", "text": "4"},
            {"type": "text", "text": "it is 4"},
        ]},
    ]}
    ids, mask = tok.render_conversation(conv)
    assert len(ids) == len(mask) and ids[0] == tok.get_bos_token_id()
    sp = tok.encode_special
    # rebuild the expected stream segment by segment: (tokens, mask)
    want = [([sp("<|bos|>")], 0), ([sp("<|user_start|>")], 0), (tok.encode("hi"), 0), ([sp("<|user_end|>")], 0),
            ([sp("<|assistant_start|>")], 0), (tok.encode("hello"), 1), ([sp("<|assistant_end|>")], 1),
            ([sp("<|user_start|>")], 0), (tok.encode("2+2?"), 0), ([sp("<|user_end|>")], 0),
            ([sp("<|assistant_start|>")], 0), (tok.encode("let me run"), 1),
            ([sp("<|python_start|>")], 1), (tok.encode("2+2"), 1), ([sp("<|python_end|>")], 1),
            ([sp("<|output_start|>")], 0), (tok.encode("4"), 0), ([sp("<|output_end|>")], 0),
            (tok.encode("it is 4"), 1), ([sp("<|assistant_end|>")], 1)]
    assert ids == [i for seg, _ in want for i in seg]
    assert mask == [m for seg, m in want for _ in seg]
    short_ids, short_mask = tok.render_conversation(conv, max_tokens=7)
    assert short_ids == ids[:7] and short_mask == mask[:7]


def test_system_message_merged_into_first_user_turn(tok):
    with_sys = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "ok"}]}
    merged = {"messages": [{"role": "user", "content": "Be brief.\n\nhi"}, {"role": "assistant", "content": "ok"}]}
    assert tok.render_conversation(with_sys) == tok.render_conversation(merged)


def test_bad_conversations(tok):
    with pytest.raises(ValueError, match="alternate"):
        tok.render_conversation({"messages": [{"role": "assistant", "content": "x"}]})
    with pytest.raises(ValueError, match="unknown content part"):
        tok.render_conversation({"messages": [{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": [{"type": "img", "text": ""}]}]})


def test_render_for_completion(tok):
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ids = tok.render_for_completion(conv)
    full, _ = tok.render_conversation(conv)
    prefix = full[: full.index(tok.encode_special("<|assistant_start|>")) + 1]
    assert ids == prefix and ids[-1] == tok.encode_special("<|assistant_start|>")
    assert len(conv["messages"]) == 2                                     # the input is not modified
    with pytest.raises(ValueError):
        tok.render_for_completion({"messages": [{"role": "user", "content": "hi"}]})


def test_visualize(tok):
    ids, mask = tok.render_conversation({"messages": [{"role": "user", "content": "a"},
                                                      {"role": "assistant", "content": "b"}]})
    assert "<|assistant_end|>" in tok.visualize_tokenization(ids, mask)


# ------------------------------------------------------------------------------------------ pretrained, script
@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_from_pretrained(name, monkeypatch):
    if not HAVE_SHARED:
        pytest.skip(SKIP_NO_SHARED)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", os.path.join(SHARED_DATA, "tiktoken_cache"))
    import tiktoken
    enc = tiktoken.get_encoding(name)
    tok = RustBPETokenizer.from_pretrained(name)
    assert tok.get_bos_token_id() == enc.eot_token and tok.get_vocab_size() == enc.n_vocab
    for t in TEXTS:
        assert tok.encode(t) == enc.encode_ordinary(t)


def test_tok_train_script(tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_tokenizer))
    tok = T.get_tokenizer()
    assert tok.get_vocab_size() == 1024
    tb = T.get_token_bytes()
    assert tb.shape == (1024,) and int(tb[tok.get_bos_token_id()]) == 0
    assert os.path.exists(os.path.join(tiny_tokenizer, "report", "tokenizer-training.md"))


def test_tok_train_leaves_nothing_when_the_data_fails(base_dir, monkeypatch):
    import scripts.tok_train as tok_train

    def broken(max_chars, doc_cap, stats):
        yield "some text"
        raise OSError("shard vanished")

    monkeypatch.setattr(tok_train, "text_iterator", broken)
    with pytest.raises(OSError, match="shard vanished"):
        tok_train.main(["--max-chars", "1000", "--vocab-size", "300"])
    assert not os.path.exists(base_dir / "tokenizer") or os.listdir(base_dir / "tokenizer") == []


def test_tok_train_reports_its_reading_progress(monkeypatch, capsys):
    import nanochat.dataset
    import scripts.tok_train as tok_train
    monkeypatch.setattr(nanochat.dataset, "parquets_iter_batched",
                        lambda split: iter([["x" * 100] * 10] * 100))           # 100 batches of ten 100-char docs
    stats = {"docs": 0, "chars": 0}
    docs = list(tok_train.text_iterator(50_000, 10_000, stats))
    lines = capsys.readouterr().out.splitlines()
    assert len(docs) == 500 and stats == {"docs": 500, "chars": 50_000}
    assert [line.split(":")[0] for line in lines] == ["read"] * 9 + ["read all; learning the merges"]
    assert lines[0].startswith("read: 5,000 of 50,000 chars (10%) from 50 docs")
    stats = {"docs": 0, "chars": 0}
    list(tok_train.text_iterator(10 ** 9, 10_000, stats))                      # more than the data holds
    assert capsys.readouterr().out.splitlines()[-1].startswith("the data ran out; learning the merges: 100,000 of")


def test_tok_train_rejects_tiny_vocab(base_dir, capsys):
    import scripts.tok_train as tok_train
    with pytest.raises(SystemExit):
        tok_train.main(["--vocab-size", "100"])
    assert "at least 265" in capsys.readouterr().err


def test_tok_eval_script(tiny_tokenizer):
    proc = run_script("scripts.tok_eval", env={"NANOCHAT_BASE_DIR": str(tiny_tokenizer)})
    assert "korean" in proc.stdout and "gpt4" in proc.stdout.lower()
