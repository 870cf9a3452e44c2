"""Small helpers shared by the tests (importable as `helpers`: pytest puts tests/ on sys.path)."""
import os
import signal
import socket
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.abspath(os.path.join(REPO_ROOT, "..", "shared", "data"))
HAVE_SHARED = os.path.isdir(os.path.join(SHARED_DATA, "hf-mirror"))
SKIP_NO_SHARED = "needs ../shared/data (the offline hub mirror) beside the repo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def run_under_triton_interpreter(code: str, timeout: float = 600) -> None:
    """Run `code` in a child Python with TRITON_INTERPRET=1 (Triton reads it when kernels are defined, so it must
    be set before nanochat is imported: hence a fresh process); the child must print "ok" last.

    Skips where Triton is missing, and where a GPU is present: there the compiled kernels are tested instead, and
    the interpreter's support differs between Triton releases (the one bundled with torch 2.11 on the GPU machine
    rejects a scalar load that 3.9 accepts)."""
    import pytest
    import torch
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the compiled kernels are tested instead")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": REPO_ROOT}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr[-1500:]


def run_torchrun(target, *args, env: dict | None = None, nproc: int = 2, timeout: float = 300) -> str:
    """`torchrun --nproc_per_node=nproc` on the CPU (gloo); returns the merged stdout + stderr.

    target: a module name (run with -m, from the repo root) or the path of a script. The launcher and its
    workers run in their own process group, killed whole on a timeout, so a hung collective fails the test
    instead of leaving processes behind.
    """
    is_script = str(target).endswith(".py")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           *([str(target)] if is_script else ["-m", target]), *map(str, args)]
    full_env = {**os.environ, "NANOCHAT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO_ROOT,
                **(env or {})}
    p = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        raise AssertionError(f"torchrun timed out after {timeout}s:\n{out[-3000:]}")
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}\n{out[-4000:]}"
    return out


def run_script(module: str, *args, env: dict | None = None, timeout: float = 600, check: bool = True):
    """Run `python -m module args...` from the repo root; on failure show its output in the assertion."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    full_env = {**os.environ, "NANOCHAT_NO_PROGRESS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc
