"""The numbers behind an evaluation, checked against published values."""
from __future__ import annotations

import math
import time

import pytest

from evaluation_app.engine.stats import (
    change, cohen_kappa, krippendorff_alpha_nominal, mcnemar, mean_ci, paired_bootstrap, pct_diff,
    preference_summary, sign_test, spread, t_quantile, wilson_interval,
)


@pytest.mark.parametrize("p, df, expected", [
    # printed t tables
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 5, 2.571), (0.975, 10, 2.228), (0.975, 30, 2.042),
    (0.975, 100, 1.984), (0.975, 1000, 1.962), (0.995, 1, 63.657), (0.995, 10, 3.169), (0.95, 20, 1.725),
])
def test_t_quantile_matches_the_table(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=5e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=5e-4)


def test_t_quantile_approaches_the_normal_one_for_large_df():
    assert t_quantile(0.975, 10 ** 7) == pytest.approx(1.959964, abs=1e-5)


def test_mean_ci_uses_students_t():
    result = mean_ci([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * sd / sqrt(n)
    assert (result["mean"], result["n"]) == (3.0, 5) and result["sd"] == pytest.approx(math.sqrt(2.5))
    assert result["low"] == pytest.approx(3 - half, abs=1e-6) and result["high"] == pytest.approx(3 + half, abs=1e-6)
    narrower = mean_ci([1, 2, 3, 4, 5], confidence=0.9)
    assert result["low"] < narrower["low"] < narrower["high"] < result["high"]


def test_mean_ci_of_no_values_has_no_mean_and_of_one_value_has_no_interval():
    assert mean_ci([]) == {"mean": None, "low": None, "high": None, "n": 0, "sd": None, "confidence": 0.95}
    single = mean_ci([4.0])
    assert single["mean"] == 4.0 and (single["low"], single["high"], single["sd"]) == (None, None, None)


def test_mean_ci_of_identical_values_is_a_point():
    result = mean_ci([3, 3, 3])
    assert (result["low"], result["high"], result["sd"]) == (3.0, 3.0, 0.0)


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombe(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


def test_wilson_interval_edges():
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test(9, 1) == 2 * (1 + 10) / 1024
    assert sign_test(2, 8) == 2 * (1 + 10 + 45) / 1024
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(600, 400) < 1e-9  # large n stays exact, no overflow


def test_preference_summary_declares_a_winner_only_when_significant():
    labels = ["finetuned"] * 9 + ["base"] + ["tie"] * 5
    summary = preference_summary(labels)
    assert summary["n"] == 15 and summary["counts"] == {"base": 1, "finetuned": 9, "tie": 5}
    assert summary["decisive"] == 10 and summary["p_value"] == pytest.approx(0.021484375)
    assert summary["winner"] == "finetuned"
    share = summary["shares"]["finetuned"]
    assert share["share"] == pytest.approx(9 / 15) and (share["low"], share["high"]) == pytest.approx(wilson_interval(9, 15))

    close = preference_summary(["finetuned"] * 8 + ["base"] * 2)
    assert close["p_value"] == pytest.approx(0.109375) and close["winner"] == "no significant difference"
    assert preference_summary(["base"] * 9 + ["finetuned"])["winner"] == "base"


def test_preference_summary_with_only_ties_or_nothing_has_no_test():
    ties = preference_summary(["tie"] * 4)
    assert ties["p_value"] is None and ties["winner"] == "no significant difference"
    empty = preference_summary([])
    assert empty["n"] == 0 and empty["shares"]["base"] == {"share": None, "low": 0.0, "high": 1.0}


def test_preference_summary_rejects_an_unknown_label():
    with pytest.raises(ValueError, match="Unknown preference labels: A"):
        preference_summary(["finetuned", "A"])


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    result = cohen_kappa(a, b)
    assert result["observed_agreement"] == pytest.approx(0.7) and result["expected_agreement"] == pytest.approx(0.5)
    assert result["kappa"] == pytest.approx(0.4) and result["n"] == 50


def test_cohen_kappa_edges():
    assert cohen_kappa(["tie"] * 3, ["tie"] * 3)["kappa"] == 1.0
    assert cohen_kappa([], [])["kappa"] is None
    assert cohen_kappa(["a", "b"], ["b", "a"])["kappa"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])


def test_krippendorff_alpha_matches_krippendorffs_nominal_example():
    # Krippendorff (2011) "Computing Krippendorff's Alpha-Reliability", 4 observers, 12 units with
    # missing values; nominal alpha = 0.743. Unit 12 has one value and is not pairable.
    table = {
        "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    }
    units: dict = {}
    for rater, values in table.items():
        for unit, value in enumerate(values, 1):
            if value is not None:
                units.setdefault(unit, {})[rater] = str(value)
    result = krippendorff_alpha_nominal(units)
    assert result["alpha"] == pytest.approx(0.743, abs=5e-4)
    assert (result["units"], result["raters"], result["pairable"]) == (11, 4, 40)


def test_krippendorff_alpha_with_two_raters_on_a_hand_computed_table():
    # units: (a,a) (a,b) (b,b) (b,b): o_ab = o_ba = 1, n_a = 3, n_b = 5, n = 8
    # alpha = 1 - (n - 1) * 2 / (2 * n_a * n_b) = 1 - 7 * 2 / 30
    units = {1: {"x": "a", "y": "a"}, 2: {"x": "a", "y": "b"}, 3: {"x": "b", "y": "b"}, 4: {"x": "b", "y": "b"},
             5: {"x": "a"}}
    result = krippendorff_alpha_nominal(units)
    assert result["alpha"] == pytest.approx(1 - 14 / 30) and result["percent_agreement"] == 0.75
    assert (result["units"], result["pairable"]) == (4, 8)


def test_krippendorff_percent_agreement_counts_rater_pairs_within_units():
    # three raters on one unit, two agree: 1 of 3 pairs agrees
    result = krippendorff_alpha_nominal({1: {"x": "base", "y": "base", "z": "tie"}, 2: {"x": "tie", "y": "tie"}})
    assert result["percent_agreement"] == pytest.approx(2 / 4)


def test_krippendorff_alpha_edges():
    assert krippendorff_alpha_nominal({1: {"x": "a"}})["alpha"] is None
    assert krippendorff_alpha_nominal({1: {"x": "a", "y": "a"}, 2: {"x": "a", "z": "a"}})["alpha"] == 1.0


def test_spread_uses_linear_interpolation():
    result = spread([4, 1, 3, 2])
    assert result == {"median": 2.5, "p25": 1.75, "p75": 3.25, "min": 1, "max": 4, "mean": 2.5, "n": 4}
    assert spread([7.0])["p25"] == 7.0 and spread([])["median"] is None


def test_pct_diff():
    assert pct_diff(110, 100) == pytest.approx(10.0) and pct_diff(50, 100) == pytest.approx(-50.0)
    assert pct_diff(5, 0) is None and pct_diff(5, None) is None and pct_diff(None, 5) is None


# -- paired comparisons of benchmark runs (base vs fine-tuned on the same items) --------------------


def test_paired_bootstrap_of_identical_runs_is_exactly_no_difference():
    scores = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1] * 10
    result = paired_bootstrap(scores, scores)
    assert (result["difference"], result["low"], result["high"]) == (0.0, 0.0, 0.0)
    assert (result["n"], result["resamples"], result["confidence"]) == (100, 2000, 0.95)
    assert change(result["difference"], result["low"], result["high"]) == "no_change"


def test_paired_bootstrap_sees_a_clear_gain_and_a_clear_loss():
    base = [0] * 100 + [1] * 100
    tuned = [1] * 60 + [0] * 40 + [1] * 100  # 60 more right of 200
    gain = paired_bootstrap(base, tuned)
    assert gain["difference"] == pytest.approx(0.3)
    assert 0 < gain["low"] < 0.3 < gain["high"] < 0.6
    assert change(gain["difference"], gain["low"], gain["high"]) == "improved"
    loss = paired_bootstrap(tuned, base)
    assert (loss["low"], loss["high"]) == pytest.approx((-gain["high"], -gain["low"]), abs=0.02)
    assert change(loss["difference"], loss["low"], loss["high"]) == "regressed"


def test_paired_bootstrap_interval_matches_the_normal_approximation_for_many_items():
    # differences of +1 on 30%, -1 on 10%, 0 elsewhere of 14,000 items: sd of the mean by formula
    n = 14_000
    base = [0] * 4200 + [1] * 1400 + [1] * 8400
    tuned = [1] * 4200 + [0] * 1400 + [1] * 8400
    mean = 0.2
    sd = math.sqrt((0.3 * 0.8 ** 2 + 0.1 * 1.2 ** 2 + 0.6 * 0.2 ** 2) / n)
    started = time.perf_counter()
    result = paired_bootstrap(base, tuned, resamples=2000, seed=3)
    assert time.perf_counter() - started < 1.0
    assert result["difference"] == pytest.approx(mean)
    assert result["low"] == pytest.approx(mean - 1.96 * sd, abs=0.15 * sd * 1.96)
    assert result["high"] == pytest.approx(mean + 1.96 * sd, abs=0.15 * sd * 1.96)


def test_paired_bootstrap_is_reproducible_with_a_seed():
    base = [0.1 * (i % 7) for i in range(50)]
    tuned = [0.1 * (i % 5) for i in range(50)]
    assert paired_bootstrap(base, tuned, seed=7) == paired_bootstrap(base, tuned, seed=7)
    assert paired_bootstrap(base, tuned, seed=7)["low"] != paired_bootstrap(base, tuned, seed=8)["low"]
    narrower = paired_bootstrap(base, tuned, seed=7, confidence=0.8)
    wide = paired_bootstrap(base, tuned, seed=7)
    assert wide["low"] < narrower["low"] < narrower["high"] < wide["high"]


def test_paired_bootstrap_rejects_unpaired_or_empty_runs():
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="at least one item"):
        paired_bootstrap([], [])


def test_mcnemar_counts_the_discordant_items_and_tests_them_exactly():
    # 1 item only base got right, 9 only tuned got right, 5 both, 5 neither
    base = [True] + [False] * 9 + [True] * 5 + [False] * 5
    tuned = [False] + [True] * 9 + [True] * 5 + [False] * 5
    result = mcnemar(base, tuned)
    assert (result["b"], result["c"], result["n"]) == (1, 9, 20)
    assert result["p_value"] == 0.021484375  # 2 * (C(10,0) + C(10,1)) / 2**10
    assert mcnemar(tuned, base)["p_value"] == 0.021484375


def test_mcnemar_without_discordant_items_finds_nothing():
    assert mcnemar([True, False, True], [True, False, True]) == {"b": 0, "c": 0, "p_value": 1.0, "n": 3}
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


@pytest.mark.parametrize("low, high, expected", [(0.01, 0.2, "improved"), (-0.2, -0.01, "regressed"),
                                                 (-0.1, 0.1, "no_change"), (0.0, 0.2, "no_change"),
                                                 (0.0, 0.0, "no_change")])
def test_change_calls_a_difference_only_when_the_interval_excludes_zero(low, high, expected):
    assert change((low + high) / 2, low, high) == expected
