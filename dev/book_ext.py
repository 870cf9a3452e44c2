"""
Sphinx extension of the book (loaded by _config.yml): the `run-it-yourself` directive.

In a chapter:

    :::{run-it-yourself}
    :gpu: torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth=20
    :::

renders a "Run it yourself" box with the JupyterLab, CPU and GPU commands for that chapter, and the chapter's
measured runtime at each scale, read at build time from chapters/_timings.json (written by
dev/chapter_times.py). Design choices:
- runtimes come from a measured file, never from prose, and show even in the CI build (no execution);
- the page depends on the timings file, so re-timing a chapter rebuilds its page;
- the chapter is taken from the page's own name, so the same snippet pastes into every chapter.
"""
import json
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

TIMINGS = "chapters/_timings.json"
SCALES = ("ci", "laptop", "gpu")


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
    when = f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"
    status = "" if entry.get("passed", True) else " (FAILED)"
    return f"{when}{status} on {entry.get('machine', 'unknown machine')}, {entry.get('date', '')}".rstrip(", ")


class RunItYourself(SphinxDirective):
    has_content = True
    option_spec = {"gpu": directives.unchanged, "cpu": directives.unchanged}

    def run(self):
        slug = Path(self.env.docname).name
        path = Path(self.env.srcdir) / TIMINGS
        self.env.note_dependency(str(path))
        timings = json.loads(path.read_text()).get(slug, {}) if path.exists() else {}

        box = nodes.admonition(classes=["tip", "run-it-yourself"])
        box += nodes.title("Run it yourself", "Run it yourself")
        cmds = nodes.bullet_list()
        cmds += _item("JupyterLab:", _code(f"NANOCHAT_BOOK_SCALE=laptop .venv/bin/jupyter lab chapters/{slug}.md"),
                      nodes.Text(" (open the .md as a notebook; ci is faster, gpu needs CUDA)"))
        cmds += _item("CPU, headless:", _code(self.options.get(
            "cpu", f"NANOCHAT_BOOK_SCALE=ci .venv/bin/python dev/chapter_times.py {slug}")),
            nodes.Text(" (runs the chapter under nbval and records its time)"))
        if "gpu" in self.options:
            cmds += _item("GPU:", _code(self.options["gpu"]))
        else:
            cmds += _item("GPU:", _code(f"NANOCHAT_BOOK_SCALE=gpu .venv/bin/python dev/chapter_times.py {slug}"))
        box += cmds

        para = nodes.paragraph()
        para += nodes.strong("Measured runtime:", "Measured runtime:")
        box += para
        runs = nodes.bullet_list()
        for scale in SCALES:
            text = format_runtime(timings[scale]) if scale in timings else "not measured yet"
            runs += _item(f"{scale}:", nodes.Text(text))
        box += runs
        if self.content:
            extra = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, extra)
            box += extra.children
        return [box]


def setup(app):
    app.add_directive("run-it-yourself", RunItYourself)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
