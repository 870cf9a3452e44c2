"""
Run untrusted, model-written Python in a separate, fenced-off process (HumanEval grading, the calculator tool).

Design choices:
- a fresh interpreter (`python -I`) per snippet, in its own session/process group, so one `killpg` ends it and
  anything it spawned; the parent waits with a wall-clock timeout and never reads an unbounded pipe
- stdout/stderr go to files capped by RLIMIT_FSIZE (printing 100 MB kills the child, not the parent's memory)
- resource limits: address space (default 256 MB), CPU seconds, file size, no core dumps, process count
- environment scrubbed (no secrets, no proxies), HOME and cwd a fresh temp dir, stdin closed
- as root, the child drops to `nobody` before running the snippet (so it cannot touch root's files, and
  RLIMIT_NPROC applies); where the kernel allows it, it also enters a new user+network namespace: no network
  at all, not even loopback
- where the kernel has Landlock (Linux >= 5.13), the child restricts itself: the kernel refuses to create, write,
  truncate, rename or delete anything outside its work dir, however the request is made, and (newer kernels) to
  bind or connect TCP sockets or signal processes outside the sandbox
- then, inside the child, destructive functions are replaced by stubs (os.system, os.fork, os.kill, os.remove,
  shutil.rmtree, subprocess.Popen, socket.socket, ...), file writes outside the work dir are refused (os, posix,
  io, _io, FileIO) and ctypes is made unimportable

This is defence in depth for grading benchmarks, not a security boundary against a determined attacker;
for that, run the whole evaluation in a container or VM.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

MEMORY_EXIT = 86       # the child's exit code when the snippet raised MemoryError
ERROR_EXIT = 1


@dataclass
class ExecutionResult:
    success: bool
    stdout: str
    stderr: str
    error: str | None = None
    timeout: bool = False
    memory_exceeded: bool = False

    def __repr__(self):
        bits = [f"success={self.success}"]
        if self.timeout:
            bits.append("timeout=True")
        if self.memory_exceeded:
            bits.append("memory_exceeded=True")
        if self.error:
            bits.append(f"error={self.error!r}")
        if self.stdout:
            bits.append(f"stdout={self.stdout[:200]!r}")
        if self.stderr:
            bits.append(f"stderr={self.stderr[-200:]!r}")
        return f"ExecutionResult({', '.join(bits)})"


# The child's bootstrap: limits, privileges, namespace, guards, then the snippet. Runs with `python -I -c`.
_RUNNER = r'''
import json, os, sys, resource, signal
cfg = json.loads(sys.argv[1])
os.chdir(cfg["workdir"])
def _others_can_read(path):
    # every ancestor directory must be searchable by "others", the file/dir itself readable
    path = os.path.realpath(path)
    while True:
        st = os.stat(path)
        if not st.st_mode & 0o005:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent
# never run model code as root, if `nobody` can still read the interpreter's standard library
if os.geteuid() == 0 and all(_others_can_read(p) for p in (os.__file__, sys.executable, cfg["program"])):
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:                                        # a private network namespace: no interfaces but a down loopback
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
    net_isolated = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
except Exception:
    net_isolated = False
def _landlock(workdir):
    # Linux >= 5.13: the kernel itself refuses to create, write, truncate, rename or delete anything outside the
    # work dir (whatever Python function asks), and from ABI 4 on to bind or connect TCP sockets, from ABI 6 on
    # to signal processes outside the sandbox. Unprivileged; nothing happens where the kernel lacks it.
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446      # the syscall numbers on x86-64 and arm64
    import platform
    if platform.machine() not in ("x86_64", "aarch64"):
        return
    abi = libc.syscall(CREATE_RULESET, None, 0, 1)                # flag 1: ask for the ABI version (-1: none)
    if abi < 1:
        return
    fs = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))    # write file, remove dir/file, make anything
    fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)   # refer (cross-dir rename), truncate
    net = 0b11 if abi >= 4 else 0                                  # bind, connect TCP: no rule allows any
    scoped = 0b11 if abi >= 6 else 0                               # abstract unix sockets, signals
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = libc.syscall(CREATE_RULESET, ctypes.byref(attr), size, 0)
    if fd < 0:
        return
    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
    dir_fd = os.open(workdir, os.O_PATH | os.O_CLOEXEC)
    rule = PathBeneath(fs, dir_fd)
    if libc.syscall(ADD_RULE, fd, 1, ctypes.byref(rule), 0) == 0:        # 1: a rule for a directory tree
        if libc.prctl(38, 1, 0, 0, 0) == 0:                              # PR_SET_NO_NEW_PRIVS, required
            libc.syscall(RESTRICT_SELF, fd, 0)
    os.close(dir_fd); os.close(fd)
try:
    _landlock(cfg["workdir"])
except Exception:                           # the Python guards below still apply
    pass
mem = cfg["max_memory"]
if mem:
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
cpu = cfg["max_cpu"]
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["max_output"], cfg["max_output"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_procs"], cfg["max_procs"]))
except (ValueError, OSError):
    pass

def _guard():
    import builtins, shutil, subprocess, socket, _socket, faulthandler, posix
    faulthandler.disable()
    def disabled(name):
        def stub(*a, **k):
            raise PermissionError(f"{name} is disabled in the nanochat sandbox")
        return stub
    for name in ("system", "popen", "fork", "forkpty", "vfork", "kill", "killpg",
                 "removedirs", "renames", "truncate", "ftruncate", "chmod", "fchmod", "lchmod",
                 "chown", "fchown", "lchown", "chroot", "chdir", "fchdir", "setuid", "setgid", "seteuid",
                 "setegid", "setreuid", "setregid", "setresuid", "setresgid", "setsid", "setpgid", "putenv",
                 "unsetenv", "link", "symlink", "execv", "execve", "execl", "execle", "execlp", "execlpe",
                 "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                 "spawnvpe", "posix_spawn", "posix_spawnp", "plock", "mkfifo", "mknod"):
        for mod in (os, posix):             # `import posix; posix.fork()` must not get around the stub
            if hasattr(mod, name):
                setattr(mod, name, disabled(f"os.{name}"))
    for name in ("move", "chown", "copytree"):
        setattr(shutil, name, disabled(f"shutil.{name}"))
    for name in ("Popen", "call", "check_call", "check_output", "run", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, disabled(f"subprocess.{name}"))
    for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        setattr(socket, name, disabled(f"socket.{name}"))
        if hasattr(_socket, name):
            setattr(_socket, name, disabled(f"_socket.{name}"))
    builtins.exit = builtins.quit = disabled("exit")
    # files: write only inside the work dir; read no other process's /proc entries
    import io
    workdir, own_proc = os.path.realpath(cfg["workdir"]), f"/proc/{os.getpid()}/"
    real_open, real_os_open = io.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def no_dir_fd(kwargs):                  # a path relative to an open directory would dodge check()'s test
        if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
            raise PermissionError("writing relative to a directory fd is disabled in the nanochat sandbox")
    def check(file, writing):
        if isinstance(file, int):
            return
        path = os.path.realpath(os.fsdecode(file))
        if path.startswith("/proc/") and not path.startswith(own_proc):
            raise PermissionError(f"reading {path} is disabled in the nanochat sandbox")
        if writing and path != workdir and not path.startswith(workdir + os.sep):
            raise PermissionError(f"writing {path} (outside the sandbox's work dir) is disabled")
    def safe_open(file, mode="r", *args, **kwargs):
        check(file, any(c in mode for c in "wax+"))
        return real_open(file, mode, *args, **kwargs)
    def safe_os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            no_dir_fd(kwargs)
        check(path, bool(flags & write_flags))
        return real_os_open(path, flags, *args, **kwargs)
    builtins.open = io.open = safe_open
    os.open = safe_os_open
    def inside_only(fn, name):              # deleting/renaming is fine inside the work dir (tempfile needs it)
        def wrapper(*paths, **kwargs):
            no_dir_fd(kwargs)
            for p in paths[:2]:
                if not isinstance(p, int):
                    check(p, True)
            return fn(*paths, **kwargs)
        wrapper.__name__ = name
        return wrapper
    for name in ("remove", "unlink", "rmdir", "rename", "replace", "mkdir"):
        for mod in (os, posix):             # os re-exports posix's functions: guard both names
            setattr(mod, name, inside_only(getattr(mod, name), name))
    shutil.rmtree = inside_only(shutil.rmtree, "rmtree")
    posix.open = safe_os_open
    import _io
    _io.open = safe_open
    class SafeFileIO(_io.FileIO):           # io.FileIO opens files without going through open()
        def __init__(self, file, mode="r", *args, **kwargs):
            check(file, any(c in mode for c in "wax+"))
            super().__init__(file, mode, *args, **kwargs)
    io.FileIO = _io.FileIO = SafeFileIO
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # writing past the output cap ends the child
    for mod in ("ctypes", "_ctypes", "resource", "_posixsubprocess", "multiprocessing", "pty"):
        sys.modules[mod] = None             # `import ctypes` now raises ImportError

with open(cfg["program"], encoding="utf-8") as f:
    source = f.read()
if cfg["python_guards"]:
    _guard()
try:
    code = compile(source, "<program>", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except MemoryError:
    try:
        sys.stderr.write("MemoryError\n"); sys.stderr.flush()
    finally:
        os._exit(%(MEMORY_EXIT)d)
except BaseException as e:
    import traceback
    try:
        traceback.print_exc()
        sys.stderr.write(f"__nanochat_error__ {type(e).__name__}: {str(e)[:500]}\n")
        sys.stdout.flush(); sys.stderr.flush()
    finally:
        os._exit(%(ERROR_EXIT)d)
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
''' % {"MEMORY_EXIT": MEMORY_EXIT, "ERROR_EXIT": ERROR_EXIT}


def _read_capped(path, limit):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_error_line(stderr):
    for line in reversed(stderr.splitlines()):
        if line.startswith("__nanochat_error__ "):
            return line[len("__nanochat_error__ "):]
    return None


def execute_code(code: str, timeout: float = 5.0, maximum_memory_bytes: int | None = 256 * 1024 * 1024,
                 max_output_bytes: int = 1 << 20, max_procs: int = 64, _python_guards: bool = True) -> ExecutionResult:
    """Run `code` in a sandboxed child python; returns an ExecutionResult. Never raises for bad code.
    (`_python_guards=False` leaves out the in-process stubs, so tests can check the kernel's layers alone.)"""
    root = tempfile.mkdtemp(prefix="nanochat-exec-")
    workdir = os.path.join(root, "work")
    os.makedirs(workdir)
    program = os.path.join(root, "program.py")
    with open(program, "w", encoding="utf-8") as f:
        f.write(code)
    if os.geteuid() == 0:                   # the child runs as nobody: let it use its own temp dir
        os.chmod(root, 0o755)
        os.chmod(program, 0o644)
        os.chmod(workdir, 0o777)
    out_path, err_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
    cfg = {"workdir": workdir, "program": program, "max_memory": maximum_memory_bytes,
           "max_cpu": max(1, int(timeout) + 1), "max_output": max_output_bytes, "max_procs": max_procs,
           "python_guards": _python_guards}
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    timed_out = False
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", _RUNNER, json.dumps(cfg)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir, env=env,
                                    start_new_session=True, close_fds=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:                        # end the whole group: the child and anything it managed to spawn
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        rc = proc.returncode
        stdout = _read_capped(out_path, max_output_bytes)
        stderr = _read_capped(err_path, max_output_bytes)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    if timed_out:
        return ExecutionResult(False, stdout, stderr, error=f"timed out after {timeout} s", timeout=True)
    if rc == 0:
        return ExecutionResult(True, stdout, stderr)
    if rc == MEMORY_EXIT:
        return ExecutionResult(False, stdout, stderr, error="memory limit exceeded", memory_exceeded=True)
    if rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        reason = {"SIGXFSZ": f"output exceeded {max_output_bytes} bytes",
                  "SIGXCPU": "CPU time limit exceeded", "SIGSEGV": "crashed (segmentation fault)"}.get(sig)
        return ExecutionResult(False, stdout, stderr, error=reason or f"killed by {sig}",
                               timeout=(sig == "SIGXCPU"))
    error = _last_error_line(stderr) or f"exit code {rc}"
    # MemoryError raised from inside the runner's own machinery, or a failed allocation reported as such
    memory = "MemoryError" in error
    return ExecutionResult(False, stdout, stderr, error=error, memory_exceeded=memory)
