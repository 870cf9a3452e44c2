"""The sandbox against hostile snippets: nothing escapes, the parent never hangs, every result is reported."""
import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

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


@pytest.fixture
def open_victim():
    """A folder and file anyone may write (so file permissions alone stop nothing, even for `nobody`)."""
    d = tempfile.mkdtemp(prefix="nanochat-victim-", dir="/tmp")
    os.chmod(d, 0o777)
    precious = os.path.join(d, "precious.txt")
    with open(precious, "w") as f:
        f.write("keep me")
    os.chmod(precious, 0o666)
    yield d, precious
    shutil.rmtree(d, ignore_errors=True)


ESCAPES = [  # each would change the victim folder without going through open()/os.remove
    "import posix\nposix.unlink({f!r})",
    "import posix, os\nposix.rename({f!r}, {f!r} + '.moved')",
    "import io\nio.FileIO({f!r}, 'w').write(b'gone')",
    "import _io\n_io.FileIO({f!r}, 'w').write(b'gone')",
    "import _io\n_io.open({f!r}, 'w').write('gone')",
    "import posix, os\nfd = posix.open({d!r} + '/new.txt', os.O_CREAT | os.O_WRONLY)\nposix.write(fd, b'x')",
    "import os\nos.mkdir({d!r} + '/newdir')",
    "import os\nfd = os.open({d!r}, os.O_RDONLY)\nos.unlink('precious.txt', dir_fd=fd)",
    "import os\nfd = os.open({d!r}, os.O_RDONLY)\nos.close(os.open('new.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
    "import pathlib\npathlib.Path({f!r}).write_text('gone')",
]


NAMES = ["posix.unlink", "posix.rename", "io.FileIO", "_io.FileIO", "_io.open", "posix.open", "os.mkdir",
         "unlink-dir_fd", "open-dir_fd", "pathlib"]


@pytest.mark.parametrize("code", ESCAPES, ids=NAMES)
def test_no_way_around_the_file_guards(code, open_victim):
    d, f = open_victim
    r = run(code.format(d=d, f=f))
    assert not r.success, r
    assert os.listdir(d) == ["precious.txt"] and open(f).read() == "keep me"


def _landlock_abi():
    import ctypes
    import platform
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return 0
    return max(0, ctypes.CDLL(None, use_errno=True).syscall(444, None, 0, 1))


@pytest.mark.skipif(_landlock_abi() < 1, reason="this kernel has no Landlock (Linux >= 5.13 with it enabled)")
@pytest.mark.parametrize("code", ESCAPES[:3] + ESCAPES[5:], ids=NAMES[:3] + NAMES[5:])
def test_the_kernel_refuses_writes_outside_even_without_the_python_guards(code, open_victim):
    d, f = open_victim
    r = run(code.format(d=d, f=f), _python_guards=False)
    assert not r.success and "Permission denied" in r.error, r
    assert os.listdir(d) == ["precious.txt"] and open(f).read() == "keep me"
    r = run("import os\nos.mkdir('sub')\nopen('sub/a', 'w').write('x')\nos.rename('sub/a', 'b')\nos.remove('b')",
            _python_guards=False)
    assert r.success, r                                    # the work dir itself stays writable


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
