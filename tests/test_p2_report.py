"""P2's studies in the report: each variant beside P2's published number, its curves and backward
signal, and the claims of P2's Tables 1 and 2 as rows of the one claims table, a variant that
diverged shown as failed to train (P2's "fail"), never as a missing run."""

import math
from types import SimpleNamespace

import matplotlib.image
import pandas as pd
import pytest

from harness import figures, models, record
from harness.report import report_runs
from harness.sequential import Design
from harness.stats import CLAIM_ROWS, ClaimRow, claims, p2_shortcuts_vs_identity
from harness.tracking.runs import load_curves, load_runs

from helpers.known_runs import experiment_store, log_run, table_row

# Final training error and test error (%) per seed 0, 1, 2 of each ResNet-56 variant.
SHORTCUTS = {
    "identity": ((), [8.0, 8.4, 8.2], [9.0, 9.3, 9.1]),
    "scale0.5": (("shortcut=scaling", "shortcut_lambda=0.5"), [14.0, 15.0, 14.2], [15.0, 16.0, 15.5]),
    "exgate-6": (("shortcut=exclusive_gating", "gate_bias=-6"), [9.0, 8.9, 9.6], [10.0, 9.8, 10.1]),
    "C": (("shortcut=full_projection",), [12.0, 12.5, 11.8], [13.0, 13.2, 12.9]),
}
UNITS = {
    "post": ([8.0, 8.4, 8.2], [9.0, 9.3, 9.1]),
    "bn_after_add": ([11.0, 12.0, 11.5], [12.0, 12.5, 12.4]),
    "pre": ([8.1, 8.3, 8.4], [8.8, 9.2, 9.0]),
}


def study_section(report: str, title: str) -> str:
    """The text of a level-3 section of report.md, up to the next section (its figures' headings are level 4)."""
    return report.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]


@pytest.fixture(scope="module")
def shortcut_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("p2-shortcuts")
    client, experiment_id = experiment_store(folder)
    for net, train, test in SHORTCUTS.values():
        for seed in range(3):
            log_run(client, experiment_id, 56, True, seed, train[seed], test[seed], net=net)
    for seed in range(3):  # dropout on the shortcut diverges in every seed
        log_run(client, experiment_id, 56, True, seed, net=("shortcut=dropout",), diverged_at=500)
    return client, load_runs(client, [experiment_id]), folder


SINGLE_LOOK = Design(looks=(3,))  # studies of 3 seeds, judged once


def test_the_shortcut_study_has_its_section_with_p2s_numbers_and_verdicts(shortcut_study, tmp_path):
    client, runs, _ = shortcut_study
    written = report_runs(client, runs, tmp_path, "P2 shortcuts", design=SINGLE_LOOK)
    report = (tmp_path / "report.md").read_text()
    section = study_section(report, "P2 Table 1: shortcuts")
    assert table_row(section, "resnet-56")[5].startswith("6.61 (median of 5, P2 Tables 1 and 2")
    assert table_row(section, "resnet-56-scale0.5")[5].startswith("fail (test error above 20%)")
    assert table_row(section, "resnet-56-C")[5].startswith("12.22")
    assert table_row(section, "resnet-56-exgate-6")[2].startswith("9.17 (")  # mean and its interval
    dropout = table_row(section, "resnet-56-drop0.5")
    assert dropout[1] == "3" and dropout[2] == "–" and dropout[4] == "diverged in 3 of 3 (at iteration 500, 500, 500)"
    lines = [line for line in section.splitlines() if line.startswith("- P2-T1")]
    verdicts = {line.split(":")[1].split(" shortcut")[0].strip(): line for line in lines}
    assert ": reproduced (look 1 of 1, 3 seeds: |t| " in verdicts["the resnet-56-scale0.5"]
    assert ": reproduced (look 1 of 1, 3 seeds: |t| " in verdicts["the resnet-56-C"]
    assert ": inconclusive" in verdicts["the resnet-56-exgate-6"]  # +0.97 points, below the minimum effect of 1
    assert "resnet-56-drop0.5 failed to train (diverged) in each of its 3 seeds" in verdicts["the resnet-56-drop0.5"]
    assert (
        verdicts["the resnet-56-drop0.5"].endswith('seeds, as P2\'s "fail")')
        and ": reproduced (" in verdicts["the resnet-56-drop0.5"]
    )
    for stem in ("p2_shortcuts_curves", "p2_shortcuts_signal"):
        assert tmp_path / f"{stem}.png" in written and f"({stem}.png)" in section
        assert matplotlib.image.imread(tmp_path / f"{stem}.png").shape[1] > 500
    assert "- resnet-56-drop0.5 seed 0" in report.split("## Runs not finished or incomplete")[1]


