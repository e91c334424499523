"""Output comparison with evalplus semantics, run in the trusted parent process.

This re-implements the checks of evalplus 0.3.1 (``evalplus/eval/__init__.py``: ``unsafe_execute``,
``is_floats``, ``untrusted_check``; ``evalplus/eval/_special_oracle.py``; defaults in
``evalplus/config.py``) for HumanEval+ and MBPP+. There the comparison runs inside the child
process next to the sample, so a sample can fake it (an object whose ``__eq__`` returns True).
Here both sides arrive as plain data decoded by ``tinyforge.plaindata``, and the EXPECTED value's
type drives every check; only builtin operations on builtin data are ever called.

Per-input rule, in evalplus order:
  1. ``exact = actual == expected`` (so 1 == 1.0 == True match, [1] != (1,)).
  2. special oracles (below) may override ``exact``;
  3. ``atol`` becomes 1e-6 if it is 0 and ``expected`` is a float or a non-empty list/tuple of
     floats; in evalplus this change STICKS for the later inputs of the same run (base and plus
     inputs are separate runs), which ``compare_outputs`` mirrors;
  4. if not exact and atol != 0: types must be identical, lists/tuples of equal length, and
     ``np.allclose(actual, expected, rtol=1e-7, atol=atol)`` (NaN never matches); any error fails.
     Otherwise the verdict is ``exact``.

One deliberate difference: HumanEval/32 (``find_zero``), see ``_find_zero_ok``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_GT_TIME_LIMIT_FACTOR",
    "DEFAULT_MIN_TIME_LIMIT",
    "DEFAULT_TIMEOUT_PER_TASK",
    "MBPP_OUTPUT_NOT_NONE_TASKS",
    "MBPP_OUTPUT_SET_EQ_TASKS",
    "MISSING",
    "compare_outputs",
    "is_floats",
    "not_none_view",
    "outputs_match",
    "task_timeout",
    "time_limits",
]

# evalplus/config.py: DEFAULT_GT_TIME_LIMIT_FACTOR = 4.0, DEFAULT_MIN_TIME_LIMIT = 1.0.
DEFAULT_GT_TIME_LIMIT_FACTOR = 4.0
DEFAULT_MIN_TIME_LIMIT = 1.0
# evalplus/eval/__init__.py untrusted_check: os.getenv("EVALPLUS_TIMEOUT_PER_TASK", 60).
DEFAULT_TIMEOUT_PER_TASK = 60.0

# MBPP+ tasks whose reference returns a re.Match or None: evalplus stores only ``out is not None``
# for the reference, and accepts a sample whose ``not_none_view`` equals it.
MBPP_OUTPUT_NOT_NONE_TASKS = frozenset({"check_str", "text_match_three", "text_starta_endb"})
# MBPP+ tasks compared as ``set(actual) == set(expected)``.
MBPP_OUTPUT_SET_EQ_TASKS = frozenset(
    {
        "similar_elements",  # Mbpp/2
        "find_char_long",  # Mbpp/7
        "common_in_nested_lists",  # Mbpp/111
        "extract_singly",  # Mbpp/140
        "larg_nnum",  # Mbpp/232
        "intersection_array",  # Mbpp/249
        "find_dissimilar",  # Mbpp/579
        "Diff",  # Mbpp/769
    }
)

# Relative slack for the find_zero residual (see _find_zero_ok).
FIND_ZERO_RTOL = 1e-9


class _Missing:
    """Marks an input whose sample run produced no output (exception, timeout, bad data)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def not_none_view(out: Any) -> Any:
    """What must cross the sandbox for MBPP_OUTPUT_NOT_NONE_TASKS (a re.Match cannot).

    Apply it INSIDE the sandbox to the sample's output; the reference's expected value is
    ``out is not None`` (what evalplus' ``trusted_exec(output_not_none=True)`` stores). A bool
    passes through, as in evalplus, which compares a bool output with ``==``.
    """
    return out if type(out) is bool else out is not None


def time_limits(
    canonical_times: Sequence[float],
    factor: float = DEFAULT_GT_TIME_LIMIT_FACTOR,
    min_limit: float = DEFAULT_MIN_TIME_LIMIT,
) -> list[float]:
    """Per-input limits: evalplus' ``max(min_time_limit, gt_time_limit_factor * t)``."""
    return [max(min_limit, factor * t) for t in canonical_times]


def task_timeout(
    limits: Sequence[float], *, per_task: float = DEFAULT_TIMEOUT_PER_TASK, fast_check: bool = True
) -> float:
    """Seconds the parent waits for one run over a task's inputs before killing it.

    evalplus: ``timeout = min(EVALPLUS_TIMEOUT_PER_TASK=60, sum(limits)) + 1``, plus 1 more when
    not ``fast_check`` (evalplus' ``evaluate`` uses fast_check unless test details are asked
    for), then ``p.join(timeout=timeout + 1)``. A run still alive then counts as a timeout.
    """
    return min(per_task, sum(limits)) + 1.0 + (0.0 if fast_check else 1.0) + 1.0


def is_floats(x: Any) -> bool:
    """evalplus' ``is_floats`` on plain data: a float, or a non-empty list/tuple of floats only."""
    if isinstance(x, float):
        return True
    if type(x) in (list, tuple) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _surface_area_oracle(base_edge: Any, height: Any) -> int:
    # Mbpp/581: total surface of a square pyramid whose "height" is the apex height.
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 2 * base_edge * slant)


def _digit_distance_oracle(num1: Any, num2: Any) -> int:
    # Mbpp/558: sum of per-digit differences after zero-padding both numbers to equal length.
    # Like evalplus' oracle, a sign ("-5") makes int() fail, which fails the input.
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width), strict=True))


