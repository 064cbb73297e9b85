"""The study's claims as statistics: paired differences over seeds, a Student t interval, and a
verdict that never says more than they support.

Nets of one seed share the initialisation scheme, the data order and the probe batch, so each
claim is a difference per seed (deeper minus shallower, plain minus residual, ...), described by
its mean and Student t interval. Its verdict is the study's design's (harness.sequential): judged
only at the design's looks, at boundaries that keep the family-wise rate of false verdicts over
all looks and claims at `design.alpha`:

- reproduced: the claim's t crossed its boundary as claimed and the mean reaches `min_effect`;
- contradicted: t crossed it the other way;
- open: neither yet; the next look is at more seeds;
- inconclusive: neither at the design's last look (final).

`verdict`, the single-look 95% rule of earlier versions, stays for what it is good for: the
simulation that shows why a growing study cannot use it (tests/test_sequential.py).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import sequential
from harness.models import P2_SHORTCUTS
from harness.sequential import Design

MIN_SEEDS = 3


@dataclass
class Interval:
    n: int
    mean: float
    sd: float
    low: float  # nan below 2 seeds
    high: float


def half_width(sd: float, n: int, confidence: float = 0.95) -> float:
    """Half the width of the two-sided Student t interval of the mean of n values with this
    sample standard deviation."""
    from scipy import stats  # imported here, not by every launch: 0.7 s of a run's start on a slow host

    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean, sample standard deviation and the two-sided Student t interval of the mean."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan)
    sd = float(values.std(ddof=1))
    half = half_width(sd, n, confidence)
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


@dataclass(frozen=True)
class Look:
    """Where a claim stands in its study's design: judged at look `number` of `looks` (0: no look
    complete yet), on that look's seeds, its t against the boundary it met there."""

    number: int
    looks: int
    seeds: int
    statistic: float
    boundary: float
    next_seeds: int | None  # the next look's seeds; None after the last

    def said(self, verdict: str) -> str:
        if self.number == 0:
            return f"the first look is at {self.next_seeds} seeds"
        where = f"look {self.number} of {self.looks}, {self.seeds} seeds"
        test = f"|t| {abs(self.statistic):.2f} against the boundary {self.boundary:.2f}"
        if verdict == "open":
            return f"{where}: {test}; the next look is at {self.next_seeds} seeds"
        if verdict == "inconclusive":
            return f"final, {where}: {test}"
        return f"{where}: {test}"


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
    failed: dict = field(default_factory=dict)  # net: the seeds in which it diverged (claimed worse first)
    kind: str = "worse"  # or "no worse": the second net's error exceeds the first's by less than the margin
    pair: tuple[str, str] = ("", "")  # the two nets' names, as the runs have them
    look: Look | None = None  # its study design's judgement; None: outside the study's family

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

    def verdict_line(self) -> str:
        """The short line of the console and the parent run: the nets, the mean, the verdict and why."""
        mean = f"{self.interval.mean:+.2f} {self.unit}, " if self.interval.n else ""
        return f"{self.key} {self.nets}: {mean}{self.verdict}" + (f" ({self.reason})" if self.reason else "")


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


# The claims table. Each row names, from the runs, the pairs of nets it compares: (the net claimed to
# err more, the net claimed to err less). A difference per seed is the first's error minus the
# second's, so positive is as claimed. "worse" claims need the mean to reach `min_effect`; "no worse"
# claims (the second is at least as good) need the interval to stay above -min_effect.


def _model(nets: pd.DataFrame, depth: int) -> str:
    return nets[nets["depth"] == depth]["model"].iloc[0]


def _depths(nets: pd.DataFrame) -> list[int]:
    return sorted(nets["depth"].unique())


def plain_deep_vs_shallow(runs):
    plain = base_variant(runs, False)
    depths = _depths(plain)
    return [(_model(plain, depths[-1]), _model(plain, depths[0]))] if len(depths) >= 2 else []


def residual_shallow_vs_deep(runs):
    residual = base_variant(runs, True)
    depths = _depths(residual)
    return [(_model(residual, depths[0]), _model(residual, depths[-1]))] if len(depths) >= 2 else []


def common_depths(runs) -> list[int]:
    return sorted(set(_depths(base_variant(runs, False))) & set(_depths(base_variant(runs, True))))


def plain_vs_residual_deepest(runs):
    both = common_depths(runs)
    plain, residual = base_variant(runs, False), base_variant(runs, True)
    return [(_model(plain, both[-1]), _model(residual, both[-1]))] if both else []