def test_the_unit_study_has_its_section_and_the_two_claims_of_table_2(tmp_path):
    client, experiment_id = experiment_store(tmp_path)
    for unit, (train, test) in UNITS.items():
        for seed in range(3):
            log_run(client, experiment_id, 56, True, seed, train[seed], test[seed], net=(f"activation={unit}",))
    report_runs(client, load_runs(client, [experiment_id]), tmp_path / "out", "P2 units", design=SINGLE_LOOK)
    report = (tmp_path / "out" / "report.md").read_text()
    section = study_section(report, "P2 Table 2: residual units")
    assert "### P2 Table 1" not in report
    assert [table_row(section, net)[5].split(" ")[0] for net in ("resnet-56", "resnet-56-bnadd", "resnet-56-pre")] == [
        "6.61", "8.17", "6.37"
    ]  # fmt: skip
    (bn_after_add,) = [line for line in section.splitlines() if line.startswith("- P2-T2b")]
    (pre,) = [line for line in section.splitlines() if line.startswith("- P2-T2e")]
    assert ": reproduced (look 1 of 1" in bn_after_add and "+3.30 points" in bn_after_add
    assert "test error" in pre and ": reproduced (look 1 of 1" in pre


def test_a_new_claim_is_one_row_of_the_table(shortcut_study):
    _, runs, _ = shortcut_study
    scaling_only = ClaimRow(
        "X", "{first} trains worse than {second}", lambda r: [p for p in p2_shortcuts_vs_identity(r) if "scale" in p[0]]
    )
    (claim,) = claims(runs, rows=[scaling_only], design=SINGLE_LOOK)
    assert claim.nets == "resnet-56 vs resnet-56-scale0.5" and claim.verdict == "reproduced"  # the row's default label
    assert claim.differences.tolist() == pytest.approx([6.0, 6.6, 6.0])
    assert {row.key for row in CLAIM_ROWS} >= {
        "C1",
        "C1b",
        "C2",
        "C3",
        "C3-test",
        "Fig7",
        "P2-T1",
        "P2-T2b",
        "P2-T2e",
        "P2-F1-early",
        "P2-F1-end",
    }


def test_p1_claims_are_not_made_of_p2_variants(shortcut_study):
    """A study of P2's shortcuts at one depth has no P1 claim: P1's compare depths and plain nets."""
    _, runs, _ = shortcut_study
    keys = {claim.key for claim in claims(runs)}
    assert keys == {"P2-T1"}
    assert pd.Series([c.nets for c in claims(runs)]).str.endswith(" vs resnet-56").all()


def test_the_variant_table_gives_each_net_its_own_column(tmp_path):
    """Shortcuts and units of one store side by side: every net its own column with its own
    seeds' mean, never the mean of every net that shares a shortcut or a unit."""
    client, experiment_id = experiment_store(tmp_path)
    for net, _, test in SHORTCUTS.values():
        for seed in range(3):
            log_run(client, experiment_id, 56, True, seed, 10.0, test[seed], net=net)
    for unit, (_, test) in UNITS.items():
        if unit != "post":  # the identity shortcut's runs are the original unit's
            for seed in range(3):
                log_run(client, experiment_id, 56, True, seed, 10.0, test[seed], net=(f"activation={unit}",))
    report_runs(client, load_runs(client, [experiment_id]), tmp_path / "out", "P2 both")
    report = (tmp_path / "out" / "report.md").read_text()
    table = report.split("#### Residual variants")[1].split("\n\n", 2)[1]
    header, _, row = table.splitlines()[:3]
    means = dict(zip(header.split("|")[2:-1], row.split("|")[2:-1], strict=True))
    means = {variant.strip(): float(value) for variant, value in means.items()}
    assert means == pytest.approx({
        "resnet": 9.13, "resnet-bnadd": 12.3, "resnet-pre": 9.0,
        "resnet-scale0.5": 15.5, "resnet-exgate-6": 9.97, "resnet-C": 13.03,
    }, abs=0.01)  # fmt: skip


# P2 Fig. 1 in P2's bottleneck nets: per seed 0, 1, 2, the running training error (%) over iterations
# 101 to 200 of 1000 (the early stretch) and the final training error.
DEEP = {
    "post": ([40.0, 44.0, 42.0], [9.0, 9.4, 9.1]),
    "pre": ([30.0, 31.0, 33.0], [8.0, 8.1, 8.3]),
}


