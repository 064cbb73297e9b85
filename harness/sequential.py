"""Verdicts that stay honest as a study grows: a group-sequential design over seeds, with Holm's
correction within a family of claims.

Judged again at 95% each time seeds are added, and each claim of a table at 95%, a study says
"reproduced" or "contradicted" of effects that are not there far more often than 5%: with the
old rule (`stats.verdict` at each look), P2's six shortcut claims made at least one false verdict
in about half of simulated studies where no net differs (tests/test_sequential.py measures it
again; docs/studies.md, "A study's design"). So a study declares its design before its first
look (the config's `design`, recorded on its parent run): the seeds at each look, the family-wise
error rate `alpha` over all looks and claims, and a spending rule. At a look:

- each claim's statistic is Student's t of its per-seed differences over the look's seeds (for a
  "no worse" claim, the differences plus its margin);
- alpha is spent over the looks by a Lan-DeMets spending function of the information fraction
  (the look's seeds over the last look's): O'Brien-Fleming-type (strict early, near the
  single-look boundary at the end) or Pocock-type (about even);
- the boundaries are those of the looks' z statistics, whose joint normal distribution is
  integrated by the recursion of Armitage, McPherson and Rowe (1969; Jennison and Turnbull 2000,
  ch. 19), and each boundary's tail probability becomes a quantile of Student's t with the look's
  seeds less one degrees of freedom: a z boundary on a t statistic at 3 seeds errs far more;
- Holm's step-down within the family, group-sequentially (Maurer and Bretz 2013): the most
  extreme open claim is tested at alpha / (claims open), and a claim settled passes its share to
  the others, at this look and later ones.

The recursion is written here, not taken from a library: PyPI's group-sequential packages are
small and unmaintained, none converts to t or steps down within a family, and scipy's
multivariate normal integrates the same probabilities by randomised quasi-Monte Carlo, about
40 ms a call at 4 looks and seconds a boundary. The recursion is exact to about 1e-7 in
milliseconds; tests/test_sequential.py checks it against scipy's integration and the published
Lan-DeMets boundaries, and the rule as a whole by simulating studies.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

SPENDING_RULES = ("obrien_fleming", "pocock")
OPEN, REPRODUCED, CONTRADICTED = 0, 1, -1
GRID_POINTS = 301  # per look, for the recursion's Simpson rule: boundaries to about 1e-7


@dataclass(frozen=True)
class Design:
    """What a study declares before its first look."""

    looks: tuple[int, ...] = (3, 5, 8, 12)  # seeds at each look
    alpha: float = 0.05  # the family-wise rate of false verdicts over all looks, two-sided
    spending: str = "obrien_fleming"
    family: tuple[str, ...] = ()  # the claim rows judged together (harness.stats); empty: every row

    @classmethod
    def of(cls, node) -> "Design":
        """From the config's `design` (or a record's): lists become tuples, so that it hashes."""
        return cls(tuple(node["looks"]), float(node["alpha"]), str(node["spending"]), tuple(node["family"]))

    def as_dict(self) -> dict:
        return {"looks": list(self.looks), "alpha": self.alpha, "spending": self.spending, "family": list(self.family)}

    def fractions(self) -> tuple[float, ...]:
        return tuple(seeds / self.looks[-1] for seeds in self.looks)

    def looks_reached(self, seeds: int) -> int:
        """How many looks `seeds` seeds (0, 1, ...) complete."""
        return sum(seeds >= needed for needed in self.looks)

    def describe(self) -> str:
        rule = "O'Brien-Fleming-type" if self.spending == "obrien_fleming" else "Pocock-type"
        family = f"the family {', '.join(self.family)}" if self.family else "every claim its nets give as one family"
        return (
            f"looks at {', '.join(map(str, self.looks))} seeds, a family-wise false-verdict rate of {self.alpha:g}, "
            f"{rule} spending, Holm within {family}"
        )


def spent(fraction: float, alpha: float, rule: str) -> float:
    """The error rate spent by information fraction `fraction` (Lan and DeMets 1983)."""
    from scipy.stats import norm

    if rule == "obrien_fleming":
        return float(2 * norm.sf(norm.isf(alpha / 2) / math.sqrt(fraction)))
    return alpha * math.log(1 + (math.e - 1) * fraction)


def _simpson(points: int, step: float) -> np.ndarray:
    weights = np.ones(points)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return weights * step / 3


@functools.cache
def z_boundaries(fractions: tuple[float, ...], alpha: float, rule: str) -> tuple[float, ...]:
    """Two-sided boundaries c_k for standard normal statistics Z_k at these information fractions:
    P(some |Z_j| >= c_j, j <= k) = spent(t_k) under no effect. The recursion carries the
    sub-density of the score S_k = Z_k sqrt(t_k) on the region where no look has crossed; its
    increments are independent normals of variance t_k - t_(k-1)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    bounds: list[float] = []
    points = mass = None
    previous = 0.0
    for k, fraction in enumerate(fractions):
        staying_target = 1 - spent(fraction, alpha, rule)
        step_sd = math.sqrt(fraction - previous)
        if k == 0:
            bound = float(norm.isf((1 - staying_target) / 2))
        else:

            def staying(c: float) -> float:
                edge = c * math.sqrt(fraction)
                inside = norm.cdf((edge - points) / step_sd) - norm.cdf((-edge - points) / step_sd)
                return float(np.sum(mass * inside))

            ceiling = 40.0
            bound = ceiling if staying(ceiling) <= staying_target else brentq(
                lambda c: staying(c) - staying_target, 1e-3, ceiling, xtol=1e-10
            )  # fmt: skip
        edge = bound * math.sqrt(fraction)
        grid = np.linspace(-edge, edge, GRID_POINTS)
        if k == 0:
            density = norm.pdf(grid / step_sd) / step_sd
        else:
            density = (mass[None, :] * norm.pdf((grid[:, None] - points[None, :]) / step_sd) / step_sd).sum(axis=1)
        points, mass = grid, density * _simpson(GRID_POINTS, grid[1] - grid[0])
        bounds.append(bound)
        previous = fraction
    return tuple(bounds)


