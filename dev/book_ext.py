"""
Sphinx extension of the book (loaded by _config.yml): the "Run it yourself" box on every chapter page.

Every page `chapters/NN-slug` gets a box with the JupyterLab, CPU and GPU commands for that chapter, and the
chapter's measured runtime at each scale, read at build time from chapters/_timings.json (written by
dev/chapter_times.py). The box is inserted after the chapter's first paragraph; a chapter that wants it elsewhere,
or wants another GPU command, places it itself:

    :::{run-it-yourself}
    :gpu: torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth 20
    :::

Design choices:
- runtimes come from a measured file, never from prose, and show even in the CI build (no execution);
- a page depends on the timings file, so re-timing a chapter rebuilds its page;
- the default GPU line per chapter is the stage of the speedrun that chapter explains (GPU_COMMANDS below).
"""
import json
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

TIMINGS = "chapters/_timings.json"
SCALES = ("ci", "laptop", "gpu")
CHAPTER = re.compile(r"^chapters/(\d\d)-[\w-]+$")
TORCHRUN = "torchrun --standalone --nproc_per_node=8 -m"
GPU_COMMANDS = {  # chapter number -> what that chapter's stage runs on an 8xH100 node (CLI of dev/CONTRACT.md)
    1: "bash speedrun.sh",
    2: "python -m scripts.tok_train --max-chars 2000000000 && python -m scripts.tok_eval",
    6: f"{TORCHRUN} scripts.base_train -- --depth 20",
    7: f"{TORCHRUN} scripts.base_eval && {TORCHRUN} scripts.base_loss",
    8: f"{TORCHRUN} scripts.mid_train && {TORCHRUN} scripts.chat_sft && {TORCHRUN} scripts.chat_eval -- -i sft",
    9: f"{TORCHRUN} scripts.chat_rl && {TORCHRUN} scripts.chat_eval -- -i rl -a GSM8K",
    10: "python -m scripts.chat_web -i sft   # or the whole pipeline: bash speedrun.sh",
}


def _code(text: str) -> nodes.literal:
    return nodes.literal(text, text)


def _item(label: str, *children) -> nodes.list_item:
    para = nodes.paragraph()
    para += nodes.strong(label, label)
    para += nodes.Text(" ")
    for child in children:
        para += child
    return nodes.list_item("", para)


def format_runtime(entry: dict) -> str:
    secs = entry["seconds"]
    took = f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"
    status = "" if entry.get("passed", True) else " (FAILED: this run did not finish)"
    busy = f"load {entry['load_avg_1min']}" if "load_avg_1min" in entry else None
    where = ", ".join(x for x in (entry.get("machine"), busy, entry.get("date")) if x)
    how = " (in `make book`, after the chapters before it)" if "make book" in entry.get("summary", "") else ""
    return f"{took}{status}{how}" + (f" on {where}" if where else "")


def load_timings(env) -> dict:
    path = Path(env.srcdir) / TIMINGS
    env.note_dependency(str(path))
    return json.loads(path.read_text()) if path.exists() else {}


def make_box(slug: str, timings: dict, gpu: str | None = None, cpu: str | None = None) -> nodes.admonition:
    box = nodes.admonition(classes=["tip", "run-it-yourself"])
    box += nodes.title("Run it yourself", "Run it yourself")
    cmds = nodes.bullet_list()
    cmds += _item("JupyterLab:", _code(f"NANOCHAT_BOOK_SCALE=laptop .venv/bin/jupyter lab chapters/{slug}.md"),
                  nodes.Text(" (open the .md as a notebook; ci is the fastest scale, gpu needs CUDA)"))
    cmds += _item("CPU, headless:", _code(cpu or f".venv/bin/python dev/chapter_times.py {slug} --scale laptop"),
                  nodes.Text(" (runs the chapter under nbval and records its time)"))
    number = int(slug[:2]) if slug[:2].isdigit() else 0
    cmds += _item("GPU:", _code(gpu or GPU_COMMANDS.get(
        number, f".venv/bin/python dev/chapter_times.py {slug} --scale gpu")))
    box += cmds
    # One line of runtimes: "ci 12 s on <machine>, <date> · laptop not measured yet · gpu ..."
    para = nodes.paragraph()
    para += nodes.strong("Measured runtime:", "Measured runtime:")
    mine = timings.get(slug, {})
    for i, scale in enumerate(SCALES):
        para += nodes.Text(" " if i == 0 else " · ")
        para += nodes.emphasis(scale, scale)
        para += nodes.Text(" " + (format_runtime(mine[scale]) if scale in mine else "not measured yet"))
    box += para
    return box


class RunItYourself(SphinxDirective):
    has_content = True
    option_spec = {"gpu": directives.unchanged, "cpu": directives.unchanged}

    def run(self):
        box = make_box(Path(self.env.docname).name, load_timings(self.env), self.options.get("gpu"),
                       self.options.get("cpu"))
        if self.content:
            extra = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, extra)
            box += extra.children
        return [box]


def add_default_box(app, doctree):
    """Give every chapter page the box, after its first paragraph, unless the chapter placed one itself."""
    docname = app.env.docname
    if not CHAPTER.match(docname):
        return
    if any("run-it-yourself" in n["classes"] for n in doctree.findall(nodes.admonition)):
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        return
    paragraphs = [i for i, child in enumerate(section.children) if isinstance(child, nodes.paragraph)]
    where = paragraphs[0] + 1 if paragraphs else 1
    section.insert(where, make_box(Path(docname).name, load_timings(app.env)))


def setup(app):
    app.add_directive("run-it-yourself", RunItYourself)
    app.connect("doctree-read", add_default_box)
    return {"version": "1.1", "parallel_read_safe": True, "parallel_write_safe": True}
