"""
Evaluate a chat model: multiple choice from the answer-letter logits, everything else by sampling and grading.

    python -m scripts.chat_eval -i sft                          # every task, every problem
    python -m scripts.chat_eval -i mid -a "ARC-Easy|GSM8K" --max-problems 100
    torchrun --nproc_per_node=8 -m scripts.chat_eval -i sft     # problems split across ranks

Design choices:
- categorical tasks (ARC, MMLU): one forward pass over a batch of prompts, then argmax over the logits of the
  answer letters only (A/B/C/D) at the position where the assistant's reply starts: no sampling, no parsing
- generative tasks (GSM8K, HumanEval, SpellingBee): sample with the Engine (KV cache, calculator tool), then
  `task.evaluate`; HumanEval programs run in `nanochat.execution`'s sandbox. With --num-samples k a problem
  counts as solved if any sample is right (pass@k)
- ChatCORE: the mean of accuracies centred by each task's random baseline (0.25 for four-way multiple choice,
  0 for open answers), the chat analogue of CORE
- prompts longer than the model's context are cropped from the left (the count is printed)
Cost: d20 on 8xH100, all tasks, about 10-15 minutes (GSM8K/HumanEval sampling dominates); a depth-2 model on a
laptop CPU with --max-problems 16: well under a minute.
"""
import argparse
import time
from functools import partial

import torch
import torch.distributed as dist

from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, get_dist_info, print0

RANDOM_BASELINE = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0,
                   "SpellingBee": 0.0}
ALL_TASKS = list(RANDOM_BASELINE)


def make_task(name):
    from tasks.arc import ARC
    from tasks.gsm8k import GSM8K
    from tasks.humaneval import HumanEval
    from tasks.mmlu import MMLU
    from tasks.spellingbee import SpellingBee
    factories = {
        "ARC-Easy": partial(ARC, subset="ARC-Easy", split="test"),
        "ARC-Challenge": partial(ARC, subset="ARC-Challenge", split="test"),
        "MMLU": partial(MMLU, subset="all", split="test"),
        "GSM8K": partial(GSM8K, subset="main", split="test"),
        "HumanEval": HumanEval,
        "SpellingBee": partial(SpellingBee, size=256, split="test"),
    }
    if name not in factories:
        raise ValueError(f"unknown task {name!r}; choose from {ALL_TASKS}")
    return factories[name]()


def _problem_ids(n, max_problems):
    n = n if max_problems is None or max_problems < 0 else min(n, max_problems)
    _, rank, _, world = get_dist_info()
    return list(range(rank, n, world)), n