def test_the_deep_study_judges_p2_fig_1_early_and_at_the_end_and_draws_both_units(tmp_path):
    client, experiment_id = experiment_store(tmp_path)
    for unit, (early, final) in DEEP.items():
        for seed in range(3):
            net = ("family=cifar_bottleneck", "depth=164", f"activation={unit}")
            run_id = log_run(client, experiment_id, 164, True, seed, final[seed], 10.0, net=net)
            for step, offset in zip(range(20, 220, 20), [50, 40, 30, 20, 10, 2, 1, 0, -1, -2]):
                # windows ending at 120..200 average the seed's early error; those before it are the warm-up's
                client.log_metric(run_id, record.TRAIN_ERROR, (early[seed] + offset * (step <= 100)) / 100, step=step)
    runs = load_runs(client, [experiment_id])
    assert runs.groupby("model")["early_train_error"].mean().to_dict() == pytest.approx(
        {"resnet-164-bottleneck-B": 42.0, "resnet-164-bottleneck-B-pre": 31.33}, abs=0.01
    )
    found = {claim.key: claim for claim in claims(runs)}
    assert set(found) == {"P2-F1-early", "P2-F1-end"}
    assert found["P2-F1-early"].nets == "resnet-164-bottleneck-B vs resnet-164-bottleneck-B-pre"
    assert found["P2-F1-early"].differences.tolist() == pytest.approx([10.0, 13.0, 9.0])
    assert found["P2-F1-end"].differences.tolist() == pytest.approx([1.0, 1.3, 0.8])
    assert '"very slowly at the beginning"' in found["P2-F1-early"].text
    written = report_runs(client, runs, tmp_path / "out", "P2 deep")
    section = study_section(
        (tmp_path / "out" / "report.md").read_text(), "P2 Fig. 1: original and pre-activation bottleneck nets"
    )
    assert table_row(section, "resnet-164-bottleneck-B-pre")[1] == "3"
    assert any(line.startswith("- P2-F1-early") for line in section.splitlines())
    assert tmp_path / "out" / "p2_deep_curves.png" in written and "(p2_deep_curves.png)" in section


def test_the_early_stretch_is_the_second_tenth_of_a_run():
    assert record.early_stretch(1000) == (101, 200)
    assert record.early_stretch(64000) == (6401, 12800)
    points = [SimpleNamespace(step=step, value=0.5) for step in (80, 100)]
    assert math.isnan(record.early_train_error(points, 1000))  # only the warm-up's windows


def test_a_shortcut_of_your_own_gets_the_shortcut_studys_section_and_figures_without_a_claim(tmp_path):
    """Identity beside a join outside harness/ (tests/helpers/joins.py): its row, curves and
    backward signal as any of P2's variants have them; P2 claims nothing of it."""
    client, experiment_id = experiment_store(tmp_path / "store")
    for seed in range(3):
        log_run(client, experiment_id, 56, True, seed, 8.0 + seed / 10, 9.0)
        log_run(client, experiment_id, 56, True, seed, 7.0 + seed / 10, 8.5, net=("shortcut=helpers.joins.REZERO",))
    written = report_runs(client, load_runs(client, [experiment_id]), tmp_path, "your own")
    section = study_section((tmp_path / "report.md").read_text(), "P2 Table 1: shortcuts")
    assert table_row(section, "resnet-56-rezero")[2].startswith("7.10 (") and table_row(section, "resnet-56")
    assert table_row(section, "resnet-56-rezero")[5] == "–"  # no number of P2's
    assert not [line for line in section.splitlines() if line.startswith("- P2-T1")]
    for stem in ("p2_shortcuts_curves", "p2_shortcuts_signal"):
        assert tmp_path / f"{stem}.png" in written and f"({stem}.png)" in section


def test_the_curves_name_each_variant_in_p2s_words(shortcut_study):
    client, runs, _ = shortcut_study
    fig = figures.p2_curves(runs, load_curves(client, runs), "P2 shortcuts")
    labels = {text.get_text() for text in fig.axes[0].get_legend().get_texts()}
    assert {
        "(a) original (resnet-56)",
        "constant scaling, λ = 0.5 (resnet-56-scale0.5)",
        "exclusive gating, b_g = -6 (resnet-56-exgate-6)",
        "1x1 conv shortcut (resnet-56-C)",
    } <= labels


def test_every_variant_of_p2_has_its_words():
    words = models.variant_words
    assert words("zero_pad", "bn_after_add") == "(b) BN after addition"
    assert words("projection", "pre") == "(e) full pre-activation"  # P1's option is the name's to say
    assert words("dropout", "pre", shortcut_dropout=0.3) == "dropout shortcut, 0.3; (e) full pre-activation"
    assert words("shortcut_only_gating", "post") == "shortcut-only gating, b_g = -6"
    assert set(models.UNIT_WORDS) == set(models.ACTIVATIONS)
    assert all(row.words for name, row in models.SHORTCUTS.items() if row.in_p2 and name != "zero_pad")
