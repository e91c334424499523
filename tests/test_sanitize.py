"""The sanitizer: hand-written tricky answers, and real model outputs scored by the real scorer."""

from __future__ import annotations

import ast
import json
import random
import re
import warnings
from pathlib import Path

import pytest

from tinyforge.generate.sanitize import (
    CHAT_STOP,
    RAW_STOP,
    code_blocks,
    cut_at_stop,
    longest_parsable_prefix,
    sanitize,
    stop_strings,
)

PROMPT = '''from typing import List


def below_zero(operations: List[int]) -> bool:
    """ Return True if the running balance ever falls below zero.
    >>> below_zero([1, 2, -4, 5])
    True
    """
'''


def top_level(program: str) -> list[str]:
    """What the program's top-level statements are: 'import', 'def NAME', 'class NAME', 'assign NAME'."""
    out = []
    for node in ast.parse(program).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append("import")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append(f"def {node.name}")
        elif isinstance(node, ast.ClassDef):
            out.append(f"class {node.name}")
        elif isinstance(node, ast.Assign):
            out.append("assign " + ",".join(ast.unparse(t) for t in node.targets))
        else:
            out.append(type(node).__name__)
    return out


def run(program: str, call: str):
    env: dict = {}
    exec(compile(program, "<program>", "exec"), env)
    return eval(call, env)


# --- raw completions ----------------------------------------------------------------------------------------


def test_raw_body_only_completion_then_junk():
    completion = (
        "    balance = 0\n"
        "    for op in operations:\n"
        "        balance += op\n"
        "        if balance < 0:\n"
        "            return True\n"
        "    return False\n"
        "\n\n# Check function\n"
        "def check():\n"
        "    assert below_zero([1, -2])\n"
        "    print('ok')\n\n"
        "check()\n"
        "```\n\n"
        "This function keeps a running balance. It returns `True` as soon as\n"
        "the balance is negative.\n"
    )
    program = sanitize(completion, "below_zero", prompt=PROMPT, mode="raw")
    assert top_level(program) == ["import", "def below_zero"]
    assert program.startswith(PROMPT)  # the prompt is kept as written, docstring included
    assert run(program, "below_zero([1, 2, -4, 5])") is True
    assert run(program, "below_zero([1, 2])") is False


def test_raw_helper_after_entry_point_is_kept():
    completion = (
        "    return any(b < 0 for b in running(operations))\n"
        "\n\n"
        "# Helper: the running balance\n"
        "def running(ops):\n"
        "    total = 0\n"
        "    for op in ops:\n"
        "        total += op\n"
        "        yield total\n"
        "\n\n"
        "print(below_zero([1, -5]))\n"
        "def unused():\n"
        "    return 1\n"
    )
    program = sanitize(completion, "below_zero", prompt=PROMPT, mode="raw")
    assert top_level(program) == ["import", "def below_zero", "def running"]
    assert "# Helper" not in program
    assert run(program, "below_zero([1, 2, -4, 5])") is True
    # What a stop at "\ndef " would have done: the helper is gone and the program fails.
    cut = PROMPT + cut_at_stop(completion, ["\ndef "])
    with pytest.raises(NameError):
        run(cut, "below_zero([1, -5])")


def test_raw_completion_that_rewrites_the_signature():
    completion = (
        "\n"
        "def below_zero(operations: List[int]) -> bool:\n"
        '    """Re-stated docstring."""\n'
        "    balance = 0\n"
        "    for op in operations:\n"
        "        balance += op\n"
        "        if balance < 0:\n"
        "            return True\n"
        "    return False\n"
        "\n"
        "assert below_zero([1, -2]) is True\n"
    )
    program = sanitize(completion, "below_zero", prompt=PROMPT, mode="raw")
    assert top_level(program) == ["import", "def below_zero"]  # the stub from the prompt is gone
    assert "Re-stated docstring" in program
    assert run(program, "below_zero([1, 2, -4, 5])") is True


