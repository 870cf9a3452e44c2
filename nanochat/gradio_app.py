"""
A Gradio chat demo around the Engine: streaming replies, and the calculator tool shown inline.

    python -m nanochat.gradio_app -i sft --port 7860            # then open http://127.0.0.1:7860

Design choices:
- `build_demo(engine, tokenizer)` returns a `gr.ChatInterface` and launches nothing, so a notebook cell, a test
  and this module's CLI share one app
- the reply is re-rendered as it grows: tool calls (<|python_start|>expr<|python_end|>) appear as
  "🧮 `expr`", the tool's forced output as "= **result**"
- history comes from Gradio in its messages format and is re-encoded in the fine-tuning chat format
- no analytics, no share links: nothing leaves the machine
"""
import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from nanochat.engine import StreamDecoder  # noqa: E402

TOOL_MARKUP = {"<|python_start|>": "\n🧮 `", "<|python_end|>": "`", "<|output_start|>": " = **",
               "<|output_end|>": "**\n"}


def _text(content):
    """Gradio message content -> plain text (a string, or a list of parts with 'text')."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, (list, tuple)):
        return "".join(_text(c) for c in content)
    return ""


def to_messages(history, message):
    """Gradio history + the new message -> alternating user/assistant messages ending with the user."""
    out = []
    for m in list(history or []) + [{"role": "user", "content": message}]:
        role, text = m.get("role"), _text(m.get("content"))
        if role not in ("user", "assistant") or not text:
            continue
        if out and out[-1]["role"] == role:        # keep turns alternating: merge repeats
            out[-1]["content"] += "\n" + text
        else:
            out.append({"role": role, "content": text})
    while out and out[0]["role"] != "user":
        out.pop(0)
    return out


def stream_reply(engine, tokenizer, messages, temperature=0.6, top_k=50, max_tokens=512, seed=42):
    """Yields the reply so far (a growing markdown string) as tokens arrive."""
    conversation = {"messages": messages + [{"role": "assistant", "content": ""}]}
    tokens = tokenizer.render_for_completion(conversation)
    context = engine.model.config.sequence_len
    if len(tokens) >= context:
        yield f"(the conversation is {len(tokens)} tokens, longer than the model's context of {context}: clear it)"
        return
    stops = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}
    markup = {}
    for name, md in TOOL_MARKUP.items():
        try:
            markup[tokenizer.encode_special(name)] = md
        except Exception:
            pass
    decoder, reply = StreamDecoder(tokenizer), ""
    for column, _ in engine.generate(tokens, num_samples=1, max_tokens=min(max_tokens, context - len(tokens)),
                                     temperature=temperature, top_k=top_k, seed=seed):
        tok = column[0]
        if tok in stops:
            break
        piece = decoder.flush() + markup[tok] if tok in markup else decoder.push(tok)
        if piece:
            reply += piece
            yield reply
    reply += decoder.flush()
    yield reply


def build_demo(engine, tokenizer, temperature=0.6, top_k=50, max_tokens=512, title="nanochat"):
    import gradio as gr
    calls = {"n": 0}

    def respond(message, history):
        calls["n"] += 1
        yield from stream_reply(engine, tokenizer, to_messages(history, message), temperature, top_k,
                                max_tokens, seed=calls["n"])

    c = engine.model.config
    return gr.ChatInterface(
        respond, title=title, analytics_enabled=False, api_name="chat",
        description=f"A depth-{c.n_layer} nanochat model ({c.sequence_len}-token context), streaming from the "
                    f"KV-cache Engine. Arithmetic goes through the calculator tool (🧮).",
        examples=["What is 12 * 34?", "Tell me a short story about a robot.", "Why is the sky blue?"],
    )


def main(argv=None):
    from nanochat.checkpoint_manager import load_model
    from nanochat.common import autodetect_device_type, compute_init
    from nanochat.engine import Engine
    ap = argparse.ArgumentParser(description="Gradio chat demo for a nanochat model")
    ap.add_argument("-i", "--source", default="sft", help="base | mid | sft | rl")
    ap.add_argument("-g", "--model-tag", default=None)
    ap.add_argument("-s", "--step", type=int, default=None)
    ap.add_argument("-p", "--port", type=int, default=7860)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("-t", "--temperature", type=float, default=0.6)
    ap.add_argument("-k", "--top-k", type=int, default=50)
    ap.add_argument("-m", "--max-tokens", type=int, default=512)
    ap.add_argument("--device-type", default=None)
    args = ap.parse_args(argv)
    _, _, _, _, device = compute_init(args.device_type or autodetect_device_type())
    model, tokenizer, _ = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
    demo = build_demo(Engine(model, tokenizer), tokenizer, args.temperature, args.top_k, args.max_tokens)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False)


if __name__ == "__main__":
    main()
