"""The book as a website: the table of contents, the bibliography, the figures, the CI build (no execution,
warnings are errors), and a headless-Chromium walk through the built site.

The browser part drives Debian's /usr/bin/chromium over the DevTools protocol (a websocket; the `websockets`
package), so it needs no chromedriver. It serves the built site on loopback, opens index.html, follows the sidebar
to every page of the toc, and checks on each page: every same-site link resolves (page and #anchor), every <img>
loads (naturalWidth > 0) from the site itself, code cells render. Two screenshots land in tests/artifacts/.
"""
import base64
import contextlib
import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
ARTIFACTS = ROOT / "tests" / "artifacts"

# Which part each chapter number belongs to (the plan).
PARTS = {1: "Foundations", 2: "Foundations", 3: "The model", 4: "The model", 5: "The model",
         6: "Training", 7: "Training", 8: "Making it a chatbot", 9: "Making it a chatbot",
         10: "Making it a chatbot"}
REQUIRED_KEYS = ["vaswani2017attention", "su2021roformer", "zhang2019rmsnorm", "jordan2024muon", "ainslie2023gqa",
                 "shazeer2019mqa", "dao2022flashattention", "shao2024deepseekmath", "hoffmann2022chinchilla",
                 "li2024dclm", "cobbe2021gsm8k", "hendrycks2021mmlu", "clark2018arc", "chen2021humaneval",
                 "radford2019gpt2", "sennrich2016bpe", "karpathy2025nanochat", "nanochatseries2025"]


def existing_chapters() -> list[str]:
    return sorted(f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("[0-9][0-9]-*.md"))


def toc() -> dict:
    return yaml.safe_load((ROOT / "_toc.yml").read_text())


def toc_files() -> list[tuple[str, str]]:
    """(part caption, file) for every entry of the toc, in order."""
    return [(part["caption"], ch["file"]) for part in toc()["parts"] for ch in part["chapters"]]


def bib_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", (ROOT / "references.bib").read_text(), flags=re.M))


# --------------------------------------------------------------------------- static checks (fast, no build)

def test_toc_lists_exactly_the_chapters_that_exist():
    listed = [f for _, f in toc_files() if f.startswith("chapters/")]
    have = existing_chapters()
    assert listed == have, (f"update _toc.yml: add {sorted(set(have) - set(listed))}, "
                            f"remove {sorted(set(listed) - set(have))}, keep chapter order")
    for caption, f in toc_files():
        if f.startswith("chapters/"):
            n = int(Path(f).name[:2])
            assert caption == PARTS[n], f"{f} belongs in part {PARTS[n]!r}, not {caption!r}"
    assert toc()["root"] == "intro" and (ROOT / "intro.md").exists()
    assert ("Back matter", "references") in toc_files()


def test_bibliography_has_the_announced_keys_and_every_cited_key():
    keys = bib_keys()
    assert not set(REQUIRED_KEYS) - keys
    pages = [ROOT / "intro.md", ROOT / "references.md", *sorted((ROOT / "chapters").glob("[0-9][0-9]-*.md"))]
    for page in pages:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            for key in (k.strip() for k in group.split(",")):
                assert key in keys, f"{page.name} cites {key!r}, which references.bib does not define"