@functools.cache
def t_boundaries(design: Design, level: float) -> tuple[float, ...]:
    """The |t| each look needs at this level: the z boundary's tail probability as a quantile of
    Student's t with the look's seeds less one degrees of freedom."""
    from scipy.stats import norm, t

    z = z_boundaries(design.fractions(), level, design.spending)
    return tuple(float(t.isf(norm.sf(bound), seeds - 1)) for bound, seeds in zip(z, design.looks))


@dataclass
class Judged:
    """Each claim of each study (arrays of studies x claims): its verdict, the look (1, 2, ...)
    that settled it (0: open), and its t and the boundary it met there (for an open claim: at the
    last look judged, the boundary it would have needed were it tested first)."""

    verdict: np.ndarray
    look: np.ndarray
    statistic: np.ndarray
    boundary: np.ndarray


def judge(differences: np.ndarray, design: Design, looks: int, min_effect: float = 0.0, no_worse=False) -> Judged:
    """The design's verdicts after `looks` looks. `differences`: studies x claims x seeds (seeds
    0, 1, ... in order, at least the last judged look's; NaN where a seed has no value), positive
    as claimed. A "worse" claim is reproduced where its t crosses the boundary and its mean
    reaches `min_effect`; a "no worse" claim (`no_worse`, per claim) where the t of its
    differences plus `min_effect`, its margin, crosses it. Every look up to `looks` is judged in
    turn, as the study would have been."""
    studies, claims, _ = differences.shape
    no_worse = np.broadcast_to(np.asarray(no_worse, dtype=bool), (claims,))
    shifts, min_means = np.where(no_worse, min_effect, 0.0), np.where(no_worse, -np.inf, min_effect)
    # boundaries[k, r - 1]: look k's boundary for a claim tested at level alpha / r
    boundaries = np.array([[t_boundaries(design, design.alpha / r)[k] for r in range(1, claims + 1)]
                           for k in range(looks)]).reshape(looks, claims)  # fmt: skip
    judged = Judged(*(np.zeros((studies, claims), dtype=kind) for kind in (int, int, float, float)))
    judged.statistic[:], judged.boundary[:] = np.nan, np.nan
    rows = np.arange(studies)
    for k in range(looks):
        seen = differences[:, :, : design.looks[k]]
        count = np.sum(~np.isnan(seen), axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(seen, axis=2) / count
            sd = np.sqrt(np.nansum((seen - mean[..., None]) ** 2, axis=2) / (count - 1))
            statistic = (mean + shifts) / (sd / np.sqrt(count))
        statistic = np.where(count >= 2, statistic, np.nan)
        open_ = judged.verdict == OPEN
        remaining = open_.sum(axis=1)
        judged.statistic[open_] = statistic[open_]
        order = np.argsort(np.where(open_, -np.nan_to_num(np.abs(statistic), nan=0.0), np.inf), axis=1, kind="stable")
        going = np.ones(studies, dtype=bool)
        for step in range(claims):
            claim = order[:, step]
            level_index = np.maximum(remaining - step, 1) - 1
            boundary = boundaries[k, level_index]
            value = statistic[rows, claim]
            up = (value >= boundary) & (mean[rows, claim] >= min_means[claim])
            down = value <= -boundary
            settled = going & (step < remaining) & (up | down)
            judged.verdict[rows[settled], claim[settled]] = np.where(up, REPRODUCED, CONTRADICTED)[settled]
            judged.look[rows[settled], claim[settled]] = k + 1
            judged.boundary[rows[settled], claim[settled]] = boundary[settled]
            going &= settled
            if not going.any():
                break
        # A claim left open is given the boundary at which the step-down stopped: the one the most
        # extreme open claim missed, its level alpha over the claims still open after this look.
        still_open = judged.verdict == OPEN
        missed = boundaries[k, np.maximum(still_open.sum(axis=1), 1) - 1]
        judged.boundary[still_open] = np.repeat(missed[:, None], claims, axis=1)[still_open]
    return judged


@dataclass(frozen=True)
class Characteristics:
    """A design's behaviour on simulated studies (`simulate`)."""

    studies: int
    any_verdict: float  # the share of studies in which some claim got a verdict (no effect: a false one)
    settled: tuple[float, ...]  # per claim, the share reproduced
    expected_seeds: float  # seeds the study trains for a claim, on average over claims and studies
    largest_seeds: int

    def margin(self) -> float:
        """Two Monte Carlo standard errors of `any_verdict`."""
        return 2 * math.sqrt(max(self.any_verdict * (1 - self.any_verdict), 1e-4) / self.studies)


def simulate(design: Design, effects, sd: float, min_effect: float = 0.0, studies: int = 10_000, seed: int = 0):
    """Studies of a family that shares one baseline net, as P2's tables do: each claim compares
    its own net with the baseline (paired differences of standard deviation `sd`, mean
    `effects[i]`), judged look after look by `judge`, the function a real study's report calls."""
    effects = np.asarray(effects, dtype=float)
    generator = np.random.default_rng(seed)
    noise = generator.normal(0.0, sd / math.sqrt(2), size=(studies, len(effects) + 1, design.looks[-1]))
    differences = noise[:, 1:] - noise[:, :1] + effects[None, :, None]
    judged = judge(differences, design, len(design.looks), min_effect)
    seeds = np.array(design.looks)[np.where(judged.look > 0, judged.look, len(design.looks)) - 1]
    return Characteristics(
        studies,
        float((judged.verdict != OPEN).any(axis=1).mean()),
        tuple(float(share) for share in (judged.verdict == REPRODUCED).mean(axis=0)),
        float(seeds.mean()),
        design.looks[-1],
    )
