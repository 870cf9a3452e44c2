"""
Pretrain the base model: next-token prediction on web text, sized by one dial, --depth.

    python -m scripts.base_train --depth 2 --max-seq-len 256 --device-batch-size 8 --total-batch-size 2048 \\
        --num-iterations 60 --device-type cpu                            # the book's ci tier, ~20 s on 2 cores
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth 20 --run d20   # the speedrun

Design choices (as in nanochat, October 2025):
- depth -> width 64*depth, heads of 128, every LR scale; training tokens = 20 x parameters (Chinchilla) unless
  --num-iterations is given; the total batch (524,288 tokens) is reached by gradient accumulation on any number
  of GPUs, and the derived sizes are printed first so the run describes itself
- Muon for hidden matrices + AdamW for embedding/lm_head (nanochat.muon); no DDP wrapper: the Dist* optimizers
  average gradients themselves
- LR: optional warmup, constant, then a linear warmdown over the last 20% to 0; Muon momentum 0.85 -> 0.95 over
  300 steps
- bf16 autocast + torch.compile on CUDA; plain fp32 on CPU (so resume is bit-for-bit there)
- --fp8: the blocks' training matmuls and the lm_head's backward in fp8 (nanochat/fp8.py; Hopper GPUs): +23%
  tokens/s at d20 on one H100, +14% at d12 (benchmarks/RESULTS.md); checkpoints and evaluation are the same as
  without it
- checkpoints are atomic and hold model, optimizers and the loader's exact position, so --resume (after a crash,
  even SIGKILL) continues the very same trajectory; a damaged newest checkpoint falls back to the previous one

Cost: ci tier (d2, 60 steps x 2,048 tokens) ~20 s on 2 CPU cores; d20 on 8xH100 ~3 h (benchmarks/RESULTS.md).
"""
import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.distributed as dist

from nanochat.common import (DummyWandb, autodetect_device_type, compute_cleanup, compute_init, dtype_for,
                             get_base_dir, peak_flops, print0)