def plain_vs_residual_each_depth(runs):
    plain, residual = base_variant(runs, False), base_variant(runs, True)
    return [(_model(plain, depth), _model(residual, depth)) for depth in common_depths(runs)]


def _original(runs: pd.DataFrame) -> pd.DataFrame:
    """Residual nets of P2's baseline: the original unit (a) with identity shortcuts (option A)."""
    return runs[runs["residual"] & (runs["shortcut"] == "zero_pad") & (runs["activation"] == "post")]


def p2_shortcuts_vs_identity(runs):
    """P2 Table 1: each of its shortcuts on the original unit against identity, at each depth."""
    original, pairs = _original(runs), []
    for depth in _depths(original):
        others = runs[runs["residual"] & (runs["depth"] == depth) & (runs["activation"] == "post")]
        others = others[others["shortcut"].isin(P2_TABLE1_SHORTCUTS)]
        others = others.sort_values("shortcut", key=lambda s: s.map(P2_TABLE1_SHORTCUTS.index), kind="stable")
        pairs += [(model, _model(original, depth)) for model in others["model"].unique()]
    return pairs


def p2_unit_vs_original(unit: str, claimed_worse: bool):
    """P2 Table 2: a unit arrangement against the original, identity shortcuts, at each depth."""

    def pairs(runs):
        original, found = _original(runs), []
        for depth in _depths(original):
            other = runs[runs["residual"] & (runs["depth"] == depth) & (runs["shortcut"] == "zero_pad")]
            other = other[other["activation"] == unit]
            if not other.empty:
                pair = (other["model"].iloc[0], _model(original, depth))
                found.append(pair if claimed_worse else pair[::-1])
        return found

    return pairs


def p2_original_vs_pre_bottleneck(runs):
    """P2 Fig. 1: the original unit (a) against full pre-activation (e) in P2's CIFAR bottleneck
    nets (ResNet-164, ResNet-1001: projection shortcuts where dimensions increase), at each depth."""
    nets = runs[runs["residual"] & (runs["family"] == "cifar_bottleneck") & (runs["shortcut"] == "projection")]
    pairs = []
    for depth in _depths(nets):
        units = nets[nets["depth"] == depth].groupby("activation")["model"].first()
        if {"post", "pre"} <= set(units.index):
            pairs.append((units["post"], units["pre"]))
    return pairs


# P2's Table 1 on the shortcut, identity aside: its 1x1 conv is P1's option C (full_projection).
P2_TABLE1_SHORTCUTS = tuple(name for name in P2_SHORTCUTS if name != "zero_pad")


@dataclass(frozen=True)
class ClaimRow:
    key: str
    text: str  # with {first}, {second} (the nets) and {split} (test or validation)
    pairs: Callable[[pd.DataFrame], list[tuple[str, str]]]
    column: str = "final_train_error"
    unit: str = "points"  # or "%": relative to the first net's value
    kind: str = "worse"  # or "no worse"
    beyond_residual: bool = False  # less the same gap between the residual nets of the same depths
    nets: str = "{second} vs {first}"  # the pair's label: the net the claim is about first


CLAIM_ROWS = [
    ClaimRow(
        "C1",
        "degradation: {first} has higher final training error than {second}",
        plain_deep_vs_shallow,
        nets="{first} vs {second}",
    ),
    ClaimRow(
        "C1b",
        "degradation beyond slower training: ({first} − {second}) − ({first_residual} − {second_residual}) in final "
        "training error",
        plain_deep_vs_shallow,
        beyond_residual=True,
    ),
    ClaimRow("C2", "shortcuts fix it: {second} has lower final training error than {first}", plain_vs_residual_deepest),
    ClaimRow(
        "C3",
        "deeper residual net trains better: {second} below {first} in final training error",
        residual_shallow_vs_deep,
    ),
    ClaimRow(
        "C3-test",
        "deeper residual net tests better: {second} below {first} in {split} error",
        residual_shallow_vs_deep,
        column="eval_error",
    ),
    ClaimRow(
        "Fig7",
        "residual responses smaller (P1 Fig. 7): mean 3x3 response std of {second} below {first}, relative to the "
        "plain net",
        plain_vs_residual_each_depth,
        column="response_std_mean",
        unit="%",
    ),
    ClaimRow(
        "P2-T1",
        "P2 Table 1: the {first} shortcut trains worse than identity ({second}) in final training error",
        p2_shortcuts_vs_identity,
        nets="{first} vs {second}",
    ),
    ClaimRow(
        "P2-T2b",
        "P2 Table 2: BN after addition ({first}) trains worse than the original unit ({second}) in final training "
        "error",
        p2_unit_vs_original("bn_after_add", claimed_worse=True),
        nets="{first} vs {second}",
    ),
    ClaimRow(
        "P2-T2e",
        "P2 Table 2: full pre-activation ({second}) is at least as good as the original unit ({first}) in {split} "
        "error",
        p2_unit_vs_original("pre", claimed_worse=False),
        column="eval_error",
        kind="no worse",
    ),
    # P2 section 4.2, Fig. 1: with the original unit ResNet-1001's training error falls "very slowly at the
    # beginning" (ResNet-164 suffers "a little bit at the beginning"), and pre-activation ends lowest. Early is
    # record.early_train_error: the running error over the run's second tenth, after the warm-up.
    ClaimRow(
        "P2-F1-early",
        "P2 Fig. 1: the original unit ({first}) trains worse early than full pre-activation ({second}), in the "
        "running training error over the run's second tenth (P2: the original's training error falls \"very slowly "
        'at the beginning")',
        p2_original_vs_pre_bottleneck,
        column="early_train_error",
        nets="{first} vs {second}",
    ),
    ClaimRow(
        "P2-F1-end",
        "P2 Fig. 1: the original unit ({first}) ends with higher final training error than full pre-activation "
        '({second}) (P2: pre-activation reaches "the lowest loss among all models we investigated")',
        p2_original_vs_pre_bottleneck,
        nets="{first} vs {second}",
    ),
]


