"""BigCodeBench-Hard (148 tasks, an early-2024 release): library-heavy tasks checked by unittest suites."""

from __future__ import annotations

import ast
import importlib.util
import json
import warnings
from functools import cache
from pathlib import Path

from tinyforge.data.code import CodeTask

# Appended to each task's unittest code so that running solution + test raises when a test fails or errors,
# which is how BigCodeBench decides pass/fail (skipped tests count as passed).
UNITTEST_RUNNER = """

import unittest as _tf_unittest

_tf_result = _tf_unittest.TextTestRunner(verbosity=0).run(
    _tf_unittest.defaultTestLoader.loadTestsFromTestCase(TestCases)
)
if _tf_result.failures or _tf_result.errors:
    _tf_first = (_tf_result.failures + _tf_result.errors)[0]
    _tf_why = _tf_first[1].strip().splitlines()[-1] if _tf_first[1].strip() else ""
    raise AssertionError(
        f"{len(_tf_result.failures)} failed and {len(_tf_result.errors)} errored of {_tf_result.testsRun} tests; "
        f"first: {_tf_first[0].id().rpartition('.')[2]}: {_tf_why}"
    )
"""

# Distribution names that differ from the module imported; the file itself lists module names.
IMPORT_NAMES = {
    "pillow": "PIL",
    "beautifulsoup4": "bs4",
    "opencv-python": "cv2",
    "python-dateutil": "dateutil",
    "pycryptodome": "Crypto",
    "python-docx": "docx",
    "scikit-learn": "sklearn",
    "pyyaml": "yaml",
    "python-levenshtein": "Levenshtein",
}


def load_bigcodebench_hard(path: Path) -> list[CodeTask]:
    """Tasks in completion form: the model continues ``complete_prompt`` (signature and docstring)."""
    records = json.loads(path.read_text(encoding="utf-8"))
    tasks = []
    for r in records.values():
        libs = r["libs"] if isinstance(r["libs"], list) else ast.literal_eval(r["libs"])
        tasks.append(
            CodeTask(
                task_id=r["task_id"],
                bench="bigcodebench-hard",
                prompt=r["complete_prompt"],
                entry_point=r["entry_point"],
                canonical_solution=r["complete_prompt"] + r["canonical_solution"],
                test=r["test"] + UNITTEST_RUNNER,
                libs=list(libs),
                extra={
                    "instruct_prompt": r["instruct_prompt"],
                    "code_prompt": r["code_prompt"],
                    "canonical_body": r["canonical_solution"],
                    "unittest": r["test"],
                    "doc_struct": r["doc_struct"],
                },
            )
        )
    return tasks


@cache
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def imported_modules(code: str) -> set[str]:
    """Top-level names of the modules that ``code`` imports anywhere (absolute imports only)."""
    found = set()
    with warnings.catch_warnings():  # the tasks' own code has invalid escape sequences
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def missing_libs(task: CodeTask) -> list[str]:
    """Libraries the task needs that this Python cannot import (empty when the task can run here).

    That is its declared ``libs`` plus modules its prompt or test import (some tests import e.g. ``faker``
    without declaring it); libraries used only indirectly (pandas' Excel engine ``openpyxl``) are not seen.
    """
    wanted = {IMPORT_NAMES.get(lib.lower(), lib).split(".")[0] for lib in task.libs}
    wanted |= imported_modules(task.prompt) | imported_modules(task.test)
    return sorted(m for m in wanted if not _importable(m))
