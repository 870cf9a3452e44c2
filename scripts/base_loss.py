"""
Bits per byte of a base model on the pretraining train and val splits, plus a few greedy samples.

    python -m scripts.base_loss                          # latest base checkpoint, 20M tokens per split
    python -m scripts.base_loss --split-tokens 65536     # a quick look on a laptop

bpb (not mean token loss) so that models with different tokenizers can be compared; see nanochat/loss_eval.py.
Results go to stdout and the report ("Base model loss").
"""
import argparse

import torch

from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, get_dist_info, print0
from nanochat.loss_eval import evaluate_bpb

PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
           "The opposite of hot is", "The planets of the solar system are:", "My favorite color is",
           "If 5*x + 3 = 13, then x is"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device-batch-size", type=int, default=32)
    p.add_argument("--split-tokens", type=int, default=20 * 524288, help="tokens evaluated per split")
    p.add_argument("--model-tag", default=None)
    p.add_argument("--model-step", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--device-type", default=None, choices=["cuda", "cpu", "mps"])
    args = p.parse_args(argv)

    device_type = args.device_type or autodetect_device_type()
    ddp, rank, local_rank, world, device = compute_init(device_type)
    from nanochat.checkpoint_manager import load_model
    from nanochat.dataloader import tokenizing_distributed_data_loader
    from nanochat.tokenizer import get_token_bytes
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.model_step)
    T = model.config.sequence_len
    B = args.device_batch_size
    tokens_per_step = B * T * world
    steps = max(1, args.split_tokens // tokens_per_step)
    print0(f"base_loss: seq {T}, batch {B} x {world} ranks = {tokens_per_step:,} tokens/step, {steps} steps/split")
    token_bytes = get_token_bytes(device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device_type == "cuda" else torch.autocast("cpu", enabled=False)

    bpb = {}
    for split in ("train", "val"):
        loader = tokenizing_distributed_data_loader(B, T, split, device=device)
        with autocast:
            bpb[split] = evaluate_bpb(model, loader, steps, token_bytes)
        print0(f"{split} bpb: {bpb[split]:.4f}")

    samples = []
    if get_dist_info()[1] == 0:
        from nanochat.engine import Engine
        engine = Engine(model, tokenizer)
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
            out, _ = engine.generate_batch(ids, num_samples=1, max_tokens=args.max_new_tokens, temperature=0.0)
            text = tokenizer.decode(out[0][1:])
            samples.append(text)
            print0(repr(text))
        from nanochat.report import get_report
        get_report().log(section="Base model loss", data=[
            {"train bpb": bpb["train"], "val bpb": bpb["val"], "tokens per split": steps * tokens_per_step},
            "samples:\n" + "\n".join(f"- {s!r}" for s in samples),
        ])
    compute_cleanup()
    return bpb


if __name__ == "__main__":
    main()
