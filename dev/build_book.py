"""
Build the book as a website (jupyter-book v1), and say how long it took.

    python dev/build_book.py                      # publishing build: execute chapters (cached), laptop scale
    python dev/build_book.py --scale ci           # same, at the CI sizes (minutes instead of an hour)
    python dev/build_book.py --no-execute --strict --out /tmp/site   # the CI form: no execution, -W

`make book` and `make book-ci` call this; tests/test_book_site.py calls `build()`.

Design choices:
- execution is switched off by handing jupyter-book a copy of _config.yml with `execute_notebooks: off`
  (`--config`), so there is one config file to maintain and the CI form cannot drift from the real one;
- offline data: when ../shared/data exists (this project's sandbox), its hub mirror is served on loopback and
  the fixture datasets are named, exactly like dev/test.sh; elsewhere chapters download from the real hub;
- the build prints its wall time, and each executed chapter's time (from the jupyter-cache records).
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
JB = Path(sys.executable).with_name("jupyter-book")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def offline_data(env: dict):
    """Serve ../shared/data/hf-mirror on loopback and point the chapters at it (no-op when absent)."""
    mirror = SHARED / "hf-mirror"
    if not mirror.is_dir() or env.get("HF_ENDPOINT"):
        yield env
        return
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(mirror)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield {**env, "HF_ENDPOINT": f"http://127.0.0.1:{port}",
               "TIKTOKEN_CACHE_DIR": str(SHARED / "tiktoken_cache"),
               "NANOCHAT_PRETRAIN_DATASET": "nanochat-fixtures/prose-mix",
               "NANOCHAT_CHAT_DATASET": "nanochat-fixtures/chat-mix",
               "NANOCHAT_IDENTITY_PATH": str(SHARED / "identity_conversations.jsonl"),
               "NANOCHAT_EVAL_BUNDLE": str(SHARED / "eval_bundle.zip")}
    finally:
        proc.terminate()
        proc.wait()


def local_mathjax(out: Path):
    """MathJax (2.7, from the `jupyter_server_mathjax` wheel) staged as OUT/_build/_mathjax/mathjax and copied
    into the site, so formulas render with no network; None (the theme's CDN default) without the package."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    staged = out / "_build" / "_mathjax"
    if not (staged / "mathjax" / "MathJax.js").exists():
        shutil.copytree(src, staged / "mathjax", dirs_exist_ok=True)
    return staged


def write_config(out: Path, execute: bool) -> Path:
    """A copy of _config.yml with execution on (cache) or off."""
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    if not execute:
        cfg.setdefault("execute", {})["execute_notebooks"] = "off"
    # jupyter-book resolves local extension folders against the config file's folder: pin them to the repo.
    local = (cfg.get("sphinx") or {}).get("local_extensions") or {}
    for name, folder in local.items():
        local[name] = str((ROOT / folder).resolve())
    out.mkdir(parents=True, exist_ok=True)
    mathjax = local_mathjax(out)
    if mathjax is not None:
        extra = cfg.setdefault("sphinx", {}).setdefault("config", {})
        # html_extra_path (copied to the site's root as is), not html_static_path: jupyter-book would add every
        # .js file of a static folder to every page. mathjax_path is relative to _static.
        extra["html_extra_path"] = [str(mathjax)]
        extra["mathjax_path"] = "../mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
        # jupyter-book configures MathJax 3 (typeset only inside the `math` and output classes); say the same to 2
        extra["mathjax3_config"] = None
        extra["mathjax2_config"] = {"tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|output_area",
                                                "ignoreClass": "tex2jax_ignore|mathjax_ignore"}}
    path = out / "_config.generated.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


