"""
The report card: each stage appends a section, and `generate` stitches them into one `report.md`.

Design choices:
- one markdown file per section under `<base>/report/`, so stages running in separate processes (or re-run after
  a crash) never fight over one file
- the card opens with the machine it ran on and closes with a table of the headline metrics found in the sections
"""
import datetime
import os
import platform
import re
import socket
import subprocess
import sys

from nanochat.common import get_base_dir, get_dist_info

# Sections in pipeline order; the metrics table reads these keys from them.
SECTIONS = ["Tokenizer training", "Tokenizer evaluation", "Base model training", "Base model loss",
            "Base model evaluation", "Midtraining", "Chat evaluation mid", "Chat SFT", "Chat evaluation sft",
            "Chat RL", "Chat evaluation rl"]
HEADLINE = ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE"]


def _slug(section: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def system_info() -> list:
    import torch
    info = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "host": socket.gethostname(),
            "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    try:
        info["git commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                            text=True, cwd=os.path.dirname(__file__)).stdout.strip() or "?"
    except OSError:
        info["git commit"] = "?"
    return [info]


class Report:
    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def log(self, section: str, data: list) -> str:
        """Write one section; `data` holds dicts (rendered as `- key: value`) and strings (verbatim)."""
        lines = [f"## {section}", f"timestamp: {datetime.datetime.now():%Y-%m-%d %H:%M:%S}", ""]
        for item in data:
            if isinstance(item, dict):
                lines += [f"- {k}: {_fmt(v)}" for k, v in item.items()]
            elif item:
                lines.append(str(item))
        path = os.path.join(self.folder, f"{_slug(section)}.md")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n\n")
        os.replace(tmp, path)
        return path

    def reset(self) -> None:
        for name in os.listdir(self.folder):
            if name.endswith(".md"):
                os.remove(os.path.join(self.folder, name))
        self.log("Header", ["# nanochat report card", *system_info()])

    def generate(self) -> str:
        """Stitch the sections (pipeline order first, then any others) into report.md; returns its path."""
        names = sorted(n for n in os.listdir(self.folder) if n.endswith(".md") and n != "report.md")
        order = ["header"] + [_slug(s) for s in SECTIONS]
        names.sort(key=lambda n: order.index(n[:-3]) if n[:-3] in order else len(order))
        parts = [open(os.path.join(self.folder, n), encoding="utf-8").read() for n in names]
        body = "".join(parts)
        table = self._metrics_table(parts)
        out = os.path.join(self.folder, "report.md")
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            f.write(body + table)
        os.replace(out + ".tmp", out)
        return out

    @staticmethod
    def _metrics_table(parts: list) -> str:
        """One row per headline metric, one column per stage that reported it (e.g. base / mid / sft / rl)."""
        cols, rows = [], {}
        for text in parts:
            m = re.match(r"## (.*)", text)
            stage = m.group(1) if m else "?"
            for key in HEADLINE:
                hit = re.search(rf"^- {re.escape(key)}: ([-0-9.]+)$", text, re.M)
                if hit:
                    if stage not in cols:
                        cols.append(stage)
                    rows.setdefault(key, {})[stage] = hit.group(1)
        if not rows:
            return ""
        lines = ["## Summary", "", "| metric | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for key in HEADLINE:
            if key in rows:
                lines.append(f"| {key} | " + " | ".join(rows[key].get(c, "-") for c in cols) + " |")
        return "\n".join(lines) + "\n"


class DummyReport:
    def log(self, *args, **kwargs):
        pass

    def reset(self, *args, **kwargs):
        pass


def get_report():
    """Rank 0 writes the report; other ranks get a no-op, so call sites need no rank checks."""
    if get_dist_info()[1] != 0:
        return DummyReport()
    return Report(os.path.join(get_base_dir(), "report"))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "generate"
    if cmd == "reset":
        get_report().reset()
    elif cmd == "generate":
        print(get_report().generate())
    else:
        sys.exit(f"usage: python -m nanochat.report [reset|generate], got {cmd!r}")