def test_raw_completion_in_a_fence_and_echoed_prompt():
    completion = "```python\ndef below_zero(operations):\n    return min(0, *__import__('itertools').accumulate(operations)) < 0\n```\n"
    program = sanitize(completion, "below_zero", prompt=PROMPT, mode="raw")
    assert top_level(program) == ["import", "def below_zero"]
    assert run(program, "below_zero([1, 2, -4, 5])") is True
    body = "    return False\n"
    assert sanitize(PROMPT + body, "below_zero", prompt=PROMPT, mode="raw") == sanitize(
        body, "below_zero", prompt=PROMPT, mode="raw"
    )


def test_raw_truncated_completion_keeps_longest_parsable_prefix():
    completion = (
        "    balance = 0\n    for op in operations:\n        balance += op\n    return balance < 0 or (bal"
    )
    program = sanitize(completion, "below_zero", prompt=PROMPT, mode="raw")
    assert program.rstrip().endswith("balance += op")
    ast.parse(program)


def test_raw_import_written_after_the_entry_point_is_kept_but_test_imports_go():
    completion = (
        "    return math.fsum(operations) < 0 and bool(operations)\n\n"
        "import math\n"
        "import unittest\n"
        "from solution import below_zero\n\n"
        "class TestBelowZero(unittest.TestCase):\n"
        "    def test(self):\n"
        "        self.assertTrue(below_zero([-1]))\n\n"
        "if __name__ == '__main__':\n"
        "    unittest.main()\n"
    )
    program = sanitize(completion, "below_zero", prompt=PROMPT, mode="raw")
    assert top_level(program) == ["import", "import", "def below_zero"]
    assert "import math" in program and "unittest" not in program and "solution" not in program
    assert run(program, "below_zero([-1])") is True


# --- chat answers -------------------------------------------------------------------------------------------


def test_chat_prose_around_one_fence():
    answer = (
        "Sure! Here is the function:\n\n"
        "```python\n"
        "from typing import List\n\n"
        "def below_zero(operations: List[int]) -> bool:\n"
        "    balance = 0\n"
        "    for op in operations:\n"
        "        balance += op\n"
        "        if balance < 0:\n"
        "            return True\n"
        "    return False\n\n"
        "# Example usage\n"
        "print(below_zero([1, 2, -4, 5]))  # True\n"
        "assert below_zero([1, 2]) is False\n"
        "```\n\n"
        "The function works by keeping a running balance.\n"
    )
    program = sanitize(answer, "below_zero", mode="chat")
    assert top_level(program) == ["import", "def below_zero"]
    assert "print" not in program and "Example usage" not in program
    assert run(program, "below_zero([1, 2, -4, 5])") is True


def test_chat_multiple_fences_helper_in_another_block_and_usage_block():
    answer = (
        "First a helper:\n```python\ndef running(ops):\n    t = 0\n    for o in ops:\n        t += o\n        yield t\n```\n"
        "Then the function:\n```py\ndef below_zero(operations):\n    return any(b < 0 for b in running(operations))\n```\n"
        "Usage:\n```python\nresult = below_zero([1, -3])\nprint(result)\n```\n"
        "Output:\n```\nTrue\n```\n"
    )
    program = sanitize(answer, "below_zero", mode="chat")
    assert top_level(program) == ["def running", "def below_zero"]
    assert run(program, "below_zero([1, -3])") is True


def test_chat_first_real_definition_wins_and_bash_blocks_are_ignored():
    answer = (
        "```bash\npip install nothing\n```\n"
        "```python\ndef below_zero(operations):\n    return min([0] + [sum(operations[:i + 1]) for i in range(len(operations))]) < 0\n```\n"
        "Here it is again with a test:\n"
        "```python\ndef below_zero(operations):\n    return False\n\nassert below_zero([]) is False\n```\n"
    )
    program = sanitize(answer, "below_zero", mode="chat")
    assert top_level(program) == ["def below_zero"]
    assert run(program, "below_zero([1, -3])") is True


