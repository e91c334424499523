import math

import pytest

from tinyforge import plaindata
from tinyforge.evaluate.compare import (
    MISSING,
    compare_outputs,
    is_floats,
    not_none_view,
    outputs_match,
    task_timeout,
    time_limits,
)


def he(expected, actual, atol=0.0, entry_point="f", inp=()):
    return outputs_match(expected, actual, atol, bench="humaneval", entry_point=entry_point, inp=list(inp))


def mbpp(expected, actual, entry_point, inp, atol=0.0):
    return outputs_match(expected, actual, atol, bench="mbpp", entry_point=entry_point, inp=list(inp))


# ------------------------------------------------------------------ generic rule


def test_exact_match() -> None:
    assert he(3, 3)
    assert he("abc", "abc")
    assert he([1, [2, "x"]], [1, [2, "x"]])
    assert he({"a": (1, 2)}, {"a": (1, 2)})
    assert he(None, None)
    assert not he(3, 4)
    assert not he("abc", "abd")
    assert not he(None, 0)
    assert not he(3, MISSING)


def test_python_equality_decides_before_types() -> None:
    # evalplus starts with `out == exp`, so Python's numeric equality wins.
    assert he(1, 1.0)
    assert he(1.0, 1)
    assert he(1, True)
    assert he([0, 1], [False, True])
    assert he({1, 2}, {2.0, 1.0})


def test_tuple_is_not_list() -> None:
    assert not he([1, 2], (1, 2))
    assert not he((1, 2), [1, 2])
    # floats switch the tolerance on, and then the exact type check fails.
    assert not he([1.0, 2.0], (1.0, 2.0))
    assert not he((1.5,), [1.5])


def test_float_tolerance_is_forced_for_float_outputs() -> None:
    assert he(0.3, 0.1 + 0.2)
    assert he(1.0, 1.0 + 5e-7)  # atol 1e-6
    assert not he(1.0, 1.0 + 5e-6)
    assert he(1e9, 1e9 + 50)  # rtol 1e-7 * 1e9 = 100
    assert not he(1e9, 1e9 + 150)
    assert he([1.0, 2.5], [1.0 + 1e-7, 2.5 - 1e-7])
    assert not he([1.0, 2.5], [1.0 + 1e-7])  # lengths differ
    assert he((0.1, 0.2), (0.1, 0.2 + 1e-9))


def test_task_atol() -> None:
    assert not he(1.0, 1.00005)
    assert he(1.0, 1.00005, atol=1e-4)
    assert not he(1.0, 1.0002, atol=1e-4)
    # with an atol, types must match exactly: an int output never "approximates" a float.
    assert not he(2.5, 2, atol=1.0)
    assert not he(3, 3.0000001, atol=1e-4)


def test_int_expected_has_no_tolerance() -> None:
    assert not he(3, 3.0000001)
    assert not he([1, 2], [1, 2.0000001])


def test_is_floats() -> None:
    assert is_floats(1.5)
    assert is_floats([1.5, 2.0])
    assert is_floats((1.5,))
    assert not is_floats([])
    assert not is_floats([1.5, 2])
    assert not is_floats([[1.5]])
    assert not is_floats(1)
    assert not is_floats(True)
    assert not is_floats(1j)


def test_nan_never_matches() -> None:
    # nan == nan is False, and np.allclose(nan, nan) is False: evalplus fails these.
    assert not he(math.nan, math.nan)
    assert not he([1.0, float("nan")], [1.0, float("nan")])
    assert not he([1.0, float("nan")], [1.0, float("nan")], atol=1e-6)
    # decoded NaNs are distinct objects, so list equality (which tries identity first) fails too.
    nan_list = plaindata.loads(plaindata.dumps([math.nan]))
    assert nan_list[0] is not plaindata.loads(plaindata.dumps([math.nan]))[0]
    assert not he(nan_list, plaindata.loads(plaindata.dumps([math.nan])))
    assert not he(1.0, math.nan)
    assert not he(math.nan, 1.0)
    assert he(math.inf, math.inf)
    assert not he(math.inf, -math.inf)


def test_nested_lists_of_floats() -> None:
    # is_floats only looks one level deep: nested float lists compare exactly unless the task has an atol.
    assert he([[1.0, 2.0]], [[1.0, 2.0]])
    assert not he([[1.0, 2.0]], [[1.0, 2.0 + 1e-9]])
    assert he([[1.0, 2.0]], [[1.0, 2.0 + 1e-9]], atol=1e-6)
    assert not he([[1.0, 2.0]], [[1.0, 2.0, 3.0]], atol=1e-6)  # ragged -> allclose raises -> fail
    assert not he([[1.0, 2.0]], [["a", 2.0]], atol=1e-6)
    assert he([1 + 1j], [1 + 1j + 1e-9], atol=1e-6)


def test_non_numeric_values_fail_the_tolerance_path() -> None:
    assert not he(["a"], ["b"], atol=1e-6)
    assert not he({"a": 1.0}, {"a": 1.0 + 1e-9}, atol=1e-6)
    assert not he([10**400], [10**400 + 1], atol=1e-6)
    assert not he(1.0, None)
    assert not he(1.0, "1.0")


