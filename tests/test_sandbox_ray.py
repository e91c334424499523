"""The sandbox pool on a Ray cluster: a real local cluster (a head node on 127.0.0.1 with 2 CPUs, started
and stopped here) gives the same verdicts as the local process pool, job for job."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tinyforge.sandbox import (
    RAY_ADDRESS_ENV,
    IOJob,
    IOResult,
    RayPool,
    SandboxPool,
    TestJob,
    Verdict,
    make_pool,
)

ray = pytest.importorskip("ray", reason="the Ray pool needs ray: pip install -e '.[dev]'")

JOBS = [
    TestJob("def f(x):\n    return x + 1\n", "assert f(1) == 2"),
    TestJob("def f(x):\n    return x\n", "assert f(1) == 2"),
    TestJob("def f(x):\n    return 1 / 0\n", "f(1)"),
    TestJob("import sys\nsys.exit(0)\n", "assert False"),  # exits before the asserts: not a pass
    TestJob("while True:\n    pass\n", "", timeout=1.0),
    TestJob("print('hello from the sandbox')\n", "assert True"),
    TestJob("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", ""),
    TestJob("open('/etc/tinyforge-was-here', 'w').write('x')\n", ""),
    IOJob("def g(a, b):\n    return a * b\n", "g", [[2, 3], [4, 5], ["a", 3]], [1.0, 1.0, 1.0]),
    IOJob("def g(a):\n    return [a] * 3\n", "g", [[1], [None]], [1.0, 1.0]),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ray.scripts.scripts", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A one-node Ray cluster on loopback; its address (HOST:PORT)."""
    port = _free_port()
    started = _ray(
        "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
        "--include-dashboard=false", "--object-store-memory=100000000", "--disable-usage-stats",
    )  # fmt: skip
    if started.returncode != 0:
        pytest.fail(f"ray start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _ray("stop", "--force")


def _same(v: Verdict | IOResult) -> tuple:
    """A verdict without its timings (which depend on the machine and the moment)."""
    if isinstance(v, Verdict):
        return ("tests", v.status, v.detail, v.output)
    return ("io", v.status, v.detail, v.statuses, [repr(o) for o in v.outputs], v.details)


def test_ray_pool_gives_the_local_pools_verdicts(cluster: str) -> None:
    with SandboxPool(2) as local:
        want = [_same(v) for v in local.map(JOBS)]
    statuses = [s[1] for s in want]
    assert (
        statuses[:3] == ["passed", "failed", "error"] and statuses[3] != "passed" and statuses[4] == "timeout"
    )
    with RayPool(cluster) as pool:
        assert pool.workers == 2  # the cluster's CPUs
        got = [_same(v) for v in pool.map(JOBS)]
        again = [_same(pool.run(j)) for j in JOBS[:3]]  # warm sandboxes of the Ray workers, reused
        assert pool.run_tests("x = 2", "assert x == 2").status == "passed"
    assert got == want
    assert again == want[:3]
    assert not ray.is_initialized()  # the pool disconnected; the cluster goes on


def test_make_pool_takes_the_cluster_from_the_environment(
    cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    with make_pool(1) as local:
        assert isinstance(local, SandboxPool)
    monkeypatch.setenv(RAY_ADDRESS_ENV, cluster)
    with make_pool() as pool:
        assert isinstance(pool, RayPool) and pool.address == cluster
        assert pool.submit(JOBS[0]).result().status == "passed"


def test_unreachable_cluster_is_a_one_line_error() -> None:
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(RuntimeError) as e:
        RayPool(address)
    msg = str(e.value)
    assert "\n" not in msg and f"cannot connect to the Ray cluster at {address}" in msg
