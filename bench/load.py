"""Loading an embedded GGUF model: dequantizing the file on every load (what ``load_model`` did before) against
loading its converted transformers folder (what it does now), and the one-time conversion.

    .venv/bin/python bench/load.py [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]
        [--dtypes float32,bfloat16] [--repeat 3] [--json OUT]

Rows per model and dtype, on the CPU, in this process (torch and transformers imported before timing):

* dequantize the GGUF (``models._dequantize``): the baseline, every load before;
* first ``load_model`` with an empty models folder: dequantize, save the folder, load it (once per model,
  dtype and transformers release);
* ``load_model`` again: reads the converted folder.

The models must be fetched already (``tinyforge`` fetches them on first use). Times are the median of
``--repeat`` runs (min-max beside). The script also says whether the two ways give the same weights, bit for
bit. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchutil import git_commit, log, version


def _timed(fn: Callable[..., Any], args: tuple[Any, ...], repeat: int) -> tuple[list[float], Any]:
    """Wall times of ``repeat`` calls of ``fn(*args)``, and the last call's result."""
    times, out = [], None
    for _ in range(repeat):
        out = None  # the previous call's model is freed before the next one loads
        gc.collect()
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return times, out


def _cell(times: list[float]) -> str:
    if len(times) == 1:
        return f"{times[0]:.2f} s"
    return f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


def main(argv: list[str] | None = None) -> None:
    import torch

    from tinyforge.generate import models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)

    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        ref = models.resolve_model(name)
        if not ref.gguf_file:
            sys.exit(f"{name} is not a GGUF model: nothing to compare")
        if ref.kind == "embedded":
            models.fetch_model(name)
        for dtype in args.dtypes.split(","):
            log(f"{name} {dtype}: dequantizing")
            base_t, (base, _) = _timed(models._dequantize, (ref, dtype), args.repeat)
            with tempfile.TemporaryDirectory(prefix="tinyforge-bench-load-") as tmp:
                os.environ["TINYFORGE_MODELS_DIR"] = tmp  # an empty models folder: the first load converts
                log(f"{name} {dtype}: first load (converting)")
                first_t, _ = _timed(models.load_model, (ref, dtype), 1)
                log(f"{name} {dtype}: loading the converted folder")
                warm_t, (warm, _) = _timed(models.load_model, (ref, dtype), args.repeat)
                size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
            os.environ.pop("TINYFORGE_MODELS_DIR")
            a, b = base.state_dict(), warm.state_dict()
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            rows.append(
                {
                    "model": name,
                    "dtype": dtype,
                    "dequantize_s": base_t,
                    "first_load_s": first_t,
                    "converted_load_s": warm_t,
                    "speedup": statistics.median(base_t) / statistics.median(warm_t),
                    "folder_mib": round(size / 2**20),
                    "same_weights": same,
                }
            )
            del base, warm, a, b

    print(f"\nloading embedded GGUF models on the CPU ({os.cpu_count()} cores), median of {args.repeat}")
    print(
        f"{'model':<30} {'dtype':<9} {'dequantize (before)':>22} {'first load':>11} {'converted (now)':>22} "
        f"{'speed-up':>9} {'folder':>8} same weights"
    )
    for r in rows:
        print(
            f"{r['model']:<30} {r['dtype']:<9} {_cell(r['dequantize_s']):>22} {_cell(r['first_load_s']):>11} "
            f"{_cell(r['converted_load_s']):>22} {r['speedup']:>8.0f}x {r['folder_mib']:>5} MiB "
            f"{'yes' if r['same_weights'] else 'NO'}"
        )
    if args.json:
        meta = {
            "date": dt.date.today().isoformat(),
            "command": "python bench/load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "git": git_commit(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "versions": {d: version(d) for d in ("torch", "transformers", "gguf")},
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