def no_worse_verdict(interval: Interval, margin: float) -> tuple[str, str]:
    """A claim that the second net is at least as good: its error exceeds the first's by less than
    `margin` (the interval of first minus second stays above -margin)."""
    if interval.n < MIN_SEEDS:
        return verdict(interval, margin)
    if interval.low > -margin:
        return "reproduced", f"the interval stays above -{margin:g}"
    if interval.high < -margin:
        return "contradicted", f"the interval lies below -{margin:g}"
    return "inconclusive", f"the interval reaches below -{margin:g}"


def failed_to_train(runs: pd.DataFrame, model: str) -> pd.Index:
    """Seeds in which this net diverged: no final error, a result (P2's "fail")."""
    if "diverged_at" not in runs:
        return pd.Index([])
    mine = runs[(runs["model"] == model) & runs["diverged_at"].notna()]
    return pd.Index(sorted(mine["seed"].unique()))


def evaluate_row(row: ClaimRow, runs: pd.DataFrame, min_effect: float, confidence: float) -> list[Claim]:
    split = "validation" if (runs["eval_split"] == "validation").any() else "test"
    found = []
    for first, second in row.pairs(runs):
        names = {"first": first, "second": second, "split": split}
        a, b = per_seed(runs, first, row.column), per_seed(runs, second, row.column)
        differences = a - b
        if row.unit == "%":
            differences = 100 * differences / a
        nets = row.nets.format(**names)
        if row.beyond_residual:
            residual = base_variant(runs, True)
            depths = [int(runs[runs["model"] == net]["depth"].iloc[0]) for net in (first, second)]
            if not set(depths) <= set(_depths(residual)):
                continue
            names |= {"first_residual": _model(residual, depths[0]), "second_residual": _model(residual, depths[1])}
            residual_gap = per_seed(runs, names["first_residual"], row.column)
            differences -= residual_gap - per_seed(runs, names["second_residual"], row.column)
            nets = f"depth {depths[0]} vs {depths[1]}"
        claim = make_claim(row.key, row.text.format(**names), row.unit, differences, min_effect, confidence, nets)
        claim.kind, claim.pair = row.kind, (first, second)
        if row.kind == "no worse":
            claim.verdict, claim.reason = no_worse_verdict(claim.interval, min_effect)
        found.append(with_failures(claim, {first: failed_to_train(runs, first), second: failed_to_train(runs, second)}))
    return found


def with_failures(claim: Claim, failed: dict[str, pd.Index]) -> Claim:
    """A net that diverged in some seeds failed to train there: a result beside the numbers. The
    net claimed worse failing in every seed, where the other trained, is the claim, as P2's "fail"."""
    claim.failed = failed
    (first, first_failed), (_, second_failed) = failed.items()
    if len(first_failed) and not len(second_failed) and claim.interval.n == 0:
        n = len(first_failed)
        claim.verdict = "reproduced" if n >= MIN_SEEDS else "inconclusive"
        claim.reason = f'{first} failed to train (diverged) in each of its {n} seeds, as P2\'s "fail"'
        claim.reason += "" if n >= MIN_SEEDS else f"; at least {MIN_SEEDS} seeds are needed"
    elif len(first_failed) or len(second_failed):
        failures = [
            f"{net} diverged in seed(s) {', '.join(map(str, seeds))}" for net, seeds in failed.items() if len(seeds)
        ]
        claim.reason = "; ".join(filter(None, [claim.reason, *failures]))
    return claim


