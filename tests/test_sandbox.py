"""The sandbox against hostile programs: each family is contained and the host is unaffected afterwards."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from tinyforge.sandbox import IOJob, Limits, SandboxPool, TestJob, Verdict, capabilities, run_tests

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, limits=Limits(memory_mb=1024, max_procs=32)) as p:
        yield p


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker` (the host sees into the sandbox's PID namespace)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    found.append(int(d))
            except OSError:
                pass
    return found


def assert_healthy(pool: SandboxPool) -> None:
    """The pool still gives right verdicts after a hostile job."""
    assert pool.run_tests(ADD, ADD_TESTS).status == "passed"
    assert pool.run_tests(ADD, "assert add(1, 2) == 4").status == "failed"


# --- ordinary verdicts ---------------------------------------------------------------------------------


def test_module_level_run_tests_and_statuses():
    v = run_tests(ADD, ADD_TESTS)
    assert isinstance(v, Verdict) and v.passed and v.status == "passed"
    v = run_tests(ADD, "assert add(2, 2) == 5")
    assert not v.passed and v.status == "failed" and v.detail.startswith("AssertionError")


def test_error_carries_type_and_trimmed_message(pool):
    v = pool.run_tests("def f():\n    return 1 / 0\n", "assert f() == 1")
    assert v.status == "error" and v.detail.startswith("ZeroDivisionError: division by zero")
    v = pool.run_tests("def f(:\n", "assert f() == 1")
    assert v.status == "error" and v.detail.startswith("SyntaxError")
    v = pool.run_tests("def f():\n    raise ValueError('x' * 10000)\n", "f()")
    assert v.status == "error" and len(v.detail) < 400


# --- it cannot be fooled into a pass ---------------------------------------------------------------------

FOOLS = {
    "sys.exit before tests": "import sys\nsys.exit(0)\n" + ADD,
    "os._exit before tests": "import os\nos._exit(0)\n" + ADD,
    "sys.exit during tests": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "os._exit during tests": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "raise SystemExit(0)": "def add(a, b):\n    raise SystemExit(0)\n",
    "atexit rewrites exit code": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    return 0\n",
    "excepthook swallows failure": "import sys\nsys.excepthook = lambda *a: None\ndef add(a, b):\n    return 0\n",
    "thread exits 0 mid-test": (
        "import os, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.05), os._exit(0)), daemon=True).start()\n"
        "def add(a, b):\n    time.sleep(1)\n    return 0\n"
    ),
    "prints pass markers": (
        "import sys\nfor m in ('passed', 'PASS', 'OK', '{\"status\": \"passed\"}', 'ALL TESTS PASSED'):\n"
        "    print(m); print(m, file=sys.stderr)\ndef add(a, b):\n    return 0\n"
    ),
    "__eq__ always True": (
        "class Yes:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
        "    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return Yes()\n"
    ),
    "int subclass with __eq__": (
        "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return I(0)\n"
    ),
    "mock.ANY": "from unittest.mock import ANY\ndef add(a, b):\n    return ANY\n",
    "list of always-equal": (
        "class Yes:\n    def __eq__(self, o): return True\n    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return [Yes()]\n"
    ),
    "patch builtins.isinstance and type": (
        "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\n"
        "class Yes:\n    def __eq__(self, o): return True\n    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return Yes()\n"
    ),
    "rebinds guard-like names in globals": (
        "def add(a, b):\n    g = globals()\n    for k in ('__tf_cmp__', '__tf_truth__', 'cmp', 'guard'):\n"
        "        g[k] = lambda *a: True\n    return 0\n"
    ),
    "kills its own harness with SIGKILL": "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
}


@pytest.mark.parametrize("name", list(FOOLS))
def test_cannot_be_fooled(pool, name):
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
    v = pool.run_tests(FOOLS[name], tests, timeout=5)
    assert not v.passed, (name, v)
    assert v.status in ("failed", "error", "crashed", "timeout")


def test_truthiness_tricks_fail(pool):
    sol = "class T:\n    def __bool__(self): return True\n    def __len__(self): return 1\ndef ok(x):\n    return T()\n"
    assert not pool.run_tests(sol, "assert ok(1)\n").passed
    sol_f = "class F:\n    def __bool__(self): return False\ndef bad(x):\n    return F()\n"
    assert not pool.run_tests(sol_f, "assert not bad(1)\n").passed
    trick = (
        "class A:\n    def __sub__(self, o): return self\n    def __abs__(self): return self\n"
        "    def __lt__(self, o): return True\ndef f(x):\n    return A()\n"
    )
    assert not pool.run_tests(trick, "assert abs(f(1) - 3.0) < 1e-6\n").passed


def test_legitimate_values_still_compare(pool):
    sol = (
        "from collections import namedtuple, Counter, OrderedDict, deque\nfrom fractions import Fraction\n"
        "P = namedtuple('P', 'x y')\n"
        "def f():\n    return P(1, 2), Counter('aab'), OrderedDict(a=1), deque([1]), Fraction(1, 3), True, None\n"
    )
    tests = (
        "p, c, o, d, fr, t, n = f()\nassert p == (1, 2)\nassert c == {'a': 2, 'b': 1}\nassert o == {'a': 1}\n"
        "assert d == __import__('collections').deque([1])\nassert fr == __import__('fractions').Fraction(1, 3)\n"
        "assert t\nassert not n\nassert 1 < 2 < 3\nassert 'a' in 'abc'\nassert f() is not None\n"
    )
    v = pool.run_tests(sol, tests)
    assert v.passed, v


def test_guard_can_be_turned_off_for_library_objects(pool):
    sol = "class Box:\n    def __init__(self, v): self.v = v\n    def __eq__(self, o): return self.v == o.v\n"
    tests = "assert Box(1) == Box(1)\n"
    assert not pool.run_tests(sol, tests).passed
    assert pool.run_tests(sol, tests, guard=False).passed


# --- containment -----------------------------------------------------------------------------------------


def test_infinite_loop_ignoring_signals_is_killed(pool):
    sol = (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n"
    )
    t0 = time.monotonic()
    v = pool.run_tests(sol, "", timeout=1.5)
    assert v.status == "timeout"
    assert time.monotonic() - t0 < 6
    assert_healthy(pool)


def test_leftover_background_processes_are_killed(pool):
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}.25"
    sol = (
        "import os, subprocess, time\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n"
        f"    os.execvp('sleep', ['sleep', '{marker}'])\n"
        "time.sleep(0.2)\n"
    )
    v = pool.run_tests(sol, "assert True")
    assert v.passed, v
    time.sleep(0.2)
    assert host_processes_with(f"sleep\0{marker}") == []
    assert_healthy(pool)


def test_timeout_kills_children_too(pool):
    marker = f"{uuid.uuid4().int % 10**6 + 2 * 10**6}.5"
    sol = f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'])\nwhile True:\n    time.sleep(0.01)\n"
    v = pool.run_tests(sol, "", timeout=1)
    assert v.status == "timeout"
    time.sleep(0.2)
    assert host_processes_with(f"sleep\0{marker}") == []


def test_fork_bomb_is_contained(pool):
    before = len(os.listdir("/proc"))
    sol = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    v = pool.run_tests(sol, "", timeout=3)
    assert not v.passed
    time.sleep(0.5)
    after = len(os.listdir("/proc"))
    assert after < before + 20, (before, after)
    assert_healthy(pool)


def test_memory_bomb_is_contained(pool):
    v = pool.run_tests("x = bytearray(50 * 1024**3)\n", "")
    assert v.status == "memory", v
    v = pool.run_tests("xs = []\nwhile True:\n    xs.append(b' ' * 10**7)\n", "", timeout=20)
    assert v.status in ("memory", "crashed"), v
    assert_healthy(pool)


def test_disk_fill_is_contained(pool):
    sol = (
        "chunk = b'x' * (1 << 20)\nn = 0\nwith open('big', 'wb') as f:\n    while True:\n"
        "        f.write(chunk)\n        n += 1\n"
    )
    v = pool.run_tests(sol, "", timeout=20)
    assert not v.passed
    assert v.status in ("error", "crashed"), v
    assert_healthy(pool)


def test_no_writes_outside_its_directory(pool, tmp_path):
    target = tmp_path / "escaped.txt"
    home = Path.home() / f"tinyforge-escape-{uuid.uuid4().hex}"
    for path in (target, home, Path("/etc") / "tinyforge-escape", Path(os.getcwd()) / "escape.txt"):
        sol = f"open({str(path)!r}, 'w').write('x')\n"
        v = pool.run_tests(sol, "", timeout=5)
        assert v.status == "error", (path, v)
        assert not path.exists()
    assert pool.run_tests(
        "open('mine.txt', 'w').write('x')\n", "assert open('mine.txt').read() == 'x'"
    ).passed


def test_each_job_gets_a_clean_directory(pool):
    pool.run_tests("open('left.txt', 'w').write('x')\n", "")
    for _ in range(3):
        v = pool.run_tests("import os\n", "assert os.listdir('.') == []")
        assert v.passed, v


def test_environment_is_scrubbed(pool, monkeypatch):
    monkeypatch.setenv("TINYFORGE_TEST_SECRET", "hunter2")
    sol = "import os\nleaked = [k for k, v in os.environ.items() if 'hunter2' in v or 'SECRET' in k]\n"
    assert pool.run_tests(sol, "assert leaked == []").passed


@pytest.mark.skipif(not capabilities().bwrap, reason="needs bubblewrap (namespaces)")
class TestNamespaces:
    def test_cannot_see_host_processes(self, pool):
        sol = "import os\npids = [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
        v = pool.run_tests(sol, f"assert {os.getpid()} not in pids\nassert len(pids) < 10")
        assert v.passed, v

    def test_cannot_signal_the_parent_or_others(self, pool):
        # Host pids (this process, its parent) do not exist in the sandbox's pid namespace. A parent that
        # is pid 1 (pytest started detached) is left out: pid 1 in there is the sandbox's own init.
        targets = sorted({os.getpid(), os.getppid()} - {1})
        sol = (
            "import os, signal\nerrs = 0\n"
            f"for pid in {targets}:\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except ProcessLookupError:\n        errs += 1\n"
        )
        assert pool.run_tests(sol, f"assert errs == {len(targets)}").passed
        # Killing everything it can see takes down only its own sandbox; the pool replaces it.
        v = pool.run_tests("import os, signal\nos.kill(-1, signal.SIGKILL)\n", "", timeout=5)
        assert not v.passed
        assert_healthy(pool)

    def test_no_network_not_even_host_loopback(self, pool):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        accepted = []
        threading.Thread(target=lambda: accepted.append(srv.accept()), daemon=True).start()
        sol = (
            "import socket\nres = []\n"
            f"for addr in (('127.0.0.1', {port}), ('1.1.1.1', 53), ('10.0.0.1', 80)):\n"
            "    s = socket.socket()\n    s.settimeout(1)\n"
            "    try:\n        s.connect(addr)\n        res.append('connected')\n"
            "    except OSError:\n        res.append('refused')\n"
            "try:\n    socket.getaddrinfo('pypi.org', 443)\n    res.append('dns')\nexcept OSError:\n    pass\n"
        )
        v = pool.run_tests(sol, "assert res == ['refused'] * 3", timeout=10)
        srv.close()
        assert v.passed, v
        assert accepted == []

    def test_cannot_read_private_files(self, pool):
        here = Path(__file__).resolve()
        home = Path.home()
        sol = "import os\n"
        tests = f"assert not os.path.exists({str(here)!r})\nassert not os.path.exists({str(home / '.bashrc')!r})\n"
        assert pool.run_tests(sol, tests).passed


def test_output_flood_is_capped(pool):
    v = pool.run_tests("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n", "", timeout=2)
    assert v.status == "timeout"
    assert len(v.output) <= Limits().output_kb * 1024
    v = pool.run_tests("print('hello')\n", "")
    assert v.passed and v.output == "hello\n"
    assert_healthy(pool)


def test_segfault_is_a_crash(pool):
    v = pool.run_tests("import ctypes\nctypes.string_at(0)\n", "")
    assert v.status == "crashed" and "SIGSEGV" in v.detail, v
    assert_healthy(pool)


# --- I/O jobs (HumanEval+ / MBPP+ style) -------------------------------------------------------------------


def test_io_job_returns_outputs_and_per_input_timeouts(pool):
    sol = "import time\ndef f(x):\n    if x == 3:\n        while True: pass\n    return [x, x * 0.5, (x,), {x: str(x)}]\n"
    r = pool.run(IOJob(sol, "f", [[1], [2], [3], [4]], [1.0, 1.0, 0.3, 1.0], timeout=10))
    assert r.status == "done"
    assert r.statuses == ["ok", "ok", "timeout"]
    assert r.outputs[:2] == [[1, 0.5, (1,), {1: "1"}], [2, 1.0, (2,), {2: "2"}]]


def test_io_job_rejects_non_data_outputs(pool):
    sol = "class Yes:\n    def __eq__(self, o): return True\ndef f(x):\n    return Yes()\n"
    r = pool.run_io(sol, "f", [[1]], [1.0])
    assert r.statuses == ["error"]


def test_pool_map_keeps_order_and_uses_all_workers(pool):
    jobs = [TestJob(ADD, f"assert add({i}, 1) == {i + 1 if i % 3 else -1}") for i in range(30)]
    res = pool.map(jobs)
    assert [r.passed for r in res] == [i % 3 != 0 for i in range(30)]


def test_workers_outlive_the_threads_that_started_them():
    # bubblewrap's --die-with-parent is tied to the starting *thread*: a pool first used from a short-lived
    # thread must still work afterwards.
    with SandboxPool(workers=2) as p:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(p.run_tests(ADD, ADD_TESTS))) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status for r in results] == ["passed", "passed"]
        time.sleep(0.2)
        assert [r.status for r in p.map([TestJob(ADD, ADD_TESTS)] * 4)] == ["passed"] * 4


def test_without_namespaces_the_other_layers_still_hold(monkeypatch):
    """Where bubblewrap is missing the pool warns once and keeps rlimits, process groups, the scrubbed env."""
    monkeypatch.setenv("TINYFORGE_TEST_SECRET", "hunter2")
    with pytest.warns(RuntimeWarning, match="namespace isolation"):
        p = SandboxPool(workers=1, limits=Limits(memory_mb=1024), namespaces=False)
    with p:
        assert p.run_tests(ADD, ADD_TESTS).passed
        assert not p.run_tests(FOOLS["os._exit during tests"], ADD_TESTS).passed
        assert not p.run_tests(FOOLS["__eq__ always True"], ADD_TESTS).passed
        assert p.run_tests("while True:\n    pass\n", "", timeout=1).status == "timeout"
        assert p.run_tests("x = bytearray(50 * 1024**3)\n", "").status == "memory"
        marker = f"{uuid.uuid4().int % 10**6 + 3 * 10**6}.5"
        v = p.run_tests(f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\n", "")
        assert v.passed
        time.sleep(0.2)
        assert host_processes_with(f"sleep\0{marker}") == []
        assert p.run_tests("import os\n", "assert 'TINYFORGE_TEST_SECRET' not in dict(os.environ)").passed


def test_jobs_run_at_the_priority_asked_for() -> None:
    """``Limits(nice=...)`` lowers a job's CPU priority (``tinyforge eval`` verifies beside a generating model)."""
    check = "import os\nassert os.nice(0) >= 10, os.nice(0)\n"
    with SandboxPool(workers=1, limits=Limits(nice=10)) as pool:
        assert pool.run_tests("", check).passed
    with SandboxPool(workers=1) as pool:
        assert pool.run_tests("", check).status == "failed"