def _reduce(counts, device):
    t = torch.tensor(counts, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _crop(ids, limit):
    return (ids[-limit:], True) if len(ids) > limit else (ids, False)


@torch.no_grad()
def run_categorical_eval(task, model, tokenizer, batch_size, max_problems, device):
    """Accuracy from the answer-letter logits at the first assistant position."""
    context = model.config.sequence_len
    pad = tokenizer.get_bos_token_id()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else None
    ids_here, n = _problem_ids(len(task), max_problems)
    right = seen = cropped = 0
    for b0 in range(0, len(ids_here), batch_size):
        convs = [task[i] for i in ids_here[b0:b0 + batch_size]]
        prompts = []
        for c in convs:
            p, was_cropped = _crop(tokenizer.render_for_completion(c), context)
            prompts.append(p)
            cropped += was_cropped
        T = max(len(p) for p in prompts)
        x = torch.full((len(prompts), T), pad, dtype=torch.long)
        for r, p in enumerate(prompts):
            x[r, :len(p)] = torch.tensor(p)
        x = x.to(device)
        if autocast is not None:
            with autocast:
                logits = model(x).float()
        else:
            logits = model(x)
        for r, (c, p) in enumerate(zip(convs, prompts)):
            letters = c["letters"]
            letter_ids = [tokenizer.encode(l)[0] for l in letters]
            assert len(set(letter_ids)) == len(letters), "answer letters must be distinct tokens"
            scores = logits[r, len(p) - 1, letter_ids]                  # (num_letters,)
            predicted = letters[int(scores.argmax())]
            right += task.evaluate(c, predicted)
            seen += 1
    right, seen, cropped = _reduce([right, seen, cropped], device)
    if cropped:
        print0(f"  ({int(cropped)} prompts longer than the context of {context} were cropped from the left)")
    return right / max(seen, 1)


@torch.no_grad()
def run_generative_eval(task, tokenizer, engine, num_samples, max_new_tokens, temperature, top_k, max_problems,
                        device, show=0):
    """pass@num_samples from sampled replies graded by task.evaluate."""
    context = engine.model.config.sequence_len
    room = min(max_new_tokens, context // 2)
    ids_here, n = _problem_ids(len(task), max_problems)
    right = seen = cropped = 0
    for k, i in enumerate(ids_here):
        c = task[i]
        prompt, was_cropped = _crop(tokenizer.render_for_completion(c), context - room)
        cropped += was_cropped
        results, _ = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=room,
                                           temperature=temperature, top_k=top_k, seed=42 + i)
        replies = [tokenizer.decode(r[len(prompt):]) for r in results]
        ok = any(task.evaluate(c, reply) for reply in replies)
        right += ok
        seen += 1
        if k < show:
            print0(f"  [{i}] {'PASS' if ok else 'fail'}: {replies[0][:160]!r}")
    right, seen, cropped = _reduce([right, seen, cropped], device)
    if cropped:
        print0(f"  ({int(cropped)} prompts were cropped from the left to leave {room} tokens for the reply)")
    return right / max(seen, 1)


def run_chat_eval(task_name, model, tokenizer, engine=None, batch_size=8, num_samples=1, max_new_tokens=512,
                  temperature=0.0, top_k=50, max_problems=None, show=0):
    """Accuracy of a chat model on one task (the function chat_sft/chat_rl call after training)."""
    task = make_task(task_name) if isinstance(task_name, str) else task_name
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if task.eval_type == "categorical":
            return run_categorical_eval(task, model, tokenizer, batch_size, max_problems, device)
        if engine is None:
            from nanochat.engine import Engine
            engine = Engine(model, tokenizer)
        return run_generative_eval(task, tokenizer, engine, num_samples, max_new_tokens, temperature, top_k,
                                   max_problems, device, show)
    finally:
        model.train(was_training)


def chatcore(results):
    """Mean accuracy centred by each task's random baseline."""
    centred = [(acc - RANDOM_BASELINE[name]) / (1 - RANDOM_BASELINE[name]) for name, acc in results.items()]
    return sum(centred) / max(1, len(centred))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--source", required=True, choices=["base", "mid", "sft", "rl"])
    p.add_argument("-a", "--task-name", default=None, help="tasks separated by | or , (default: all)")
    p.add_argument("--max-problems", type=int, default=None, help="problems per task (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (categorical)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per problem (pass@k, generative)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--model-tag", default=None)
    p.add_argument("--model-step", "--step", dest="model_step", type=int, default=None)
    p.add_argument("--show", type=int, default=0, help="print the first N generative replies per task")
    p.add_argument("--device-type", default=None, choices=["cuda", "cpu", "mps"])
    args = p.parse_args(argv)

    device_type = args.device_type or autodetect_device_type()
    ddp, rank, local_rank, world, device = compute_init(device_type)
    from nanochat.checkpoint_manager import load_model
    from nanochat.engine import Engine
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag,
                                        step=args.model_step)
    engine = Engine(model, tokenizer)
    names = ALL_TASKS if not args.task_name else [t for t in args.task_name.replace(",", "|").split("|") if t]
    print0(f"chat_eval: source {args.source}, tasks {names}, max_problems {args.max_problems}, device {device}, "
           f"world {world}")

    results, seconds = {}, {}
    for name in names:
        t0 = time.time()
        results[name] = run_chat_eval(name, model, tokenizer, engine, batch_size=args.batch_size,
                                      num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                                      temperature=args.temperature, top_k=args.top_k,
                                      max_problems=args.max_problems, show=args.show)
        seconds[name] = time.time() - t0
        print0(f"{name:<14} accuracy {results[name]:.4f}  ({seconds[name]:.1f}s)")

    print0("\n| task | accuracy | random baseline |\n|---|---|---|")
    for name, acc in results.items():
        print0(f"| {name} | {acc:.4f} | {RANDOM_BASELINE[name]:.2f} |")
    score = chatcore(results)
    print0(f"ChatCORE {score:.4f} (over {len(results)} task(s))")

    if rank == 0:
        from nanochat.report import get_report
        data = [{"source": args.source, "max_problems": args.max_problems, "num_samples": args.num_samples,
                 "temperature": args.temperature}, dict(results)]
        if set(results) == set(ALL_TASKS):
            data.append({"ChatCORE": score})
        else:
            data.append({"ChatCORE (partial)": score})
        get_report().log(section=f"Chat evaluation {args.source}", data=data)
    compute_cleanup()
    return results


if __name__ == "__main__":
    main()