def claims(
    runs: pd.DataFrame,
    min_effect: float = 1.0,
    confidence: float = 0.95,
    rows=CLAIM_ROWS,
    design: Design = Design(),
) -> list[Claim]:
    """Each row's claims for runs of ONE recipe and family (errors in %): the runs that finished,
    and those that diverged (a result), judged by the study's design, the rows of its family
    together (every row, where it names none)."""
    found = [claim for row in rows for claim in evaluate_row(row, runs, min_effect, confidence)]
    tested = [claim for claim in found if not design.family or claim.key in design.family]
    for claim in found:
        if claim not in tested:
            claim.verdict = "not judged"
            claim.reason = f"outside the study's family (design.family={list(design.family)})"
    return judge_family(tested, design, min_effect) + [claim for claim in found if claim not in tested]


def judge_family(family: list[Claim], design: Design, min_effect: float) -> list[Claim]:
    """The claims of one family judged together at the last look the family has reached: a look
    is reached when every claim still open after the looks before it has the look's seeds 0, 1,
    ... (a claim settled earlier needs no more: a growing study stops training its nets). A claim
    whose nets diverged in every seed has no differences: `with_failures` said what it is."""
    failed = [claim for claim in family if claim.interval.n == 0 and any(map(len, claim.failed.values()))]
    family = [claim for claim in family if claim not in failed]
    if not family:
        return failed
    seeds = [_leading_seeds(claim.differences) for claim in family]
    looks = design.looks_reached(min(seeds))
    if looks == 0:
        next_seeds = design.looks[0]
        for claim in family:
            _open_before_first_look(claim, Look(0, len(design.looks), min(seeds), math.nan, math.nan, next_seeds))
        return family + failed
    judged = _judged(family, design, looks, min_effect)
    while looks < len(design.looks):
        still_open = [have for index, have in enumerate(seeds) if judged.verdict[0, index] == sequential.OPEN]
        if not still_open or min(still_open) < design.looks[looks]:
            break
        looks += 1
        judged = _judged(family, design, looks, min_effect)
    next_seeds = design.looks[looks] if looks < len(design.looks) else None
    for index, claim in enumerate(family):
        verdict = {sequential.REPRODUCED: "reproduced", sequential.CONTRADICTED: "contradicted"}.get(
            int(judged.verdict[0, index]), "open" if next_seeds else "inconclusive"
        )
        settled_at = int(judged.look[0, index]) or looks
        look = Look(
            settled_at,
            len(design.looks),
            design.looks[settled_at - 1],
            float(judged.statistic[0, index]),
            float(judged.boundary[0, index]),
            next_seeds,
        )
        claim.verdict, claim.look = verdict, look
        claim.reason = "; ".join(filter(None, [look.said(verdict), *_failures(claim)]))
    return family + failed


def _judged(family: list[Claim], design: Design, looks: int, min_effect: float) -> sequential.Judged:
    """The family's verdicts after `looks` looks; a claim's seeds past its own are NaN."""
    last = design.looks[looks - 1]
    differences = np.full((1, len(family), last), np.nan)
    for index, claim in enumerate(family):
        differences[0, index] = claim.differences.reindex(range(last)).to_numpy(dtype=float)
    no_worse = [claim.kind == "no worse" for claim in family]
    return sequential.judge(differences, design, looks, min_effect, no_worse)


def _leading_seeds(differences: pd.Series) -> int:
    """How many of seeds 0, 1, 2, ... in order have a value."""
    have = set(differences.dropna().index)
    count = 0
    while count in have:
        count += 1
    return count


def _open_before_first_look(claim: Claim, look: Look) -> None:
    n, mean = claim.interval.n, claim.interval.mean
    direction = (
        f"{n} seed{'s' if n > 1 else ''}: the direction only, {'as claimed' if mean > 0 else 'against the claim'}"
        if n
        else "no paired seed"
    )
    claim.verdict, claim.look = "open", look
    claim.reason = "; ".join(filter(None, [f"{look.said('open')}; {direction}", *_failures(claim)]))


def _failures(claim: Claim) -> list[str]:
    """What with_failures said of diverged seeds, kept beside the design's reason."""
    return [
        f"{net} diverged in seed(s) {', '.join(map(str, seeds))}" for net, seeds in claim.failed.items() if len(seeds)
    ]
