"""
Midtraining: keep pretraining the base model, but on conversations rendered in the chat format.

The base model has read web text; here it meets the special tokens of a conversation (<|user_start|>,
<|assistant_start|>, <|python_start|> ...), multiple-choice questions, calculator tool calls and its own identity.
Nothing else changes from base training: rows are packed full of tokens and every token is a target.

Design choices (as nanochat, October 2025):
- data: SmolTalk (general chat), MMLU auxiliary-train (multiple choice), GSM8K train (tool use), identity
  conversations twice (who am I), SpellingBee (letters inside tokens); validation on their test splits
- one epoch over the mixture by default (--num-iterations -1); LR constant, then linear decay over the last 20%
- same optimizers as base training (Muon for matrices, AdamW for embeddings/lm_head), weight decay 0
- DDP by torchrun, bf16 autocast and torch.compile on CUDA, checkpoints every --save-every steps and at the end,
  --resume restarts from the latest checkpoint of this phase with the optimizer and data cursor
- --total-batch-size -1 means one micro-batch per rank (32 x 2048 x 8 GPUs = 524,288 tokens on the speedrun)

Examples:
    python -m scripts.mid_train --device-type cpu --num-iterations 30 --max-seq-len 256 --device-batch-size 8
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train -- --device-batch-size 32
Cost: at ci scale (depth 2, CPU, 2,048 tokens/step) a step takes about a second on an idle 2-core machine.
"""
import argparse
import time

import torch
import torch.distributed as dist

from nanochat.common import (autodetect_device_type, compute_cleanup, compute_init, peak_flops,
                             print0)
from nanochat.posttrain import (apply_lr, apply_muon_momentum, autocast_ctx, ChatPacker, format_eta, init_wandb,
                                load_start, lr_multiplier_mid, make_optimizers, muon_momentum, set_initial_lrs,
                                should_print)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="dummy", help="wandb run name ('dummy' = no wandb)")
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (empty = autodetect)")
    p.add_argument("--model-tag", default=None, help="base model to start from (default: the largest d<N>)")
    p.add_argument("--model-step", type=int, default=None, help="base checkpoint step (default: the last)")
    p.add_argument("--num-iterations", type=int, default=-1, help="-1 = one epoch of the mixture")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--device-batch-size", type=int, default=32)
    p.add_argument("--total-batch-size", type=int, default=-1, help="tokens per step; -1 = B*T*world")
    p.add_argument("--unembedding-lr", type=float, default=0.004)
    p.add_argument("--embedding-lr", type=float, default=0.2)
    p.add_argument("--matrix-lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--init-lr-frac", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=150, help="-1 = only at the end")
    p.add_argument("--eval-tokens", type=int, default=-1,
                   help="validation tokens; -1 = 20 x 524,288 on CUDA (upstream), 8 batches elsewhere")
    p.add_argument("--save-every", type=int, default=-1, help="-1 = only at the end")
    p.add_argument("--spelling-size", type=int, default=-1,
                   help="SpellingBee examples; -1 = upstream's share, 80K per 460K SmolTalk conversations")
    p.add_argument("--resume", action="store_true", help="continue from the latest mid checkpoint")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on CUDA only)")
    return p.parse_args(argv)


def build_mixtures(spelling_size: int):
    from tasks.common import TaskMixture
    from tasks.customjson import CustomJSON
    from tasks.gsm8k import GSM8K
    from tasks.mmlu import MMLU
    from tasks.smoltalk import SmolTalk
    from tasks.spellingbee import SpellingBee
    identity = CustomJSON()
    smoltalk = SmolTalk(split="train")
    if spelling_size < 0:   # keep upstream's proportions on any chat dataset (the offline fixture is tiny)
        spelling_size = max(1, round(len(smoltalk) * 80_000 / 460_000))
    train = TaskMixture([
        smoltalk,                                          # general conversations
        MMLU(subset="auxiliary_train", split="train"),     # multiple choice, answered with one letter
        GSM8K(subset="main", split="train"),               # maths with calculator tool calls
        identity, identity,                                # who the assistant is (twice: it is small)
        SpellingBee(size=spelling_size, split="train"),    # counting letters, spelled out + python check
    ])
    val = TaskMixture([
        SmolTalk(split="test"),
        MMLU(subset="all", split="test", stop=5200),
        GSM8K(subset="main", split="test", stop=420),
    ])
    return train, val