def _is_real_number(x: Any) -> bool:
    return type(x) in (int, float, bool) and math.isfinite(x)


def _is_root(coeffs: Any, x: Any, atol: float) -> bool:
    """|poly(coeffs, x)| <= atol + FIND_ZERO_RTOL * sum(|c_i| |x|^i), evaluated exactly."""
    try:
        if type(coeffs) not in (list, tuple) or not all(map(_is_real_number, [x, *coeffs])):
            return False
    except OverflowError:  # an int too large for a float: evalplus' math.pow fails too
        return False
    xf = Fraction(x)
    value = Fraction(0)
    scale = Fraction(0)
    power = Fraction(1)
    for c in coeffs:
        term = Fraction(c) * power
        value += term
        scale += abs(term)
        power *= xf
    return abs(value) <= Fraction(atol) + Fraction(FIND_ZERO_RTOL) * scale


def _find_zero_ok(inp: Sequence[Any], expected: Any, actual: Any, atol: float) -> bool:
    """HumanEval/32: any root of the input polynomial passes.

    evalplus 0.3.1 checks ``abs(_poly(*inp, out)) <= atol`` and then ``continue``s past the lines
    that record a pass (``details[i] = True; progress.value += 1``), so every sample, the
    canonical solution included, ends with ``len(details) != len(inputs)`` and status "fail";
    HumanEval+/32 is unsolvable there (evalplus PR #201 introduced the ``continue``; its comments
    report the problem). We evaluate the polynomial of the input coefficients ourselves,
    exactly with fractions, so rounding cannot decide the verdict, and accept
    |p(x)| <= atol + 1e-9 * sum(|c_i x^i|). Everything evalplus' absolute float check
    (atol = 1e-4 in the data) accepts passes here too; the relative part only adds roots of
    polynomials with huge terms, where even the correctly rounded root misses 1e-4.

    The reference itself is no root on 36 of the 828 HumanEval+ v0.1.0 plus inputs: its Newton
    iteration stops after 1000 steps without converging (34 of them have a real root; 2 have
    none, their last coefficient being 0). Such an input does not tell right from wrong by the
    reference, so it passes whatever the sample returns, as evalplus skips Mbpp/164.
    """
    if len(inp) != 1:
        return False
    return _is_root(inp[0], actual, atol) or not _is_root(inp[0], expected, atol)


def _bench_name(bench: str) -> str:
    """ "HumanEval+", "humanevalplus", "mbpp+" ... -> "humaneval" / "mbpp"; others unchanged."""
    name = bench.lower().rstrip("+")
    return name.removesuffix("plus") if name in ("humanevalplus", "mbppplus") else name


def _check(
    expected: Any, actual: Any, atol: float, bench: str, entry_point: str, inp: Sequence[Any]
) -> tuple[bool, float]:
    """(verdict, atol for the next input) for one input, following ``unsafe_execute``."""
    if actual is MISSING:
        return False, atol
    bench = _bench_name(bench)
    exact = actual == expected
    if bench == "mbpp":
        try:
            if entry_point == "are_equivalent":  # Mbpp/164: reference is wrong, input skipped
                exact = True
            elif entry_point == "sum_div":  # Mbpp/295
                exact = exact or actual == 0
            elif entry_point == "surface_Area":  # Mbpp/581
                exact = exact or abs(actual - _surface_area_oracle(*inp)) <= atol
            elif entry_point == "digit_distance_nums":  # Mbpp/558
                exact = exact or actual == _digit_distance_oracle(*inp)
            elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                exact = set(actual) == set(expected)
            elif entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
                exact = not_none_view(actual) == expected
        except (ArithmeticError, ValueError, TypeError):
            return False, atol
    if bench == "humaneval" and entry_point == "find_zero":
        return _find_zero_ok(inp, expected, actual, atol), atol

    if atol == 0 and is_floats(expected):
        atol = 1e-6
    if exact or atol == 0:
        return bool(exact), atol
    if type(actual) is not type(expected):
        return False, atol
    if type(expected) in (list, tuple) and len(actual) != len(expected):
        return False, atol
    try:
        with np.errstate(all="ignore"):
            return bool(np.allclose(actual, expected, rtol=1e-07, atol=atol)), atol
    except Exception:  # ragged, non-numeric, overflowing: not close
        return False, atol


def outputs_match(
    expected: Any, actual: Any, atol: float, *, bench: str, entry_point: str, inp: Sequence[Any]
) -> bool:
    """Whether ``actual`` passes for one input. ``bench`` is "humaneval" or "mbpp".

    ``atol`` is the task's (or, to mirror evalplus exactly over a run, the sticky value
    ``compare_outputs`` carries). ``inp`` is the input's argument list, used by special oracles.
    """
    return _check(expected, actual, atol, bench, entry_point, inp)[0]


def compare_outputs(
    expected: Sequence[Any],
    actual: Sequence[Any],
    atol: float,
    *,
    bench: str,
    entry_point: str,
    inputs: Sequence[Sequence[Any]],
) -> list[bool]:
    """Per-input verdicts for one run (all base inputs, or all plus inputs), in order.

    Use ``MISSING`` in ``actual`` where the sample raised, timed out or sent bad data. The run
    passes when every verdict is True. Carries evalplus' sticky atol between inputs.
    """
    if not len(expected) == len(actual) == len(inputs):
        raise ValueError("expected, actual and inputs differ in length")
    verdicts = []
    for exp, act, inp in zip(expected, actual, inputs, strict=True):
        ok, atol = _check(exp, act, atol, bench, entry_point, inp)
        verdicts.append(ok)
    return verdicts
