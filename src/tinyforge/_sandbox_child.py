"""The in-sandbox side of `tinyforge.sandbox`: a warm "zygote" that forks one child per job.

Run as a script (standard library only) inside the sandbox that `tinyforge.sandbox` builds:

    python -I _sandbox_child.py [--pidns]

It reads one JSON job per line on stdin and writes one JSON result per line on stdout. For each job it
wipes its scratch folder, forks, and the child (the only place untrusted code ever runs) drops to its
resource limits, runs the job and reports on a private pipe. The zygote, which untrusted code never
runs in, decides the verdict:

* a test job passes only when the child, *after* the tests returned normally, reads a one-time nonce
  from a pipe and echoes it back. Exit codes and output are never read, so `sys.exit(0)`,
  `os._exit(0)`, atexit/excepthook rewriting, killer threads and printed markers all count as failures.
* test comparisons (`==`, `<`, `in`, ...) and assert truth tests are rewritten to go through a guard
  that only accepts plain data (exact builtin types, numpy values), so objects whose `__eq__` is always
  True fail instead of passing. The guard is bound under names made fresh for each job.
* an I/O job returns the encoded outputs of the entry point; they are compared with the expected outputs
  by the host, so the child never sees what it should produce.

With `--pidns` (its own PID namespace, given by bubblewrap) the zygote kills every other process in the
namespace after each job, so no background process outlives its job.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import ctypes
import importlib.util
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_tinyforge_plaindata", os.path.join(HERE, "plaindata.py"))
assert _spec and _spec.loader
plaindata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plaindata)

# Modules that generated programs import all the time: imported once here, shared by every fork.
for _name in [
    "math",
    "re",
    "itertools",
    "collections",
    "functools",
    "heapq",
    "string",
    "typing",
    "random",
    "bisect",
    "json",
    "hashlib",
    "statistics",
    "fractions",
    "decimal",
    "datetime",
    "copy",
    "operator",
    "array",
    "unittest",
]:
    __import__(_name)
import collections  # noqa: E402
import decimal  # noqa: E402
import fractions  # noqa: E402
import random  # noqa: E402

SCRATCH = os.environ.get("TINYFORGE_SCRATCH", "/tmp")
RESULT_LIMIT = 256 << 20  # bytes the zygote accepts on the result pipe
MSG_LIMIT = 300  # characters kept of an exception message

# ---------------------------------------------------------------------------------------------------
# The guard: plain-data checks for rewritten test comparisons. Built from references captured now, so
# untrusted code that monkeypatches builtins later does not change what it does.
_type, _isinstance, _len, _id, _getattr = (
    builtins.type,
    builtins.isinstance,
    builtins.len,
    builtins.id,
    builtins.getattr,
)
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None), type(Ellipsis)})
_CONTAINERS = frozenset({list, tuple, dict, set, frozenset})
_VALUE_TYPES = frozenset(
    {
        collections.Counter,
        collections.OrderedDict,
        collections.defaultdict,
        collections.deque,
        fractions.Fraction,
        decimal.Decimal,
    }
)
_DUNDERS = (
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__bool__",
    "__len__",
    "__contains__",
    "__iter__",
    "__hash__",
    "__abs__",
    "__sub__",
    "__float__",
    "__int__",
    "__index__",
)
_BASES = _SCALARS | _CONTAINERS


class GuardError(AssertionError):
    """A test compared or tested the truth of something that is not plain data."""


def _plain_base(t: type) -> type | None:
    """The builtin type `t` stands for: itself, or a builtin base that no subclass in between overrides."""
    if t in _BASES or t in _VALUE_TYPES:
        return t
    mro = _type.__getattribute__(t, "__mro__")
    for i, klass in enumerate(mro):
        if klass in _BASES:
            for sub in mro[:i]:
                d = _type.__getattribute__(sub, "__dict__")
                if any(k in d for k in _DUNDERS):
                    return None
            return klass
    return None


def _is_numpy(t: type) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and (t is np.ndarray or (_isinstance(t, type) and issubclass(t, np.generic)))


def _check_plain(x: object, depth: int = 0) -> None:
    t = _type(x)
    if depth > 200:
        raise GuardError("tinyforge guard: value nested too deeply")
    if _is_numpy(t):
        return
    base = _plain_base(t)
    if base is None:
        raise GuardError(f"tinyforge guard: test compared a non-data object of type {t.__qualname__}")
    if base in _SCALARS or base in (fractions.Fraction, decimal.Decimal):
        return
    if base is dict or t in (collections.Counter, collections.OrderedDict, collections.defaultdict):
        for k, v in dict.items(x):  # type: ignore[arg-type]
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
        return
    if base in (list, tuple):
        items = list.__iter__(x) if base is list else tuple.__iter__(x)  # type: ignore[arg-type]
    elif base in (set, frozenset):
        items = set.__iter__(x) if base is set else frozenset.__iter__(x)  # type: ignore[arg-type]
    else:  # deque
        items = collections.deque.__iter__(x)  # type: ignore[arg-type]
    for v in items:
        _check_plain(v, depth + 1)


def _guard_cmp(op: str, a: object, b: object) -> object:
    _check_plain(a)
    _check_plain(b)
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b  # type: ignore[operator]
    if op == "<=":
        return a <= b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    if op == ">=":
        return a >= b  # type: ignore[operator]
    if op == "in":
        return a in b  # type: ignore[operator]
    if op == "not in":
        return a not in b  # type: ignore[operator]
    raise GuardError(op)


def _guard_truth(x: object) -> object:
    _check_plain(x)
    return x


_OPS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}


class _Guarder(ast.NodeTransformer):
    """Rewrites `a == b` (and the other value comparisons) and `assert x` / `not x` through the guard."""

    def __init__(self, cmp_name: str, truth_name: str) -> None:
        self.cmp, self.truth = cmp_name, truth_name

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if not all(type(op) in _OPS for op in node.ops):
            return node  # `is` / `is not` cannot be faked
        # a < b < c  ->  (t := a, cmp(<, t, b))... kept simple: chains become nested `and`s of pairwise calls.
        calls: list[ast.expr] = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=False):
            calls.append(
                ast.Call(ast.Name(self.cmp, ast.Load()), [ast.Constant(_OPS[type(op)]), left, right], [])
            )
            left = right
        return calls[0] if len(calls) == 1 else ast.BoolOp(ast.And(), calls)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = ast.Call(ast.Name(self.truth, ast.Load()), [node.operand], [])
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        self.generic_visit(node)
        node.test = ast.Call(ast.Name(self.truth, ast.Load()), [node.test], [])
        return node


def compile_tests(tests: str, guard: bool, cmp_name: str = "", truth_name: str = "") -> object:
    tree = ast.parse(tests, "<tests>")
    if guard:
        tree = ast.fix_missing_locations(_Guarder(cmp_name, truth_name).visit(tree))
    return compile(tree, "<tests>", "exec")


# ---------------------------------------------------------------------------------------------------
# The child: everything below runs after fork, in the process that runs untrusted code.


def _describe(e: BaseException) -> str:
    msg = str(e).replace("\n", " ").strip()
    if len(msg) > MSG_LIMIT:
        msg = msg[:MSG_LIMIT] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _status_of(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, AssertionError):
        return "failed"
    return "error"


def _set_limits(job: dict) -> None:
    mem = int(job["memory_mb"]) << 20
    for res, soft in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_FSIZE, int(job["file_size_mb"]) << 20),
        (resource.RLIMIT_NOFILE, 256),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, int(job["timeout"]) + 2),
    ):
        resource.setrlimit(res, (soft, soft))
    if job.get("max_procs"):
        n = int(job["max_procs"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    if job.get("nice"):
        os.nice(int(job["nice"]))


def _child(job: dict, result_w: int, nonce_r: int, out_w: int) -> None:
    """Runs in the forked child. Never returns."""
    try:
        os.setsid()
        # Private channels on unguessable fd numbers; everything else of the zygote closed.
        rng = random.SystemRandom()
        fds = rng.sample(range(100, 250), 2)
        os.dup2(result_w, fds[0])
        os.dup2(nonce_r, fds[1])
        result_fd, nonce_fd = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        lo, hi = sorted(fds)
        os.closerange(3, lo)
        os.closerange(lo + 1, hi)
        os.closerange(hi + 1, 1 << 16)
        os.chdir(job["cwd"])
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGXFSZ else signal.SIG_IGN)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.stdin = open(0, closefd=False)
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
        _set_limits(job)
    except BaseException as e:  # noqa: BLE001 - setup failure is reported as a crash
        os.write(result_w, json.dumps({"status": "crashed", "detail": "setup: " + _describe(e)}).encode())
        os._exit(1)

    def report(obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(result_fd, view)
            view = view[n:]

    try:
        if job["kind"] == "tests":
            _run_tests(job, result_fd, nonce_fd, report)
        else:
            _run_io(job, report)
    except BaseException as e:  # noqa: BLE001 - untrusted code may raise anything, SystemExit included
        try:
            report({"status": _status_of(e), "detail": _describe(e)})
        except BaseException:  # noqa: BLE001
            pass
    os._exit(0)


def _run_tests(job: dict, result_fd: int, nonce_fd: int, report) -> None:  # type: ignore[no-untyped-def]
    # One namespace for solution and tests, as the official harnesses have it (a test's `import x` is
    # visible to the solution). The guard's names are fresh per job and bound only after the solution's
    # module code ran.
    ns: dict = {"__name__": "__tinyforge__", "__builtins__": builtins}
    suffix = os.urandom(8).hex()
    cmp_name, truth_name = f"_tf_cmp_{suffix}", f"_tf_truth_{suffix}"
    code = compile(job["solution"], "<solution>", "exec")
    tests = compile_tests(job["tests"], job.get("guard", True), cmp_name, truth_name)
    exec(code, ns)  # noqa: S102 - this is the sandbox
    ns[cmp_name], ns[truth_name] = _guard_cmp, _guard_truth
    exec(tests, ns)  # noqa: S102
    # Only reached when the tests returned normally. The nonce was never in this process before now.
    nonce = os.read(nonce_fd, 64)
    os.write(result_fd, b"PASS " + nonce + b"\n")


def _floaty(x: object) -> bool:
    """A float or a list/tuple of floats (EvalPlus' `is_floats`): compared with a tolerance, so sent whole."""
    if type(x) is float:
        return True
    return type(x) in (list, tuple) and any(type(v) is float for v in x)  # type: ignore[attr-defined]


class _InputTimeout(BaseException):
    pass


def _alarm(signum, frame):  # type: ignore[no-untyped-def]
    raise _InputTimeout()


def _run_io(job: dict, report) -> None:  # type: ignore[no-untyped-def]
    ns: dict = {"__name__": "__tinyforge_solution__", "__builtins__": builtins}
    exec(compile(job["solution"], "<solution>", "exec"), ns)  # noqa: S102
    fn = ns.get(job["entry_point"])
    if not callable(fn):
        raise NameError(f"entry point {job['entry_point']!r} is not defined")
    limits = job["time_limits"]
    not_none = bool(job.get("not_none"))
    digest_over = int(job.get("digest_over", 0))
    full = set(job.get("full", ()))
    signal.signal(signal.SIGALRM, _alarm)
    for i, raw in enumerate(job["inputs"]):
        args = plaindata.decode(raw)
        t0 = time.perf_counter()
        try:
            signal.setitimer(signal.ITIMER_REAL, float(limits[i]))
            try:
                out = fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            elapsed = time.perf_counter() - t0
            if not_none:  # EvalPlus compares only `out is not None` for these (a re.Match cannot leave)
                out = out if type(out) is bool else out is not None
            digestible = bool(digest_over) and i not in full and not _floaty(out)
            try:
                enc = plaindata.encode(out)
            except ValueError:  # over plaindata's size limit (~128 MB): reported as an error; for a
                raise  # canonical run the input then has no reference and is not compared (see score.py)
            if digestible and len(json.dumps(enc)) > digest_over and (d := plaindata.digest(out)) is not None:
                report({"i": i, "status": "ok", "digest": d, "t": elapsed})
                continue
        except _InputTimeout:
            report({"i": i, "status": "timeout"})
            if job.get("stop_on_error", True):
                return
            continue
        except BaseException as e:  # noqa: BLE001
            report({"i": i, "status": _status_of(e), "detail": _describe(e)})
            if job.get("stop_on_error", True):
                return
            continue
        report({"i": i, "status": "ok", "out": enc, "t": elapsed})
    report({"done": True})


# ---------------------------------------------------------------------------------------------------
# The zygote.

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36


def _wipe(path: str) -> None:
    """Remove everything under `path`, whatever permissions the job left."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            p = os.path.join(root, name)
            try:
                os.chmod(p, 0o700)
                os.rmdir(p)
            except OSError:
                try:
                    os.unlink(p)  # a symlink to a directory
                except OSError:
                    pass
    # chmod 000 folders hide their content from the walk above: open them up and go again.
    leftovers = os.listdir(path)
    if leftovers:
        for name in leftovers:
            p = os.path.join(path, name)
            for root, dirs, _ in os.walk(p):
                for d in dirs:
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(root, d), 0o700)
            with contextlib.suppress(OSError):
                os.chmod(p, 0o700)


class Zygote:
    def __init__(self, pidns: bool) -> None:
        self.pidns = pidns
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace or /proc/PID/mem from jobs of the same uid
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of jobs come back to us to be reaped
        self.jobdir = os.path.join(SCRATCH, "job")

    def kill_all(self, pgid: int) -> None:
        if self.pidns:
            try:
                os.kill(-1, signal.SIGKILL)  # everything in our namespace but us and its init
            except ProcessLookupError:
                pass
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        while True:  # reap all
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if not self.pidns:
                    break
                time.sleep(0.001)

    def run(self, job: dict) -> dict:
        for name in job.get("preload", ()):
            if name not in sys.modules:
                with contextlib.suppress(Exception):  # the job's own import then reports what is wrong
                    importlib.import_module(name)
        if os.path.exists(self.jobdir):
            _wipe(self.jobdir)
            _wipe(self.jobdir)
        os.makedirs(self.jobdir, exist_ok=True)
        job["cwd"] = self.jobdir
        nonce = os.urandom(16).hex().encode()
        result_r, result_w = os.pipe()
        nonce_r, nonce_w = os.pipe()
        out_r, out_w = os.pipe()
        os.write(nonce_w, nonce)
        os.close(nonce_w)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(result_r)
            os.close(out_r)
            _child(job, result_w, nonce_r, out_w)
        for fd in (result_w, nonce_r, out_w):
            os.close(fd)
        deadline = t0 + float(job["timeout"])
        buf, out = bytearray(), bytearray()
        open_fds = {result_r, out_r}
        timed_out = too_big = False
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select(list(open_fds), [], [], left)
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_fds.discard(fd)
                elif fd == result_r:
                    buf += chunk
                    if len(buf) > RESULT_LIMIT:
                        too_big = True
                        open_fds.clear()
                elif len(out) < int(job["output_limit"]):
                    out += chunk[: int(job["output_limit"]) - len(out)]
        # The result pipe closes when the job's last process holding it exits. Wait briefly for the child.
        status_code = None
        wait_until = time.monotonic() + 0.5
        while status_code is None and not timed_out:
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid:
                status_code = st
            elif time.monotonic() > wait_until:
                break
            else:
                time.sleep(0.0005)
        duration = time.monotonic() - t0
        self.kill_all(pid)
        if status_code is None:
            try:
                _, status_code = os.waitpid(pid, 0)
            except ChildProcessError:
                status_code = 0
        for fd in (result_r, out_r):
            os.close(fd)
        res = self.verdict(job, bytes(buf), nonce, timed_out, too_big, status_code)
        res["duration"] = round(duration, 6)
        res["output"] = out.decode("utf-8", "replace")
        return res

    @staticmethod
    def verdict(
        job: dict, buf: bytes, nonce: bytes, timed_out: bool, too_big: bool, status_code: int
    ) -> dict:
        lines = buf.split(b"\n")
        if too_big:
            return {"status": "error", "detail": "result too large"}
        if job["kind"] == "tests":
            if lines and lines[-1] == b"" and len(lines) >= 2 and lines[-2] == b"PASS " + nonce:
                return {"status": "passed", "detail": ""}
            first = _parse(lines)
            if timed_out:
                return {"status": "timeout", "detail": f"exceeded {job['timeout']} s"}
            if first is not None and first.get("status") in ("failed", "error", "memory", "crashed"):
                return {"status": first["status"], "detail": str(first.get("detail", ""))[:MSG_LIMIT]}
            return {"status": "crashed", "detail": _exit_detail(status_code)}
        # I/O job: the per-input records go to the host unparsed (they can be large); the host decides.
        res: dict = {"records": buf.decode("utf-8", "replace"), "exit": _exit_detail(status_code)}
        if timed_out:
            res.update(status="timeout", detail=f"exceeded {job['timeout']} s")
        else:
            res.update(status="returned", detail="")
        return res


def _parse(lines: list[bytes]) -> dict | None:
    for ln in lines:
        if ln.strip():
            try:
                obj = json.loads(ln)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def _exit_detail(status_code: int | None) -> str:
    if status_code is None:
        return "no verdict"
    if os.WIFSIGNALED(status_code):
        sig = os.WTERMSIG(status_code)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"exited with code {os.WEXITSTATUS(status_code)} before the tests finished"


def main() -> None:
    zygote = Zygote(pidns="--pidns" in sys.argv)
    channel_in = os.fdopen(os.dup(0), "rb")
    channel_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # nothing but the result protocol on the channel
    channel_out.write(b'{"ready": true}\n')
    channel_out.flush()
    for line in channel_in:
        try:
            job = json.loads(line)
            res = zygote.run(job)
        except Exception:  # noqa: BLE001 - a harness bug must not look like a verdict
            res = {"status": "crashed", "detail": "harness: " + traceback.format_exc(limit=3)[-MSG_LIMIT:]}
        channel_out.write((json.dumps(res) + "\n").encode())
        channel_out.flush()


if __name__ == "__main__":
    main()
