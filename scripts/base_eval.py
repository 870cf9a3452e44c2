"""
Evaluate a base model on the CORE metric (DCLM): few-shot multiple choice, schema and language-modelling tasks.

    python -m scripts.base_eval                       # the latest base checkpoint, every task, all items
    python -m scripts.base_eval --max-per-task 100    # a quick estimate (100 items per task)
    torchrun --nproc_per_node=8 -m scripts.base_eval  # items are split across ranks

The bundle comes from NANOCHAT_EVAL_BUNDLE (a zip, a directory or a URL; default the public URL upstream uses).
Tasks absent from the bundle are skipped with a warning; the output names the tasks the score covers.
Results go to stdout, `<base>/base_eval/<model_tag>_<step>.csv` and the report ("Base model evaluation").
Cost: a d20 model on 8xH100 takes a few minutes for the full bundle; a depth-2 model on a laptop CPU with
--max-per-task 8 takes under a minute.
"""
import argparse
import csv
import os
import time

from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, get_base_dir, print0
from nanochat.core_eval import evaluate_core


def evaluate_model(model, tokenizer, device, max_per_task=-1):
    """CORE of `model` (the name base_train uses for its periodic CORE evaluation)."""
    return evaluate_core(model, tokenizer, device, max_per_task=max_per_task)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-per-task", type=int, default=-1, help="items per task (-1 = all)")
    p.add_argument("--model-tag", default=None, help="base checkpoint tag (default: the largest depth)")
    p.add_argument("--model-step", type=int, default=None, help="checkpoint step (default: the last)")
    p.add_argument("--tasks", default=None, help="comma-separated CORE labels to run (default: all present)")
    p.add_argument("--device-type", default=None, choices=["cuda", "cpu", "mps"])
    args = p.parse_args(argv)

    device_type = args.device_type or autodetect_device_type()
    ddp, rank, local_rank, world, device = compute_init(device_type)
    from nanochat.checkpoint_manager import load_model
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.model_step)
    step = meta.get("step", args.model_step) if isinstance(meta, dict) else args.model_step
    tag = args.model_tag or (meta.get("model_tag") if isinstance(meta, dict) else None) or "base"
    print0(f"base_eval: model {tag} step {step}, device {device}, world {world}, max_per_task {args.max_per_task}")

    t0 = time.time()
    tasks = args.tasks.split(",") if args.tasks else None
    out = evaluate_core(model, tokenizer, device, max_per_task=args.max_per_task, tasks=tasks)
    dt = time.time() - t0
    print0(f"CORE {out['core_metric']:.4f} over {len(out['tasks_covered'])} tasks in {dt:.1f}s")
    if out["tasks_missing"]:
        print0(f"not covered (absent from the bundle): {', '.join(out['tasks_missing'])}")

    if rank == 0:
        folder = os.path.join(get_base_dir(), "base_eval")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{tag}_{step}.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Task", "Accuracy", "Centered"])
            for label, acc in out["results"].items():
                w.writerow([label, f"{acc:.6f}", f"{out['centered_results'][label]:.6f}"])
            w.writerow(["CORE", "", f"{out['core_metric']:.6f}"])
        print0(f"wrote {path}")
        from nanochat.report import get_report
        get_report().log(section="Base model evaluation", data=[
            {"model": tag, "step": step, "max_per_task": args.max_per_task, "seconds": round(dt, 1)},
            {"CORE": out["core_metric"], "tasks covered": len(out["tasks_covered"]),
             "tasks missing": ", ".join(out["tasks_missing"]) or "none"},
            {label: acc for label, acc in out["results"].items()},
        ])
    compute_cleanup()
    return out


if __name__ == "__main__":
    main()
