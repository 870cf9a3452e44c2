"""
Generate the book's static figures from the package, as small deterministic SVGs in figures/.

    .venv/bin/python figures/make_figures.py            # writes figures/*.svg
    .venv/bin/python figures/make_figures.py --check    # fails if a committed figure is stale

Design choices:
- every number drawn comes from the package (`nanochat.gpt.config_for_depth`, `count_params`), every stage
  name from the scripts folder, so a figure cannot drift from the code it describes;
- SVG with text kept as text (`svg.fonttype=none`), a fixed hash salt and no date, so reruns are byte-identical
  and git diffs stay meaningful; each file is a few tens of KB (the test caps them at 200 KB);
- no chapter writes into the repo: chapters plot inline, this script is the only writer of figures/.
"""
import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
from nanochat.gpt import config_for_depth, count_params  # noqa: E402

OUT = ROOT / "figures"
MAX_BYTES = 200_000

# The pipeline of the series: (stage, script module, chapter). Order = the order speedrun.sh runs them.
PIPELINE = [
    ("Tokenizer", "scripts.tok_train", "ch. 2"),
    ("Pretraining", "scripts.base_train", "ch. 6"),
    ("Midtraining", "scripts.mid_train", "ch. 8"),
    ("SFT", "scripts.chat_sft", "ch. 8"),
    ("RL (GRPO)", "scripts.chat_rl", "ch. 9"),
    ("Serving", "scripts.chat_web", "ch. 10"),
]
EVALS = {"Pretraining": "base_eval\nCORE, bpb", "SFT": "chat_eval\nARC, MMLU,\nGSM8K, HumanEval",
         "RL (GRPO)": "chat_eval\nGSM8K pass@k"}
DEPTHS = [2, 4, 8, 12, 16, 20, 26, 32]


def _style():
    plt.rcParams.update({
        "svg.fonttype": "none",        # keep text as <text>: small files, searchable, crisp
        "svg.hashsalt": "nanochat",    # stable element ids across runs
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
    })


def _box(ax, x, y, w, h, text, face, edge="#333333", fontsize=10, weight="normal"):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=face, edgecolor=edge, linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def _arrow(ax, x0, y0, x1, y1, style="-|>", ls="-"):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=12,
                                 linewidth=1.2, linestyle=ls, color="#333333"))


def pipeline_figure():
    """The end-to-end pipeline: data -> tokenizer -> base -> mid -> SFT -> RL -> web UI, with the evals below."""
    fig, ax = plt.subplots(figsize=(10, 3.4))
    ax.set_xlim(-0.2, len(PIPELINE) * 1.7)
    ax.set_ylim(-1.75, 1.45)
    ax.axis("off")
    w, h = 1.3, 0.8
    xs = [0.75 + 1.7 * i for i in range(len(PIPELINE))]
    for i, ((stage, module, chapter), x) in enumerate(zip(PIPELINE, xs)):
        script = module.split(".")[1]
        _box(ax, x, 0.35, w, h, f"{stage}\n{script}.py", face="#dbe9f6", weight="bold")
        ax.text(x, 0.95, chapter, ha="center", va="bottom", fontsize=9, color="#555555")
        if i:
            _arrow(ax, xs[i - 1] + w / 2, 0.35, x - w / 2, 0.35)
        if stage in EVALS:
            _box(ax, x, -1.15, w, 0.75, EVALS[stage], face="#fdebd0", fontsize=8)
            _arrow(ax, x, 0.35 - h / 2, x, -1.15 + 0.375, style="-|>", ls="--")
    ax.text(xs[0], 1.3, "data: FineWeb-Edu shards, then SmolTalk + identity + tasks", ha="left",
            va="center", fontsize=9, color="#555555")
    ax.text(xs[-1], 1.3, "model: nanochat/gpt.py (ch. 3-5)", ha="right", va="center", fontsize=9, color="#555555")
    fig.tight_layout()
    return fig


def params_figure():
    """Parameters by part for each depth, straight from count_params(config_for_depth(d))."""
    parts = ["wte", "lm_head", "attn", "mlp"]
    colors = {"wte": "#c6dbef", "lm_head": "#6baed6", "attn": "#fd8d3c", "mlp": "#e6550d"}
    counts = [count_params(config_for_depth(d)) for d in DEPTHS]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"d{d}" for d in DEPTHS]
    bottom = [0.0] * len(DEPTHS)
    for part in parts:
        vals = [c[part] / 1e6 for c in counts]
        ax.bar(labels, vals, bottom=bottom, color=colors[part], label=part, width=0.7)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, c in enumerate(counts):
        ax.text(i, c["total"] / 1e6, f"{c['total'] / 1e6:,.0f}M", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("parameters (millions)")
    ax.set_xlabel("depth (vocab 65,536; width = 64 x depth)")
    ax.set_title("Where the parameters are, by depth")
    ax.legend(frameon=False, ncol=4, loc="upper left")
    fig.tight_layout()
    return fig


FIGURES = {"pipeline.svg": pipeline_figure, "params_by_depth.svg": params_figure}


def render(make) -> bytes:
    _style()
    fig = make()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "figures/make_figures.py"})
    plt.close(fig)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed figure differs from a fresh render")
    args = ap.parse_args(argv)
    stale = []
    for name, make in FIGURES.items():
        data = render(make)
        if len(data) > MAX_BYTES:
            raise SystemExit(f"{name} is {len(data):,} bytes, over the {MAX_BYTES:,} limit")
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
            continue
        path.write_bytes(data)
        print(f"wrote {path.relative_to(ROOT)} ({len(data):,} bytes)")
    if stale:
        print("stale figures (run figures/make_figures.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
