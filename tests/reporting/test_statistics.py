"""The statistics the study's conclusions rest on, worked by hand on small made-up numbers: the paired interval
(against Welch's on the same numbers), the two one-sided tests of equivalence, Holm's adjustment, the verdicts, and
a ratio's interval on the log scale.

Student's t with 2 degrees of freedom has a closed form, F(t) = 1/2 + t / (2 sqrt(2 + t^2)), and quantiles
t(0.975, 2) = 4.302653, t(0.95, 2) = 2.919986 (from a table)."""

import math

import pytest

from cpt.reporting.equivalence import equivalence_p, holm, primary_tests, verdict
from cpt.reporting.intervals import difference, paired, ratio, welch

T_975_2, T_95_2 = 4.302653, 2.919986


def t2_cdf(t: float) -> float:
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


A = {0: 10.0, 1: 12.0, 2: 14.0}
B = {0: 9.0, 1: 9.0, 2: 12.0}  # per seed A - B = 1, 3, 2: mean 2, sd 1


def test_the_paired_interval_by_hand():
    diff = difference(A, B)
    assert diff.paired and diff.n == 3 and diff.df == 2 and diff.test == "paired, 3 seeds"
    assert diff.mean == pytest.approx(2.0) and diff.se == pytest.approx(1 / math.sqrt(3))
    low, high = diff.interval()
    assert (low, high) == (pytest.approx(2 - T_975_2 / math.sqrt(3), rel=1e-6),
                           pytest.approx(2 + T_975_2 / math.sqrt(3), rel=1e-6))
    assert not diff.excludes_zero  # [-0.48, 4.48]
    # p of no difference: t = 2 sqrt(3) = 3.464 on 2 df.
    assert diff.p_value == pytest.approx(2 * (1 - t2_cdf(2 * math.sqrt(3))), rel=1e-9)
    # Unpaired, the same numbers carry each seed's shared noise: Welch's standard error is sqrt(4/3 + 1) = 1.53,
    # 2.6 times the paired one.
    unpaired = welch(A.values(), B.values())
    assert not unpaired.paired and unpaired.se == pytest.approx(math.sqrt(4 / 3 + 1))
    assert unpaired.half_width() > 1.6 * diff.half_width()


def test_pairing_takes_the_common_seeds_and_falls_back_to_welch():
    # Seed 3 only A has: paired over 0-2. With one common seed, Welch over all values.
    assert difference({**A, 3: 100.0}, B).mean == pytest.approx(2.0)
    one_common = difference({0: 10.0, 5: 14.0}, {0: 9.0, 6: 11.0})
    assert not one_common.paired and one_common.mean == pytest.approx(2.0)
    assert paired([(1.0, 0.0)]).se is None and difference({0: 1.0}, {}) is None


def test_two_one_sided_tests_by_hand():
    diff = difference(A, B)  # 2 +- se 1/sqrt(3), 2 df; the 90% interval is 2 +- 1.686 = [0.314, 3.686]
    narrow = diff.interval(0.90)
    assert narrow == (pytest.approx(2 - T_95_2 / math.sqrt(3), rel=1e-6), pytest.approx(2 + T_95_2 / math.sqrt(3),
                                                                                         rel=1e-6))
    # Margin 5: "difference >= 5" has t = (2 - 5) sqrt(3) = -5.196, p = F(-5.196) = 0.0176; "difference <= -5" has
    # t = 7 sqrt(3) = 12.12, p = 0.0034. TOST's p is the larger: 0.0176 < 0.05, equivalent (the 90% interval is
    # inside +-5).
    assert equivalence_p(diff, 5.0) == pytest.approx(t2_cdf(-3 * math.sqrt(3)), rel=1e-9)
    assert t2_cdf(-3 * math.sqrt(3)) == pytest.approx(0.017549, abs=1e-6)
    # Margin 3: t = -sqrt(3), p = F(-1.732) = 0.113: not equivalent (3.686 is outside +-3).
    assert equivalence_p(diff, 3.0) == pytest.approx(t2_cdf(-math.sqrt(3)), rel=1e-9)
    assert equivalence_p(diff, 3.0) > 0.05


def test_holm_by_hand():
    # 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the 0.06 before it. None is no test.
    assert holm([0.01, 0.04, 0.03, None]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), None]
    assert holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    assert holm([]) == []


def test_verdicts_and_their_holm_adjustment():
    assert verdict(0.01, 0.5, 3) == "different"
    assert verdict(0.5, 0.01, 3) == "equivalent within ±3"
    assert verdict(0.01, 0.01, 3) == "different, within ±3"
    assert verdict(0.2, 0.2, 3) == "not resolved"
    # Two primary cells: A - B (TOST p 0.0176 at margin 5, p of no difference 0.074) and a clear difference of
    # 20.3 (TOST p about 1, p of no difference about 0). Equivalence family [0.0176, ~1]: the smaller is doubled,
    # 0.035, still equivalent. Difference family [0.074, ~0]: 0.074 is the larger, times 1, still not different.
    clear = difference({0: 30.0, 1: 31.0, 2: 32.0}, {0: 10.0, 1: 11.0, 2: 11.0})
    first, second = primary_tests([("A", "B", "fm", difference(A, B), 5.0), ("C", "D", "fm", clear, 5.0)])
    assert first.verdict == "equivalent within ±5" and first.holm_verdict == "equivalent within ±5"
    assert first.holm_equivalence == pytest.approx(2 * t2_cdf(-3 * math.sqrt(3)), rel=1e-9)
    assert second.verdict == second.holm_verdict == "different"
    assert first.holm_difference == pytest.approx(2 * (1 - t2_cdf(2 * math.sqrt(3))), rel=1e-9)
    # At margin 4 the first is equivalent alone (t = -2 sqrt(3), p = F(-3.464) = 0.037) but not after Holm (0.074).
    first, _ = primary_tests([("A", "B", "fm", difference(A, B), 4.0), ("C", "D", "fm", clear, 4.0)])
    assert first.p_equivalence == pytest.approx(t2_cdf(-2 * math.sqrt(3)), rel=1e-9) and first.p_equivalence < 0.05
    assert first.verdict == "equivalent within ±4" and first.holm_verdict == "not resolved"


def test_a_ratio_on_the_log_scale_by_hand():
    # Per seed 2/1 and 8/2: log ratios ln 2 and ln 4, mean 1.5 ln 2 (the geometric mean ratio 2^1.5 = 2.83), sd
    # ln 2 / sqrt(2), se ln 2 / 2 on 1 df: the interval is 2^1.5 x/ exp(12.706 x 0.3466).
    found = ratio({0: 2.0, 1: 8.0}, {0: 1.0, 1: 2.0})
    assert found.ratio == pytest.approx(2 ** 1.5)
    spread = math.exp(12.706205 * math.log(2) / 2)
    assert (found.low, found.high) == (pytest.approx(2 ** 1.5 / spread, rel=1e-5),
                                       pytest.approx(2 ** 1.5 * spread, rel=1e-5))
    assert found.low < 1 < found.high  # "2.8 times" is not resolved from two seeds
    assert ratio({0: 2.0, 1: 0.0}, {0: 1.0, 1: 2.0}) is None  # no ratio of a value that is not positive
    assert ratio({0: 2.0, 1: 3.0}, {0: -1.0, 1: 2.0}) is None
