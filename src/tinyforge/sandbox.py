"""Execute stage: run untrusted, model-written Python with its tests, isolated, and say whether they passed.

    >>> from tinyforge.sandbox import run_tests
    >>> run_tests("def f(x):\\n    return x + 1\\n", "assert f(1) == 2").status
    'passed'

Layers (each one on where the machine allows it; see docs/sandbox.md):

* bubblewrap (`bwrap`): new user, PID, network, IPC, UTS and mount namespaces; every capability dropped;
  the file system read-only except a size-limited scratch tmpfs; only the Python installation and the
  system libraries are visible (not $HOME, not the repository's data); no network, not even the host's
  loopback; a fresh /proc that shows only the sandbox's own processes; dies with the parent.
* cgroups (when writable, e.g. as root): a pids and a memory limit per worker, so a fork bomb or a memory
  bomb cannot reach the host even where RLIMIT_NPROC does not apply (root). On cgroup v2 with the cpu
  controller on, a worker's cgroup also gets its jobs' nice value as ``cpu.weight.nice``: there a nice
  value only orders processes inside one cgroup, and a worker's cgroup would otherwise weigh as much as
  the caller's whole cgroup.
* rlimits per job: address space, file size, open files, CPU time, no core files.
* a scrubbed environment and its own empty working directory per job.

Speed comes from a warm design: each worker is one sandbox holding a pre-started interpreter (a zygote,
`_sandbox_child.py`) that forks a fresh child per job; after each job every process left in the sandbox is
killed and the scratch folder wiped.

Statuses (`Verdict.status`): ``passed``; ``failed`` (an assertion failed); ``error`` (another exception;
`detail` holds its type and a trimmed message); ``timeout``; ``memory`` (out of memory); ``crashed`` (the
process died or exited before the tests finished: segfault, kill, `sys.exit`/`os._exit`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyforge import plaindata

STATUSES = ("passed", "failed", "error", "timeout", "memory", "crashed")
_CHILD = Path(__file__).with_name("_sandbox_child.py")
_GRACE = 10.0  # seconds the host waits beyond a job's own timeout before it kills a worker


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job (and of the worker sandbox that runs it)."""

    memory_mb: int = 4096  # address space of a job (RLIMIT_AS) and memory cgroup of a worker
    max_procs: int = 64  # processes per worker (pids cgroup; RLIMIT_NPROC where that applies)
    file_size_mb: int = 64  # largest file a job may write (RLIMIT_FSIZE)
    scratch_mb: int = 256  # size of the scratch tmpfs of a worker
    output_kb: int = 16  # stdout+stderr kept per job; the rest is drained and dropped
    # CPU priority of a job (0-19): higher yields the CPU to other work, e.g. a model generating (the job's
    # nice value; on cgroup v2 with the cpu controller on, also its worker cgroup's cpu.weight.nice)
    nice: int = 0


@dataclass(frozen=True)
class Verdict:
    """The outcome of one job. `passed` is True only for status "passed"."""

    status: str
    detail: str = ""
    duration: float = 0.0
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class IOResult:
    """Outputs of an entry point on a list of inputs. `outputs[i]` is the decoded value or None."""

    status: str  # "done" when every input ran (or the first one that failed did); else a Verdict status
    detail: str
    statuses: list[str]  # per input reached: "ok", "failed", "error", "timeout", "memory"
    outputs: list[Any]
    times: list[float]
    details: list[str] = field(default_factory=list)  # per input: the exception, where one was raised
    duration: float = 0.0


@dataclass(frozen=True)
class TestJob:
    """Run `solution`, then `tests` (code that raises when a test fails) in the same namespace."""

    __test__ = False  # not a pytest class

    solution: str
    tests: str
    timeout: float = 10.0
    guard: bool = True  # rewrite comparisons in `tests` so that only plain data compares

    def payload(self) -> dict:
        return {"kind": "tests", "solution": self.solution, "tests": self.tests, "guard": self.guard}


