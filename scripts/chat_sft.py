"""
Supervised finetuning (SFT): teach the midtrained model to answer, one conversation at a time.

Midtraining taught the format with every token as a target. SFT now trains only on what the assistant says:
each row holds one conversation (padded, never packed with another), and the loss is taken only where
`render_conversation`'s mask is 1. The model stops being scored on predicting the user, and it sees the
conversation start exactly as it will at chat time (BOS, then <|user_start|>), which packing would blur.

Design choices (as nanochat, October 2025):
- data: ARC-Easy + ARC-Challenge train, GSM8K train, 10K SmolTalk conversations, the identity conversations, a
  few hundred SpellingBee questions; validation loss on SmolTalk test
- rows padded with <|assistant_end|> (any id works: padded positions have target -1 and are ignored)
- one epoch by default; LR starts at 2% of base training's (--init-lr-frac 0.02) and decays linearly to 0
- 32 conversations per step on the speedrun (4 per GPU x 8); --target-examples-per-step adds gradient
  accumulation on fewer GPUs
- the data order is a pure function of the step, so --resume is exact without saving a cursor
- not compiled: every batch has its own length, and recompiling per shape would cost more than it saves
- before and after training the run answers the same few prompts (greedy), so the change is visible in the log
- after training: chat evaluation (ARC-Easy, MMLU) through scripts.chat_eval, logged to the report

Examples:
    python -m scripts.chat_sft --device-type cpu --num-iterations 30 --device-batch-size 8
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft -- --device-batch-size 4
Cost: one epoch of the mixture is ~700 steps of 32 conversations; at ci scale (depth 2, CPU) a step of 8
conversations of <=256 tokens takes about a second on an idle 2-core machine.
"""
import argparse
import time

import torch
import torch.distributed as dist

from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, print0
from nanochat.posttrain import (apply_lr, autocast_ctx, format_eta, init_wandb, load_start, lr_multiplier_linear,
                                make_optimizers, set_initial_lrs, sft_collate, should_print)

SAMPLE_PROMPTS = [
    "What is the capital of France?",
    "Who are you?",
    "If I have 3 apples and buy 5 more, how many apples do I have?",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="dummy", help="wandb run name ('dummy' = no wandb)")
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (empty = autodetect)")
    p.add_argument("--source", default="mid", choices=["base", "mid"], help="which phase to finetune")
    p.add_argument("--model-tag", default=None)
    p.add_argument("--model-step", type=int, default=None)
    p.add_argument("--num-iterations", type=int, default=-1, help="-1 = --num-epochs over the mixture")
    p.add_argument("--num-epochs", type=int, default=1)
    p.add_argument("--device-batch-size", type=int, default=4, help="conversations per micro-batch per rank")
    p.add_argument("--target-examples-per-step", type=int, default=-1,
                   help="conversations per optimizer step; -1 = one micro-batch per rank (upstream's 32 = 4 x 8 GPUs)")
    p.add_argument("--max-seq-len", type=int, default=-1,
                   help="conversations are cropped to this many tokens (-1 = the model's context)")
    p.add_argument("--unembedding-lr", type=float, default=0.004)
    p.add_argument("--embedding-lr", type=float, default=0.2)
    p.add_argument("--matrix-lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--init-lr-frac", type=float, default=0.02)
    p.add_argument("--eval-every", type=int, default=100, help="validation loss every N steps (-1 = at the end)")
    p.add_argument("--eval-steps", type=int, default=-1,
                   help="micro-batches per validation; -1 = 100 on CUDA (upstream), 8 elsewhere")
    p.add_argument("--eval-tasks", default="ARC-Easy|MMLU", help="chat_eval tasks after training ('' = none)")
    p.add_argument("--eval-max-problems", type=int, default=-1,
                   help="problems per task after training; -1 = 1024 on CUDA, 32 elsewhere (a CPU run is a demo: "
                        "scripts.chat_eval gives the full numbers); 0 = skip")
    p.add_argument("--save-every", type=int, default=-1)
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def build_mixtures():
    from tasks.arc import ARC
    from tasks.common import TaskMixture
    from tasks.customjson import CustomJSON
    from tasks.gsm8k import GSM8K
    from tasks.smoltalk import SmolTalk
    from tasks.spellingbee import SpellingBee
    train = TaskMixture([
        ARC(subset="ARC-Easy", split="train"),
        ARC(subset="ARC-Challenge", split="train"),
        GSM8K(subset="main", split="train"),
        SmolTalk(split="train", stop=10_000),
        CustomJSON(),
        SpellingBee(size=300, split="train"),
    ])
    val = SmolTalk(split="test")
    return train, val


