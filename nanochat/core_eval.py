"""
The DCLM CORE metric (Li et al., 2024, "DataComp-LM"): 22 few-shot tasks, each scored from next-token losses.

Design choices:
- three task types, all decided by the base model's log-probabilities, no sampling:
  * multiple_choice: the same context, several continuations; the choice with the lowest *mean* loss per
    continuation token wins (mean, so long answers are not penalised for being long)
  * schema: several contexts, one shared continuation; the context under which the continuation is cheapest wins
  * language_modeling: one context and continuation; right only if greedy decoding reproduces every
    continuation token (exact match, teacher-forced)
- few-shot examples are drawn per item with a seeded RNG (never the item itself), joined by blank lines
- context and continuation are tokenised *together* and the boundary is found by the longest common token prefix
  with the context alone, so BPE merges across the boundary cannot shift the scored span
- too-long prompts are cropped from the left to the model's sequence length (the scored end is kept)
- accuracy is centred by the task's random baseline, (acc - b) / (1 - b), so 0 = chance and 1 = perfect; CORE is
  the mean centred accuracy over the tasks evaluated
- the bundle (`eval_bundle.zip`) comes from env `NANOCHAT_EVAL_BUNDLE` (a zip, a directory or a URL), default the
  public URL upstream nanochat uses; tasks whose data is absent are skipped with a warning, and the result says
  which tasks the score covers
- distributed-aware: ranks take items rank::world_size, the correct counts are summed with all_reduce
"""
import csv
import json
import os
import random
import shutil
import tempfile
import warnings
import zipfile
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import get_base_dir, get_dist_info, print0

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"


# ----------------------------------------------------------------------------------------------------------------
# the bundle

def eval_bundle_dir():
    """A directory holding core.yaml, eval_meta_data.csv and eval_data/ (downloaded/extracted once per base dir)."""
    src = os.environ.get("NANOCHAT_EVAL_BUNDLE") or EVAL_BUNDLE_URL
    for cand in (src, os.path.join(src, "eval_bundle")):
        if os.path.isfile(os.path.join(cand, "core.yaml")):
            return cand
    target = os.path.join(get_base_dir(), "eval_bundle")
    if os.path.isfile(os.path.join(target, "core.yaml")):
        return target
    if src.startswith(("http://", "https://")):
        from nanochat.download import download_url
        zip_path = download_url(src, os.path.join(get_base_dir(), "eval_bundle.zip"))
    else:
        zip_path = src
    if not os.path.isfile(zip_path):
        raise FileNotFoundError(f"eval bundle not found at {zip_path!r} (set NANOCHAT_EVAL_BUNDLE)")
    tmp = tempfile.mkdtemp(dir=get_base_dir(), prefix="eval_bundle.")
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(tmp)
    inner = os.path.join(tmp, "eval_bundle")
    try:
        os.replace(inner if os.path.isdir(inner) else tmp, target)   # atomic: readers see all of it or nothing
    except OSError:
        if not os.path.isfile(os.path.join(target, "core.yaml")):  # lost a race to another rank: fine
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_core_tasks(bundle_dir=None):
    """The task list of core.yaml, each with its random baseline and whether its data file is present."""
    import yaml
    bundle_dir = bundle_dir or eval_bundle_dir()
    with open(os.path.join(bundle_dir, "core.yaml")) as f:
        config = yaml.safe_load(f)
    baselines = {}
    with open(os.path.join(bundle_dir, "eval_meta_data.csv"), newline="") as f:
        for row in csv.DictReader(f):
            baselines[row["Eval Task"]] = float(row["Random baseline"]) / 100.0
    tasks = []
    for t in config["icl_tasks"]:
        path = os.path.join(bundle_dir, "eval_data", t["dataset_uri"])
        tasks.append({
            "label": t["label"],
            "task_type": t["icl_task_type"],
            "num_fewshot": t["num_fewshot"][0],
            "continuation_delimiter": t.get("continuation_delimiter", " "),
            "random_baseline": baselines[t["label"]],
            "path": path,
            "present": os.path.isfile(path),
        })
    return tasks


def load_task_data(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# prompts: each returns (context_text, [full_text, ...]) or, for schema, the list of full texts

def _fewshot_block(examples, render_one):
    return "".join(render_one(ex) + "\n\n" for ex in examples)


def render_mc(item, delim, fewshot):
    """Multiple choice: one shared context; one full text per choice."""
    shots = _fewshot_block(fewshot, lambda ex: ex["query"] + delim + ex["choices"][ex["gold"]])
    context = shots + item["query"] + delim
    return context, [context + choice for choice in item["choices"]]


def render_schema(item, delim, fewshot):
    """Schema: one full text per context option, all ending in the same continuation."""
    shots = _fewshot_block(fewshot, lambda ex: ex["context_options"][ex["gold"]] + delim + ex["continuation"])
    return [shots + option + delim + item["continuation"] for option in item["context_options"]]


def render_lm(item, delim, fewshot):
    """Language modelling: the context alone, and context + continuation."""
    shots = _fewshot_block(fewshot, lambda ex: ex["context"] + delim + ex["continuation"])
    context = shots + item["context"] + delim
    return context, [context + item["continuation"]]


# ----------------------------------------------------------------------------------------------------------------
# scoring one item

def _common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _common_suffix(seqs):
    n, shortest = 0, min(len(s) for s in seqs)
    while n < shortest and len({s[-1 - n] for s in seqs}) == 1:
        n += 1
    return n


def _encode(tokenizer, text):
    return tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())


