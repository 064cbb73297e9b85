"""The study's claims as statistics: paired differences over seeds, a Student t interval, and a
verdict that never says more than they support.

Nets of one seed share the initialisation scheme, the data order and the probe batch, so each
claim is a difference per seed (deeper minus shallower, plain minus residual, ...), and its
verdict rests on the mean of those differences:

- reproduced: at least 3 seeds, the interval excludes zero and the mean reaches `min_effect`;
- contradicted: the interval lies wholly on the other side of zero;
- inconclusive otherwise, with the reason (one seed gives a direction only, the interval
  spans zero, the effect is smaller than the stated minimum).
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

MIN_SEEDS = 3


@dataclass
class Interval:
    n: int
    mean: float
    sd: float
    low: float  # nan below 2 seeds
    high: float


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean, sample standard deviation and the two-sided Student t interval of the mean."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan)
    sd = float(values.std(ddof=1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


def verdict(interval: Interval, min_effect: float) -> tuple[str, str]:
    """(reproduced | contradicted | inconclusive, the reason in words)."""
    n, mean = interval.n, interval.mean
    if n == 0:
        return "inconclusive", "no seed has both nets"
    if n == 1:
        return "inconclusive", f"1 seed: the direction only ({'as claimed' if mean > 0 else 'against the claim'})"
    if n < MIN_SEEDS:
        return "inconclusive", f"{n} seeds: at least {MIN_SEEDS} are needed"
    if interval.high < 0:
        return "contradicted", "the interval lies wholly against the claim"
    if interval.low <= 0:
        return "inconclusive", "the interval spans zero"
    if mean < min_effect:
        return "inconclusive", f"the mean is below the minimum effect of {min_effect:g}"
    return "reproduced", ""


@dataclass
class Claim:
    key: str  # C1, C1b, C2, C3, C3-test, Fig7
    text: str  # what is claimed, with the nets' names
    unit: str  # "points" (of error %) or "%" (relative)
    differences: pd.Series  # per seed, positive = as claimed
    interval: Interval
    verdict: str
    reason: str
    nets: str = ""  # the nets compared, "resnet-56 vs plain-56": a claim's key names other nets where others are there

    def line(self, confidence: float = 0.95) -> str:
        i = self.interval
        if i.n == 0:
            numbers = "no paired seeds"
        elif i.n == 1:
            numbers = f"{i.mean:+.2f} {self.unit} (1 seed)"
        else:
            interval = f"{confidence:.0%} CI {i.low:+.2f} to {i.high:+.2f}, sd {i.sd:.2f}, {i.n} seeds"
            numbers = f"{i.mean:+.2f} {self.unit} ({interval})"
        reason = f": {self.verdict}" + (f" ({self.reason})" if self.reason else "")
        return f"{self.key} {self.text}: {numbers}{reason}"


def per_seed(runs: pd.DataFrame, model: str, column: str) -> pd.Series:
    """One value per seed of one net (the mean, should a seed appear twice)."""
    return runs[runs["model"] == model].groupby("seed")[column].mean()


def make_claim(
    key: str, text: str, unit: str, differences: pd.Series, min_effect: float, confidence: float, nets: str = ""
) -> Claim:
    differences = differences.dropna()
    interval = t_interval(differences.values, confidence)
    outcome, reason = verdict(interval, min_effect)
    return Claim(key, text, unit, differences, interval, outcome, reason, nets)


def base_variant(runs: pd.DataFrame, residual: bool) -> pd.DataFrame:
    """The runs of one variant: P1's own (option A, post-activation; `plain` or `resnet`) when
    present, else the most common one (e.g. `resnet-B` for the bottleneck nets)."""
    runs = runs[runs["residual"] == residual]
    if runs.empty:
        return runs
    preferred = "resnet" if residual else "plain"
    variant = preferred if (runs["variant"] == preferred).any() else runs["variant"].mode()[0]
    return runs[runs["variant"] == variant]


def claims(runs: pd.DataFrame, min_effect: float = 1.0, confidence: float = 0.95) -> list[Claim]:
    """P1's claims for runs of ONE recipe and family (finished runs; errors in %):
    C1 degradation, C1b degradation beyond slower training, C2 shortcuts fix it, C3 deeper
    residual nets train and test better, and Fig. 7's smaller residual responses."""
    plain, residual = base_variant(runs, False), base_variant(runs, True)
    found = []

    def name(nets: pd.DataFrame, depth: int) -> str:
        return nets[nets["depth"] == depth]["model"].iloc[0]

    def diff(nets_a, depth_a, nets_b, depth_b, column="final_train_error") -> pd.Series:
        return per_seed(nets_a, name(nets_a, depth_a), column) - per_seed(nets_b, name(nets_b, depth_b), column)

    def add(key, text, differences, nets, unit="points", effect=min_effect):
        found.append(make_claim(key, text, unit, differences, effect, confidence, nets))

    plain_depths, res_depths = sorted(plain["depth"].unique()), sorted(residual["depth"].unique())
    both = sorted(set(plain_depths) & set(res_depths))
    eval_name = "validation" if (runs["eval_split"] == "validation").any() else "test"
    if len(plain_depths) >= 2:
        s, d = plain_depths[0], plain_depths[-1]
        add(
            "C1",
            f"degradation: {name(plain, d)} has higher final training error than {name(plain, s)}",
            diff(plain, d, plain, s),
            f"{name(plain, d)} vs {name(plain, s)}",
        )
    if len(both) >= 2:
        s, d = both[0], both[-1]
        extra = diff(plain, d, plain, s) - diff(residual, d, residual, s)
        add(
            "C1b",
            f"degradation beyond slower training: ({name(plain, d)} − {name(plain, s)}) − "
            f"({name(residual, d)} − {name(residual, s)}) in final training error",
            extra,
            f"depth {d} vs {s}",
        )
    if both:
        d = both[-1]
        add(
            "C2",
            f"shortcuts fix it: {name(residual, d)} has lower final training error than {name(plain, d)}",
            diff(plain, d, residual, d),
            f"{name(residual, d)} vs {name(plain, d)}",
        )
    if len(res_depths) >= 2:
        s, d = res_depths[0], res_depths[-1]
        add(
            "C3",
            f"deeper residual net trains better: {name(residual, d)} below {name(residual, s)} in final training error",
            diff(residual, s, residual, d),
            f"{name(residual, d)} vs {name(residual, s)}",
        )
        add(
            "C3-test",
            f"deeper residual net tests better: {name(residual, d)} below {name(residual, s)} in {eval_name} error",
            diff(residual, s, residual, d, "eval_error"),
            f"{name(residual, d)} vs {name(residual, s)}",
        )
    for d in both:
        p, r = (
            per_seed(plain, name(plain, d), "response_std_mean"),
            per_seed(residual, name(residual, d), "response_std_mean"),
        )
        add(
            "Fig7",
            f"residual responses smaller (P1 Fig. 7): mean 3x3 response std of {name(residual, d)} below "
            f"{name(plain, d)}, relative to the plain net",
            100 * (p - r) / p,
            f"{name(residual, d)} vs {name(plain, d)}",
            unit="%",
        )
    return found
