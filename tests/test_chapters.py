"""Every chapter is a valid jupytext notebook with the book's shape: setup first, asserts, summary, exercises."""
import glob
import os
import re

import jupytext
import pytest

from helpers import REPO_ROOT

CHAPTERS = sorted(glob.glob(os.path.join(REPO_ROOT, "chapters", "[0-9][0-9]-*.md")))


def test_chapters_are_numbered_without_gaps():
    nums = [int(os.path.basename(p)[:2]) for p in CHAPTERS]
    assert nums == list(range(1, len(nums) + 1)), nums


@pytest.mark.parametrize("path", CHAPTERS, ids=os.path.basename)
def test_chapter_shape(path):
    nb = jupytext.read(path)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    prose = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert code and "book.setup()" in code[0], "first code cell must call book.setup()"
    assert any(re.search(r"^\s*assert\b", c, re.M) for c in code), "a chapter must assert its results"
    headings = "\n".join(prose)
    for h in ("Summary", "Exercises", "Solutions"):
        # a heading, or (for solutions) a folded admonition titled so
        assert re.search(rf"^(#+ .*{h}|`{{3,}}{{admonition}} .*{h})", headings, re.M), f"missing a '{h}' section"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# ")
    # figures come from code or figures/, never hot-linked from another site
    assert not re.search(r"!\[[^\]]*\]\(https?://|<img[^>]+src=[\"']https?://|```\{(image|figure)\} https?://", headings)