@dataclass(frozen=True)
class IOJob:
    """Call `entry_point` of `solution` on each input (a list of positional arguments) with a time limit each."""

    solution: str
    entry_point: str
    inputs: Sequence[Sequence[Any]]
    time_limits: Sequence[float]
    timeout: float = 60.0
    stop_on_error: bool = True
    not_none: bool = False  # return `out is not None` instead of out (EvalPlus' regex-match tasks)
    digest_over: int = 0  # outputs whose JSON is longer come back as a `Digest` (0: always whole) ...
    full: Sequence[int] = ()  # ... except at these input indices (and float outputs, always whole)
    # Trusted modules (named by tinyforge, never by model text) the zygote imports once before it forks,
    # so that every job of a worker starts with them loaded: e.g. the math grader's sympy stack.
    preload: Sequence[str] = ()

    def payload(self) -> dict:
        return {
            "kind": "io",
            "solution": self.solution,
            "entry_point": self.entry_point,
            "inputs": [plaindata.encode(list(x)) for x in self.inputs],
            "time_limits": list(self.time_limits),
            "stop_on_error": self.stop_on_error,
            "not_none": self.not_none,
            "digest_over": self.digest_over,
            "full": list(self.full),
            "preload": list(self.preload),
        }


@dataclass(frozen=True)
class Digest:
    """Stands for a large output that stayed in the sandbox: `plaindata.digest` of it."""

    sha256: str


Job = TestJob | IOJob


# ---------------------------------------------------------------------------------------------------
# What isolation this machine offers, probed once.

_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"tinyforge sandbox: {msg}", RuntimeWarning, stacklevel=3)


def _import_paths() -> list[str]:
    """The interpreter's own import path (not this process's, which test runners and apps extend)."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import sys, json; print(json.dumps(sys.path))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout) if out.returncode == 0 else []


_SANDBOX_OWN = ("/", "/tmp", "/dev", "/dev/shm", "/proc")


def _readable_roots() -> list[str]:
    """Folders the sandboxed interpreter must see: the Python installation(s) and its import paths."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            paths.add(sysconfig.get_paths()[key])
    paths.update(p for p in _import_paths() if p and os.path.isdir(p))
    paths.add(str(_CHILD.parent))
    system = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
    out = [p for p in system if os.path.exists(p)]
    for p in sorted(paths, key=len):
        rp = os.path.realpath(p)
        if rp in _SANDBOX_OWN:  # never the host's whole /tmp or /dev over the sandbox's own
            continue
        if not any(rp == q or rp.startswith(q.rstrip("/") + "/") for q in out):
            out.append(rp)
    return out


_ETC = (
    "localtime",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "fonts",
    "mime.types",
    "nsswitch.conf",
    "passwd",
    "group",
    "ssl",
    "matplotlibrc",
)


@functools.lru_cache(maxsize=1)
def _bind_args() -> tuple[str, ...]:
    args: list[str] = []
    for p in _readable_roots():
        if os.path.islink(p) and p.count("/") == 1:  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(p), p]
        else:
            args += ["--ro-bind", p, p]
    for name in _ETC:
        p = f"/etc/{name}"
        if os.path.exists(p):
            args += ["--ro-bind", p, p]
    return tuple(args)


