"""
Time each chapter the way CI runs it (jupytext -> ipynb -> pytest --nbval-lax) and record the result in
chapters/_timings.json, which each chapter's "Run it yourself" box shows (dev/book_ext.py).

    .venv/bin/python dev/chapter_times.py                    # every chapter at scale ci
    .venv/bin/python dev/chapter_times.py 06 07 --scale laptop
    .venv/bin/python dev/chapter_times.py --dry-run          # print the table from the file, run nothing

Design choices:
- a chapter is timed standalone: a fresh NANOCHAT_BASE_DIR per chapter, so the time includes building the
  tokenizer/checkpoints it needs, which is what a reader opening only that chapter waits for
  (--shared-base reuses one folder across chapters instead);
- results merge into the file per (chapter, scale), with the machine and date beside each number, so a laptop
  timing never overwrites a CI one and every number says where it came from;
- offline data as in dev/test.sh (../shared/data's hub mirror) when that folder exists.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_book import offline_data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ROOT / "chapters" / "_timings.json"
BIN = Path(sys.executable).parent


def machine(scale: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{os.cpu_count()} CPU cores ({cpu})"
    if scale == "gpu":
        try:
            import torch
            if torch.cuda.is_available():
                desc = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
        except Exception:
            pass
    return desc


def find_chapters(names: list[str]) -> list[Path]:
    all_md = sorted((ROOT / "chapters").glob("[0-9][0-9]-*.md"))
    if not names:
        return all_md
    picked = []
    for name in names:
        hits = [p for p in all_md if p.stem == name or p.stem.startswith(name)]
        if not hits:
            raise SystemExit(f"no chapter matches {name!r}; have {[p.stem for p in all_md]}")
        picked += hits
    return picked


def time_chapter(md: Path, scale: str, env: dict, work: Path, timeout: int) -> dict:
    nb = work / f"{md.stem}.ipynb"
    subprocess.run([str(BIN / "jupytext"), "-q", "--to", "ipynb", "-o", str(nb), str(md)], check=True)
    cmd = [str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
           f"--nbval-cell-timeout={timeout}", "-o", "addopts=", str(nb)]
    load = os.getloadavg()[0]  # other work on the machine inflates the time: record how busy it was
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=work, env={**env, "NANOCHAT_BOOK_SCALE": scale}, capture_output=True, text=True)
    secs = time.time() - t0
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    return {"seconds": round(secs, 1), "passed": proc.returncode == 0, "machine": machine(scale),
            "date": datetime.date.today().isoformat(), "load_avg_1min": round(load, 1), "summary": tail[0][:200]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Time chapters under nbval; record chapters/_timings.json.")
    ap.add_argument("chapters", nargs="*", help="chapter stems or number prefixes (default: all)")
    ap.add_argument("--scale", default="ci", choices=["ci", "laptop", "gpu"])
    ap.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    ap.add_argument("--shared-base", action="store_true", help="reuse one NANOCHAT_BASE_DIR for all chapters")
    ap.add_argument("--dry-run", action="store_true", help="only print what the file holds")
    args = ap.parse_args(argv)

    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    if not args.dry_run:
        env = {**os.environ, "NANOCHAT_NO_PROGRESS": "1", "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}
        with tempfile.TemporaryDirectory(prefix="chapter-times-") as tmp, offline_data(env) as env:
            work = Path(tmp)
            for md in find_chapters(args.chapters):
                base = work / ("base" if args.shared_base else f"base-{md.stem}")
                res = time_chapter(md, args.scale, {**env, "NANOCHAT_BASE_DIR": str(base)}, work, args.timeout)
                data.setdefault(md.stem, {})[args.scale] = res
                print(f"{md.stem:28s} {args.scale:6s} {res['seconds']:8.1f} s  "
                      f"{'passed' if res['passed'] else 'FAILED'}  {res['summary']}", flush=True)
                TIMINGS.write_text(json.dumps(dict(sorted(data.items())), indent=1, ensure_ascii=False) + "\n")
    for stem, scales in sorted(data.items()):
        for scale, r in scales.items():
            print(f"{stem:28s} {scale:6s} {r['seconds']:8.1f} s  {'passed' if r['passed'] else 'FAILED'}  "
                  f"{r['machine']}, {r['date']}")
    return 0 if all(r["passed"] for s in data.values() for r in s.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
