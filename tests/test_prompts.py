"""Prompt formats: what each benchmark's prompt looks like, and that no answer leaks into it."""

from __future__ import annotations

import pytest

from tinyforge.data import load_benchmark
from tinyforge.generate.prompts import (
    FORMATS,
    INSTRUCTION,
    RESPONSE_PREFIX,
    chat_text,
    code_prompt,
    is_chat,
    sanitize_mode,
    stops,
    task_text,
    to_program,
)

BENCHES = ("humaneval", "humaneval+", "mbpp", "mbpp-sanitized", "mbpp+", "bigcodebench-hard")


def rendered(prompt: str | list[dict[str, str]]) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


@pytest.fixture(scope="module")
def tasks():
    return {b: load_benchmark(b) for b in BENCHES}


def test_humaneval_formats(tasks):
    task = tasks["humaneval"][0]
    raw = code_prompt(task, "raw")
    assert raw == task.prompt  # HumanEval prompts already end in exactly one newline
    assert raw.endswith('"""\n') and "def has_close_elements" in raw
    chat = code_prompt(task, "chat")
    assert chat == [{"role": "user", "content": f"{INSTRUCTION}\n```\n{task.prompt.strip()}\n```\n"}]
    pre = code_prompt(task, "chat+prefix")
    assert pre[:1] == chat and pre[1] == {"role": "assistant", "content": RESPONSE_PREFIX}
    assert RESPONSE_PREFIX.endswith("```python\n")


def test_mbpp_plus_raw_is_the_docstring_with_one_example_assert(tasks):
    task = next(t for t in tasks["mbpp+"] if t.task_id == "Mbpp/2")
    raw = code_prompt(task, "raw")
    assert raw == task.prompt.strip() + "\n"
    assert raw.startswith('"""\n') and raw.endswith('"""\n')
    assert "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))" in raw
    assert "def " not in raw  # the model writes the whole function, named as in the assert
    content = code_prompt(task, "chat")[0]["content"]
    assert content.startswith(INSTRUCTION + "\n```\n") and raw.strip() in content


def test_bigcodebench_chat_uses_the_instruct_prompt(tasks):
    task = tasks["bigcodebench-hard"][0]
    raw = code_prompt(task, "raw")
    assert raw == task.prompt.strip() + "\n" and "def task_func(" in raw and '"""' in raw
    content = code_prompt(task, "chat")[0]["content"]
    assert task.extra["instruct_prompt"].strip() in content
    assert "You should write self-contained code starting with" in content
    assert task_text(task, "chat") != task_text(task, "raw")


def test_every_task_every_format_renders(tasks):
    for bench, ts in tasks.items():
        for task in ts:
            for fmt in FORMATS:
                p = code_prompt(task, fmt)
                assert isinstance(p, str) == (fmt == "raw")
                text = rendered(p)
                assert text.strip() and task_text(task, fmt).strip() in text, (bench, task.task_id, fmt)


def _lines(code: str) -> set[str]:
    """Distinctive lines: long enough that finding one elsewhere is not chance (`return True` is)."""
    return {ln.strip() for ln in code.splitlines() if len(ln.strip()) >= 25}


def leaks(task, text: str) -> list[str]:
    """Lines of the canonical solution or of the tests found in ``text`` that the benchmark's own prompt
    does not have (MBPP's example assert and BigCodeBench's signature are its own)."""
    own = task.prompt + "\n" + str(task.extra.get("instruct_prompt", ""))
    secret = _lines(task.canonical_solution) | _lines(task.test)
    secret |= _lines(str(task.extra.get("canonical_body", ""))) | _lines(str(task.extra.get("unittest", "")))
    return sorted(s for s in secret if s not in own and s in text)


def test_no_answer_or_test_leaks_into_any_prompt(tasks):
    checked = 0
    for bench, ts in tasks.items():
        for task in ts:
            for fmt in FORMATS:
                leaked = leaks(task, rendered(code_prompt(task, fmt)))
                assert not leaked, (bench, task.task_id, fmt, leaked[:3])
                checked += 1
    assert checked == len(FORMATS) * sum(len(ts) for ts in tasks.values())


def test_the_leak_check_has_teeth(tasks):
    # Appending the answer or the tests to the prompt is caught for (nearly) every task.
    for bench, ts in tasks.items():
        caught = sum(bool(leaks(t, t.prompt + t.canonical_solution + t.test)) for t in ts)
        assert caught >= 0.95 * len(ts), (bench, caught, len(ts))


def test_prompt_shows_only_the_benchmark_text_plus_the_fixed_wrapper(tasks):
    for bench, ts in tasks.items():
        for task in ts[:20]:
            own = task_text(task, "chat").rstrip()
            content = code_prompt(task, "chat")[0]["content"]
            assert content == f"{INSTRUCTION}\n```\n{own}\n```\n", bench


def test_unknown_format_is_an_error(tasks):
    task = tasks["humaneval"][0]
    with pytest.raises(ValueError):
        code_prompt(task, "fim")
    with pytest.raises(ValueError):
        is_chat("fim")


def test_format_helpers_and_to_program(tasks):
    assert [is_chat(f) for f in FORMATS] == [False, True, True]
    assert [sanitize_mode(f) for f in FORMATS] == ["raw", "chat", "chat"]
    assert "\nif __name__" in stops("raw") and stops("chat") == [] and stops("chat+prefix") == ["\n```"]
    assert chat_text("chat+prefix", "x = 1\n```") == RESPONSE_PREFIX + "x = 1\n```"
    assert chat_text("chat+prefix", RESPONSE_PREFIX + "x") == RESPONSE_PREFIX + "x"
    assert chat_text("chat", "hi") == "hi"

    task = next(t for t in tasks["humaneval"] if t.task_id == "HumanEval/38")
    body = task.canonical_solution[len(task.prompt) :]
    program = to_program(task, "raw", body + "\n\nprint(decode_cyclic('abc'))\n")
    assert program.startswith(task.prompt.strip()) and "print(" not in program
    # Chat: the answer leaves out encode_cyclic, which the benchmark's tests call; the prompt supplies it.
    answer = "```python\ndef decode_cyclic(s: str):\n" + body + "```\nDone."
    program = to_program(task, "chat", answer)
    assert "def encode_cyclic" in program and "def decode_cyclic" in program
    env: dict = {}
    exec(program, env)
    assert env["decode_cyclic"](env["encode_cyclic"]("abcdefg")) == "abcdefg"
    program = to_program(task, "chat+prefix", "def decode_cyclic(s: str):\n" + body + "```\n")
    assert "def decode_cyclic" in program