def test_atol_sticks_to_later_inputs_like_evalplus() -> None:
    # evalplus' unsafe_execute overwrites its atol with 1e-6 at the first float expectation and
    # keeps it for the rest of that run.
    expected = [[1, 2], 2.5, [1, 2]]
    actual = [[1, 2], 2.5, [1, 2.0000001]]
    inputs = [[0], [1], [2]]
    assert compare_outputs(expected, actual, 0, bench="humaneval", entry_point="f", inputs=inputs) == [
        True,
        True,
        True,
    ]
    assert not he([1, 2], [1, 2.0000001])  # alone, with the task's atol 0
    assert compare_outputs(
        expected[::-1], actual[::-1], 0, bench="humaneval", entry_point="f", inputs=inputs
    ) == [False, True, True]
    # an input whose sample failed does not switch it on.
    assert compare_outputs(
        [2.5, [1, 2]], [MISSING, [1, 2.0000001]], 0, bench="humaneval", entry_point="f", inputs=inputs[:2]
    ) == [False, False]
    with pytest.raises(ValueError):
        compare_outputs([1], [1, 2], 0, bench="humaneval", entry_point="f", inputs=[[1]])


# ------------------------------------------------------------------ HumanEval/32 find_zero


def poly(xs: list, x: float) -> float:
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def canonical_find_zero(xs: list) -> float:
    """The algorithm of the HumanEval/32 canonical solution: Newton from 0, |f| < 1e-5, 1000 steps."""
    dxs = [xs[i] * i for i in range(1, len(xs))]
    x = 0.0
    for _ in range(1000):
        fx = poly(xs, x)
        if abs(fx) < 1e-5:
            break
        x = x - fx / poly(dxs, x)
    return x


def fz(xs: list, actual, atol: float = 1e-4) -> bool:
    expected = canonical_find_zero(xs)
    return outputs_match(expected, actual, atol, bench="humaneval", entry_point="find_zero", inp=[xs])


@pytest.mark.parametrize("xs", [[1, 2], [-6, 11, -6, 1], [-10, -2], [-3, -6, -7, 7], [5, 10, -3, 1]])
def test_find_zero_canonical_passes(xs) -> None:
    assert fz(xs, canonical_find_zero(xs))


def test_find_zero_accepts_any_root() -> None:
    xs = [-6, 11, -6, 1]  # roots 1, 2, 3; Newton from 0 finds 1
    assert fz(xs, 3.0)
    assert fz(xs, 2)
    assert fz(xs, 2.0 + 1e-6)
    assert not fz(xs, 2.5)
    assert fz([1, 2], -0.5)
    assert not fz([1, 2], 0.0)


@pytest.mark.parametrize("bad", [None, "x", [-0.5], (-0.5,), math.nan, math.inf, 10**400, -0.5j, MISSING])
def test_find_zero_rejects_non_numbers(bad) -> None:
    assert not fz([1, 2], bad)


def test_find_zero_huge_terms_use_relative_slack() -> None:
    # x^5 = 2e20: the correctly rounded root leaves |p(x)| ~ 1e5 because p' ~ 1e17, so no float
    # passes an absolute 1e-4; the exact residual is tiny relative to the terms, so it passes here.
    xs = [-2 * 10**20, 0, 0, 0, 0, 1]
    root = 2e20 ** (1 / 5)
    assert abs(poly(xs, root)) > 1e-4
    for x in (root, math.nextafter(root, 0), math.nextafter(root, math.inf)):
        assert outputs_match(root, x, 1e-4, bench="humaneval", entry_point="find_zero", inp=[xs])
    assert not outputs_match(
        root, root * (1 + 1e-6), 1e-4, bench="humaneval", entry_point="find_zero", inp=[xs]
    )


def test_find_zero_skips_inputs_the_reference_cannot_solve() -> None:
    # HumanEval+ v0.1.0 plus input with a zero leading coefficient and no real root: the
    # reference's Newton iteration never converges, so the input cannot discriminate.
    xs = [10, 17, 26, -6, 37, 0]
    assert abs(poly(xs, canonical_find_zero(xs))) > 1e-4
    assert fz(xs, canonical_find_zero(xs))
    assert fz(xs, 0.0)
    # ...but the sample still must have produced an output.
    assert not fz(xs, MISSING)


def test_evalplus_fails_even_the_canonical_find_zero() -> None:
    """Documents the evalplus 0.3.1 bug our oracle fixes (see compare._find_zero_ok)."""
    evalplus_eval = pytest.importorskip("evalplus.eval")
    code = (
        "import math\n"
        "def poly(xs, x):\n    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n"
        "def find_zero(xs):\n    return -xs[0] / xs[1]\n"
    )
    inputs = [[[1, 2]], [[-10, -2]]]
    expected = [-0.5, -5.0]
    stat, details = evalplus_eval.untrusted_check(
        "humaneval", code, inputs, "find_zero", expected, 1e-4, [0.0, 0.0], fast_check=False
    )
    assert (stat, list(details)) == ("fail", [])  # the exact root, still "fail"
    ours = compare_outputs(
        expected, [-0.5, -5.0], 1e-4, bench="humaneval", entry_point="find_zero", inputs=inputs
    )
    assert ours == [True, True]