def test_chat_unterminated_fence():
    answer = "Here you go:\n```python\ndef below_zero(operations):\n    return sum(operations) < 0\n\nprint(below_zero([-1]))\n"
    program = sanitize(answer, "below_zero", mode="chat")
    assert top_level(program) == ["def below_zero"]
    blocks, outside = code_blocks(answer)
    assert len(blocks) == 1 and not blocks[0].closed and outside == "Here you go:\n"


def test_chat_no_fences_prose_before_and_after():
    answer = (
        "Here is the code that solves it.\n"
        "def below_zero(operations):\n"
        "    total = 0\n"
        "    for op in operations:\n"
        "        total += op\n"
        "        if total < 0:\n"
        "            return True\n"
        "    return False\n"
        "This works because we stop at the first negative balance.\n"
        "def helper_mentioned_later():\n"
        "    return 1\n"
    )
    program = sanitize(answer, "below_zero", mode="chat")
    assert top_level(program) == ["def below_zero"]
    assert run(program, "below_zero([2, -3])") is True


def test_chat_prompt_imports_and_helpers_are_supplied():
    # HumanEval/38 style: the tests call the prompt's helper, the answer only writes the entry point and
    # forgets the `typing` import its annotation needs.
    prompt = (
        "from typing import List\n\n\n"
        "def encode(s: str) -> str:\n    return s[::-1]\n\n\n"
        "def decode(s: str) -> str:\n" + '    """ Undo encode. """\n'
    )
    answer = "```python\ndef decode(s: str) -> List[str]:\n    return s[::-1]\n```"
    program = sanitize(answer, "decode", prompt=prompt, mode="chat")
    assert top_level(program) == ["import", "def encode", "def decode"]
    assert run(program, "decode(encode('abc'))") == "abc"


def test_chat_body_only_answer_is_completed_from_the_prompt():
    answer = "```python\n    return any(sum(operations[: i + 1]) < 0 for i in range(len(operations)))\n```"
    program = sanitize(answer, "below_zero", prompt=PROMPT, mode="chat")
    assert top_level(program) == ["import", "def below_zero"]
    assert run(program, "below_zero([1, 2, -4, 5])") is True


def test_chat_uniformly_indented_block_and_fence_inside_a_list():
    answer = "1. Write it:\n\n   ```python\n   def below_zero(operations):\n       return sum(operations) < 0\n   ```\n"
    assert top_level(sanitize(answer, "below_zero", mode="chat")) == ["def below_zero"]
    answer = "```python\n    def below_zero(operations):\n        return sum(operations) < 0\n```\n"
    assert top_level(sanitize(answer, "below_zero", mode="chat")) == ["def below_zero"]


def test_chat_forgotten_closing_fence_before_the_next_block():
    answer = (
        "```python\ndef below_zero(ops):\n    return sum(ops) < 0\n```python\nprint(below_zero([1]))\n```\n"
    )
    blocks, _ = code_blocks(answer)
    assert [b.closed for b in blocks] == [False, True]
    assert top_level(sanitize(answer, "below_zero", mode="chat")) == ["def below_zero"]


# --- what is kept -------------------------------------------------------------------------------------------


def test_class_based_solution_and_needed_constants():
    answer = """```python
import math
from collections import deque

LIMIT = 10 ** 6
OFFSET = LIMIT // 2
UNUSED = 3
TABLE = {}
TABLE["a"] = 1


class Account:
    def __init__(self):
        self.balance = 0

    def apply(self, op):
        self.balance += op
        return self.balance < 0 and abs(self.balance) < LIMIT


def below_zero(operations):
    acct = Account()
    queue = deque(operations)
    while queue:
        if acct.apply(queue.popleft()):
            return True
    return TABLE["a"] == 2


acct = Account()
print(below_zero([1, -2]), acct)
```"""
    program = sanitize(answer, "below_zero", mode="chat")
    assert top_level(program) == [
        "import",
        "import",
        "assign LIMIT",
        "assign TABLE",
        "assign TABLE['a']",
        "class Account",
        "def below_zero",
    ]
    assert run(program, "below_zero([1, -2])") is True


