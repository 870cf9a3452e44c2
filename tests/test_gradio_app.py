"""The Gradio demo launched on a loopback port and driven through gradio_client, streaming included."""
import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from helpers import free_port  # noqa: E402
from nanochat.engine import Engine  # noqa: E402
from nanochat.gradio_app import build_demo, stream_reply, to_messages  # noqa: E402
from test_chat_web import ChatByteTokenizer  # noqa: E402
from test_engine import ScriptedModel, tiny_model  # noqa: E402


def test_to_messages_alternates():
    history = [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "a"},
               {"role": "user", "content": [{"type": "text", "text": "b"}]},
               {"role": "assistant", "content": "c"}]
    assert to_messages(history, "d") == [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"},
                                         {"role": "user", "content": "d"}]


def test_tool_use_is_rendered():
    tok = ChatByteTokenizer()
    S = tok.special
    messages = [{"role": "user", "content": "2+3?"}]
    prompt_len = len(tok.render_for_completion({"messages": messages + [{"role": "assistant", "content": ""}]}))
    forced = 2 + len(tok.encode("5"))
    script = [S["<|python_start|>"], *tok.encode("2+3"), S["<|python_end|>"], *([0] * forced), *tok.encode("ok"),
              S["<|assistant_end|>"]]
    engine = Engine(ScriptedModel(prompt_len, script, tok.get_vocab_size()), tok, fast=False)
    final = list(stream_reply(engine, tok, messages, temperature=0.0))[-1]
    assert "🧮 `2+3`" in final and "= **5**" in final and final.rstrip().endswith("ok")


def test_demo_streams_through_gradio_client():
    tok = ChatByteTokenizer()
    engine = Engine(tiny_model(seq=256), tok, fast=False)
    demo = build_demo(engine, tok, temperature=0.0, max_tokens=16)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        share=False)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False,
                                      download_files=False)
        job = client.submit("Hello there", api_name="/chat")
        partials = [out for out in job]
        final = job.result()
        text = final if isinstance(final, str) else str(final)
        assert len(partials) >= 2, "the reply should arrive in several streamed pieces"
        assert text and all(text.startswith(p) for p in partials if isinstance(p, str))
    finally:
        demo.close()
