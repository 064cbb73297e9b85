"""The claims as statistics (`harness.stats`): paired differences per seed, the Student t
interval of their mean, and verdicts that never say more than the numbers support."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness.models import model_name
from harness.record import RUN_COLUMNS
from harness.sequential import Design
from harness.stats import claims, t_interval, verdict


def direct_interval(values, confidence=0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high), computed here from the textbook formula."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = scipy_stats.t.ppf(1 - (1 - confidence) / 2, df=n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def interval_verdict(values, min_effect=1.0):
    interval = t_interval(values)
    return interval, *verdict(interval, min_effect)


def test_t_interval_equals_the_direct_computation():
    values = [2.0, 3.5, 1.0, 4.25, 2.75]
    interval = t_interval(values)
    mean, sd, low, high = direct_interval(values)
    assert interval.n == 5
    assert interval.mean == pytest.approx(mean, rel=1e-12)
    assert interval.sd == pytest.approx(sd, rel=1e-12)
    assert (interval.low, interval.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    # t_{0.975, 4} = 2.776: wider than the normal interval's 1.96
    assert interval.high - interval.mean == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-6)
    wider = t_interval(values, confidence=0.99)
    assert (wider.low, wider.high) == pytest.approx(direct_interval(values, 0.99)[2:], rel=1e-12)
    assert wider.low < interval.low and wider.high > interval.high


def test_one_seed_gives_no_interval():
    interval = t_interval([0.7])
    assert interval.n == 1 and interval.mean == 0.7
    assert math.isnan(interval.sd) and math.isnan(interval.low) and math.isnan(interval.high)


def test_one_seed_with_tiny_gaps_is_never_reproduced():
    for gap in (0.05, -0.05, 50.0):
        _, outcome, reason = interval_verdict([gap], min_effect=0.01)
        assert outcome == "inconclusive"
        assert "1 seed" in reason


def test_three_seeds_with_a_clear_gap_are_reproduced():
    differences = [5.1, 6.0, 7.2]
    interval, outcome, reason = interval_verdict(differences)
    assert (outcome, reason) == ("reproduced", "")
    mean, sd, low, high = direct_interval(differences)
    assert (interval.n, interval.mean, interval.sd) == (3, pytest.approx(mean), pytest.approx(sd))
    assert (interval.low, interval.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert low > 0


def test_three_seeds_of_noise_around_zero_are_inconclusive():
    interval, outcome, reason = interval_verdict([-0.8, 0.5, 0.3])
    assert interval.low < 0 < interval.high
    assert outcome == "inconclusive"
    assert "spans zero" in reason


def test_a_clear_gap_against_the_claim_is_contradicted():
    interval, outcome, _ = interval_verdict([-5.1, -6.0, -7.2])
    assert interval.high < 0
    assert outcome == "contradicted"


def test_a_significant_effect_below_the_minimum_is_inconclusive():
    differences = [0.39, 0.40, 0.41]
    interval, outcome, reason = interval_verdict(differences, min_effect=1.0)
    assert interval.low > 0  # significant ...
    assert outcome == "inconclusive"  # ... but smaller than stated minimum
    assert "minimum effect" in reason
    assert interval_verdict(differences, min_effect=0.3)[1] == "reproduced"


def test_two_seeds_are_inconclusive_however_clear():
    _, outcome, reason = interval_verdict([10.0, 10.1])
    assert outcome == "inconclusive"
    assert "2 seeds" in reason


# Final training error, test error (%) and mean response std per net and seed. Plain nets
# degrade, residual nets do not; residual responses are smaller.
NETS = {
    ("plain", 20): {"final_train_error": [10.0, 11.0, 10.5], "eval_error": [12.0, 12.5, 12.2], "response_std_mean": [1.0, 1.1, 0.9]},
    ("plain", 56): {"final_train_error": [20.0, 23.0, 21.0], "eval_error": [22.0, 24.0, 23.0], "response_std_mean": [2.0, 2.2, 1.8]},
    ("resnet", 20): {"final_train_error": [9.0, 9.5, 9.2], "eval_error": [11.0, 11.2, 11.1], "response_std_mean": [0.5, 0.6, 0.4]},
    ("resnet", 56): {"final_train_error": [7.0, 8.5, 7.1], "eval_error": [9.0, 9.9, 9.3], "response_std_mean": [0.8, 0.9, 1.2]},
}  # fmt: skip


def synthetic_runs() -> pd.DataFrame:
    rows = []
    for (kind, depth), values in NETS.items():
        residual = kind == "resnet"
        for seed in range(3):
            row = dict.fromkeys(RUN_COLUMNS)
            row.update(
                run_id=f"{kind}-{depth}-{seed}",
                name=f"{kind}-{depth}",
                status="FINISHED",
                recipe="r",
                dataset="fashion_mnist",
                family="cifar",
                depth=depth,
                residual=residual,
                shortcut="zero_pad" if residual else "none",
                activation="post",
                seed=seed,
                variant=model_name(None, residual, "zero_pad"),
                model=model_name(depth, residual, "zero_pad"),
                iterations=1000,
                batch_size=64,
                optimizer="sgd",
                lr=0.1,
                augment=False,
                resize="None",
                warmup="none",
                eval_split="test",
                train_error=values["final_train_error"][seed] + 1,
                **{key: values[key][seed] for key in ("final_train_error", "eval_error", "response_std_mean")},
            )
            rows.append(row)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def value(kind, depth, key="final_train_error") -> np.ndarray:
    return np.array(NETS[kind, depth][key])


def by_key(found) -> dict:
    result = {}
    for claim in found:
        result.setdefault(claim.key, []).append(claim)
    return result


def check_claim(claim, expected: np.ndarray, outcome: str | None = None):
    assert claim.interval.n == len(expected)
    np.testing.assert_allclose(claim.differences.sort_index().values, expected, rtol=1e-12)
    mean, sd, low, high = direct_interval(expected)
    assert claim.interval.mean == pytest.approx(mean, rel=1e-12)
    assert (claim.interval.low, claim.interval.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    if outcome:
        assert claim.verdict == outcome, claim.line()


SINGLE_LOOK = Design(looks=(3,))  # a study of 3 seeds, judged once: Holm within its claims


def test_claims_are_paired_differences_per_seed():
    found = by_key(claims(synthetic_runs(), design=SINGLE_LOOK))
    assert set(found) == {"C1", "C1b", "C2", "C3", "C3-test", "Fig7"}
    (c1,), (c1b,), (c2,), (c3,), (c3_test,) = (found[k] for k in ("C1", "C1b", "C2", "C3", "C3-test"))
    check_claim(c1, value("plain", 56) - value("plain", 20), "reproduced")  # [10, 12, 10.5]
    assert "plain-56" in c1.text and "plain-20" in c1.text
    check_claim(
        c1b, (value("plain", 56) - value("plain", 20)) - (value("resnet", 56) - value("resnet", 20)), "reproduced"
    )
    check_claim(c2, value("plain", 56) - value("resnet", 56), "reproduced")
    # +1.70 (95% CI +0.19 to +3.21): the single 95% interval excludes zero, Holm's step among six claims does not
    check_claim(c3, value("resnet", 20) - value("resnet", 56), "inconclusive")
    check_claim(c3_test, value("resnet", 20, "eval_error") - value("resnet", 56, "eval_error"), "reproduced")
    assert "test error" in c3_test.text
    fig7 = {claim.text.split(" of ")[1].split(" ")[0]: claim for claim in found["Fig7"]}
    assert set(fig7) == {"resnet-20", "resnet-56"}
    for depth in (20, 56):
        plain, residual = value("plain", depth, "response_std_mean"), value("resnet", depth, "response_std_mean")
        check_claim(fig7[f"resnet-{depth}"], 100 * (plain - residual) / plain)
        assert fig7[f"resnet-{depth}"].unit == "%"
    line = c1.line()
    assert line.startswith("C1 ") and "3 seeds" in line and "95% CI" in line
    assert line.endswith(": reproduced (look 1 of 1, 3 seeds: |t| 18.03 against the boundary 9.92)")


def test_pairing_is_by_seed_not_by_row_order():
    runs = synthetic_runs()
    expected = {claim.key + claim.text: claim.differences.sort_index().tolist() for claim in claims(runs)}
    shuffled = runs.sample(frac=1, random_state=3).reset_index(drop=True)
    assert list(shuffled["run_id"]) != list(runs["run_id"])
    assert {claim.key + claim.text: claim.differences.sort_index().tolist() for claim in claims(shuffled)} == expected

    # Drop seed 1 of plain-56: every claim that needs plain-56 pairs the two seeds left.
    without = runs[~((runs["model"] == "plain-56") & (runs["seed"] == 1))]
    found = by_key(claims(without))
    check_claim(found["C1"][0], (value("plain", 56) - value("plain", 20))[[0, 2]], "open")
    check_claim(found["C2"][0], (value("plain", 56) - value("resnet", 56))[[0, 2]], "open")
    assert list(found["C1"][0].differences.index) == [0, 2]
    reason = found["C1"][0].reason
    assert "the first look is at 3 seeds" in reason and "2 seeds: the direction only" in reason
    assert found["C3"][0].interval.n == 3  # residual nets only: all three seeds
    fig7 = {claim.text.split(" of ")[1].split(" ")[0]: claim.interval.n for claim in found["Fig7"]}
    assert fig7 == {"resnet-20": 3, "resnet-56": 2}


def test_claims_need_the_nets_they_compare():
    runs = synthetic_runs()
    assert {c.key for c in claims(runs[~runs["residual"]])} == {"C1"}
    assert {c.key for c in claims(runs[runs["residual"]])} == {"C3", "C3-test"}
    assert {c.key for c in claims(runs[runs["depth"] == 56])} == {"C2", "Fig7"}


def test_a_validation_split_is_named_in_the_test_claim():
    runs = synthetic_runs().assign(eval_split="validation")
    (c3_test,) = [c for c in claims(runs) if c.key == "C3-test"]
    assert "validation error" in c3_test.text and "test error" not in c3_test.text
