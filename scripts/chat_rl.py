"""
Reinforcement learning on GSM8K: the SFT model practises maths problems and learns from its own samples.

For each question the policy (the model itself) samples k answers with the Engine, calculator included; an
answer earns reward 1 if its final number (after ####) is right, else 0. Each sample's advantage is its reward
minus the mean reward of the k samples of the same question, and the loss raises the log-probability of every
token the model sampled in proportion to that advantage.

Design choices (as nanochat, October 2025) -- GRPO with the parts a 0/1 reward on-policy run does not need removed:
- no KL penalty and no reference model: we start from the SFT model and train briefly; drift is what we want
- no PPO ratio clipping: each batch of samples gives exactly one gradient step, taken by the same weights that
  sampled it, so the importance ratio pi/pi_old is 1 and there is nothing to clip
- advantage = r - mean(r), not divided by std: a group that all passes or all fails contributes nothing
- token-level normalisation: the objective is summed over sampled tokens and divided by their count, so long
  answers do not dominate; prompt tokens and tool outputs the engine forced into the stream get no gradient
- the data order and the sampling seeds are pure functions of the step: --resume continues exactly
- periodic pass@k on GSM8K test (unbiased estimator, k = 1..--eval-samples), logged to history.json + report

Examples:
    python -m scripts.chat_rl --device-type cpu --num-iterations 4 --examples-per-step 4 --num-samples 4
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl
Cost: one epoch of GSM8K train is 467 steps of 16 questions x 16 samples; sampling dominates (on CPU, a depth-2
model needs seconds per step even with 2 questions x 4 samples of 48 tokens).
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist

from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, print0
from nanochat.posttrain import (apply_lr, autocast_ctx, format_eta, init_wandb, load_start, lr_multiplier_linear,
                                make_optimizers, pass_at_k, pg_loss, rl_advantages, rl_batch, set_initial_lrs,
                                should_print)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="dummy", help="wandb run name ('dummy' = no wandb)")
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (empty = autodetect)")
    p.add_argument("--source", default="sft", choices=["mid", "sft"])
    p.add_argument("--model-tag", default=None)
    p.add_argument("--model-step", type=int, default=None)
    p.add_argument("--num-iterations", type=int, default=-1, help="-1 = --num-epochs over GSM8K train")
    p.add_argument("--num-epochs", type=int, default=1)
    p.add_argument("--device-batch-size", type=int, default=8, help="sequences per forward pass / per sampling call")
    p.add_argument("--examples-per-step", type=int, default=16, help="questions per step, over all ranks")
    p.add_argument("--num-samples", type=int, default=16, help="samples per question (the group)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--unembedding-lr", type=float, default=0.004)
    p.add_argument("--embedding-lr", type=float, default=0.2)
    p.add_argument("--matrix-lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--init-lr-frac", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=60, help="pass@k every N steps (-1 = at the end only)")
    p.add_argument("--eval-examples", type=int, default=400, help="GSM8K test questions per evaluation")
    p.add_argument("--eval-samples", type=int, default=8, help="samples per test question: pass@1..this")
    p.add_argument("--save-every", type=int, default=60)
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def question_indices(step: int, per_rank: int, rank: int, world: int, n: int):
    """Which questions this rank works on at this step (rank-strided, wrapping at the end of an epoch)."""
    base = step * per_rank * world
    return [(base + j * world + rank) % n for j in range(per_rank)]


def sample_group(engine, tokenizer, task, conversation, num_samples, chunk, seed, **gen):
    """k samples for one question: (sequences, masks, rewards, prompt_len). Sampling runs `chunk` rows at a time.

    None if the prompt leaves no room to answer in the model's context (a question longer than a tiny model's
    context is skipped, not cropped: a cropped question has no answer to reward).
    """
    prompt = tokenizer.render_for_completion(conversation)
    if len(prompt) + 8 > engine.model.config.sequence_len:
        return None
    seqs, masks = [], []
    for c, start in enumerate(range(0, num_samples, chunk)):
        out, m = engine.generate_batch(prompt, num_samples=min(chunk, num_samples - start), seed=seed + c, **gen)
        seqs += out
        masks += m
    rewards = [task.reward(conversation, tokenizer.decode(s[len(prompt):])) for s in seqs]
    return seqs, masks, torch.tensor(rewards, dtype=torch.float32), len(prompt)


@torch.no_grad()
def evaluate_pass_at_k(engine, tokenizer, task, n_examples, n_samples, chunk, rank, world, device, **gen):
    """Mean pass@k over the first n_examples test questions (rank-strided), k = 1..n_samples."""
    n_examples = min(n_examples, len(task)) if n_examples > 0 else len(task)
    sums = torch.zeros(n_samples + 1, dtype=torch.float64, device=device)   # [count, pass@1..pass@n]
    for i in range(rank, n_examples, world):
        group = sample_group(engine, tokenizer, task, task[i], n_samples, chunk, seed=1_000_003 * (i + 1), **gen)
        rewards = group[2] if group is not None else torch.zeros(n_samples)   # too long to answer: counts as wrong
        c = int((rewards > 0.5).sum())
        sums[0] += 1
        for k in range(1, n_samples + 1):
            sums[k] += pass_at_k(n_samples, c, k)
    if world > 1:
        dist.all_reduce(sums)
    return {f"pass@{k}": (sums[k] / sums[0].clamp(min=1)).item() for k in range(1, n_samples + 1)}


def main(argv=None):
    args = parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    ddp, rank, _local_rank, world, device = compute_init(device_type)
    master = rank == 0
    from nanochat.checkpoint_manager import load_checkpoint, save_checkpoint
    from nanochat.engine import Engine
    from tasks.gsm8k import GSM8K

    model, tokenizer, meta, out_dir, model_tag, resume_step = load_start(
        args.source, "rl", device, model_tag=args.model_tag, model_step=args.model_step, resume=args.resume)
    engine = Engine(model, tokenizer)

    train_task = GSM8K(subset="main", split="train")
    test_task = GSM8K(subset="main", split="test")
    assert args.examples_per_step % world == 0, f"--examples-per-step must be a multiple of the world ({world})"
    per_rank = args.examples_per_step // world
    n_steps = args.num_iterations if args.num_iterations > 0 else \
        args.num_epochs * len(train_task) // args.examples_per_step
    chunk = args.device_batch_size
    passes = -(-args.num_samples // chunk)
    print0(f"model {model_tag} ({args.source}) | world {world} | {args.examples_per_step} questions/step "
           f"({per_rank}/rank) x {args.num_samples} samples | {passes} forward pass(es)/question | "
           f"{n_steps} steps over {len(train_task):,} GSM8K train questions")

    optimizers = make_optimizers(model, unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                 matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
    set_initial_lrs(optimizers, args.init_lr_frac)
    step, history = 0, {"train": [], "eval": []}
    history_path = os.path.join(out_dir, "history.json")
    if resume_step is not None:
        _, optim_data, _ = load_checkpoint(out_dir, resume_step, device, load_optimizer=True, rank=rank)
        for opt, state in zip(optimizers, optim_data):
            opt.load_state_dict(state)
        step = resume_step
        if os.path.exists(history_path):
            with open(history_path) as f:
                history = json.load(f)
            history = {k: [r for r in v if r["step"] <= step] for k, v in history.items()}
        print0(f"resumed from {out_dir} at step {step}")
    start_step = step
    pad_id = tokenizer.encode_special("<|assistant_end|>")
    autocast = autocast_ctx(device_type)
    gen = dict(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k)
    wandb_run = init_wandb(args.run, "nanochat-rl", vars(args), master)

    def save_history():
        if master:
            os.makedirs(out_dir, exist_ok=True)
            with open(history_path + ".tmp", "w") as f:
                json.dump(history, f)
            os.replace(history_path + ".tmp", history_path)

    t_train, last_eval = 0.0, {}
    while True:
        last = step >= n_steps
        if last or (args.eval_every > 0 and step % args.eval_every == 0 and
                    not any(r["step"] == step for r in history["eval"])):
            model.eval()
            with autocast:
                last_eval = evaluate_pass_at_k(engine, tokenizer, test_task, args.eval_examples, args.eval_samples,
                                               chunk, rank, world, device, **gen)
            model.train()
            print0(f"step {step:05d} | " + " ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
            history["eval"].append({"step": step, **last_eval})
            wandb_run.log({"step": step, **{f"eval/{k}": v for k, v in last_eval.items()}})
            save_history()
        if last or (args.save_every > 0 and step > start_step and step % args.save_every == 0):
            save_checkpoint(out_dir, step, model.state_dict(), [o.state_dict() for o in optimizers],
                            {**meta, "step": step, "phase": "rl", "eval": last_eval, "user_config": vars(args)},
                            rank=rank)
            print0(f"saved {out_dir}/model_{step:06d}.pt")
        if last:
            break

        t0 = time.time()
        all_rewards, n_sampled = [], 0
        for q, idx in enumerate(question_indices(step, per_rank, rank, world, len(train_task))):
            # 1) the policy samples a group of answers (no gradients), 2) we score them, 3) one backward per pass
            model.eval()
            with autocast:
                group = sample_group(engine, tokenizer, train_task, train_task[idx], args.num_samples, chunk,
                                     seed=(step * 1_000_003 + idx) % 2**31, **gen)
            model.train()
            if group is None:
                continue
            seqs, masks, rewards, _ = group
            advantages = rl_advantages(rewards).to(device)
            all_rewards.append(rewards)
            for p0 in range(0, len(seqs), chunk):
                inputs, targets = rl_batch(seqs[p0:p0 + chunk], masks[p0:p0 + chunk], pad_id)
                inputs, targets = inputs.to(device), targets.to(device)
                with autocast:
                    logp = -model(inputs, targets, loss_reduction="none")          # (B, T), 0 where ignored
                loss = pg_loss(logp, targets, advantages[p0:p0 + chunk]) / (passes * per_rank)
                loss.backward()
                n_sampled += int((targets >= 0).sum())
        if not all_rewards:   # every question skipped: a zero gradient keeps the ranks' optimizers in step
            (sum(p.sum() for p in model.parameters()) * 0.0).backward()
            all_rewards.append(torch.zeros(1))
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

        stats = torch.tensor([torch.cat(all_rewards).mean().item(), n_sampled / (per_rank * args.num_samples)],
                             dtype=torch.float64, device=device)
        if ddp:
            dist.all_reduce(stats)   # SUM (gloo has no AVG), then divide
            stats = stats / world
        mean_reward, mean_len = stats.tolist()
        history["train"].append({"step": step, "reward": mean_reward, "sampled_tokens": mean_len, "lrm": lrm})
        if should_print(step - 1, n_steps):
            eta = t_train / (step - start_step) * (n_steps - step)
            print0(f"step {step:05d}/{n_steps} | reward {mean_reward:.4f} | sampled tokens/answer {mean_len:.1f} | "
                   f"lrm {lrm:.2f} | dt {dt:.2f}s | eta {format_eta(eta)}")
        wandb_run.log({"step": step, "train/reward": mean_reward, "train/sampled_tokens": mean_len, "train/lrm": lrm})
        if step % 10 == 0:
            save_history()

    save_history()
    print0(f"done: {step} steps, {t_train / 60:.2f} min training | history in {history_path}")
    from nanochat.report import get_report
    rewards = [r["reward"] for r in history["train"]]
    get_report().log(section="Chat RL", data=[vars(args), {
        "Number of iterations": step, "Training time (min)": t_train / 60,
        "Mean reward (first step)": rewards[0] if rewards else None,
        "Mean reward (last step)": rewards[-1] if rewards else None},
        {f"GSM8K {k}": v for k, v in last_eval.items()}])
    wandb_run.finish()
    compute_cleanup()


if __name__ == "__main__":
    main()
