"""Confidence intervals for evaluation scores, and paired comparisons of two agents.

A split's score is a mean of family means (macro) or of episodes (micro), and
its families are fixed by the protocol, so the bootstrap is **stratified**:
each replicate resamples episodes with replacement *within* each family (keeping
the family's episode count) and recomputes the aggregate.  The 95 % interval is
the replicates' 2.5th and 97.5th percentiles. A family with a single episode has no
within-family spread to resample, so on its own it would add none (the quick protocol, one
episode per family, would get a zero-width interval); families with one episode are therefore
pooled into one stratum ("collapsed strata"), each drawing its episode from the pool.

A comparison of two agents pairs them episode by episode (same split, family and
variation: both played the same plan), bootstraps the per-episode differences
the same way, and reports the **minimum detectable difference** at 80 % power
for a two-sided 5 % test, ``(z_0.975 + z_0.8) · SE`` with SE the bootstrap
standard error of the paired difference: a true difference smaller than that is
more likely missed than found with this many episodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
POWER = 0.80
N_BOOT = 10_000


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    se: float  # bootstrap standard error
    episodes: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


def aggregate(by_family: Mapping[str, Sequence[float]], how: str) -> float:
    """macro: mean of family means; micro: mean over every episode."""
    groups = [np.asarray(v, dtype=float) for v in by_family.values() if len(v)]
    if not groups:
        return float("nan")
    if how == "macro":
        return float(np.mean([g.mean() for g in groups]))
    if how == "micro":
        return float(np.concatenate(groups).mean())
    raise ValueError(f"aggregate is macro or micro, not {how!r}")


def bootstrap(by_family: Mapping[str, Sequence[float]], how: str = "macro", *, n_boot: int = N_BOOT,
              seed: int = 0, level: float = LEVEL) -> Estimate:
    """The aggregate with its stratified-bootstrap percentile interval (episodes resampled within families)."""
    groups = [np.asarray(v, dtype=float) for v in by_family.values() if len(v)]
    episodes = sum(len(g) for g in groups)
    point = aggregate(by_family, how)
    if not groups:
        return Estimate(point, float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    singles = [g for g in groups if len(g) == 1]
    collapse = len(singles) >= 2  # collapsed strata: the one-episode families resample from their pool
    if collapse:
        groups = [g for g in groups if len(g) > 1] + singles
    rows = [g[rng.integers(0, len(g), size=(n_boot, len(g)))].mean(axis=1)
            for g in (groups[:len(groups) - len(singles)] if collapse else groups)]
    if collapse:
        pool = np.concatenate(singles)
        rows += list(pool[rng.integers(0, len(pool), size=(len(singles), n_boot))])
    family_means = np.stack(rows)
    if how == "macro":
        replicates = family_means.mean(axis=0)
    else:  # each family keeps its size, so the micro mean is the size-weighted mean of family means
        sizes = np.array([len(g) for g in groups], dtype=float)[:, None]
        replicates = (family_means * sizes).sum(axis=0) / sizes.sum()
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Estimate(point, float(low), float(high), float(replicates.std()), episodes)


def detectable_difference(se: float, *, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at ``1 - level`` finds with probability ``power``."""
    z = NormalDist()
    return (z.inv_cdf(1 - (1 - level) / 2) + z.inv_cdf(power)) * se


@dataclass(frozen=True)
class Comparison:
    difference: Estimate  # B − A
    mde: float  # minimum detectable difference at 80 % power
    per_family: dict[str, tuple[float, int]]  # family -> (mean difference B − A, paired episodes)
    only_a: int  # episodes A played that B did not (left out of the comparison)
    only_b: int


def paired(a: Mapping[tuple[str, str], float], b: Mapping[tuple[str, str], float], how: str = "macro", *,
           n_boot: int = N_BOOT, seed: int = 0) -> Comparison:
    """B − A over the episodes both played; keys are (family, episode id) and values the episode's score."""
    common = sorted(set(a) & set(b))
    diffs: dict[str, list[float]] = {}
    for key in common:
        diffs.setdefault(key[0], []).append(b[key] - a[key])
    estimate = bootstrap(diffs, how, n_boot=n_boot, seed=seed)
    return Comparison(difference=estimate, mde=detectable_difference(estimate.se),
                      per_family={f: (float(np.mean(d)), len(d)) for f, d in sorted(diffs.items())},
                      only_a=len(set(a) - set(b)), only_b=len(set(b) - set(a)))


def blocked_difference(a: Mapping[str | int, float], b: Mapping[str | int, float], *, level: float = LEVEL) -> Estimate:
    """B − A with whole runs as the unit (seeds, trainings): one figure per block, both agents measured on
    it, and a Student-t interval over the blocks' differences.  The episodes of one run share one
    learner, so resampling them understates how much a second run would differ; with three blocks the
    interval is ±4.3 standard errors wide (t with 2 degrees of freedom), which is the honest width.
    ``episodes`` counts the blocks; fewer than two give no interval."""
    from scipy.stats import t

    diffs = np.array([b[k] - a[k] for k in sorted(set(a) & set(b))], dtype=float)
    if len(diffs) < 2:
        mean = float(diffs.mean()) if len(diffs) else float("nan")
        return Estimate(mean, float("nan"), float("nan"), float("nan"), len(diffs))
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs)))
    half = float(t.ppf(1 - (1 - level) / 2, len(diffs) - 1)) * se
    return Estimate(float(diffs.mean()), float(diffs.mean()) - half, float(diffs.mean()) + half, se, len(diffs))
