"""Bootstrap CIs and paired comparisons against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from glider.clients.stats import (
    aggregate,
    blocked_difference,
    bootstrap,
    detectable_difference,
    paired,
)


def test_point_estimates_macro_and_micro():
    table = {"a": [0, 100, 50], "b": [20]}
    assert aggregate(table, "macro") == pytest.approx((50 + 20) / 2)
    assert aggregate(table, "micro") == pytest.approx(170 / 4)


def test_stratified_bootstrap_matches_the_exact_distribution():
    # family a = [0, 100]: its resampled mean is 0, 50, 100 with probability 1/4, 1/2, 1/4; family b = [50]
    # never varies; the macro mean is then 25, 50, 75 with the same probabilities, so the 95 % percentile
    # interval is [25, 75] and the standard error sqrt(2 · 1/4 · 25²) = 17.68
    est = bootstrap({"a": [0, 100], "b": [50]}, "macro", n_boot=20_000, seed=1)
    assert est.mean == 50 and est.episodes == 3
    assert (est.low, est.high) == (25, 75)
    assert est.se == pytest.approx(math.sqrt(2 * 0.25 * 25**2), rel=0.03)
    # micro: (a's mean·2 + 50)/3 takes 50/3, 50, 250/3
    micro = bootstrap({"a": [0, 100], "b": [50]}, "micro", n_boot=20_000, seed=1)
    assert micro.mean == pytest.approx(50) and (micro.low, micro.high) == pytest.approx((50 / 3, 250 / 3))


def test_bootstrap_se_is_the_stratified_plugin_se():
    # the bootstrap's variance of a macro mean is Σ_f σ̂_f² / n_f / F², σ̂² the plug-in (divide-by-n) variance
    table = {"a": [0, 50, 100, 50], "b": [10, 30], "c": [0, 0, 100]}
    def plug_in(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / len(xs)
    exact = math.sqrt(sum(plug_in(v) / len(v) for v in table.values())) / 3
    assert bootstrap(table, "macro", n_boot=40_000, seed=2).se == pytest.approx(exact, rel=0.03)


def test_constant_table_has_a_zero_width_interval():
    est = bootstrap({"a": [40, 40], "b": [10]}, "macro")
    assert (est.low, est.mean, est.high, est.se) == (25, 25, 25, 0)
    assert est.excludes_zero()
    assert not bootstrap({"a": [-10, 10]}, "macro").excludes_zero()


def test_one_episode_per_family_is_resampled_from_the_pooled_families():
    # the quick protocol: 1 episode per family. Within-family resampling would give a zero-width interval;
    # pooled, each family draws from {0, 100}, so the macro mean of 2 families is 0, 50, 100 w.p. 1/4, 1/2, 1/4
    est = bootstrap({"a": [0], "b": [100]}, "macro", n_boot=20_000, seed=3)
    assert est.mean == 50 and (est.low, est.high) == (0, 100)
    assert est.se == pytest.approx(math.sqrt(0.5 * 50**2), rel=0.03)
    # a family with several episodes keeps its own stratum beside the pooled ones
    mixed = bootstrap({"a": [0], "b": [100], "c": [40, 40]}, "macro", n_boot=20_000, seed=3)
    assert mixed.mean == pytest.approx(140 / 3) and mixed.high - mixed.low == pytest.approx(100 / 3 * 2)


def test_paired_difference_with_its_interval_and_mde():
    a = {("a", "1"): 0, ("a", "2"): 100, ("b", "1"): 50, ("b", "only-a"): 30}
    b = {("a", "1"): 100, ("a", "2"): 100, ("b", "1"): 50}
    cmp = paired(a, b, "macro", n_boot=20_000, seed=3)
    # differences: a = [100, 0] (mean 0/50/100), b = [0]: macro 25 with values 0/25/50 at 1/4, 1/2, 1/4
    assert cmp.difference.mean == 25 and (cmp.difference.low, cmp.difference.high) == (0, 50)
    assert cmp.per_family == {"a": (50.0, 2), "b": (0.0, 1)}
    assert (cmp.only_a, cmp.only_b) == (1, 0)
    se = math.sqrt(2 * 0.25 * 25**2)
    assert cmp.mde == pytest.approx(2.8016 * se, rel=0.03)


def test_identical_runs_differ_by_exactly_zero():
    a = {("f", str(i)): float(i % 7) for i in range(30)}
    cmp = paired(a, dict(a))
    assert (cmp.difference.mean, cmp.difference.low, cmp.difference.high, cmp.mde) == (0, 0, 0, 0)


def test_detectable_difference_is_z_sum_times_se():
    assert detectable_difference(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert detectable_difference(2.0, power=0.5) == pytest.approx(2 * 1.959964, abs=1e-5)


def test_difference_cell_bolds_only_a_ci_that_excludes_zero():
    from glider.clients.evaluate import SplitDifference, difference_cell

    def cell(difference, low, high):
        return difference_cell(SplitDifference(a=0.0, b=difference, difference=difference, low=low, high=high,
                                               se=0.0, mde=0.0, episodes=10, only_a=0, only_b=0))

    assert cell(0.8, -0.18, 1.77) == "+0.80 [-0.18, +1.77]"
    assert cell(3.18, 1.98, 4.31) == "**+3.18** [+1.98, +4.31]"
    assert cell(-2.0, -3.0, -0.5) == "**-2.00** [-3.00, -0.50]"
    # a comparison as quality.json stores it reads back whole
    stored = {"a": 1.0, "b": 2.0, "difference": 1.0, "low": 0.2, "high": 1.8, "se": 0.4, "mde": 1.1, "episodes": 9,
              "only_a": 0, "only_b": 1, "per_family": {"boil": {"difference": 1.0, "episodes": 9}}}
    back = SplitDifference.from_dict(stored)
    assert back.significant and back.per_family["boil"].episodes == 9


def test_a_ratio_target_is_a_scaled_paired_difference(tmp_path):
    """B ≥ 1.15 × A as B − 1.15·A, episode by episode: B = 1.2·A clears 1.15 and misses 1.25."""
    import dataclasses

    from glider.clients.evaluate import EpisodeResult, compare_runs, comparison_markdown
    from glider.clients.protocols import load_plan

    plan = load_plan("glider").only(["unseen"])
    rng = np.random.default_rng(0)
    runs = {}
    scores = rng.uniform(0.2, 0.7, size=len(plan.episodes))
    for name, factor in (("a", 1.0), ("b", 1.2)):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "plan.json").write_text(plan.to_json())
        rows = [EpisodeResult(split=e.split, task=e.task, variation=e.variation, score=factor * s, best=factor * s,
                              steps=10, subgoals=2, done=True) for e, s in zip(plan.episodes, scores, strict=True)]
        (runs[name] / "episodes.jsonl").write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in rows))
    plain = compare_runs(runs["a"], runs["b"]).splits["unseen"]
    met = compare_runs(runs["a"], runs["b"], scale_a=1.15).splits["unseen"]
    missed = compare_runs(runs["a"], runs["b"], scale_a=1.25).splits["unseen"]
    assert plain.difference == pytest.approx(0.2 * plain.a, rel=1e-6)
    assert met.difference == pytest.approx(0.05 * plain.a, rel=1e-6) and met.low > 0
    assert missed.difference == pytest.approx(-0.05 * plain.a, rel=1e-6) and missed.high < 0
    assert met.episodes == len(plan.episodes)
    assert "1.15 × A" in comparison_markdown(compare_runs(runs["a"], runs["b"], scale_a=1.15))


def test_blocked_difference_is_a_student_t_interval_over_the_blocks():
    a, b = {0: 1.0, 1: 2.0, 2: 3.0, 9: 5.0}, {0: 2.0, 1: 4.0, 2: 3.0}  # differences 1, 2, 0; block 9 unpaired
    d = blocked_difference(a, b)
    assert d.mean == pytest.approx(1.0) and d.episodes == 3
    assert d.se == pytest.approx(1 / math.sqrt(3))  # sample sd 1 over √3 blocks
    assert (d.low, d.high) == pytest.approx((1 - 4.302653 / math.sqrt(3), 1 + 4.302653 / math.sqrt(3)), rel=1e-6)
    one = blocked_difference({0: 1.0}, {0: 3.0})
    assert one.mean == pytest.approx(2.0) and math.isnan(one.low) and math.isnan(one.high)
