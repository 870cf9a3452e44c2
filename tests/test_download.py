"""The hub downloader against real HTTP servers on loopback: the mirror, and a few deliberately broken ones."""
import http.server
import os
import threading
import time

import pytest

from helpers import HAVE_SHARED, SHARED_DATA, SKIP_NO_SHARED, free_port
from nanochat import download


def test_hub_url_honours_hf_endpoint(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert download.hub_url("openai/gsm8k", "main/test.parquet") == \
        "https://huggingface.co/datasets/openai/gsm8k/resolve/main/main/test.parquet"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert download.hub_url("a/b", "/c.txt") == "http://127.0.0.1:9/datasets/a/b/resolve/main/c.txt"


@pytest.mark.skipif(not HAVE_SHARED, reason=SKIP_NO_SHARED)
def test_download_from_mirror_then_cache_hit(hub_mirror, base_dir, monkeypatch):
    path = download.download_hub_file("openai/gsm8k", "main/test-00000-of-00001.parquet")
    src = os.path.join(SHARED_DATA, "hf-mirror/datasets/openai/gsm8k/resolve/main/main/test-00000-of-00001.parquet")
    assert open(path, "rb").read() == open(src, "rb").read()
    assert path.startswith(str(base_dir))
    # A cache hit must not touch the network: break the endpoint and ask again.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert download.download_hub_file("openai/gsm8k", "main/test-00000-of-00001.parquet") == path


@pytest.mark.skipif(not HAVE_SHARED, reason=SKIP_NO_SHARED)
def test_404_fails_fast_with_clear_error(hub_mirror, base_dir):
    t0 = time.monotonic()
    with pytest.raises(download.DownloadError, match="404.*HF_ENDPOINT"):
        download.download_hub_file("openai/gsm8k", "no/such/file.parquet", retries=3, backoff=5)
    # ~0.02 s on loopback; one retry would first sleep backoff=5 s (all three: 5 + 10 s), so 2.5 s leaves a
    # wide margin for a busy machine and still catches a downloader that retries a 404
    assert time.monotonic() - t0 < 2.5
    assert not any(base_dir.rglob("*.parquet*"))


def test_connection_refused_names_hf_endpoint(base_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(download.DownloadError, match="HF_ENDPOINT=http://127.0.0.1"):
        download.download_hub_file("a/b", "c.bin", retries=2, backoff=0.01)
    assert not any(base_dir.rglob("c.bin"))


class _Server:
    """A real HTTP server whose handler we choose; runs in a thread on a free loopback port."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def _dying_handler(calls):
    """Promises the whole payload, sends half, then drops the connection; honours Range on later calls."""

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            calls.append(self.headers.get("Range"))
            start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
            body = PAYLOAD[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if len(calls) == 1:       # first call dies mid-file
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

    return H


def test_server_dies_mid_file_no_corrupt_file_then_resume(tmp_path):
    calls = []
    srv = _Server(_dying_handler(calls))
    dest = tmp_path / "out.bin"
    try:
        download.download_url(srv.url + "/f", str(dest), retries=3, backoff=0.01)
    finally:
        srv.close()
    assert dest.read_bytes() == PAYLOAD
    # resumed from what had arrived, not restarted from zero
    assert calls[0] is None and calls[1].startswith("bytes=") and int(calls[1][6:-1]) > 0
    assert not (tmp_path / "out.bin.tmp").exists()


def test_server_dies_every_time_leaves_no_file(tmp_path):
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.connection.shutdown(2)

    srv = _Server(H)
    dest = tmp_path / "out.bin"
    try:
        with pytest.raises(download.DownloadError, match="short read|after 2 tries"):
            download.download_url(srv.url + "/f", str(dest), retries=2, backoff=0.01)
    finally:
        srv.close()
    assert not dest.exists()   # the reader-visible path never holds a partial file


def test_concurrent_downloads_of_one_file_take_turns(tmp_path):
    """Every DDP rank fetches a missing shard on first use: one download, the others find the file."""
    calls = []

    class Slow(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            calls.append(1)
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            for i in range(0, len(PAYLOAD), 1 << 16):      # slow enough that the fetches would overlap
                self.wfile.write(PAYLOAD[i:i + (1 << 16)])
                time.sleep(0.01)

    srv = _Server(Slow)
    dest = tmp_path / "shard.parquet"
    results, errors = [], []

    def fetch():
        try:
            results.append(download.download_url(srv.url + "/f", str(dest), retries=1))
        except Exception as e:                               # collected: a thread's exception would be lost
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        srv.close()
    assert not errors and results == [str(dest)] * 4
    assert dest.read_bytes() == PAYLOAD and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.parquet"]     # no .tmp or .lock left behind