def _bwrap_command(python: str, limits: Limits) -> list[str]:
    cmd = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--setenv",
        "MPLBACKEND",
        "Agg",
        "--setenv",
        "OMP_NUM_THREADS",
        "1",
        "--setenv",
        "OPENBLAS_NUM_THREADS",
        "1",
        "--setenv",
        "TINYFORGE_SCRATCH",
        "/tmp",
    ]
    # The scratch /tmp first, the read-only folders after: a Python installation or tinyforge itself under
    # /tmp (a checkout or venv there) is bound on top of the scratch instead of hidden under it.
    cmd += [
        "--size",
        str(limits.scratch_mb << 20),
        "--tmpfs",
        "/tmp",
        *_bind_args(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(16 << 20),
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
        python,
        "-I",
        str(_CHILD),
        "--pidns",
    ]
    return cmd


@dataclass
class _Caps:
    bwrap: bool
    cgroup_root: dict[str, Path] = field(default_factory=dict)  # controller -> folder we may create in


_caps: _Caps | None = None
_caps_lock = threading.Lock()


def _joins(cgroup: Path) -> bool:
    """Whether a process of ours can move into ``cgroup`` (a throwaway shell tries; the folder is left empty)."""
    try:
        moved = subprocess.run(
            ["/bin/sh", "-c", 'echo $$ > "$1"', "sh", str(cgroup / "cgroup.procs")],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return moved.returncode == 0


def _cgroup_roots() -> dict[str, Path]:
    """Writable cgroup folders for the pids and memory controllers (v1 or v2; on v2 one folder for both) that
    a process of ours can join, if any."""
    roots: dict[str, Path] = {}
    base = Path("/sys/fs/cgroup")
    v2 = base / "cgroup.controllers"
    candidates: dict[str, Path] = {}
    if v2.exists() and not (base / "pids").exists():
        ctrl = v2.read_text().split()
        for c in ("pids", "memory"):
            if c in ctrl:
                candidates[c] = base
    else:
        for c in ("pids", "memory"):
            if (base / c).is_dir():
                candidates[c] = base / c
    for c, root in candidates.items():
        d = root / f"tinyforge-probe-{os.getpid()}-{c}"
        try:
            d.mkdir()
        except OSError:
            continue
        try:
            ok = (d / ("pids.max" if c == "pids" else "memory.limit_in_bytes")).exists() or (
                d / "memory.max"
            ).exists()
            ok = ok and _joins(d)
        finally:
            _Cgroup.remove(d, time.monotonic() + 1.0)
        if ok:
            roots[c] = root
    return roots


def capabilities() -> _Caps:
    """Probe once what isolation is available (bubblewrap that starts; writable cgroups)."""
    global _caps
    with _caps_lock:
        if _caps is None:
            bw = False
            if shutil.which("bwrap"):
                probe = subprocess.run(
                    [
                        "bwrap",
                        "--unshare-all",
                        "--cap-drop",
                        "ALL",
                        "--ro-bind",
                        "/",
                        "/",
                        "--proc",
                        "/proc",
                        "--dev",
                        "/dev",
                        "true",
                    ],
                    capture_output=True,
                    timeout=30,
                )
                bw = probe.returncode == 0
                if not bw:
                    _warn_once(
                        "bwrap",
                        "bubblewrap is installed but cannot create namespaces here "
                        f"({probe.stderr.decode(errors='replace').strip()[:200]}); running WITHOUT "
                        "namespace isolation (no network/filesystem/PID isolation), rlimits only.",
                    )
            else:
                _warn_once(
                    "bwrap",
                    "bubblewrap (`bwrap`, Debian package `bubblewrap`) not found; running WITHOUT "
                    "namespace isolation (no network/filesystem/PID isolation), rlimits only. "
                    "Install it: apt-get install bubblewrap",
                )
            _caps = _Caps(bwrap=bw, cgroup_root=_cgroup_roots())
            if os.geteuid() == 0 and "pids" not in _caps.cgroup_root:
                _warn_once(
                    "nproc",
                    "running as root without a writable pids cgroup: the process-count limit "
                    "(fork bombs) cannot be enforced.",
                )
        return _caps


class _Cgroup:
    """One pids (+ memory) cgroup per worker (v1: a folder in each controller's hierarchy; v2: one folder
    for both); removed on close."""

    _ids = itertools.count()

    def __init__(self, roots: dict[str, Path], limits: Limits) -> None:
        self.dirs: list[Path] = []
        name = f"tinyforge-{os.getpid()}-{next(self._ids)}"
        controllers: dict[Path, list[str]] = {}  # cgroup v2 has one hierarchy for every controller
        for ctrl, root in roots.items():
            controllers.setdefault(root, []).append(ctrl)
        for root, ctrls in controllers.items():
            d = root / name
            try:
                d.mkdir()
            except OSError:
                continue
            try:
                for ctrl in ctrls:
                    if ctrl == "pids":
                        (d / "pids.max").write_text(str(limits.max_procs + 8))  # +zygote, init, bwrap
                    else:
                        mem = str((limits.memory_mb + 512) << 20)
                        v2 = (d / "memory.max").exists()
                        (d / "memory.max" if v2 else d / "memory.limit_in_bytes").write_text(mem)
            except OSError:
                self.remove(d, time.monotonic() + 1.0)
                continue
            self.dirs.append(d)
            if limits.nice and (d / "cpu.weight.nice").exists():
                # v2 with the cpu controller on: a nice value orders processes only inside their cgroup,
                # and this one would weigh as much as the caller's whole cgroup; the cgroup takes the nice
                # value instead (nice 10: weight 11 of 100). Not lower: a job starved of CPU beside a busy
                # caller could run into its wall-clock time limit and fail a program that is right.
                with contextlib.suppress(OSError):
                    (d / "cpu.weight.nice").write_text(str(limits.nice))

    def wrap(self, cmd: list[str]) -> list[str]:
        """Prefix `cmd` so that it enters the cgroups before it starts anything (or does not start)."""
        if not self.dirs:
            return cmd
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        script = (
            'for f in "$@"; do case "$f" in --) break;; esac; echo $$ > "$f" || exit 1; done; '
            'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"'
        )
        return ["/bin/sh", "-c", script, "sh", *procs, "--", *cmd]

    @staticmethod
    def remove(d: Path, deadline: float) -> None:
        """Remove one cgroup folder; it stays busy for a moment after its processes were killed, so retry
        until ``deadline`` (``time.monotonic()``)."""
        while True:
            try:
                d.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    log.debug("cgroup %s still busy; left behind", d)
                    return
                time.sleep(0.02)

    def close(self, deadline: float | None = None) -> None:
        """Remove the cgroup folders, retrying until ``deadline`` (default: one second from now)."""
        deadline = time.monotonic() + 1.0 if deadline is None else deadline
        for d in self.dirs:
            self.remove(d, deadline)


class _Worker:
    """One sandbox with a warm zygote in it; runs one job at a time."""

    def __init__(self, limits: Limits, namespaces: bool) -> None:
        self.limits = limits
        caps = capabilities()
        self.cgroup = _Cgroup(caps.cgroup_root, limits)
        python = os.path.realpath(sys.executable) if namespaces else sys.executable
        if namespaces:
            cmd = _bwrap_command(sys.executable, limits)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        else:
            cmd = [python, "-I", str(_CHILD)]
            scratch = tempfile.mkdtemp(prefix="tinyforge-sandbox-")
            self._scratch = scratch
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": scratch,
                "LANG": "C.UTF-8",
                "TINYFORGE_SCRATCH": scratch,
                "MPLBACKEND": "Agg",
                "OMP_NUM_THREADS": "1",
            }
        self.proc = subprocess.Popen(
            self.cgroup.wrap(cmd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        self._buf = b""
        self.nproc = _nproc_limit(limits.max_procs)

    def wait_ready(self) -> None:
        """Wait for the zygote's hello (in the caller's thread, so that workers start in parallel)."""
        ready = self._read_line(60.0)
        if ready is None or not ready.get("ready"):
            self.close()
            raise RuntimeError(
                "tinyforge sandbox: the sandbox worker did not start (is the Python "
                "installation readable and bubblewrap working?)"
            )

    def _read_line(self, timeout: float) -> dict | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        chunks = [self._buf]
        while b"\n" not in chunks[-1]:  # answers can be 100+ MB: no quadratic re-scans or copies
            left = deadline - time.monotonic()
            if left <= 0:
                self._buf = b"".join(chunks)
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return None
                chunks.append(chunk)
        line, _, self._buf = b"".join(chunks).partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            return None

    def run(self, payload: dict, timeout: float) -> dict | None:
        """The zygote's answer, or None when the worker died or hung (the caller restarts it)."""
        lim = self.limits
        payload = {
            **payload,
            "timeout": timeout,
            "memory_mb": lim.memory_mb,
            "file_size_mb": lim.file_size_mb,
            "output_limit": lim.output_kb << 10,
            "max_procs": self.nproc,
            "nice": lim.nice,
        }
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(payload) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        return self._read_line(timeout + _GRACE)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, 9)

    def close(self, deadline: float | None = None) -> None:
        self.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        for s in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                s.close()  # type: ignore[union-attr]
        self.cgroup.close(deadline)
        if getattr(self, "_scratch", None):
            shutil.rmtree(self._scratch, ignore_errors=True)


def _nproc_limit(max_procs: int) -> int:
    """RLIMIT_NPROC for a job: counts every process of the real uid, so add what the user already runs.

    Root is exempt from RLIMIT_NPROC (the pids cgroup does that job there): 0 means "not set"."""
    if os.geteuid() == 0:
        return 0
    uid = os.getuid()
    mine = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{d}").st_uid == uid:
                    mine += 1
    return mine + max_procs


class Pool:
    """What every sandbox pool offers on top of its ``run`` and ``submit``: typed helpers and ordered maps."""

    workers: int

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def run(self, job: Job) -> Verdict | IOResult:
        raise NotImplementedError

    def submit(self, job: Job) -> Future[Verdict | IOResult]:
        raise NotImplementedError

    def run_tests(self, solution: str, tests: str, timeout: float = 10.0, *, guard: bool = True) -> Verdict:
        v = self.run(TestJob(solution, tests, timeout, guard))
        assert isinstance(v, Verdict)
        return v

    def run_io(
        self,
        solution: str,
        entry_point: str,
        inputs: Sequence[Sequence[Any]],
        time_limits: Sequence[float],
        timeout: float = 60.0,
        stop_on_error: bool = True,
    ) -> IOResult:
        r = self.run(IOJob(solution, entry_point, inputs, time_limits, timeout, stop_on_error))
        assert isinstance(r, IOResult)
        return r

    def imap(self, jobs: Iterable[Job]) -> Iterator[Verdict | IOResult]:
        """Results in input order, computed on all workers; a generator, so callers can show progress."""
        window: collections.deque = collections.deque()
        for job in jobs:
            window.append(self.submit(job))
            if len(window) >= 4 * self.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def map(
        self, jobs: Iterable[Job], progress: Callable[[int], None] | None = None
    ) -> list[Verdict | IOResult]:
        out = []
        for r in self.imap(jobs):
            out.append(r)
            if progress:
                progress(1)
        return out


class SandboxPool(Pool):
    """A pool of warm sandboxes, one job per worker at a time; thread-safe.

    >>> with SandboxPool(workers=2) as pool:
    ...     verdicts = pool.map([TestJob("x = 1", "assert x == 1")])
    """

    def __init__(
        self, workers: int | None = None, limits: Limits | None = None, *, namespaces: bool | None = None
    ) -> None:
        """`namespaces`: use bubblewrap (default: where it works); False runs with the other layers only."""
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.limits = limits or Limits()
        available = capabilities().bwrap
        if namespaces and not available:
            raise RuntimeError("tinyforge sandbox: namespaces requested but bubblewrap is not usable here")
        self.namespaces = available if namespaces is None else namespaces
        if not self.namespaces and available:
            _warn_once(
                "no-ns",
                "namespace isolation turned off by request: no network, file system or PID "
                "isolation; rlimits, cgroups and a scrubbed environment only.",
            )
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(self.workers)
        self._closed = False
        # Workers start from one long-lived thread: bubblewrap's --die-with-parent (PR_SET_PDEATHSIG) fires
        # when the *thread* that started it exits, so a worker started from a short-lived thread would die
        # with that thread.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="tinyforge-sandbox-spawn")
        self._runner = ThreadPoolExecutor(self.workers, thread_name_prefix="tinyforge-sandbox")

    def _acquire(self) -> _Worker:
        self._slots.acquire()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            w = self._spawner.submit(_Worker, self.limits, self.namespaces).result()
            w.wait_ready()
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._all.append(w)
        return w

    def _release(self, w: _Worker, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(w)
            else:
                self._all.remove(w)
                w.close()
        self._slots.release()

    def _run(self, job: Job) -> dict:
        w = self._acquire()
        res = None
        try:
            res = w.run(job.payload(), job.timeout)
        finally:
            self._release(w, res is not None and w.alive())
        if res is None:
            return {"status": "crashed", "detail": "the sandbox worker died or hung", "duration": job.timeout}
        return res

    def run(self, job: Job) -> Verdict | IOResult:
        res = self._run(job)
        if isinstance(job, IOJob):
            return _io_result(res)
        return Verdict(res["status"], res.get("detail", ""), res.get("duration", 0.0), res.get("output", ""))

    def submit(self, job: Job) -> Future[Verdict | IOResult]:
        """Run ``job`` on the next free worker; jobs wait in a queue (first in, first out) while all are busy.
        For callers that check work as it is produced (``tinyforge eval`` verifies while the model writes)."""
        return self._runner.submit(self.run, job)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._idle, self._all = self._all, [], []
        for w in workers:  # kill all first: their sandboxes wind down together, not one after another
            w.kill()
        deadline = time.monotonic() + 1.0
        for w in workers:
            w.close(deadline)
        self._runner.shutdown(wait=False, cancel_futures=True)
        self._spawner.shutdown(wait=False)


RAY_ADDRESS_ENV = "TINYFORGE_RAY_ADDRESS"


class RayPool(Pool):
    """The sandbox pool on a Ray cluster: each job is a Ray task (one CPU) that runs in a warm sandbox of the
    Ray worker process it lands on, the same ``SandboxPool`` code with one worker, so a verdict does not
    depend on where it was computed. Every node needs tinyforge (and bubblewrap, for the namespace layer)
    installed like the driver.

    ``address`` is what ``ray.init(address=...)`` takes (``auto`` for the cluster this machine is part of,
    ``HOST:PORT`` of a head node, ``ray://HOST:10001`` for Ray Client); if this process is already connected
    to Ray, that connection is used. ``workers`` sizes the in-order window of ``imap`` (default: the
    cluster's CPUs); Ray itself queues and places the tasks."""

    def __init__(
        self,
        address: str,
        workers: int | None = None,
        limits: Limits | None = None,
        *,
        namespaces: bool | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                f"a Ray cluster was given ({address}) but ray is not installed: pip install 'tinyforge[ray]'"
            ) from None
        self._ray = ray
        self._connected_here = not ray.is_initialized()
        if self._connected_here:
            _probe_ray(address)  # ray.init retries an address where nothing listens for minutes
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                msg = " ".join(str(e).split())[:300]
                raise RuntimeError(f"cannot connect to the Ray cluster at {address}: {msg}") from None
        self.address = address
        self.workers = max(1, workers or int(ray.cluster_resources().get("CPU", 1)))
        self.limits = limits or Limits()
        self.namespaces = namespaces
        self._task = ray.remote(num_cpus=1, max_retries=0)(_ray_job)

    def submit(self, job: Job) -> Future[Verdict | IOResult]:
        """Send ``job`` to the cluster; the future is done when its verdict is back."""
        return self._task.remote(job, self.limits, self.namespaces).future()

    def run(self, job: Job) -> Verdict | IOResult:
        return self.submit(job).result()

    def close(self) -> None:
        """Disconnect from the cluster if this pool connected (the cluster and its warm sandboxes stay)."""
        if self._connected_here and self._ray.is_initialized():
            self._ray.shutdown()
            self._connected_here = False


def _probe_ray(address: str, timeout: float = 5.0) -> None:
    """A one-line error now if ``address`` names a host and port where nothing answers."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": ray.init finds (or fails to find) the cluster itself, quickly
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = (e.strerror or type(e).__name__).lower()
        raise RuntimeError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


_node_pools: dict[tuple[Limits, bool | None], SandboxPool] = {}


def _ray_job(job: Job, limits: Limits, namespaces: bool | None) -> Verdict | IOResult:
    """A Ray task: ``job`` in this Ray worker process's warm sandbox (started on its first job)."""
    pool = _node_pools.get((limits, namespaces))
    if pool is None:
        pool = _node_pools[(limits, namespaces)] = SandboxPool(1, limits, namespaces=namespaces)
        atexit.register(pool.close)
    return pool.run(job)


def make_pool(
    workers: int | None = None, limits: Limits | None = None, *, ray_address: str | None = None
) -> Pool:
    """The sandbox pool for a run: on the Ray cluster at ``ray_address`` (default: ``$TINYFORGE_RAY_ADDRESS``)
    when one is given, else a local ``SandboxPool`` of ``workers`` processes."""
    address = ray_address or os.environ.get(RAY_ADDRESS_ENV) or None
    if address:
        return RayPool(address, workers, limits)
    return SandboxPool(workers, limits)


def _io_records(res: dict) -> tuple[list[dict], str, str]:
    """Per-input records of an I/O job and its overall (status, detail), from the child's raw report."""
    records = []
    for line in str(res.get("records", "")).split("\n"):
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if not isinstance(rec, dict):
                break
            records.append(rec)
    io = [r for r in records if isinstance(r.get("i"), int)]
    status, detail = res.get("status", "crashed"), str(res.get("detail", ""))
    if status == "returned":
        top = [r for r in records if "i" not in r and r.get("status") in STATUSES]
        if any(r.get("done") is True for r in records) or (io and io[-1].get("status") != "ok"):
            status, detail = "done", ""
        elif top:
            status, detail = top[0]["status"], str(top[0].get("detail", ""))
        else:
            status, detail = "crashed", str(res.get("exit", ""))
    return io, status, detail[:500]


def _io_result(res: dict) -> IOResult:
    statuses, outputs, times, details = [], [], [], []
    io, status, detail = _io_records(res)
    for rec in io:
        details.append(str(rec.get("detail", ""))[:500])
        st = rec.get("status", "error")
        statuses.append(st if st in ("ok", "failed", "error", "timeout", "memory") else "error")
        val: Any = None
        if st == "ok" and isinstance(rec.get("digest"), str):
            val = Digest(rec["digest"])
        elif st == "ok":
            try:
                val = plaindata.decode(rec.get("out"))
            except (ValueError, TypeError, RecursionError):
                statuses[-1] = "error"
        outputs.append(val)
        times.append(float(rec.get("t", 0.0)) if isinstance(rec.get("t"), (int, float)) else 0.0)
    return IOResult(status, detail, statuses, outputs, times, details, res.get("duration", 0.0))


def then(future: Future[Any], fn: Callable[[Any], Any]) -> Future[Any]:
    """A future of ``fn(future.result())``, set when ``future`` is done (in the thread that finishes it); an
    exception from either ends up where the new future is awaited."""
    out: Future[Any] = Future()

    def done(f: Future[Any]) -> None:
        try:
            out.set_result(fn(f.result()))
        except BaseException as e:  # the pool closed, or a bug: surface it where the result is awaited
            out.set_exception(e)

    future.add_done_callback(done)
    return out


_default: SandboxPool | None = None


def default_pool() -> SandboxPool:
    """A process-wide pool with one worker per core, closed at exit."""
    global _default
    if _default is None:
        _default = SandboxPool()
        atexit.register(_default.close)
    return _default


def run_tests(solution: str, tests: str, timeout: float = 10.0, *, guard: bool = True) -> Verdict:
    """Run `solution` then `tests` in a sandbox; `tests` raises when a test fails."""
    return default_pool().run_tests(solution, tests, timeout, guard=guard)
