"""The chat page in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

Loads `/`, sends a message, watches the reply stream in, presses Stop on a second one and checks the server got its
worker back. Screenshots go to tests/artifacts/ (gitignored).
"""
import os
import shutil
import time

import httpx
import pytest
import torch

from helpers import REPO_ROOT, free_port
from nanochat.engine import Engine
from scripts.chat_web import Defaults, ServerThread, Worker, create_app
from test_chat_web import ChatByteTokenizer
from test_engine import tiny_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs Debian's chromium and chromedriver (/usr/bin)")
ARTIFACTS = os.path.join(REPO_ROOT, "tests", "artifacts")


class LettersOnly(torch.nn.Module):
    """The tiny GPT restricted to a-z and slowed down: it never stops early and its stream is visible."""

    def __init__(self, inner, delay):
        super().__init__()
        self.inner, self.config, self.delay = inner, inner.config, delay

    def forward(self, idx, kv_cache=None):
        time.sleep(self.delay)
        logits = self.inner(idx, kv_cache=kv_cache)
        keep = torch.zeros(logits.size(-1), dtype=torch.bool)
        keep[97:123] = True
        return logits.masked_fill(~keep, float("-inf"))


@pytest.fixture(scope="module")
def server():
    tok = ChatByteTokenizer()
    engine = Engine(LettersOnly(tiny_model(seq=256), delay=0.03), tok, fast=False)
    srv = ServerThread(create_app([Worker(0, engine, tok, "cpu")], defaults=Defaults(max_tokens=60)),
                       port=free_port()).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1000,800"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


LAST_REPLY = "const a = document.querySelectorAll('.msg.assistant'); return a.length ? a[a.length - 1].textContent : null"


def wait_for(predicate, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_streams_a_reply(server, browser):
    from selenium.webdriver.common.by import By
    browser.get(server.url + "/")
    assert browser.title == "nanochat"
    box = browser.find_element(By.ID, "input")
    box.send_keys("Hello from a browser")
    browser.find_element(By.ID, "send").click()
    # the page re-renders on every token, so read it through JavaScript rather than holding element references
    reply = lambda: browser.execute_script(LAST_REPLY) or ""
    wait_for(lambda: browser.execute_script(LAST_REPLY) is not None, what="an assistant bubble")
    lengths = set()
    deadline = time.time() + 60
    while browser.find_element(By.ID, "status").text != "ready" and time.time() < deadline:
        lengths.add(len(reply()))
        time.sleep(0.05)
    assert browser.find_element(By.ID, "status").text == "ready"
    assert len(reply()) > 20 and reply().isalpha()
    assert len(lengths) >= 3, f"the reply should grow while streaming, saw lengths {sorted(lengths)}"
    users = browser.execute_script("return [...document.querySelectorAll('.msg.user')].map(e => e.textContent)")
    assert users == ["Hello from a browser"]
    os.makedirs(ARTIFACTS, exist_ok=True)
    browser.save_screenshot(os.path.join(ARTIFACTS, "ui_chat.png"))


def test_stop_button_frees_the_worker(server, browser):
    from selenium.webdriver.common.by import By
    browser.get(server.url + "/")
    browser.find_element(By.ID, "input").send_keys("Another one")
    browser.find_element(By.ID, "send").click()
    wait_for(lambda: len(browser.execute_script(LAST_REPLY) or "") > 3, what="tokens")
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: browser.find_element(By.ID, "status").text == "stopped", what="the stopped status")
    wait_for(lambda: httpx.get(server.url + "/health").json()["available"] == 1, timeout=10,
             what="the worker to be freed")
    # new chat clears the page
    browser.find_element(By.ID, "new").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    browser.save_screenshot(os.path.join(ARTIFACTS, "ui_stopped.png"))