def test_figures_are_small_local_and_fresh():
    figs = sorted((ROOT / "figures").glob("*.svg")) + sorted((ROOT / "figures").glob("*.png"))
    assert figs, "figures/make_figures.py has not been run"
    for f in figs:
        assert f.stat().st_size < 200_000, f"{f.name} is {f.stat().st_size:,} bytes (limit 200 KB)"
    # Re-rendering from the package gives the committed bytes (a stale figure would show old numbers).
    proc = subprocess.run([str(Path(os.sys.executable)), "figures/make_figures.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # No page links an image from another site: the book must render offline.
    for page in [ROOT / "intro.md", *sorted((ROOT / "chapters").glob("[0-9][0-9]-*.md"))]:
        text = page.read_text()
        assert not re.search(r"!\[[^\]]*\]\(\s*https?://", text), f"{page.name} hot-links an image"
        assert not re.search(r"\{(figure|image)\}\s+https?://", text), f"{page.name} hot-links an image"


# --------------------------------------------------------------------------- the CI build

def _build_book_module():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "dev" / "build_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the site with execution off and -W into a temp dir; returns the html folder."""
    out = tmp_path_factory.mktemp("book")
    t0 = time.time()
    proc = _build_book_module().build(out, execute=False, strict=True, scale="ci", full=True, quiet=True)
    log = proc.stdout or ""
    assert proc.returncode == 0, "jupyter-book build -W failed:\n" + "\n".join(
        line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "rror" in line)[-6000:]
    print(f"site built (no execution, -W) in {time.time() - t0:.1f}s")
    return out / "_build" / "html"


def test_site_has_a_page_per_toc_entry(site):
    for _, f in toc_files():
        assert (site / f"{f}.html").exists(), f"{f}.html missing from the built site"
    assert (site / "index.html").exists()


# --------------------------------------------------------------------------- the browser walk

class Server:
    """The built site on a loopback port, served quietly from a thread."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Chromium:
    """Headless Chromium with one page, driven through the DevTools protocol."""

    def __init__(self, user_data_dir: Path):
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--no-default-browser-check",
             f"--user-data-dir={user_data_dir}", "--remote-debugging-port=0", "--window-size=1280,900",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = user_data_dir / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20))
        self.next_id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression[:80]!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str, timeout: float = 30) -> str:
        """Navigate, follow redirects, wait for the page and its images; returns the final URL."""
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        # A meta-refresh (index.html -> intro.html) changes location after load, so wait for it to settle.
        last, stable = None, 0
        while time.time() < deadline:
            state = self.js("[document.readyState, location.href]")
            if state[0] == "complete" and state[1] == last and state[1] != "about:blank":
                stable += 1
                if stable >= 3:
                    break
            else:
                stable = 0
            last = state[1]
            time.sleep(0.1)
        # Load every image now (lazy ones included), then wait until each one has finished.
        self.js("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
        while time.time() < deadline and not self.js("Array.from(document.images).every(i => i.complete)"):
            time.sleep(0.1)
        return last

    def screenshot(self, path: Path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self):
        try:
            self._stack.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _ids(html: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', html))


@pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"headless browser check needs Debian's chromium ({CHROMIUM})")
def test_browser_walks_every_page(site, tmp_path):
    server = Server(site)
    browser = Chromium(tmp_path / "chromium-profile")
    fetched: dict[str, str | None] = {}

    def fetch(url: str):
        if url not in fetched:
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    fetched[url] = r.read().decode("utf-8", "replace")
            except urllib.error.URLError:
                fetched[url] = None
        return fetched[url]

    try:
        # 1. The landing page: index.html redirects to the root page, whose sidebar lists every page.
        first = browser.open(server.url + "index.html")
        assert first.endswith("intro.html"), f"index.html landed on {first}"
        nav = browser.js("Array.from(document.querySelectorAll('nav.bd-docs-nav a.reference.internal'))"
                         ".map(a => a.href)")
        expected = [server.url + f + ".html" for _, f in toc_files()]
        navset = {urllib.parse.urldefrag(u)[0] for u in nav}
        missing = [u for u in expected if u not in navset]
        assert not missing, f"sidebar lacks {missing}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.screenshot(ARTIFACTS / "site-intro.png")

        # 2. Every page reachable from the sidebar.
        problems = []
        for url in [server.url + "intro.html", *expected]:
            landed = browser.open(url)
            if landed != url:
                problems.append(f"{url} landed on {landed}")
                continue
            imgs = browser.js("Array.from(document.images).map(i => [i.src, i.naturalWidth])")
            for src, width in imgs:
                if not src.startswith(server.url):
                    problems.append(f"{url}: external image {src}")
                elif width <= 0:
                    problems.append(f"{url}: image did not load: {src}")
            links = browser.js("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
            for link in set(links):
                if not link.startswith(server.url):
                    continue  # external links are the reader's browser's business, not the build's
                page, frag = urllib.parse.urldefrag(link)
                html = fetch(page)
                if html is None:
                    problems.append(f"{url}: broken link {link}")
                elif frag and page.endswith(".html") and urllib.parse.unquote(frag) not in _ids(html):
                    problems.append(f"{url}: link to a missing anchor {link}")
            md = ROOT / (urllib.parse.urlparse(url).path.lstrip("/").removesuffix(".html") + ".md")
            if md.parent.name == "chapters":
                boxes = browser.js("document.querySelectorAll('div.run-it-yourself').length")
                if boxes != 1:
                    problems.append(f"{url}: {boxes} 'Run it yourself' boxes (want exactly 1)")
            n_cells = len(re.findall(r"^```\{code-cell\}", md.read_text(), flags=re.M)) if md.exists() else 0
            if n_cells:
                rendered = browser.js("Array.from(document.querySelectorAll('div.cell div.cell_input pre'))"
                                      ".filter(p => p.innerText.trim().length > 0).length")
                n_hidden = len(re.findall(r":tags:.*remove-(cell|input)", md.read_text()))
                if not (n_cells - n_hidden <= rendered <= n_cells):
                    problems.append(f"{url}: {rendered} code cells rendered, the source has {n_cells}")
        assert not problems, "\n".join(problems)

        # 3. Formulas are typeset by the MathJax the site serves itself (no CDN: this machine may be offline).
        browser.open(server.url + "chapters/04-modern-attention.html")
        src = browser.js("Array.from(document.scripts).map(s => s.src).filter(s => /mathjax/i.test(s))")
        assert src and all(s.startswith(server.url) for s in src), f"MathJax not served by the site: {src}"
        typeset = 0
        for _ in range(100):                     # MathJax typesets after the page has loaded
            typeset = browser.js("document.querySelectorAll('.MathJax_CHTML, .MathJax_Display, .MathJax').length")
            if typeset:
                break
            time.sleep(0.1)
        assert typeset > 0, "no formula was typeset on chapter 4"

        # 4. A chapter screenshot (the first chapter; the references page until one exists).
        chapters = existing_chapters()
        browser.open(server.url + (chapters[0] if chapters else "references") + ".html")
        browser.screenshot(ARTIFACTS / "site-chapter.png")
        for shot in ("site-intro.png", "site-chapter.png"):
            assert (ARTIFACTS / shot).stat().st_size > 10_000, f"{shot} looks blank"
    finally:
        browser.close()
        server.close()