def get_args(argv=None):
    p = argparse.ArgumentParser(description="Pretrain the base model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--run", default="dummy", help="wandb run name ('dummy' = no wandb)")
    a("--device-type", default="", choices=["", "cuda", "cpu", "mps"], help="empty = autodetect")
    a("--depth", type=int, default=20, help="the one dial: width, heads and token budget derive from it")
    a("--max-seq-len", type=int, default=2048)
    a("--device-batch-size", type=int, default=32, help="rows per forward/backward per process")
    a("--total-batch-size", type=int, default=524288, help="tokens per optimizer step, all processes")
    a("--num-iterations", type=int, default=-1, help="-1: derive from --target-param-data-ratio")
    a("--target-param-data-ratio", type=float, default=20.0, help="training tokens per parameter")
    a("--embedding-lr", type=float, default=0.2)
    a("--unembedding-lr", type=float, default=0.004)
    a("--matrix-lr", type=float, default=0.02)
    a("--weight-decay", type=float, default=0.0)
    a("--grad-clip", type=float, default=0.0,
      help="max grad norm (0 = off); under DDP each rank clips its own gradient before the optimizers average them")
    a("--warmup-ratio", type=float, default=0.0)
    a("--warmdown-ratio", type=float, default=0.2)
    a("--final-lr-frac", type=float, default=0.0)
    a("--eval-every", type=int, default=250, help="val bpb every N steps (and at the end); -1 = end only")
    a("--eval-tokens", type=int, default=20 * 524288)
    a("--sample-every", type=int, default=2000, help="-1 = off")
    a("--core-metric-every", type=int, default=2000, help="-1 = off")
    a("--core-metric-max-per-task", type=int, default=500)
    a("--save-every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
    a("--model-tag", default=None, help="default d{depth}")
    a("--resume", action="store_true", help="continue from the last complete checkpoint of this model tag")
    a("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    a("--fp8", action="store_true",
      help="block matmuls and the lm_head's backward in fp8 for training (Hopper GPUs; nanochat.fp8)")
    a("--tokenizer-threads", type=int, default=4)
    a("--seed", type=int, default=42)
    return p.parse_args(argv)


def lr_multiplier(it, num_iterations, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0):
    """Warmup (linear from ~0), flat at 1, then linear warmdown to final_lr_frac at the last step."""
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if it < warmup:
        return (it + 1) / warmup
    if it <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - it) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(it, warmup_steps=300, start=0.85, end=0.95):
    frac = min(it / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end


def find_resume_step(checkpoint_dir, device, rank):
    """Newest step whose files all load on every rank (a damaged one falls back), or None."""
    from nanochat.checkpoint_manager import CheckpointError, list_steps, load_checkpoint
    for step in reversed(list_steps(checkpoint_dir)):
        try:
            loaded = load_checkpoint(checkpoint_dir, step, device, load_optimizer=True, rank=rank)
            ok = 1
        except CheckpointError as e:
            print(f"[rank {rank}] WARNING: cannot resume from step {step}: {e}", flush=True)
            loaded, ok = None, 0
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([ok], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            ok = int(t.item())
        if ok:
            return step, loaded
    return None, None


def oom_advice(B, T, total_batch_size, world):
    """What to do after running out of GPU memory at device batch B: halve it (gradient accumulation keeps the
    total batch), or, at one row, shrink the model or the sequence."""
    if B == 1:
        return (f"CUDA out of memory even at --device-batch-size 1 (seq {T}): use a smaller --depth or "
                f"--max-seq-len, or --fp8 on an H100 (its saved activations are half the size)")
    smaller = B // 2
    return (f"CUDA out of memory at --device-batch-size {B} (seq {T}). Try --device-batch-size {smaller}: "
            f"gradient accumulation keeps the total batch of {total_batch_size} tokens (it becomes "
            f"{total_batch_size // (smaller * T * world)} micro-steps).")


def main(argv=None):
    args = get_args(argv)
    user_config = vars(args).copy()
    device_type = args.device_type or autodetect_device_type()
    ddp, rank, local_rank, world, device = compute_init(device_type, seed=args.seed)
    master = rank == 0
    amp_dtype = dtype_for(device_type)
    autocast = torch.amp.autocast(device_type=device_type, dtype=amp_dtype) if amp_dtype else nullcontext()
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    use_compile = args.compile if args.compile is not None else device_type == "cuda"

    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.dataloader import position_of, tokenizing_distributed_data_loader
    from nanochat.gpt import GPT, config_for_depth
    from nanochat.muon import setup_optimizers
    from nanochat.report import get_report
    from nanochat.tokenizer import get_token_bytes, get_tokenizer

    tokenizer = get_tokenizer()
    token_bytes = get_token_bytes(device=device)
    vocab_size = tokenizer.get_vocab_size()

    # ---- the model, sized by depth
    config = config_for_depth(args.depth, vocab_size=vocab_size, sequence_len=args.max_seq_len)
    with torch.device("meta"):
        orig_model = GPT(config)
    orig_model.to_empty(device=device)
    orig_model.init_weights()
    if args.fp8:
        from nanochat.fp8 import amax_histories, convert_to_float8, fp8_supported, load_amax_histories
        if not fp8_supported(device):
            raise SystemExit(f"--fp8: this device ({device}) cannot run fp8 matmuls (needs an H100-class GPU)")
        convert_to_float8(orig_model)     # same parameters and checkpoint keys; only the training matmuls change
    model = torch.compile(orig_model, dynamic=False) if use_compile else orig_model
    num_params = sum(p.numel() for p in orig_model.parameters())
    flops_per_token = orig_model.estimate_flops()

    # ---- batch and horizon
    B, T = args.device_batch_size, args.max_seq_len
    tokens_per_fwdbwd = B * T * world
    if args.total_batch_size % tokens_per_fwdbwd:
        raise SystemExit(f"--total-batch-size {args.total_batch_size} is not a multiple of device batch x seq x "
                         f"processes = {B} x {T} x {world} = {tokens_per_fwdbwd}")
    grad_accum_steps = args.total_batch_size // tokens_per_fwdbwd
    if args.num_iterations > 0:
        num_iterations = args.num_iterations
    elif args.target_param_data_ratio > 0:
        num_iterations = int(args.target_param_data_ratio * num_params) // args.total_batch_size
    else:
        raise SystemExit("give --num-iterations or --target-param-data-ratio")
    total_tokens = num_iterations * args.total_batch_size
    peak = peak_flops(device)
    derived = {
        "depth": args.depth, "n_embd": config.n_embd, "n_head": config.n_head, "head_dim": config.head_dim,
        "vocab_size": config.vocab_size, "parameters": num_params, "flops_per_token": flops_per_token,
        "processes": world, "tokens_per_fwdbwd": tokens_per_fwdbwd, "grad_accum_steps": grad_accum_steps,
        "num_iterations": num_iterations, "training_tokens": total_tokens,
        "tokens_per_param": round(total_tokens / num_params, 2), "total_training_flops": flops_per_token * total_tokens,
        "device": str(device), "autocast": str(amp_dtype), "compile": use_compile,
        "fp8": args.fp8,
    }
    print0("base_train: " + json.dumps(derived, indent=1))

    optimizers = setup_optimizers(orig_model, unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                  matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)

    # ---- resume?
    model_tag = args.model_tag or f"d{args.depth}"
    checkpoint_dir = os.path.join(get_base_dir(), "base_checkpoints", model_tag)
    start_step, loader_state, loop_state = 0, None, {}
    if args.resume:
        step, loaded = find_resume_step(checkpoint_dir, device, rank)
        if step is None:
            print0(f"--resume: no usable checkpoint in {checkpoint_dir}; starting from scratch")
        else:
            model_data, optim_data, meta = loaded
            orig_model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in model_data.items()})
            for opt, sd in zip(optimizers, optim_data["optimizers"]):
                opt.load_state_dict(sd)
            loader_state, loop_state, start_step = optim_data["loader"], meta.get("loop_state", {}), step
            if args.fp8 and "fp8_amax" in optim_data:    # same scales on the first micro-step as without the crash
                load_amax_histories(orig_model, optim_data["fp8_amax"])
            elif args.fp8:
                print0("WARNING: the checkpoint has no fp8 amax histories; the first micro-step measures them")
            if meta.get("num_iterations") not in (None, num_iterations):
                print0(f"WARNING: checkpoint planned {meta['num_iterations']} steps, now {num_iterations}")
            print0(f"resumed from step {step} of {checkpoint_dir}")
            del model_data, optim_data

    # ---- data
    train_loader = tokenizing_distributed_data_loader(B, T, "train", tokenizer_threads=args.tokenizer_threads,
                                                      device=device, resume_state_dict=loader_state)
    build_val_loader = lambda: tokenizing_distributed_data_loader(B, T, "val", device=device,
                                                                  tokenizer_threads=args.tokenizer_threads)
    x_state = loader_state        # the loader state from *before* the pending batch (x, y): what a save records
    x, y, next_state = next(train_loader)

    wandb_run = DummyWandb()
    if args.run != "dummy" and master:
        try:
            import wandb
            wandb_run = wandb.init(project="nanochat", name=args.run, config={**user_config, **derived})
        except ImportError:
            print0("WARNING: wandb is not installed; logging to stdout only")
    log_path = os.path.join(checkpoint_dir, "log.jsonl")
    if master:
        os.makedirs(checkpoint_dir, exist_ok=True)

    def log(record):
        if master:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            wandb_run.log(record)

    def evaluate_val():
        from nanochat.loss_eval import evaluate_bpb
        steps = max(1, args.eval_tokens // tokens_per_fwdbwd)
        model.eval()
        with autocast:
            bpb = evaluate_bpb(model, build_val_loader(), steps, token_bytes)
        model.train()
        return bpb

    def sample():
        prompts = ["The capital of France is", "Water is made of", "The opposite of cold is",
                   "Once upon a time,", "def add(a, b):"]
        orig_model.eval()
        for prompt in prompts:
            ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
            with autocast:
                out = list(orig_model.generate(ids, max_tokens=16, temperature=0.0))
            print0(f"  sample | {prompt!r} -> {tokenizer.decode(out)!r}")
        orig_model.train()

    def save(step, val_bpb):
        meta = {"step": step, "val_bpb": val_bpb, "model_config": asdict(config), "user_config": user_config,
                "derived": derived, "num_iterations": num_iterations, "device_batch_size": B, "max_seq_len": T,
                "model_tag": model_tag, "phase": "base", "loop_state": loop_state,
                "dataloader_state_dict": position_of(x_state) if x_state else None}
        optim_data = {"optimizers": [o.state_dict() for o in optimizers], "loader": x_state}
        if args.fp8:
            optim_data["fp8_amax"] = amax_histories(orig_model)
        save_checkpoint(checkpoint_dir, step, orig_model.state_dict(), optim_data, meta, rank=rank)

    # ---- the loop: step k evaluates/saves the model after k updates, then makes update k+1
    ema_beta = 0.9
    smooth = loop_state.get("smooth_loss", 0.0)
    total_time = loop_state.get("total_training_time", 0.0)
    min_val_bpb = loop_state.get("min_val_bpb", float("inf"))
    val_bpb, core = loop_state.get("val_bpb"), None
    t_start = time.time()
    step = start_step
    try:   # out of GPU memory anywhere in the loop (a micro-step, an evaluation, the optimizer): say what to try
        while True:
            last = step == num_iterations
            if last or (args.eval_every > 0 and step % args.eval_every == 0):
                val_bpb = evaluate_val()
                min_val_bpb = min(min_val_bpb, val_bpb)
                print0(f"step {step:05d} | val bpb: {val_bpb:.6f}")
                log({"step": step, "val_bpb": val_bpb})
            if args.core_metric_every > 0 and (last or (step > 0 and step % args.core_metric_every == 0)):
                from scripts.base_eval import evaluate_model
                core = evaluate_model(orig_model, tokenizer, device, max_per_task=args.core_metric_max_per_task)
                print0(f"step {step:05d} | CORE: {core['core_metric']:.4f}")
                log({"step": step, "core_metric": core["core_metric"]})
            if master and args.sample_every > 0 and (last or (step > 0 and step % args.sample_every == 0)):
                sample()
            loop_state = {"smooth_loss": smooth, "total_training_time": total_time, "min_val_bpb": min_val_bpb,
                          "val_bpb": val_bpb}
            if step != start_step or start_step == 0:      # (a resumed run does not re-save its start)
                if last or (args.save_every > 0 and step > 0 and step % args.save_every == 0):
                    save(step, val_bpb)
            if last:
                break

            # -- one optimizer step: grad_accum_steps micro-batches
            sync()
            t0 = time.time()
            for _ in range(grad_accum_steps):
                with autocast:
                    loss = model(x, y)
                train_loss = loss.detach()
                (loss / grad_accum_steps).backward()
                x_state = next_state
                x, y, next_state = next(train_loader)   # tokenizing threads already prepared it
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(orig_model.parameters(), args.grad_clip)
            lrm = lr_multiplier(step, num_iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * lrm
            momentum = muon_momentum(step)
            for group in optimizers[1].param_groups:
                group["momentum"] = momentum
            for opt in optimizers:
                opt.step()
            orig_model.zero_grad(set_to_none=True)
            loss_value = train_loss.item()                  # (the loss of the last micro-batch, as upstream logs)
            sync()
            dt = time.time() - t0

            # -- logging
            step += 1
            smooth = ema_beta * smooth + (1 - ema_beta) * loss_value
            debiased = smooth / (1 - ema_beta ** step)
            if step > 10 or start_step > 0:
                total_time += dt                            # the first steps include compilation
            tok_per_sec = int(args.total_batch_size / dt)
            mfu = 100 * flops_per_token * args.total_batch_size / dt / (peak * world) if peak else None
            done = step / num_iterations
            eta = (num_iterations - step) * dt
            bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
            mfu_s = f" | mfu: {mfu:.2f}%" if mfu is not None else ""
            if not math.isfinite(loss_value):
                raise SystemExit(f"loss became {loss_value} at step {step}; lower the learning rates")
            if not os.environ.get("NANOCHAT_NO_PROGRESS") or step % max(1, num_iterations // 10) == 0:
                print0(f"step {step:05d}/{num_iterations:05d} [{bar}] {100 * done:5.1f}% | loss: {debiased:.6f} | "
                       f"lrm: {lrm:.2f} | dt: {dt * 1000:.1f}ms | tok/sec: {tok_per_sec:,}{mfu_s} | "
                       f"eta: {eta / 60:.1f}m")
            log({"step": step, "loss": loss_value, "lrm": lrm, "dt": dt, "tok_per_sec": tok_per_sec, "mfu": mfu})
    except torch.cuda.OutOfMemoryError:
        raise SystemExit(oom_advice(B, T, args.total_batch_size, world)) from None

    # ---- replicas must agree (DistMuon/DistAdamW keep them in sync; check it once)
    if ddp:
        checksum = torch.stack([p.detach().double().sum() for p in orig_model.parameters()]).sum().reshape(1)
        sums = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(sums, checksum)
        assert all(torch.equal(s, sums[0]) for s in sums), f"replicas diverged: {[s.item() for s in sums]}"

    mem = torch.cuda.max_memory_allocated() / 2**30 if device_type == "cuda" else None
    results = {"final_val_bpb": val_bpb, "min_val_bpb": min_val_bpb, "steps": num_iterations,
               "training_time_min": total_time / 60, "wall_time_min": (time.time() - t_start) / 60,
               "peak_memory_gib": mem}
    if core is not None:
        results["CORE"] = core["core_metric"]
    print0("done: " + json.dumps(results))
    get_report().log(section="Base model training", data=[user_config, derived, results])
    wandb_run.finish()
    compute_cleanup()


if __name__ == "__main__":
    main()
