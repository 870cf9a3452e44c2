"""
Chat with a model in the terminal, streaming its answer token by token.

    python -m scripts.chat_cli -i sft                       # interactive: 'clear' starts over, 'quit' leaves
    python -m scripts.chat_cli -i sft -p "Why is the sky blue?"   # one prompt, one answer, exit

The conversation is rendered in the fine-tuning chat format (tokenizer.render_for_completion), so the model sees
exactly what it was trained on; the calculator tool runs inside the Engine and its output is shown inline.
"""
import argparse
import sys

from nanochat.common import autodetect_device_type, compute_init
from nanochat.engine import Engine, StreamDecoder


def answer(engine, tokenizer, messages, temperature, top_k, max_tokens, seed, out=sys.stdout):
    """Stream one assistant reply to `out`; returns its text."""
    conversation = {"messages": messages + [{"role": "assistant", "content": ""}]}
    tokens = tokenizer.render_for_completion(conversation)
    context = engine.model.config.sequence_len
    if len(tokens) >= context:
        raise ValueError(f"the conversation ({len(tokens)} tokens) no longer fits the context ({context}); "
                         f"type 'clear' to start over")
    stops = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}
    decoder, pieces = StreamDecoder(tokenizer), []
    for column, _ in engine.generate(tokens, num_samples=1, max_tokens=max_tokens, temperature=temperature,
                                     top_k=top_k, seed=seed):
        if column[0] in stops:
            break
        text = decoder.push(column[0])
        pieces.append(text)
        out.write(text)
        out.flush()
    pieces.append(decoder.flush())
    out.write(pieces[-1] + "\n")
    return "".join(pieces)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Chat with a nanochat model in the terminal")
    ap.add_argument("-i", "--source", default="sft", help="base | mid | sft | rl")
    ap.add_argument("-g", "--model-tag", default=None)
    ap.add_argument("-s", "--step", type=int, default=None)
    ap.add_argument("-p", "--prompt", default="", help="answer this one prompt and exit")
    ap.add_argument("-t", "--temperature", type=float, default=0.6)
    ap.add_argument("-k", "--top-k", type=int, default=50)
    ap.add_argument("-m", "--max-tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device-type", default=None, help="cuda | cpu | mps (default: autodetect)")
    args = ap.parse_args(argv)

    from nanochat.checkpoint_manager import load_model
    device_type = args.device_type or autodetect_device_type()
    _, _, _, _, device = compute_init(device_type)
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
    engine = Engine(model, tokenizer)
    c = model.config
    print(f"nanochat {args.source} (depth {c.n_layer}, context {c.sequence_len}) on {device}")

    if args.prompt:
        print("Assistant: ", end="", flush=True)
        answer(engine, tokenizer, [{"role": "user", "content": args.prompt}], args.temperature, args.top_k,
               args.max_tokens, args.seed)
        return
    print("Type a message; 'clear' starts a new conversation, 'quit' or Ctrl-D leaves.")
    messages, turn = [], 0
    while True:
        try:
            text = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if text.lower() in ("quit", "exit"):
            break
        if text.lower() == "clear":
            messages = []
            print("(new conversation)")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("\nAssistant: ", end="", flush=True)
        try:
            reply = answer(engine, tokenizer, messages, args.temperature, args.top_k, args.max_tokens,
                           args.seed + turn)
        except ValueError as e:
            messages.pop()
            print(f"\n[{e}]")
            continue
        messages.append({"role": "assistant", "content": reply})
        turn += 1


if __name__ == "__main__":
    main()