def batch_indices(step: int, micro: int, grad_accum: int, B: int, rank: int, world: int, n: int):
    """Dataset indices of one rank's micro-batch: a pure function of the step, so a resumed run sees the same."""
    first = ((step * grad_accum + micro) * world + rank) * B
    return [(first + i) % n for i in range(B)]


@torch.inference_mode()
def sample_answers(model, tokenizer, prompts, max_tokens=48):
    """Greedy answers to a few prompts, through the Engine (calculator on)."""
    from nanochat.engine import Engine
    engine = Engine(model, tokenizer)
    answers = []
    for prompt in prompts:
        ids = tokenizer.render_for_completion({"messages": [{"role": "user", "content": prompt},
                                                            {"role": "assistant", "content": ""}]})
        out, _ = engine.generate_batch(ids, num_samples=1, max_tokens=max_tokens, temperature=0.0)
        answers.append(tokenizer.decode(out[0][len(ids):]))
    return answers


def main(argv=None):
    args = parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    ddp, rank, _local_rank, world, device = compute_init(device_type)
    master = rank == 0
    from nanochat.checkpoint_manager import load_checkpoint, save_checkpoint

    model, tokenizer, meta, out_dir, model_tag, resume_step = load_start(
        args.source, "sft", device, model_tag=args.model_tag, model_step=args.model_step, resume=args.resume)

    if args.max_seq_len < 0:
        args.max_seq_len = model.config.sequence_len
    B = args.device_batch_size
    per_micro = B * world
    if args.target_examples_per_step < 0:
        args.target_examples_per_step = per_micro
    assert args.target_examples_per_step % per_micro == 0, \
        f"--target-examples-per-step {args.target_examples_per_step} not a multiple of B*world={per_micro}"
    grad_accum = args.target_examples_per_step // per_micro
    train_ds, val_ds = build_mixtures()
    n_steps = args.num_iterations if args.num_iterations > 0 else \
        args.num_epochs * len(train_ds) // args.target_examples_per_step
    nparams = sum(p.numel() for p in model.parameters())
    print0(f"model {model_tag} ({args.source}): {nparams:,} params | world {world} | {len(train_ds):,} train "
           f"conversations | {args.target_examples_per_step} per step = {grad_accum} micro-step(s) x {B} x "
           f"{world} rank(s) | rows cropped to {args.max_seq_len} tokens | {n_steps} steps")

    optimizers = make_optimizers(model, unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                 matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
    set_initial_lrs(optimizers, args.init_lr_frac)
    step = 0
    if resume_step is not None:
        _, optim_data, _ = load_checkpoint(out_dir, resume_step, device, load_optimizer=True, rank=rank)
        for opt, state in zip(optimizers, optim_data):
            opt.load_state_dict(state)
        step = resume_step
        print0(f"resumed from {out_dir} at step {step}")
    start_step = step
    if args.eval_steps < 0:
        args.eval_steps = 100 if device_type == "cuda" else 8
    pad_id = tokenizer.encode_special("<|assistant_end|>")
    autocast = autocast_ctx(device_type)
    wandb_run = init_wandb(args.run, "nanochat-sft", vars(args), master)

    def get_batch(ds, step, micro):
        idx = batch_indices(step, micro, grad_accum, B, rank, world, len(ds))
        rows = [tokenizer.render_conversation(ds[i], max_tokens=args.max_seq_len) for i in idx]
        inputs, targets = sft_collate(rows, pad_id)
        return inputs.to(device), targets.to(device)

    def masked_loss(inputs, targets):
        # sum / count rather than mean: a batch whose targets are all masked gives 0, not NaN
        with autocast:
            total = model(inputs, targets, loss_reduction="sum")
        return total / (targets >= 0).sum().clamp(min=1)

    @torch.no_grad()
    def val_loss():
        model.eval()
        losses = [masked_loss(*get_batch(val_ds, 0, m)) for m in range(args.eval_steps)]
        model.train()
        v = torch.stack(losses).mean()
        if ddp:
            dist.all_reduce(v)   # SUM (gloo has no AVG), then divide
            v = v / world
        return v.item()

    def sample(label):
        if master:
            model.eval()
            with autocast:
                for prompt, answer in zip(SAMPLE_PROMPTS, sample_answers(model, tokenizer, SAMPLE_PROMPTS)):
                    print(f"[{label}] {prompt!r} -> {answer!r}")
            model.train()

    if start_step == 0:
        sample("before SFT")
    smooth, t_train, last_val = 0.0, 0.0, None
    while True:
        last = step >= n_steps
        if last or (args.eval_every > 0 and step % args.eval_every == 0):
            last_val = val_loss()
            print0(f"step {step:05d} | val loss {last_val:.4f}")
            wandb_run.log({"step": step, "val/loss": last_val})
        if last or (args.save_every > 0 and step > start_step and step % args.save_every == 0):
            save_checkpoint(out_dir, step, model.state_dict(), [o.state_dict() for o in optimizers],
                            {**meta, "step": step, "phase": "sft", "val_loss": last_val,
                             "user_config": vars(args)}, rank=rank)
            print0(f"saved {out_dir}/model_{step:06d}.pt")
        if last:
            break

        t0 = time.time()
        n_tokens = 0
        for micro in range(grad_accum):
            inputs, targets = get_batch(train_ds, step, micro)
            loss = masked_loss(inputs, targets)
            (loss / grad_accum).backward()
            n_tokens += int((targets >= 0).sum())
        lrm = lr_multiplier_linear(step, n_steps)
        apply_lr(optimizers, lrm)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        step += 1
        t_train += dt
        smooth = 0.9 * smooth + 0.1 * loss.item()
        debiased = smooth / (1 - 0.9 ** (step - start_step))
        if should_print(step - 1, n_steps):
            eta = t_train / (step - start_step) * (n_steps - step)
            print0(f"step {step:05d}/{n_steps} | loss {debiased:.4f} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | "
                   f"supervised tokens/rank {n_tokens:,} | eta {format_eta(eta)}")
        wandb_run.log({"step": step, "train/loss": debiased, "train/lrm": lrm, "train/supervised_tokens": n_tokens})

    sample("after SFT")
    results = run_chat_metrics(model, tokenizer, args)
    print0(f"done: {step} steps, val loss {last_val:.4f}, {t_train / 60:.2f} min training")
    from nanochat.report import get_report
    get_report().log(section="Chat SFT", data=[vars(args), {
        "Number of iterations": step, "Training time (min)": t_train / 60, "Final validation loss": last_val},
        {f"{k} (after SFT)": v for k, v in results.items()}])
    wandb_run.finish()
    compute_cleanup()


def run_chat_metrics(model, tokenizer, args) -> dict:
    """ARC-Easy / MMLU accuracy of the finetuned model through scripts.chat_eval (skipped if unavailable)."""
    tasks = [t for t in args.eval_tasks.split("|") if t]
    if not tasks or args.eval_max_problems == 0:
        return {}
    try:
        from scripts.chat_eval import run_chat_eval
    except ImportError as e:
        print0(f"skipping chat evaluation: scripts.chat_eval is not available ({e})")
        return {}
    from nanochat.engine import Engine
    model.eval()
    engine = Engine(model, tokenizer)
    max_problems = args.eval_max_problems
    if max_problems < 0:
        max_problems = 1024 if model.get_device().type == "cuda" else 32
    results = {}
    with autocast_ctx(model.get_device().type):
        for task in tasks:
            results[task] = run_chat_eval(task, model, tokenizer, engine, max_problems=max_problems)
            print0(f"{task}: {results[task]:.4f}")
    return results


if __name__ == "__main__":
    main()
