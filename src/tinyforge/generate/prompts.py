"""Prompt formats for code benchmarks, recorded by name so that results say exactly what the model saw.

``code_prompt(task, fmt)`` gives, for a ``CodeTask``:

* ``raw``: text for the model to continue, ``task.prompt.strip() + "\\n"``. This is what EvalPlus and the
  Qwen2.5-Coder evaluation suite send for direct completion: for HumanEval(+) and BigCodeBench the
  imports, signature and docstring, for MBPP(+) the task as a module docstring with one example assert
  (the model writes the whole function, named as in the assert).
* ``chat``: a one-message conversation, EvalPlus' instruction followed by the task in a fenced block.
  For BigCodeBench the task is its natural-language ``instruct_prompt`` (BigCodeBench's "instruct" split);
  elsewhere the same text as ``raw``.
* ``chat+prefix``: ``chat`` plus the start of the assistant's answer (EvalPlus' response prefix ending in
  an opened ```python fence), to be continued rather than answered: transformers'
  ``apply_chat_template(..., continue_final_message=True)``, vLLM's ``continue_final_message``. The answer
  handed to ``sanitize`` must be the prefix plus the continuation (``chat_text``).

With an engine: ``code_prompt(task, fmt)`` in, ``stops(fmt)`` as stop strings, and
``to_program(task, fmt, completion_text)`` out (``sanitize`` with the right mode and prompt).

Why ``chat`` has no response prefix by default: the sanitizer already finds the code in a chat answer
whatever the prose around it, and continuing an assistant message is not portable (OpenAI-style servers
other than vLLM cannot). Measured on the 21 HumanEval tasks in ``tests/data/model_outputs``
(Qwen2.5-Coder-0.5B-Instruct, greedy, sanitized): ``chat`` 12/21, ``chat+prefix`` 13/21, the one
difference a task where the plain chat answer only repeated the stub; the prefixed answers were not
shorter either (19.5k characters up to the closing-fence stop against 17.1k for plain chat, which ends
at the end-of-turn token right after its block). Too small a difference to justify the portability cost;
``chat+prefix`` stays available, recorded by name, for comparing with EvalPlus' own numbers.

Nothing beyond the benchmark's own prompt is shown: no canonical solution, no tests (MBPP's one example
assert is part of its official prompt).
"""

from __future__ import annotations

from typing import Literal

from tinyforge.data import CodeTask
from tinyforge.generate.sanitize import sanitize, stop_strings

__all__ = [
    "FORMATS",
    "INSTRUCTION",
    "RESPONSE_PREFIX",
    "Format",
    "chat_text",
    "code_prompt",
    "is_chat",
    "sanitize_mode",
    "stops",
    "task_text",
    "to_program",
]

Format = Literal["raw", "chat", "chat+prefix"]
FORMATS: tuple[str, ...] = ("raw", "chat", "chat+prefix")

INSTRUCTION = "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and passes "
    "corresponding tests:\n```python\n"
)


def task_text(task: CodeTask, fmt: str) -> str:
    """The benchmark's own text for the task, as shown in format ``fmt``."""
    if fmt != "raw" and task.extra.get("instruct_prompt"):  # BigCodeBench's instruct split
        return str(task.extra["instruct_prompt"]).strip() + "\n"
    return task.prompt.strip() + "\n"


def code_prompt(task: CodeTask, fmt: str) -> str | list[dict[str, str]]:
    """The prompt for ``task`` in format ``fmt``: a string to continue (raw) or chat messages."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; known: {', '.join(FORMATS)}")
    text = task_text(task, fmt)
    if fmt == "raw":
        return text
    messages = [{"role": "user", "content": f"{INSTRUCTION}\n```\n{text.rstrip()}\n```\n"}]
    if fmt == "chat+prefix":
        messages.append({"role": "assistant", "content": RESPONSE_PREFIX})
    return messages


def is_chat(fmt: str) -> bool:
    """Whether format ``fmt`` is a conversation (rendered with the tokenizer's chat template)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt != "raw"


def sanitize_mode(fmt: str) -> Literal["raw", "chat"]:
    """The ``sanitize`` mode for answers to prompts of format ``fmt``."""
    return "chat" if is_chat(fmt) else "raw"


def stops(fmt: str) -> list[str]:
    """Safe stop strings for format ``fmt``: the raw ones (see ``sanitize``), none for ``chat`` (the
    end-of-turn token ends it), and the closing fence for ``chat+prefix`` (the answer was opened as a
    python block; EvalPlus stops there too)."""
    if fmt == "chat+prefix":
        return ["\n```"]
    return stop_strings(sanitize_mode(fmt))


def chat_text(fmt: str, answer: str) -> str:
    """The whole answer as the sanitizer should see it: the response prefix (if any) plus what the model
    wrote after it."""
    if fmt == "chat+prefix" and not answer.startswith(RESPONSE_PREFIX):
        return RESPONSE_PREFIX + answer
    return answer


def to_program(task: CodeTask, fmt: str, output: str) -> str:
    """The program in the model's ``output`` for ``task`` prompted in format ``fmt``: ``sanitize`` with the
    right mode and prompt (raw: the text the model continued; chat: the task's code prompt, whose imports
    and helpers the answer may leave out and the tests may call)."""
    if fmt == "raw":
        return sanitize(output, task.entry_point, prompt=task_text(task, "raw"), mode="raw")
    return sanitize(chat_text(fmt, output), task.entry_point, prompt=task.prompt, mode=sanitize_mode(fmt))
