"""
Fetching files from the Hugging Face hub (or any URL) the careful way.

Design choices:
- hub URLs are `$HF_ENDPOINT/datasets/<repo>/resolve/main/<path>`, so pointing `HF_ENDPOINT` at a mirror (the
  offline fixture mirror in CI, a corporate proxy) moves every download at once
- bytes go to `<dest>.tmp`, are checked against Content-Length, then renamed: a reader never sees half a file
- an interrupted `.tmp` is resumed with an HTTP Range request when the server honours it, else restarted
- a few retries with exponential backoff for flaky networks; a 404 fails at once (retrying cannot help)
- processes fetching the same file at once (every DDP rank on first use, two runs sharing a cache) take turns
  through `<dest>.lock`: one downloads, the others wait and find the file there; without this they would share
  one `.tmp` and trip over each other's rename
"""
import os
import time
from contextlib import contextmanager

try:
    import fcntl
except ImportError:       # not POSIX: no cross-process lock (concurrent fetches of one file are then unsafe)
    fcntl = None

import requests
from tqdm.auto import tqdm

from nanochat.common import get_base_dir

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 16   # small enough that a dropped connection loses little of what arrived


class DownloadError(RuntimeError):
    pass


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_url(repo: str, path: str) -> str:
    """The resolve URL of a file in a hub *dataset* repo."""
    return f"{hf_endpoint()}/datasets/{repo}/resolve/main/{path.lstrip('/')}"


def _fetch_once(url: str, dest: str, timeout: float, desc: str | None) -> None:
    tmp = dest + ".tmp"
    have = os.path.getsize(tmp) if os.path.exists(tmp) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
        if r.status_code == 416:          # our partial file is already complete or bigger: start over
            os.remove(tmp)
            raise ConnectionError("range not satisfiable; restarting")
        if r.status_code == 404:
            raise FileNotFoundError(f"404 Not Found: {url}")
        r.raise_for_status()
        if r.status_code != 206:          # server ignored the Range header: clean restart
            have = 0
        length = r.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(tmp, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                         desc=desc or os.path.basename(dest), leave=False,
                                         disable=os.environ.get("NANOCHAT_NO_PROGRESS") == "1") as bar:
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    got = os.path.getsize(tmp)
    if total is not None and got != total:
        raise ConnectionError(f"short read: got {got} of {total} bytes")
    os.replace(tmp, dest)                 # atomic on POSIX: readers see the old state or the whole file


@contextmanager
def _exclusive(lock_path: str):
    """Hold an exclusive cross-process lock (flock) on `lock_path`; the file is removed on release."""
    if fcntl is None:
        yield
        return
    while True:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)      # the previous holder removed this file as it let go: lock the one that is there now
    try:
        yield
    finally:
        os.unlink(lock_path)   # before unlocking, so a waiter on the old file sees it is stale and retries
        os.close(fd)


def download_url(url: str, dest: str, retries: int = 5, timeout: float = 30.0, backoff: float = 1.0,
                 desc: str | None = None) -> str:
    """Download `url` to `dest` unless it is already there. Returns `dest`."""
    if os.path.exists(dest):
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    with _exclusive(dest + ".lock"):
        if os.path.exists(dest):          # another process fetched it while we waited
            return dest
        return _download_with_retries(url, dest, retries, timeout, backoff, desc)


def _download_with_retries(url, dest, retries, timeout, backoff, desc) -> str:
    last = None
    for attempt in range(retries):
        try:
            _fetch_once(url, dest, timeout, desc)
            return dest
        except FileNotFoundError as e:
            raise DownloadError(f"{e} (HF_ENDPOINT={hf_endpoint()})") from None
        except (requests.RequestException, ConnectionError, OSError) as e:
            last = e
            if attempt + 1 < retries:
                time.sleep(backoff * 2 ** attempt)
    raise DownloadError(
        f"could not download {url} after {retries} tries: {last}. If this machine is offline, serve a mirror "
        f"and point HF_ENDPOINT at it (now HF_ENDPOINT={hf_endpoint()})")


def download_hub_file(repo: str, path: str, cache_dir: str | None = None, **kwargs) -> str:
    """Fetch one file of a hub dataset repo into the cache (default `<base>/hub/<repo>/<path>`); returns the path."""
    cache_dir = cache_dir or os.path.join(get_base_dir(), "hub")
    dest = os.path.join(cache_dir, repo, path)
    return download_url(hub_url(repo, path), dest, desc=f"{repo}/{path}", **kwargs)