# ------------------------------------------------------------------ MBPP special oracles


def test_mbpp_are_equivalent_is_skipped() -> None:
    assert mbpp(False, True, "are_equivalent", [36, 57])
    assert mbpp(False, "anything", "are_equivalent", [36, 57])
    assert not mbpp(False, MISSING, "are_equivalent", [36, 57])


def test_mbpp_sum_div() -> None:
    assert mbpp(7.0, 7, "sum_div", [8])
    assert mbpp(7.0, 0, "sum_div", [8])
    assert mbpp(7.0, 7.0000001, "sum_div", [8])  # float expectation -> atol 1e-6
    assert not mbpp(7.0, 8, "sum_div", [8])
    assert not mbpp(7.0, None, "sum_div", [8])


def test_mbpp_surface_area() -> None:
    # reference: 2*b*s + b^2 = 33; the oracle's pyramid with apex height 4: round(9 + 6 * sqrt(18.25)) = 35.
    assert mbpp(33, 33, "surface_Area", [3, 4])
    assert mbpp(33, 35, "surface_Area", [3, 4])
    assert mbpp(33, 35.0, "surface_Area", [3, 4])
    assert not mbpp(33, 34, "surface_Area", [3, 4])
    assert not mbpp(33, "35", "surface_Area", [3, 4])


def test_mbpp_digit_distance_nums() -> None:
    # reference zips the digit strings (12345 vs 9 -> |1-9| = 8); the oracle zero-pads (-> 14).
    assert mbpp(8, 8, "digit_distance_nums", [12345, 9])
    assert mbpp(8, 14, "digit_distance_nums", [12345, 9])
    assert not mbpp(8, 9, "digit_distance_nums", [12345, 9])
    assert not mbpp(3, 4, "digit_distance_nums", [-12, 15])  # oracle raises on a sign -> fail


def test_mbpp_set_equality_tasks() -> None:
    assert mbpp((3, 4), [4, 3], "similar_elements", [(3, 4, 5, 6), (5, 7, 4, 10)])
    assert mbpp((3, 4), (4, 3, 3), "similar_elements", [(3, 4, 5, 6), (5, 7, 4, 10)])
    assert not mbpp((3, 4), [4], "similar_elements", [(3, 4, 5, 6), (5, 7, 4, 10)])
    assert not mbpp((3, 4), [[3], [4]], "similar_elements", [(3, 4, 5, 6), (5, 7, 4, 10)])
    assert not mbpp((3, 4), 34, "similar_elements", [(3, 4, 5, 6), (5, 7, 4, 10)])
    # the set comparison REPLACES equality: same elements in another order and container pass.
    assert mbpp(["a", "b"], {"b": 1, "a": 2}, "Diff", [["a"], ["b"]])


def test_mbpp_output_not_none_tasks() -> None:
    # the reference returns re.Match / None; evalplus keeps `is not None`.
    assert mbpp(True, True, "check_str", ["annie"])
    assert mbpp(True, not_none_view("a match object"), "check_str", ["annie"])
    assert mbpp(True, "any non-None value", "check_str", ["annie"])
    assert not mbpp(True, None, "check_str", ["annie"])
    assert not mbpp(True, False, "check_str", ["annie"])
    assert mbpp(False, None, "text_match_three", ["ac"])
    assert mbpp(False, False, "text_starta_endb", ["ac"])
    assert not mbpp(False, 0, "text_starta_endb", ["ac"])  # 0 is not None
    assert not_none_view(None) is False and not_none_view(False) is False and not_none_view(0) is True


def test_special_oracles_belong_to_their_benchmark() -> None:
    assert not he(False, True, entry_point="are_equivalent", inp=[36, 57])
    assert not mbpp(-0.5, 0.0, "find_zero", [[1, 2]])
    assert outputs_match(False, True, 0, bench="MBPP+", entry_point="are_equivalent", inp=[1, 2])
    assert outputs_match(-0.5, -0.5, 1e-4, bench="HumanEvalPlus", entry_point="find_zero", inp=[[1, 2]])
    assert outputs_match(
        -0.5, 0.0, 1e-4, bench="humaneval+", entry_point="find_zero", inp=[[10, 17, 26, -6, 37, 0]]
    )


# ------------------------------------------------------------------ time limits


def test_time_limits_follow_evalplus_defaults() -> None:
    assert time_limits([0.001, 0.25, 0.5, 2.0]) == [1.0, 1.0, 2.0, 8.0]
    assert time_limits([0.5], factor=2.0, min_limit=0.1) == [1.0]
    assert task_timeout([1.0, 2.0]) == 3.0 + 1.0 + 1.0
    assert task_timeout([1.0] * 100) == 60.0 + 1.0 + 1.0
    assert task_timeout([1.0] * 100, fast_check=False) == 60.0 + 2.0 + 1.0
    assert task_timeout([1.0] * 100, per_task=10.0) == 12.0
