"""Small helpers shared by the bench scripts (run as ``python bench/NAME.py``, so this folder is on the path)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    """A progress line on stderr, after whatever stdout holds so far (so the two interleave right)."""
    sys.stdout.flush()
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def version(dist: str) -> str:
    """An installed distribution's version, or 'not installed'."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


Part = Callable[[dict[str, Any], dict[str, Any]], None]


def parse_args(ap: Any, parts: Mapping[str, Part], argv: Sequence[str] | None) -> tuple[Any, list[str]]:
    """Parse a bench script's options and its ``--parts`` list (checked against ``parts``). Started by
    ``run_part`` on one part (hidden options), run that part here and exit."""
    import argparse

    ap.add_argument("--part", choices=list(parts), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.part:
        raise SystemExit(run_part_here(parts, args.part, Path(args.config), Path(args.result)))
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(parts))
    if unknown:
        ap.error(f"unknown parts {unknown}; known: {', '.join(parts)}")
    return args, chosen


def run_part_here(parts: Mapping[str, Part], name: str, config: Path, result: Path) -> int:
    """The child's side of ``run_part``: run one part and write what it measured, also when it failed."""
    cfg = json.loads(config.read_text())
    out: dict[str, Any] = {"rows": [], "errors": []}
    try:
        parts[name](cfg, out)
    except BaseException:
        out["errors"].append(traceback.format_exc(limit=6))
        raise
    finally:
        result.write_text(json.dumps(out, indent=1, default=str))
    return 0


def run_part(
    script: str, name: str, cfg: dict[str, Any], workdir: Path, timeout: float, env: Mapping[str, str]
) -> dict[str, Any]:
    """Run part ``name`` of a bench script in a fresh Python process (``script --part NAME --config C
    --result R``; its output goes to a log file) and return its rows, errors and time."""
    config, result, log_path = (
        workdir / f"{name}.config.json",
        workdir / f"{name}.result.json",
        workdir / f"{name}.log",
    )
    config.write_text(json.dumps(cfg))
    cmd = [sys.executable, str(Path(script).resolve()), "--part", name]
    cmd += ["--config", str(config), "--result", str(result)]
    log(f"part {name} (log: {log_path})")
    start = time.perf_counter()
    with open(log_path, "w") as f:
        try:
            code: int | str = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"}, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = f"killed after {timeout:.0f} s"
    out: dict[str, Any] = {"rows": [], "errors": []}
    if result.is_file():
        out = json.loads(result.read_text())
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        out["errors"].append(f"part {name} exited with {code}; last lines of {log_path}:\n" + "\n".join(tail))
    out["part_s"] = round(time.perf_counter() - start, 1)
    out["log"] = str(log_path)
    return out


def git_commit() -> str:
    """The checkout's short commit, ``+dirty`` when it has changes; ``unknown`` outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