def build(out: Path, *, execute: bool = True, strict: bool = False, scale: str = "laptop",
          full: bool = False, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run `jupyter-book build` into `out`; returns the finished process (stdout+stderr in .stdout)."""
    out = Path(out).resolve()
    config = write_config(out, execute)
    cmd = [str(JB), "build", str(ROOT), "--path-output", str(out), "--config", str(config)]
    if strict:
        cmd += ["-W", "--keep-going"]
    if full:
        cmd.append("--all")
    env = {**os.environ, "NANOCHAT_BOOK_SCALE": scale, "NANOCHAT_NO_PROGRESS": "1", "PYTHONHASHSEED": "0",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    lines = []
    with offline_data(env) as env:
        # Stream the log (a laptop-scale build runs for a long time) and keep it to find failed chapters.
        with subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as proc:
            for line in proc.stdout:
                lines.append(line)
                if not quiet:
                    print(line, end="", flush=True)
    log = re.sub(r"\x1b\[[0-9;]*m", "", "".join(lines))  # drop terminal colours before matching
    failed = sorted(set(re.findall(r"(\S+\.(?:md|ipynb)): WARNING: Executing notebook failed", log)))
    rc = proc.returncode or (1 if failed else 0)
    return subprocess.CompletedProcess(cmd, rc, stdout=log, stderr=failed)


def executed_times(out: Path) -> dict:
    """Per-chapter execution seconds recorded by myst-nb in the build environment (empty when not executed)."""
    times = {}
    cache = Path(out) / "_build" / ".jupyter_cache"
    if not cache.is_dir():
        return times
    try:
        from jupyter_cache import get_cache
        for record in get_cache(str(cache)).list_cache_records():
            data = record.data or {}
            uri = Path(record.uri).stem
            if "execution_seconds" in data:
                times[uri] = data["execution_seconds"]
    except Exception as exc:  # the cache format is jupyter-cache's business; timing is a nicety
        print(f"(could not read execution times: {exc})")
    return times


def pages_without_outputs(html_dir: Path) -> list[str]:
    """Chapter pages of an executed build that show no cell output (a chapter that silently did not run)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [ch["file"] for part in toc.get("parts", []) for ch in part["chapters"]]
    missing = []
    for f in files:
        page = html_dir / f"{f}.html"
        if f.startswith("chapters/") and (not page.exists() or "cell_output" not in page.read_text()):
            missing.append(f)
    return missing


def record_times(times: dict, scale: str, failed: set) -> bool:
    """Write the chapters' execution times of this build into chapters/_timings.json at `scale` (each chapter's
    "Run it yourself" box shows them). Unlike `dev/chapter_times.py` (each chapter alone, from an empty folder),
    chapters here run in book order and reuse the artifacts earlier chapters built; the entry says so.
    Returns whether the file changed."""
    sys.path.insert(0, str(ROOT / "dev"))
    from chapter_times import TIMINGS, machine
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    for stem, secs in times.items():
        if not stem[:2].isdigit():
            continue
        data.setdefault(stem, {})[scale] = {
            "seconds": round(secs, 1), "passed": stem not in failed, "machine": machine(scale),
            "date": time.strftime("%Y-%m-%d"),
            "summary": "executed by `make book` (in book order, reusing earlier chapters' artifacts)"}
    text = json.dumps(dict(sorted(data.items())), indent=1, ensure_ascii=False) + "\n"
    changed = not TIMINGS.exists() or TIMINGS.read_text() != text
    TIMINGS.write_text(text)
    print(f"recorded {len(times)} chapter times at scale={scale} in {TIMINGS.relative_to(ROOT)}"
          f"{'' if changed else ' (unchanged)'}")
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build the nanochat book website.")
    ap.add_argument("--out", default=str(ROOT), help="output folder (the site lands in OUT/_build/html)")
    ap.add_argument("--scale", default=os.environ.get("NANOCHAT_BOOK_SCALE", "laptop"),
                    choices=["ci", "laptop", "gpu"], help="NANOCHAT_BOOK_SCALE for executed chapters")
    ap.add_argument("--no-execute", action="store_true", help="render chapters without running them (CI)")
    ap.add_argument("--strict", action="store_true", help="warnings are errors (-W --keep-going)")
    ap.add_argument("--all", action="store_true", help="rebuild every page, not only changed ones")
    ap.add_argument("--no-record", dest="record", action="store_false",
                    help="do not write the chapters' execution times into chapters/_timings.json")
    args = ap.parse_args(argv)

    t0 = time.time()
    proc = build(Path(args.out), execute=not args.no_execute, strict=args.strict, scale=args.scale, full=args.all)
    dt = time.time() - t0
    html = Path(args.out).resolve() / "_build" / "html" / "index.html"
    mode = "no execution" if args.no_execute else f"executed at scale={args.scale}"
    times = executed_times(Path(args.out))
    for name, secs in sorted(times.items()):
        print(f"  {name:28s} {secs / 60:6.1f} min")
    if times and not args.no_execute and args.record:
        if record_times(times, args.scale, failed={Path(f).stem for f in proc.stderr}):
            # the pages were written before the times were known: render them again (cached, no execution)
            build(Path(args.out), execute=True, strict=args.strict, scale=args.scale, quiet=True)
    for path in proc.stderr:
        print(f"  FAILED to execute: {path} (its page has no outputs; the traceback is in the log above)")
    rc = proc.returncode
    if not args.no_execute:
        for f in pages_without_outputs(html.parent):
            print(f"  NO OUTPUTS on {f}.html")
            rc = rc or 1
    print(f"book built in {dt / 60:.1f} min ({dt:.0f} s), {mode}, on {os.cpu_count()} CPU cores: "
          f"{'ok' if rc == 0 else f'FAILED (exit {rc})'} -> {html}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