def test_one_cgroup_folder_holds_every_limit_where_controllers_share_a_hierarchy(tmp_path: Path) -> None:
    """cgroup v2 has one hierarchy: a worker's pids and memory limits go into one folder, which the worker
    joins once (a second folder of the same name used to be made, fail, and take the first one with it)."""
    from tinyforge.sandbox import _Cgroup

    group = _Cgroup({"pids": tmp_path, "memory": tmp_path}, Limits(memory_mb=1024, max_procs=32))
    try:
        assert len(group.dirs) == 1 and group.dirs[0].parent == tmp_path
        d = group.dirs[0]
        assert (d / "pids.max").read_text() == "40"
        memory = [f for f in ("memory.max", "memory.limit_in_bytes") if (d / f).exists()]
        assert [(d / f).read_text() for f in memory] == [str(1536 << 20)]
        wrapped = group.wrap(["true"])
        assert wrapped.count(str(d / "cgroup.procs")) == 1 and wrapped[-1] == "true"
    finally:
        for f in group.dirs[0].iterdir():
            f.unlink()
        group.close()
    assert list(tmp_path.iterdir()) == []


def _cgroup_v2_cpu() -> bool:
    root = Path("/sys/fs/cgroup")
    control = root / "cgroup.subtree_control"
    return control.exists() and "cpu" in control.read_text().split() and bool(capabilities().cgroup_root)


