"""Prompt formats for code and math benchmarks, recorded by name so that results say exactly what the
model saw. ``task_prompt(task, fmt, shots)`` and ``task_stops(task, fmt)`` serve both kinds of task.

Code (``CodeTask``):

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

Math (``MathTask``), formats ``raw`` and ``chat``:

* ``raw`` (base models): few-shot text to continue. GSM8K: the first 8 problems of GSM8K *train* with their
  worked solutions (calculator annotations removed), each ending "The answer is N." (``math_shots``);
  MATH-500 and AIME: the 4 worked examples of Minerva's MATH prompt (Lewkowycz et al. 2022), each ending
  "Final Answer: The final answer is $X$. I hope it is correct." Stops at the next "Question:" /
  "Problem:".
* ``chat`` (instruct models): the question, then "Please reason step by step, and put your final answer
  within \\boxed{}." (the chain-of-thought instruction of Qwen2.5-Math's evaluation).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from tinyforge.data import CodeTask, MathTask, load_benchmark
from tinyforge.generate.sanitize import sanitize, stop_strings

__all__ = [
    "FORMATS",
    "INSTRUCTION",
    "MATH_FORMATS",
    "MATH_INSTRUCTION",
    "RESPONSE_PREFIX",
    "Format",
    "chat_text",
    "code_prompt",
    "is_chat",
    "math_prompt",
    "math_shots",
    "sanitize_mode",
    "stops",
    "task_prompt",
    "task_stops",
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


# --- math ---------------------------------------------------------------------------------------------

MATH_FORMATS: tuple[str, ...] = ("raw", "chat")
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
GSM8K_SHOTS = 8
# Minerva's four worked MATH examples (Lewkowycz et al. 2022, appendix), the usual raw prompt for MATH.
MINERVA_SHOTS: tuple[tuple[str, str], ...] = (
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, "
        "and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which "
        "gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
        "Final Answer: The final answer is $[2,5)$. I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = "
        "\\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how "
        "many times must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds "
        "of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of "
        "$2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n"
        "\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\n"
        "Final Answer: The final answer is $16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a "
        "solution $(x, y)$ where $x$ and $y$ are both nonzero, find $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we "
        "also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
        "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    ),
)


def math_shots(bench: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[tuple[str, str], ...]:
    """The worked examples of ``bench``'s raw prompt: (question, solution) pairs (see the module docstring)."""
    if bench.startswith("gsm8k"):
        train: list[MathTask] = load_benchmark("gsm8k-train", data_dir)[:GSM8K_SHOTS]
        return tuple((t.question, f"{t.solution}\nThe answer is {t.answers[0]}.") for t in train)
    return MINERVA_SHOTS


def _shot_labels(bench: str) -> tuple[str, str]:
    return ("Question: ", "Answer: ") if bench.startswith("gsm8k") else ("Problem:\n", "Solution:\n")


def math_prompt(
    task: MathTask, fmt: str, shots: Sequence[tuple[str, str]] = ()
) -> str | list[dict[str, str]]:
    """The prompt for a math task: few-shot text to continue (``raw``, with ``shots`` from ``math_shots``)
    or a one-message conversation asking for the answer in ``\\boxed{}`` (``chat``)."""
    if fmt not in MATH_FORMATS:
        raise ValueError(
            f"unknown prompt format {fmt!r} for a math benchmark; known: {', '.join(MATH_FORMATS)}"
        )
    if fmt == "chat":
        return [{"role": "user", "content": f"{task.question.strip()}\n{MATH_INSTRUCTION}"}]
    if not shots:
        raise ValueError("the raw math format needs its worked examples (math_shots)")
    q, a = _shot_labels(task.bench)
    sep = "\n" if task.bench.startswith("gsm8k") else "\n\n"
    body = "".join(f"{q}{question.strip()}{sep}{a}{solution.strip()}\n\n" for question, solution in shots)
    return f"{body}{q}{task.question.strip()}{sep}{a}".rstrip(" ")


def task_prompt(
    task: CodeTask | MathTask, fmt: str, shots: Sequence[tuple[str, str]] = ()
) -> str | list[dict[str, str]]:
    """The prompt for any task: ``code_prompt`` or ``math_prompt``."""
    return math_prompt(task, fmt, shots) if isinstance(task, MathTask) else code_prompt(task, fmt)


def task_stops(task: CodeTask | MathTask, fmt: str) -> list[str]:
    """Stop strings for a task's format: ``stops`` for code; for raw math the start of the next example."""
    if not isinstance(task, MathTask):
        return stops(fmt)
    if fmt == "chat":
        return []
    return ["\nQuestion:"] if task.bench.startswith("gsm8k") else ["\nProblem:"]