def test_entry_point_that_is_a_class():
    answer = "```python\nclass Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n\np = Pair(1, 2)\nprint(p.a)\n```"
    assert top_level(sanitize(answer, "Pair", mode="chat")) == ["class Pair"]


def test_locals_do_not_pull_in_globals_of_the_same_name():
    # `numbers` and `result` are locals of the function: the example-usage globals with those names
    # (one of which would read stdin when run) must not come along.
    answer = """```python
def below_zero(numbers):
    result = False
    total = 0
    for n in numbers:
        total += n
        result = result or total < 0
    return result

numbers = [int(x) for x in input().split()]
result = below_zero(numbers)
```"""
    program = sanitize(answer, "below_zero", mode="chat")
    assert top_level(program) == ["def below_zero"]


def test_decorators_and_their_imports_come_along():
    answer = """```python
from functools import lru_cache

@lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

print(fib(10))
```"""
    program = sanitize(answer, "fib", mode="chat")
    assert top_level(program) == ["import", "def fib"]
    assert "@lru_cache(maxsize=None)\ndef fib" in program
    assert run(program, "fib(30)") == 832040


def test_lambda_entry_point_and_import_hoisting():
    answer = "```python\nbelow_zero = lambda ops: any(s < 0 for s in accumulate(ops))\nfrom itertools import accumulate\n```"
    program = sanitize(answer, "below_zero", mode="chat")
    assert top_level(program) == ["import", "assign below_zero"]
    assert run(program, "below_zero([1, -2])") is True


def test_stubs_lose_to_real_definitions_whichever_comes_first():
    answer = (
        "```python\ndef f(x):\n    raise NotImplementedError\n\n\ndef f(x):\n    ...\n\n\n"
        "def f(x):\n    return x + 1\n```"
    )
    assert run(sanitize(answer, "f", mode="chat"), "f(1)") == 2


def test_missing_entry_point_keeps_every_definition():
    answer = "```python\nimport os\n\ndef g():\n    return 1\n\nprint(g())\n```"
    assert top_level(sanitize(answer, "f", mode="chat")) == ["import", "def g"]
    assert top_level(sanitize(answer, None, mode="chat")) == ["import", "def g"]


def test_entry_point_none_takes_the_longest_block():
    answer = "```python\nx = 1\n```\n```python\nimport os\n\ndef g():\n    return os.sep\n\ng()\n```"
    assert top_level(sanitize(answer, None, mode="chat")) == ["import", "def g"]


def test_nothing_parsable_gives_empty_program():
    assert sanitize("I cannot help with that.", "f", mode="chat") == ""
    assert sanitize("", "f", mode="chat") == ""
    assert sanitize("```\n```", "f", mode="chat") == ""


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError):
        sanitize("x", "f", mode="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        stop_strings("other")  # type: ignore[arg-type]


def test_longest_parsable_prefix():
    assert longest_parsable_prefix("x = 1\ny = (\nz = 3\n") == "x = 1\n"
    assert longest_parsable_prefix("def f():\n    return 1\nHere is prose.\n") == "def f():\n    return 1\n"
    assert longest_parsable_prefix('s = """unterminated\n') == ""


# --- stop strings -------------------------------------------------------------------------------------------


def test_stop_strings_are_the_safe_ones():
    assert stop_strings("raw") == list(RAW_STOP) and stop_strings("chat") == list(CHAT_STOP)
    for unsafe in ("\ndef ", "\nclass ", "\n#", "\nimport ", "\nfrom "):
        assert not any(unsafe.startswith(s) for s in RAW_STOP), unsafe  # no stop fires on every `unsafe`
    assert cut_at_stop("a\nprint(1)\nassert 2\n", RAW_STOP) == "a"
    assert cut_at_stop("abc", []) == "abc"


# --- real model outputs -------------------------------------------------------------------------------------

DATA = Path(__file__).parent / "data" / "model_outputs"
WEAK_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]  # the probe's weak raw stop list
_FENCED = re.compile(r"```[^\n]*\n(.*?)```", re.S)