def _worker_cgroup(pool: SandboxPool) -> Path:
    """The cgroup v2 folder of the pool's one worker, as the host sees it."""
    (worker,) = pool._all
    line = Path(f"/proc/{worker.proc.pid}/cgroup").read_text().strip().splitlines()[-1]
    return Path("/sys/fs/cgroup") / line.split("::", 1)[1].lstrip("/")


@pytest.mark.skipif(not _cgroup_v2_cpu(), reason="needs writable cgroup v2 with the cpu controller on")
def test_a_niced_worker_weighs_less_on_cgroup_v2() -> None:
    """On cgroup v2 a nice value orders processes only inside their cgroup: a niced worker's cgroup takes the
    nice value as its weight, or every worker would weigh as much as the caller's whole cgroup."""
    for nice, weight in ((10, "11"), (0, "100")):
        with SandboxPool(workers=1, limits=Limits(nice=nice)) as pool:
            assert pool.run_tests("", "pass").passed
            folder = _worker_cgroup(pool)
            assert folder.name.startswith("tinyforge-")
            assert (folder / "cpu.weight").read_text().strip() == weight


@pytest.mark.skipif(not capabilities().bwrap, reason="needs bubblewrap (namespaces)")
def test_a_python_side_under_tmp_is_seen_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    """tinyforge (or the Python installation) in a folder under /tmp, as in a checkout or venv made there:
    the sandbox's scratch /tmp must not hide it (it did: its worker never started)."""
    import shutil
    import tempfile

    import tinyforge.sandbox as sandbox

    home = Path(tempfile.mkdtemp(prefix="tinyforge-side-", dir="/tmp"))
    try:
        package = home / "tinyforge"
        shutil.copytree(sandbox._CHILD.parent, package, ignore=shutil.ignore_patterns("__pycache__"))
        monkeypatch.setattr(sandbox, "_CHILD", package / sandbox._CHILD.name)
        sandbox._bind_args.cache_clear()
        with SandboxPool(workers=1) as p:
            assert p.run_tests(ADD, ADD_TESTS).passed
            # the folder is there read-only, and the rest of the host's /tmp is not
            there = f"import os\nassert os.listdir({str(home)!r}) == ['tinyforge']\n"
            assert p.run_tests("", there + f"assert not os.access({str(package)!r}, os.W_OK)\n").passed
            other = home.parent / f"tinyforge-other-{uuid.uuid4().hex}"
            other.mkdir()
            try:
                assert p.run_tests("", f"import os\nassert not os.path.exists({str(other)!r})\n").passed
            finally:
                other.rmdir()
    finally:
        sandbox._bind_args.cache_clear()
        shutil.rmtree(home)