def main(argv=None):
    args = parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    ddp, rank, _local_rank, world, device = compute_init(device_type)
    master = rank == 0
    from nanochat.checkpoint_manager import load_checkpoint, save_checkpoint
    from nanochat.loss_eval import evaluate_bpb
    from nanochat.tokenizer import get_token_bytes

    # ---- the model: the base checkpoint, or our own latest checkpoint when resuming
    model, tokenizer, meta, out_dir, model_tag, resume_step = load_start(
        "base", "mid", device, model_tag=args.model_tag, model_step=args.model_step, resume=args.resume)
    orig_model = model
    use_compile = device_type == "cuda" if args.compile is None else args.compile
    if use_compile:
        model = torch.compile(model, dynamic=False)

    # ---- sizes, printed so the run describes itself
    B, T = args.device_batch_size, args.max_seq_len
    if T > orig_model.config.sequence_len:
        print0(f"note: --max-seq-len {T} > the base model's {orig_model.config.sequence_len} (RoPE extends)")
    tokens_per_micro = B * T * world
    total = tokens_per_micro if args.total_batch_size == -1 else args.total_batch_size
    assert total % tokens_per_micro == 0, f"--total-batch-size {total} not a multiple of B*T*world={tokens_per_micro}"
    grad_accum = total // tokens_per_micro
    flops_per_token = orig_model.estimate_flops()
    nparams = sum(p.numel() for p in orig_model.parameters())
    print0(f"model {model_tag}: {nparams:,} params, {flops_per_token:.3e} FLOPs/token | world {world} | "
           f"B={B} T={T} | {total:,} tokens/step = {grad_accum} micro-step(s) x {tokens_per_micro:,}")

    # ---- optimizers (same recipe as base training)
    optimizers = make_optimizers(orig_model, unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                 matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
    set_initial_lrs(optimizers, args.init_lr_frac)

    # ---- data
    train_ds, val_ds = build_mixtures(args.spelling_size)
    print0(f"train mixture: {len(train_ds):,} conversations | val mixture: {len(val_ds):,}")
    loader_state = None
    step = 0
    if resume_step is not None:
        _, optim_data, ckpt_meta = load_checkpoint(out_dir, resume_step, device, load_optimizer=True, rank=rank)
        for opt, state in zip(optimizers, optim_data):
            opt.load_state_dict(state)
        loader_state = ckpt_meta["loader_state"][rank] if world > 1 else ckpt_meta["loader_state"][0]
        step = resume_step
        print0(f"resumed from {out_dir} at step {step}")
    packer = ChatPacker(train_ds, tokenizer, B, T, rank=rank, world_size=world, state=loader_state)
    token_bytes = get_token_bytes(device=device)
    autocast = autocast_ctx(device_type)
    wandb_run = init_wandb(args.run, "nanochat-mid", vars(args), master)
    peak = peak_flops(device)

    def val_batches():
        val_packer = ChatPacker(val_ds, tokenizer, B, T, rank=rank, world_size=world)
        while True:
            x, y = val_packer.next_batch()
            yield x.to(device), y.to(device)

    def evaluate():
        model.eval()
        eval_tokens = args.eval_tokens if args.eval_tokens > 0 else \
            (20 * 524288 if device_type == "cuda" else 8 * tokens_per_micro)
        steps = max(1, eval_tokens // tokens_per_micro)
        with autocast:
            bpb = evaluate_bpb(model, val_batches(), steps, token_bytes)
        model.train()
        return bpb

    def save(step, val_bpb):
        # the cursor that regenerates the batch waiting in (x, y), so a resumed run trains on exactly it
        states = [x_state]
        if ddp:
            states = [None] * world
            dist.all_gather_object(states, x_state)
        save_checkpoint(out_dir, step, orig_model.state_dict(), [o.state_dict() for o in optimizers],
                        {**meta, "step": step, "phase": "mid", "val_bpb": val_bpb, "loader_state": states,
                         "user_config": vars(args)}, rank=rank)
        print0(f"saved {out_dir}/model_{step:06d}.pt")

    # ---- the loop
    x_state = packer.state_dict()
    x, y = packer.next_batch()
    start_step = step
    val_bpb, min_val_bpb, smooth, t_train = None, float("inf"), 0.0, 0.0
    n_steps = args.num_iterations
    t_start = time.time()
    while True:
        progress = step / n_steps if n_steps > 0 else packer.progress
        if ddp:   # every rank must agree on the LR and on when to stop
            p = torch.tensor(progress, device=device, dtype=torch.float64)
            dist.broadcast(p, 0)
            progress = p.item()
        last = step >= n_steps if n_steps > 0 else progress >= 1.0
        if last or (args.eval_every > 0 and step % args.eval_every == 0):
            val_bpb = evaluate()
            min_val_bpb = min(min_val_bpb, val_bpb)
            print0(f"step {step:05d} | val bpb {val_bpb:.4f}")
            wandb_run.log({"step": step, "val/bpb": val_bpb})
        if last or (args.save_every > 0 and step > start_step and step % args.save_every == 0):
            save(step, val_bpb)
        if last:
            break

        t0 = time.time()
        for _ in range(grad_accum):
            with autocast:
                loss = model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            (loss / grad_accum).backward()
            x_state = packer.state_dict()
            x, y = packer.next_batch()   # the CPU prepares the next batch while the GPU works
        lrm = lr_multiplier_mid(progress)
        apply_lr(optimizers, lrm)
        apply_muon_momentum(optimizers, muon_momentum(step))
        for opt in optimizers:
            opt.step()
        orig_model.zero_grad(set_to_none=True)
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        step += 1

        loss_f = loss.item()
        smooth = 0.9 * smooth + 0.1 * loss_f
        debiased = smooth / (1 - 0.9 ** (step - start_step))
        if step > 1:
            t_train += dt   # the first step includes compilation
        tok_s = total / dt
        mfu = 100 * flops_per_token * total / dt / (peak * world) if peak else None
        if should_print(step - 1, n_steps):
            eta = (t_train / max(1, step - 1)) * (n_steps - step) if n_steps > 0 else \
                (time.time() - t_start) * (1 - progress) / max(progress, 1e-9)
            print0(f"step {step:05d}" + (f"/{n_steps}" if n_steps > 0 else f" ({100 * progress:.1f}% epoch)") +
                   f" | loss {debiased:.4f} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | tok/s {tok_s:,.0f}" +
                   (f" | mfu {mfu:.1f}%" if mfu is not None else "") + f" | eta {format_eta(eta)}")
        wandb_run.log({"step": step, "train/loss": debiased, "train/lrm": lrm, "train/tok_per_sec": tok_s,
                       **({"train/mfu": mfu} if mfu is not None else {})})

    print0(f"done: {step} steps, min val bpb {min_val_bpb:.4f}, {t_train / 60:.2f} min training")
    if device_type == "cuda":
        print0(f"peak memory {torch.cuda.max_memory_allocated() / 1024**2:,.0f} MiB")
    from nanochat.report import get_report
    get_report().log(section="Midtraining", data=[vars(args), {
        "Number of iterations": step, "Tokens per step": total, "Minimum validation bpb": min_val_bpb,
        "Final validation bpb": val_bpb, "Training time (min)": t_train / 60}])
    wandb_run.finish()
    compute_cleanup()


if __name__ == "__main__":
    main()