def load_outputs() -> list[dict]:
    recs = []
    for f in sorted(DATA.glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            recs += [json.loads(line) for line in fh if line.strip()]
    return recs


@pytest.fixture(scope="module")
def outputs() -> list[dict]:
    recs = load_outputs()
    assert len(recs) >= 100
    return recs


@pytest.fixture(scope="module")
def humaneval():
    from tinyforge.data import load_benchmark

    return {t.task_id: t for t in load_benchmark("humaneval")}


def program_of(rec: dict, tasks) -> str:
    from tinyforge.generate.prompts import to_program

    return to_program(tasks[rec["task_id"]], rec["format"], rec["text"])


def naive_program(rec: dict, tasks) -> str:
    """The naive handling: raw cut at the weak stop list; chat, the first fenced block (else the text)."""
    from tinyforge.generate.prompts import chat_text, task_text

    task = tasks[rec["task_id"]]
    if rec["format"] == "raw":
        return task_text(task, "raw") + cut_at_stop(rec["text"], WEAK_STOP)
    text = chat_text(rec["format"], rec["text"])
    m = _FENCED.search(text)
    return m.group(1) if m else text


def test_real_outputs_become_clean_programs(outputs, humaneval):
    defined = 0
    for rec in outputs:
        task = humaneval[rec["task_id"]]
        program = program_of(rec, humaneval)
        kinds = top_level(program)  # parses
        assert all(k == "import" or k.split()[0] in ("def", "class", "assign") for k in kinds), (rec, kinds)
        defined += f"def {task.entry_point}" in kinds
        if rec["model"].startswith("qwen"):
            assert f"def {task.entry_point}" in kinds, rec
    assert defined >= len(outputs) - 4  # SmolLM2 sometimes writes no function at all


def test_real_outputs_sanitize_the_same_with_or_without_safe_stops(outputs, humaneval):
    """The outputs were generated with no stop strings: cutting them at each format's stops changes no
    program (the stops are safe), while cutting raw ones at ``\ndef `` does (it is not)."""
    from tinyforge.generate.prompts import stops

    cut_by_def = 0
    for rec in outputs:
        full = program_of(rec, humaneval)
        cut = dict(rec, text=cut_at_stop(rec["text"], stops(rec["format"])))
        assert program_of(cut, humaneval) == full, (rec["model"], rec["format"], rec["task_id"])
        if rec["format"] == "raw" and rec["model"].startswith("qwen"):
            cut = dict(rec, text=cut_at_stop(rec["text"], ["\ndef "]))
            cut_by_def += program_of(cut, humaneval) != full
    assert cut_by_def >= 1  # HumanEval/72: the model's helper `is_balanced` follows the entry point


def test_real_outputs_truncated_anywhere_still_give_a_program_that_parses(outputs, humaneval):
    for rec in outputs[::3]:
        text = rec["text"]
        for frac in (0.1, 0.35, 0.6, 0.85):
            program = program_of(dict(rec, text=text[: int(len(text) * frac)]), humaneval)
            ast.parse(program)


JUNK = ["```", "```python", "    ", '"""', "'''", "(", ")", "def", "class X:", "@", "if __name__ == '__main__':",
        "\x0c", "\u2028", "\r", "return", "from . import x", "#", "\\", "\x00", "break", "yield 1",
        "nonlocal x", "from __future__ import braces", "    break", "def f(a, a):", "match x:"]  # fmt: skip


def test_real_outputs_with_junk_spliced_in_always_give_a_program_that_compiles(outputs, humaneval):
    rng = random.Random(1)
    for _ in range(600):
        rec = rng.choice(outputs)
        task = humaneval[rec["task_id"]]
        lines = rec["text"].split("\n")
        for _ in range(rng.randint(1, 6)):
            extra = lines[rng.randrange(len(lines))] if rng.random() < 0.5 else ""
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(JUNK) + extra)
        if rng.random() < 0.5:
            lines = lines[: rng.randrange(len(lines))]
        mode = rng.choice(["raw", "chat"])
        entry = task.entry_point if rng.random() < 0.9 else None
        program = sanitize("\n".join(lines), entry, task.prompt if rng.random() < 0.8 else None, mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences that the junk made
            compile(program, "<program>", "exec")


def _brute_longest_prefix(code: str) -> str:
    lines = code.split("\n")
    for end in range(len(lines), -1, -1):
        candidate = "\n".join(lines[:end])
        try:
            ast.parse(candidate)
        except SyntaxError:
            continue
        return candidate
    return ""


def test_longest_parsable_prefix_matches_brute_force_on_real_outputs(outputs, humaneval):
    """The backoff jumps to the line the parser failed on; it finds what trying every line finds."""
    n = 0
    for rec in outputs:
        text = rec["text"]
        if rec["format"] == "raw":
            text = humaneval[rec["task_id"]].prompt + text
        for frac in (0.3, 0.55, 0.8, 1.0):
            code = text[: int(len(text) * frac)]
            if not code.endswith("\n"):
                code = code.rsplit("\n", 1)[0] + "\n" if "\n" in code else ""
            fast = longest_parsable_prefix(code)
            assert fast.rstrip("\n") == _brute_longest_prefix(code).rstrip("\n"), (rec["task_id"], frac)
            n += 1
    assert n == 4 * len(outputs)


# Passes of the sanitized programs when these tests were written (HumanEval's own tests): a floor, so a
# change that loses real passes fails here.
SANITIZED_FLOOR = {
    ("qwen2.5-coder-0.5b-instruct", "raw"): 29,
    ("qwen2.5-coder-0.5b-instruct", "chat"): 12,
    ("qwen2.5-coder-0.5b-instruct", "chat+prefix"): 13,
    ("smollm2-135m-instruct", "chat"): 1,
}


def test_real_outputs_score_at_least_as_well_as_naive_handling(outputs, humaneval, score_pool):
    from tinyforge.evaluate.score import score

    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in outputs:
        groups.setdefault((rec["model"], rec["format"]), []).append(rec)
    table = {}
    for key, recs in sorted(groups.items()):
        tasks = [humaneval[r["task_id"]] for r in recs]
        passed = {}
        for how, make in (("naive", naive_program), ("sanitized", program_of)):
            samples = [{"task_id": r["task_id"], "solution": make(r, humaneval)} for r in recs]
            _, results = score("humaneval", samples, pool=score_pool, tasks=tasks)
            passed[how] = sum(r.passed for r in results)
        table[key] = (passed["naive"], passed["sanitized"], len(recs))
    print("\nmodel, format: (naive, sanitized, n)")
    for key, row in table.items():
        print(f"  {key[0]}, {key[1]}: {row}")
    for key, (naive, sanitized, _) in table.items():
        assert sanitized >= naive, (key, table[key])
        assert sanitized >= SANITIZED_FLOOR.get(key, 0), (key, table[key])
    qwen = {k[1]: v for k, v in table.items() if k[0].startswith("qwen")}
    assert qwen["raw"][1] > qwen["raw"][0]  # the weak stop list cuts HumanEval/72's helper
    assert qwen["chat"][1] > qwen["chat"][0]  # "```\npython\n..." blocks, truncated answers