def item_spans(tokenizer, task_type, item, delim, fewshot):
    """Token sequences and the [start, end) span of each that is scored."""
    if task_type == "schema":
        seqs = [_encode(tokenizer, t) for t in render_schema(item, delim, fewshot)]
        n = min(_common_suffix(seqs), min(len(s) for s in seqs) - 1)
        return [(s, len(s) - n, len(s)) for s in seqs]
    render = render_mc if task_type == "multiple_choice" else render_lm
    context, fulls = render(item, delim, fewshot)
    ctx = _encode(tokenizer, context.rstrip())   # the delimiter's trailing space usually merges into the next token
    out = []
    for text in fulls:
        s = _encode(tokenizer, text)
        start = max(1, min(_common_prefix(ctx, s), len(s) - 1))
        out.append((s, start, len(s)))
    return out


def _crop(spans, max_len):
    """Keep at most max_len tokens per sequence, dropping from the left; the scored span is kept if it fits."""
    out = []
    for s, start, end in spans:
        drop = max(0, len(s) - max_len)
        out.append((s[drop:], max(1, start - drop), end - drop))
    return out


@torch.no_grad()
def score_item(model, tokenizer, task_type, item, delim, fewshot, device, max_len=None):
    """True if the model gets this item right. One forward pass over all its options (right-padded)."""
    spans = item_spans(tokenizer, task_type, item, delim, fewshot)
    if max_len is not None:
        spans = _crop(spans, max_len)
    T = max(len(s) for s, _, _ in spans)
    pad = tokenizer.get_bos_token_id()
    ids = torch.full((len(spans), T), pad, dtype=torch.long)
    for i, (s, _, _) in enumerate(spans):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    ids = ids.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ids.device.type == "cuda" else nullcontext()
    with autocast:
        logits = model(ids).float()                                          # (N, T, V)
    # position t predicts token t+1
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")   # (N, T-1)
    if task_type == "language_modeling":
        s, start, end = spans[0]
        predicted = logits[0, start - 1:end - 1].argmax(-1)
        return bool((predicted == ids[0, start:end]).all())
    mean_losses = [losses[i, start - 1:end - 1].mean().item() for i, (_, start, end) in enumerate(spans)]
    return min(range(len(mean_losses)), key=mean_losses.__getitem__) == item["gold"]


def evaluate_task(model, tokenizer, data, device, task_meta, max_len=None):
    """Accuracy of `model` on one CORE task (a list of items), split across ranks."""
    _, rank, _, world = get_dist_info()
    correct = torch.zeros(2, dtype=torch.float64, device=device)     # (right, seen)
    k = task_meta["num_fewshot"]
    for idx in range(rank, len(data), world):
        rng = random.Random(1234 + idx)
        others = [j for j in rng.sample(range(len(data)), min(len(data), k + 1)) if j != idx][:k]
        fewshot = [data[j] for j in others]
        ok = score_item(model, tokenizer, task_meta["task_type"], data[idx], task_meta["continuation_delimiter"],
                        fewshot, device, max_len)
        correct += torch.tensor([float(ok), 1.0], dtype=torch.float64, device=device)
    if world > 1 and dist.is_initialized():
        dist.all_reduce(correct)
    return (correct[0] / correct[1].clamp(min=1)).item()


def centered(accuracy, random_baseline):
    """0 at chance, 1 at perfect."""
    return (accuracy - random_baseline) / (1.0 - random_baseline)


def evaluate_core(model, tokenizer, device, max_per_task=-1, bundle_dir=None, tasks=None, verbose=True):
    """Run every present CORE task (or the `tasks` labels). Returns a dict with per-task and CORE results."""
    metas = load_core_tasks(bundle_dir)
    if tasks is not None:
        metas = [m for m in metas if m["label"] in set(tasks)]
    missing = [m["label"] for m in metas if not m["present"]]
    if missing:
        msg = f"CORE: skipping {len(missing)} task(s) whose data is not in the bundle: {', '.join(missing)}"
        warnings.warn(msg)
        print0("WARNING: " + msg)
    max_len = getattr(getattr(model, "config", None), "sequence_len", None)
    results, centered_results = {}, {}
    was_training = model.training
    model.eval()
    for m in metas:
        if not m["present"]:
            continue
        data = load_task_data(m["path"])
        random.Random(1337).shuffle(data)          # a max-per-task prefix is then a fair sample
        if max_per_task > 0:
            data = data[:max_per_task]
        acc = evaluate_task(model, tokenizer, data, device, m, max_len)
        results[m["label"]] = acc
        centered_results[m["label"]] = centered(acc, m["random_baseline"])
        if verbose:
            print0(f"{m['label']:<35} n={len(data):<6} accuracy {acc:.4f}  centered {centered_results[m['label']]:+.4f}")
    model.train(was_training)
    core = sum(centered_results.values()) / max(1, len(centered_results))
    return {"results": results, "centered_results": centered_results, "core_metric": core,
            "tasks_covered": list(results), "tasks_missing": missing}
