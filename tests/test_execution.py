"""The sandbox against hostile snippets: nothing escapes, the parent never hangs, every result is reported."""
import os
import socket
import threading
import time

from nanochat.execution import ExecutionResult, execute_code


def run(code, **kw):
    t0 = time.time()
    r = execute_code(code, **kw)
    assert time.time() - t0 < 15, "the parent must never hang"
    assert isinstance(r, ExecutionResult)
    return r


def test_plain_code_runs():
    r = run("import math\nprint(math.factorial(5))")
    assert r.success and r.stdout == "120\n" and r.error is None


def test_exception_is_reported():
    r = run("raise ValueError('boom')")
    assert not r.success and "ValueError: boom" in r.error and not r.timeout


def test_infinite_loop_times_out():
    t0 = time.time()
    r = run("while True:\n    pass", timeout=1.0)
    assert r.timeout and not r.success
    assert time.time() - t0 < 5


def test_sleep_times_out():
    r = run("import time\ntime.sleep(60)", timeout=0.5)
    assert r.timeout


def test_fork_bomb_is_stopped():
    r = run("import os\nwhile True:\n    os.fork()", timeout=2.0)
    assert not r.success and "disabled" in r.error
    r = run("import subprocess\nsubprocess.Popen(['sleep', '100'])", timeout=2.0)
    assert not r.success and "disabled" in r.error
    r = run("import multiprocessing", timeout=2.0)
    assert not r.success
    r = run("import posix\nwhile True:\n    posix.fork()", timeout=2.0)   # the module behind os
    assert not r.success and "disabled" in r.error


def test_one_gigabyte_allocation_is_refused():
    r = run("x = bytearray(1 << 30)\nprint('allocated')", timeout=3.0)
    assert r.memory_exceeded and not r.success and "allocated" not in r.stdout
    r = run("x = [0] * (10 ** 9)", timeout=3.0)
    assert r.memory_exceeded


def test_os_system_is_disabled():
    r = run("import os\nos.system('echo pwned')")
    assert not r.success and "pwned" not in r.stdout and "disabled" in r.error


def test_rmtree_outside_tempdir_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    r = run(f"import shutil\nshutil.rmtree({str(victim)!r})")
    assert not r.success
    r = run(f"import os\nos.remove({str(victim / 'precious.txt')!r})")
    assert not r.success
    r = run(f"open({str(victim / 'precious.txt')!r}, 'w').write('gone')")
    assert not r.success
    assert (victim / "precious.txt").read_text() == "keep me"


def test_work_dir_is_usable_and_fresh():
    r = run("import os, tempfile\nopen('a.txt', 'w').write('hi')\nprint(open('a.txt').read(), os.listdir('.'))\n"
            "with tempfile.NamedTemporaryFile() as f: pass")
    assert r.success and r.stdout == "hi ['a.txt']\n"
    r2 = run("import os\nprint(os.listdir('.'))")
    assert r2.stdout == "[]\n"                           # each run starts in an empty directory


def test_environment_secrets_are_scrubbed(monkeypatch):
    monkeypatch.setenv("NANOCHAT_TEST_SECRET", "hunter2")
    r = run("import os\nprint(dict(os.environ))")
    assert r.success and "hunter2" not in r.stdout and "NANOCHAT_TEST_SECRET" not in r.stdout
    r = run("import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())")
    assert not r.success and "hunter2" not in r.stdout


def test_network_is_blocked():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(3)

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        r = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert not r.success
        r = run(f"import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))")
        assert not r.success
        th.join(timeout=4)
        assert accepted == [], "a snippet reached a socket on the host"
    finally:
        server.close()


def test_deep_recursion():
    r = run("def f(n):\n    return f(n + 1)\nf(0)")
    assert not r.success and "RecursionError" in r.error
    r = run("import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1)\nf(0)", timeout=2.0)
    assert not r.success                                 # a crash or a timeout, but the parent is fine


def test_printing_100mb_is_capped():
    r = run("import sys\nsys.stdout.write('x' * (100 * 1024 * 1024))", timeout=5.0, max_output_bytes=1 << 20)
    assert not r.success and "output" in r.error
    assert len(r.stdout) <= 1 << 20


def test_stdin_is_closed():
    r = run("print(repr(input()))", timeout=2.0)
    assert not r.success and "EOFError" in r.error


def test_exit_and_kill_are_disabled():
    r = run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert not r.success and "disabled" in r.error
    assert os.getpid() > 0                               # we are still here
