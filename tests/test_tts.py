"""Test-time sampling statistics: majority vote, SC@N, oracle pass@N, recovery, the table and the plot.

Expected numbers are derived by hand in the comments; no model is needed.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from tinyforge.evaluate.metrics import wilson_interval
from tinyforge.evaluate.tts import (
    format_table,
    majority_vote,
    oracle_accuracy,
    plot_tts,
    recovery_ratio,
    sc_accuracy,
    tts_table,
)

# Three tasks of three samples each, used throughout:
#   A: keys 1 2 2, correct T F F  -> full vote "2" (wrong)
#   B: keys 3 4 4, correct F T T  -> full vote "4" (right)
#   C: keys - 5 -, correct F T F  -> full vote "5" (right; None keys do not vote)
KEYS = [["1", "2", "2"], ["3", "4", "4"], [None, "5", None]]
CORRECT = [[True, False, False], [False, True, True], [False, True, False]]
SAMPLES = [list(zip(k, c, strict=True)) for k, c in zip(KEYS, CORRECT, strict=True)]
GREEDY = [True, False, False]  # greedy accuracy 1/3


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["a", "b", "b"], 1),  # "b" has 2 votes: first "b" is sample 1
        (["b", "a", "a", "b"], 0),  # tie 2-2: "b" appears first (index 0) -> earliest wins
        (["x", "a", "b", "a", "b"], 1),  # tie a/b 2-2; "a" first appears at 1, before "b" at 2
        ([None, None, "x", "y", "y"], 3),  # None keys ignored: "y" 2 > "x" 1, first "y" at 3
        ([None, "x"], 1),
        ([None, None], None),  # nobody answered
        ([], None),
    ],
)
def test_majority_vote(keys: list[str | None], expected: int | None) -> None:
    assert majority_vote(keys) == expected


def test_sc_with_all_samples_is_the_full_vote() -> None:
    # One subset (all three samples): A wrong, B right, C right -> 2/3, exactly.
    assert sc_accuracy(SAMPLES, 3) == pytest.approx(2 / 3, abs=1e-15)


def test_sc_at_two_enumerates_subsets_with_the_earliest_tie_rule() -> None:
    # C(3,2) = 3 <= subsets, so every 2-subset is enumerated (exact):
    #   A: {0,1} "1" vs "2" tie -> "1" right; {0,2} same -> right; {1,2} "2" -> wrong      = 2/3
    #   B: {0,1} "3" vs "4" tie -> "3" wrong; {0,2} same -> wrong; {1,2} "4" -> right     = 1/3
    #   C: {0,1} "5" right; {0,2} no answer -> wrong; {1,2} "5" right                     = 2/3
    # mean = 5/9
    assert sc_accuracy(SAMPLES, 2) == pytest.approx(5 / 9, abs=1e-15)


def test_sc_at_one_is_mean_correctness_of_answered_samples() -> None:
    # A 1-subset {i} has one voter: if its key is not None it is the only key, so it wins and the vote is
    # right iff sample i is; a None key gives no winner -> wrong. N=1 subsets are uniform over i, so
    # SC@1 = mean over samples of [key is not None and correct], averaged over tasks.
    # (None, True) must count as wrong: task = [(None,T), ("7",T), ("8",F), ("7",T)] -> 2/4.
    samples = [*SAMPLES, [(None, True), ("7", True), ("8", False), ("7", True)]]
    # (1/3 + 2/3 + 1/3 + 1/2) / 4 = (11/6) / 4 = 11/24; exact since C(m,1) = m <= 200 subsets.
    assert sc_accuracy(samples, 1) == pytest.approx(11 / 24, abs=1e-15)


def test_sc_at_one_monte_carlo_when_subsets_are_too_many() -> None:
    # 300 samples > 200 subsets: Monte Carlo. 90 answered correctly -> true SC@1 = 0.3; the mean of
    # 200 draws has sd sqrt(0.3*0.7/200) ~ 0.032, and the seed is fixed, so 0.1 is a safe tolerance.
    task = [("right", True)] * 90 + [("wrong", False)] * 150 + [(None, False)] * 60
    assert sc_accuracy([task], 1, subsets=200, seed=0) == pytest.approx(0.3, abs=0.1)


def test_sc_at_two_exact_and_monte_carlo() -> None:
    # 30 samples: 10 "a" (right) at indices 0-9, then 20 "b" (wrong). A 2-subset votes "b" only when
    # both are "b" (a mixed pair ties 1-1 and "a" comes first). P(both b) = C(20,2)/C(30,2) = 190/435,
    # so SC@2 = 245/435 ~ 0.563.
    task = [("a", True)] * 10 + [("b", False)] * 20
    exact = Fraction(245, 435)
    assert sc_accuracy([task], 2, subsets=435) == pytest.approx(float(exact), abs=1e-12)  # 435 subsets
    mc = sc_accuracy([task], 2, subsets=400, seed=3)  # 435 > 400: Monte Carlo, sd ~ 0.025
    assert mc == pytest.approx(float(exact), abs=0.08)


def test_sc_is_deterministic_for_a_seed() -> None:
    task = [(str(i % 4), i % 4 == 0) for i in range(24)]
    first = sc_accuracy([task, task[::-1]], 5, subsets=50, seed=11)
    assert sc_accuracy([task, task[::-1]], 5, subsets=50, seed=11) == first
    rows = tts_table([[c for _, c in task]], [2, 5], keys=[[k for k, _ in task]], subsets=50, seed=11)
    assert rows == tts_table([[c for _, c in task]], [2, 5], keys=[[k for k, _ in task]], subsets=50, seed=11)


def test_oracle_accuracy() -> None:
    counts = [(4, 1), (2, 2), (5, 0)]
    # pass@1 is c/n per task: (1/4 + 1 + 0) / 3 = 5/12
    assert oracle_accuracy(counts, 1) == pytest.approx(5 / 12, abs=1e-15)
    # pass@2: 1 - C(3,2)/C(4,2) = 1/2; 1; 0 -> (1/2 + 1 + 0) / 3 = 1/2
    assert oracle_accuracy(counts, 2) == pytest.approx(0.5, abs=1e-15)


def test_recovery_ratio() -> None:
    assert recovery_ratio(0.6, 0.4, 0.8) == pytest.approx(0.5)  # (0.6-0.4)/(0.8-0.4)
    assert recovery_ratio(0.3, 0.4, 0.8) == pytest.approx(-0.25)  # voting below greedy
    assert recovery_ratio(0.5, 0.4, 0.4) is None  # no gap: undefined


def test_tts_table_rows() -> None:
    rows = tts_table(CORRECT, [3, 1, 2, 2], keys=KEYS, greedy=GREEDY)
    assert [r["n"] for r in rows] == [1, 2, 3]  # sorted, duplicate dropped
    # oracle: pass@1 = (1/3 + 2/3 + 1/3)/3 = 4/9; pass@2 = (2/3 + 1 + 2/3)/3 = 7/9; pass@3 = 1
    assert [r["oracle"] for r in rows] == pytest.approx([4 / 9, 7 / 9, 1.0])
    # SC: @1 = 4/9 (mean correctness), @2 = 5/9 and @3 = 2/3 (tests above)
    assert [r["sc"] for r in rows] == pytest.approx([4 / 9, 5 / 9, 2 / 3])
    # recovery with greedy 1/3: (4/9-3/9)/(4/9-3/9) = 1; (5/9-3/9)/(7/9-3/9) = 1/2; (2/3-1/3)/(1-1/3) = 1/2
    assert [r["recovery"] for r in rows] == pytest.approx([1.0, 0.5, 0.5])
    assert all(r["greedy"] == pytest.approx(1 / 3) for r in rows)
    assert all(r["greedy_ci"] == wilson_interval(1, 3) for r in rows)


def test_tts_table_without_keys_or_greedy() -> None:
    rows = tts_table(CORRECT, [1, 3])
    assert [r["oracle"] for r in rows] == pytest.approx([4 / 9, 1.0])
    assert all(r["sc"] is None and r["recovery"] is None and r["greedy"] is None for r in rows)
    assert all(r["greedy_ci"] is None for r in rows)


def test_tts_table_unanswered_correct_sample_is_wrong_for_the_oracle() -> None:
    # With keys, (None, True) counts as wrong: c = 1 of 2, so pass@1 = 1/2 (not 1); without keys it is 1.
    assert tts_table([[True, True]], [1], keys=[[None, "x"]])[0]["oracle"] == pytest.approx(0.5)
    assert tts_table([[True, True]], [1])[0]["oracle"] == pytest.approx(1.0)


def test_tts_table_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="N=4"):
        tts_table(CORRECT, [1, 4], keys=KEYS)  # every task has only 3 samples
    with pytest.raises(ValueError, match="N=4"):
        sc_accuracy(SAMPLES, 4)
    with pytest.raises(ValueError, match="greedy"):
        tts_table(CORRECT, [1], greedy=[True])
    with pytest.raises(ValueError, match="same tasks"):
        tts_table(CORRECT, [1], keys=KEYS[:2])


def test_format_table() -> None:
    text = format_table(tts_table(CORRECT, [1, 2, 3], keys=KEYS, greedy=GREEDY))
    lines = text.splitlines()
    assert lines[0] == "| N | oracle pass@N | SC@N | recovery |"
    # 4/9 = 44.4%, 7/9 = 77.8%, 5/9 = 55.6%, 2/3 = 66.7%
    assert lines[2:5] == [
        "| 1 | 44.4% | 44.4% | 100.0% |",
        "| 2 | 77.8% | 55.6% | 50.0% |",
        "| 3 | 100.0% | 66.7% | 50.0% |",
    ]
    lo, hi = wilson_interval(1, 3)
    assert lines[-1] == f"Greedy: 33.3% (95% Wilson interval {100 * lo:.1f}% to {100 * hi:.1f}%)"
    assert "n/a" in format_table(tts_table(CORRECT, [1]))  # no keys: SC and recovery shown as n/a


@pytest.mark.parametrize("with_keys", [True, False])
def test_plot_writes_png(tmp_path: Path, with_keys: bool) -> None:
    pytest.importorskip("matplotlib")
    keys = KEYS if with_keys else None
    rows = tts_table(CORRECT, [1, 2, 3], keys=keys, greedy=GREEDY)
    out = plot_tts(rows, tmp_path / "plots" / "tts.png", title="toy sweep")
    assert out == tmp_path / "plots" / "tts.png"
    data = out.read_bytes()
    assert len(data) > 1000
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
