"""The report chain on stores whose runs are known: runs read back from MLflow
(`harness.tracking.runs`), figures (`harness.figures`), report.md (`harness.report`) and the
command `python -m harness.plot`."""

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import matplotlib.image
import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from harness import figures, plot
from harness.config import compose_config
from harness.report import budget_table, report_runs, report_sweep, signal_verdicts
from harness.sequential import Design
from harness.stats import t_interval
from harness.tracking.runs import load_analysis, load_curves, load_runs, write_members

from helpers import REPO
from helpers.config import resolved
from helpers.known_runs import experiment_store, log_run, probe_rows, sweep_run, table_row

# Final training error and test error (%) for seeds 0, 1, 2: plain nets degrade clearly.
CLEAR = {
    (False, 20): ([10.0, 11.0, 10.5], [12.0, 12.5, 12.2]),
    (False, 56): ([20.0, 23.0, 21.0], [22.0, 24.0, 23.0]),
    (True, 20): ([9.0, 9.5, 9.2], [11.0, 11.2, 11.1]),
    (True, 56): ([7.0, 8.5, 7.1], [9.0, 9.9, 9.3]),
}


def name(residual: bool, depth: int) -> str:
    return f"{'resnet' if residual else 'plain'}-{depth}"


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """One sweep of plain/residual 20/56, three seeds, with a clear gap (read only)."""
    folder = tmp_path_factory.mktemp("three-seeds")
    client, experiment_id = experiment_store(folder)
    parent = sweep_run(client, experiment_id)
    for (residual, depth), (train, test) in CLEAR.items():
        for seed in range(3):
            log_run(client, experiment_id, depth, residual, seed, train[seed], test[seed], parent=parent)
    client.set_terminated(parent)
    runs = load_runs(client, [experiment_id])
    analysis, notes = load_analysis(client, runs)
    assert notes == []
    return client, experiment_id, parent, runs, load_curves(client, runs), analysis


def claim_lines(report: str) -> list[str]:
    return [line for line in report.splitlines() if re.match(r"- \w+-style nets, ", line)]


def sections(report: str) -> dict[str, str]:
    """Level-2 sections of report.md by heading."""
    parts = re.split(r"^## ", report, flags=re.M)
    return {part.split("\n", 1)[0]: part for part in parts[1:]}


def cell(values) -> str:
    values = pd.Series(values, dtype=float)
    return f"{values.mean():.2f}" if len(values) < 2 else f"{values.mean():.2f} ± {values.std():.2f}"


def test_runs_are_read_back_with_their_errors_in_percent(tmp_path):
    client, experiment_id = experiment_store(tmp_path)
    test_run = log_run(client, experiment_id, 56, False, seed=2, final_train=21.5, test=23.25, iterations=400)
    val_run = log_run(client, experiment_id, 20, True, final_train=9.0, test=11.5, split="validation", status="FAILED")
    runs = load_runs(client, [experiment_id]).set_index("run_id")
    plain = runs.loc[test_run]
    assert (plain["model"], plain["variant"], plain["depth"], plain["residual"], plain["seed"]) == (
        "plain-56",
        "plain",
        56,
        False,
        2,
    )
    assert plain["final_train_error"] == pytest.approx(21.5)
    assert plain["train_error"] == pytest.approx(22.5)  # the running error's last point
    assert plain["eval_error"] == pytest.approx(23.25)
    assert plain["eval_split"] == "test" and plain["status"] == "FINISHED"
    assert (plain["iterations"], plain["batch_size"], plain["family"]) == (400, 64, "cifar")
    assert plain["recipe"] == resolved(compose_config("schedule.iterations=400")).recipe
    assert plain["response_std_mean"] == pytest.approx(
        probe_rows(False, 2, 400, 0.5).query("kind == 'response'")["value"].mean()
    )
    residual = runs.loc[val_run]
    assert residual["eval_split"] == "validation" and residual["eval_error"] == pytest.approx(11.5)
    assert (residual["model"], residual["status"]) == ("resnet-20", "FAILED")

    curves = load_curves(client, runs.reset_index())
    evals = curves[(curves["run_id"] == val_run) & (curves["metric"] == "eval_error")]
    assert list(evals["step"]) == [250, 500, 750, 1000] and evals["value"].iloc[-1] == pytest.approx(11.5)
    analysis, _ = load_analysis(client, runs.reset_index())
    assert sorted(analysis[analysis["run_id"] == test_run]["step"].unique()) == [200, 400]
    assert set(analysis["kind"]) == {"response", "output_grad", "grad_norm", "weight_norm"}


def test_two_recipes_get_two_sections_and_are_never_pooled(tmp_path):
    client, experiment_id = experiment_store(tmp_path)
    finals = {}  # (iterations, net) -> (final train errors, test errors) of seeds 0, 1
    for iterations, offset in ((1000, 0.0), (5000, -5.0)):
        for (residual, depth), (train, test) in CLEAR.items():
            train, test = [t + offset for t in train[:2]], [t + offset for t in test[:2]]
            finals[iterations, name(residual, depth)] = (train, test)
            for seed in (0, 1):
                log_run(client, experiment_id, depth, residual, seed, train[seed], test[seed], iterations=iterations)
    runs = load_runs(client, [experiment_id])
    assert set(runs["recipe"]) == {resolved(compose_config(f"schedule.iterations={n}")).recipe for n in (1000, 5000)}
    written = report_runs(client, runs, tmp_path / "out", "two budgets")
    report = (tmp_path / "out" / "report.md").read_text()
    found = sections(report)
    assert {"Recipe 1", "Recipe 2"} <= set(found) and "Results" not in found
    by_budget = {}
    for heading in ("Recipe 1", "Recipe 2"):
        (iterations,) = [n for n in (1000, 5000) if f"{n} iterations" in found[heading]]
        by_budget[iterations] = found[heading]
    assert set(by_budget) == {1000, 5000}
    for iterations, text in by_budget.items():
        for net in ("plain-20", "plain-56", "resnet-20", "resnet-56"):
            train, test = finals[iterations, net]
            row = table_row(text, net)
            assert row[1] == "2", row  # seeds of this recipe only
            assert row[2] == cell(train) and row[4] == cell(test), (iterations, row)
            pooled = cell(finals[1000, net][0] + finals[5000, net][0])
            assert pooled not in text
    names = {path.name for path in written}
    assert {"recipe1_error_vs_depth.png", "recipe2_error_vs_depth.png", "recipe1_fig6_cifar_curves.pdf"} <= names
    assert "error_vs_depth.png" not in names


def test_the_budget_curve_draws_a_line_per_pair_of_nets(tmp_path):
    """At 2000 iterations plain-56 has not finished yet: C2 compares the 20-layer nets there, a
    line of its own, not joined to the 56-layer nets' C2 at 1000; Fig. 7 draws a line per depth."""
    client, experiment_id = experiment_store(tmp_path)
    for iterations in (1000, 2000):
        for (residual, depth), (train, test) in CLEAR.items():
            if (iterations, residual, depth) != (2000, False, 56):
                for seed in (0, 1):
                    log_run(
                        client, experiment_id, depth, residual, seed, train[seed], test[seed], iterations=iterations
                    )
    table = budget_table(load_runs(client, [experiment_id]), 1.0, 0.95)
    points = {key: sorted(zip(rows["nets"], rows["iterations"])) for key, rows in table.groupby("key")}
    assert points["C1"] == [("plain-56 vs plain-20", 1000)]
    assert points["C2"] == [("resnet-20 vs plain-20", 2000), ("resnet-56 vs plain-56", 1000)]
    assert points["C3"] == [("resnet-56 vs resnet-20", 1000), ("resnet-56 vs resnet-20", 2000)]
    assert points["Fig7"] == [
        ("resnet-20 vs plain-20", 1000),
        ("resnet-20 vs plain-20", 2000),
        ("resnet-56 vs plain-56", 1000),
    ]
    fig = figures.claims_vs_budget(table, 1.0)
    drawn = {}  # claim -> {nets: points on its line}
    for ax in fig.axes:
        lines = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        drawn[ax.get_title().split(":")[0]] = {c.get_label(): len(c.lines[0].get_xdata()) for c in lines}
    assert drawn["C2"] == {"resnet-20 vs plain-20": 1, "resnet-56 vs plain-56": 1}
    assert drawn["C3"] == {"resnet-56 vs resnet-20": 2}
    assert drawn["Fig7"] == {"resnet-20 vs plain-20": 2, "resnet-56 vs plain-56": 1}
    report_runs(client, load_runs(client, [experiment_id]), tmp_path / "out", "two budgets")
    report = (tmp_path / "out" / "report.md").read_text()
    assert (
        "| C2 | resnet-20 vs plain-20 | 2000 | 2 |" in report and "| C2 | resnet-56 vs plain-56 | 1000 | 2 |" in report
    )


def test_one_seed_with_tiny_gaps_is_never_reproduced(tmp_path):
    client, experiment_id = experiment_store(tmp_path)
    for (residual, depth), error in {
        (False, 20): 10.0,
        (False, 56): 10.05,
        (True, 20): 10.02,
        (True, 56): 9.97,
    }.items():
        log_run(client, experiment_id, depth, residual, 0, error, error + 2)
    runs = load_runs(client, [experiment_id])
    for min_effect in (1.0, 0.0):
        report_runs(client, runs, tmp_path / "out", "one seed", min_effect=min_effect)
        lines = claim_lines((tmp_path / "out" / "report.md").read_text())
        assert {line.split(", ")[1].split(" ")[0] for line in lines} >= {"C1", "C1b", "C2", "C3", "C3-test", "Fig7"}
        assert not [line for line in lines if ": reproduced" in line or ": contradicted" in line]
        assert all("open (the first look is at 3 seeds; 1 seed: the direction only" in line for line in lines), lines


def test_three_seeds_with_a_clear_gap_are_reproduced(three_seeds, tmp_path):
    client, experiment_id, _, runs, _, _ = three_seeds
    written = report_runs(client, runs, tmp_path / "out", "three seeds", design=Design(looks=(3,)))
    report = (tmp_path / "out" / "report.md").read_text()
    lines = {line.split(", ")[1].split(" ")[0]: line for line in claim_lines(report)}
    for key in ("C1", "C1b", "C2"):
        assert ": reproduced (look 1 of 1, 3 seeds: |t| " in lines[key], lines[key]
        assert "3 seeds" in lines[key] and "95% CI" in lines[key]
    differences = np.array(CLEAR[False, 56][0]) - np.array(CLEAR[False, 20][0])
    interval = t_interval(differences)
    assert f"{interval.mean:+.2f} points (95% CI {interval.low:+.2f} to {interval.high:+.2f}" in lines["C1"]
    assert table_row(report, "plain-56")[1:3] == ["3", cell(CLEAR[False, 56][0])]
    # Figures as PNG and PDF, the ImageNet figure left out (no ImageNet-style nets).
    stems = [
        "error_vs_depth",
        "fig1_plain_shallow_vs_deep",
        "fig6_cifar_curves",
        "fig7_layer_responses",
        "backward_signal",
    ]
    names = {path.name for path in written}
    for stem in stems:
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert matplotlib.image.imread(tmp_path / "out" / f"{stem}.png").shape[1] > 500
        assert (tmp_path / "out" / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        assert f"({stem}.png)" in report
    assert not any(name.startswith("fig4") for name in names)
    assert "## Runs not finished or incomplete" not in report


def test_figure_functions_return_none_without_their_nets(three_seeds):
    _, _, _, runs, curves, analysis = three_seeds
    nothing = runs.iloc[0:0]
    for draw in (
        lambda r: figures.error_vs_depth(r),
        lambda r: figures.figure_1(r, curves),
        lambda r: figures.figure_6(r, curves),
        lambda r: figures.figure_4(r, curves),
        lambda r: figures.figure_7(r, analysis),
        lambda r: figures.gradient_profile(r, analysis),
    ):
        assert draw(nothing) is None
    residual, plain = runs[runs["residual"]], runs[~runs["residual"]]
    assert figures.figure_4(runs, curves) is None  # no ImageNet-style nets
    assert figures.figure_1(residual, curves) is None  # no plain nets
    assert figures.figure_1(plain[plain["depth"] == 20], curves) is None  # one depth only
    assert figures.error_vs_depth(runs[runs["depth"] == 56]) is None
    assert figures.gradient_profile(plain, analysis) is None  # no plain/residual pair
    assert figures.figure_7(runs, analysis.iloc[0:0]) is None  # no probe tables
    assert [ax.get_title() for ax in figures.figure_6(plain, curves).axes] == ["plain"]


def error_bars(ax) -> dict[tuple[float, float], float]:
    """{(x, y): half-length of its bar} of every point drawn with a y error bar."""
    bars = {}
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer) and container.has_yerr:
            line, _, (collection,) = container
            for x, y, segment in zip(line.get_xdata(), line.get_ydata(), collection.get_segments()):
                bars[float(x), round(float(y), 6)] = abs(segment[1][1] - segment[0][1]) / 2
    return bars


def test_error_against_depth_draws_t_intervals_over_seeds(three_seeds):
    _, _, _, runs, _, _ = three_seeds
    fig = figures.error_vs_depth(runs)
    train_ax, test_ax = fig.axes[:2]
    for ax, column in ((train_ax, 0), (test_ax, 1)):
        bars = error_bars(ax)
        assert len(bars) == 4  # plain and residual at depths 20 and 56
        for (residual, depth), values in CLEAR.items():
            interval = t_interval(values[column])
            assert bars[float(depth), round(interval.mean, 6)] == pytest.approx(interval.high - interval.mean, rel=1e-9)
    drawn = [
        np.asarray(line.get_ydata(), dtype=float) for line in train_ax.get_lines() if list(line.get_xdata()) == [20, 56]
    ]
    plain_means = [np.mean(CLEAR[False, 20][0]), np.mean(CLEAR[False, 56][0])]
    assert any(np.allclose(ydata, plain_means) for ydata in drawn)  # the plain nets' means, joined across depths

    one_seed = figures.error_vs_depth(runs[runs["seed"] == 0])
    assert error_bars(one_seed.axes[0]) == {}  # one seed: no interval to draw


def test_y_axes_start_at_zero_and_the_title_says_data_budget_and_seeds(three_seeds):
    _, _, _, runs, curves, analysis = three_seeds
    drawn = {
        "error_vs_depth": figures.error_vs_depth(runs),
        "fig1": figures.figure_1(runs, curves),
        "fig6": figures.figure_6(runs, curves),
        "fig7": figures.figure_7(runs, analysis),
        "backward_signal": figures.gradient_profile(runs, analysis),
    }
    for label, fig in drawn.items():
        assert fig is not None, label
        title = fig._suptitle.get_text()
        assert "fashion_mnist" in title and "1000 iterations" in title and "3 seeds" in title, (label, title)
        for ax in fig.axes:
            if ax.get_yscale() == "linear":
                assert ax.get_ylim()[0] == 0, (label, ax.get_title())
    one_seed = figures.figure_1(runs[runs["seed"] == 1], curves)
    assert "1 seed " in one_seed._suptitle.get_text()


def test_figure_6_draws_each_net_as_its_mean_over_seeds(three_seeds):
    _, _, _, runs, curves, _ = three_seeds
    plain_ax, residual_ax = figures.figure_6(runs, curves).axes
    by_colour = {}
    for line in plain_ax.get_lines():
        if len(line.get_xdata()) == 4:
            by_colour.setdefault(line.get_color(), []).append(line)
    deep = [line for line in by_colour[figures.depth_colour(56)] if line.get_linestyle() == "--"][0]
    np.testing.assert_allclose(deep.get_ydata(), np.mean(CLEAR[False, 56][0]) + 1 + np.array([3.0, 2.0, 1.0, 0.0]))
    bold = [line for line in by_colour[figures.depth_colour(56)] if line.get_linestyle() == "-"][0]
    assert bold.get_linewidth() > deep.get_linewidth()
    assert len(plain_ax.collections) >= 2  # min-max bands over the seeds


def test_a_run_without_its_probe_tables_is_named_as_incomplete(tmp_path):
    client, experiment_id = experiment_store(tmp_path)
    ids = {}
    for (residual, depth), (train, test) in CLEAR.items():
        ids[name(residual, depth)] = log_run(client, experiment_id, depth, residual, 0, train[0], test[0])
    failed = log_run(client, experiment_id, 110, False, 0, 50.0, 50.0, status="FAILED")
    artifacts = Path(urlparse(client.get_run(ids["plain-56"]).info.artifact_uri).path)
    shutil.rmtree(artifacts / "analysis")
    report_runs(client, load_runs(client, [experiment_id]), tmp_path / "out", "deleted")
    report = (tmp_path / "out" / "report.md").read_text()
    incomplete = sections(report)["Runs not finished or incomplete"]
    assert f"plain-110 seed 0 (run {failed}): FAILED" in incomplete
    assert ids["plain-56"] in incomplete  # its probe tables are gone: said, not hidden
    assert ids["plain-20"] not in incomplete


SIGNALS = {20: (0.001, "vanishing"), 32: (1000.0, "exploding"), 44: (0.5, "neither vanishing nor exploding")}


@pytest.fixture(scope="module")
def signals(tmp_path_factory):
    """Plain nets whose backward signal, first unit over last, is 0.001, 1000 and 0.5; one residual net."""
    client, experiment_id = experiment_store(tmp_path_factory.mktemp("signals"))
    for depth, (ratio, _) in SIGNALS.items():
        log_run(client, experiment_id, depth, False, 0, signal_ratio=ratio)
    log_run(client, experiment_id, 20, True, 0, signal_ratio=0.5)
    runs = load_runs(client, [experiment_id])
    analysis, _ = load_analysis(client, runs)
    return {line.split(":")[0]: line for line in signal_verdicts(runs, analysis)}


@pytest.mark.parametrize("depth", sorted(SIGNALS))
def test_signal_verdicts_follow_the_backward_signal(signals, depth):
    ratio, state = SIGNALS[depth]
    assert set(signals) == {"plain-20", "plain-32", "plain-44", "resnet-20"}
    line = signals[f"plain-{depth}"]
    assert line.count(f": {state}") == 2, line  # at the first and the last probe
    assert f"first/last unit {ratio:.3g}" in line
    assert "iteration 500" in line and "iteration 1000" in line
    assert signals["resnet-20"].count(": neither vanishing nor exploding") == 2


def test_the_sweep_report_covers_its_members_and_is_logged_to_the_parent(three_seeds, tmp_path):
    client, experiment_id, parent, _, _, _ = three_seeds
    written = report_sweep(client, parent, tmp_path / "out")
    assert "report.md" in {path.name for path in written}
    logged = {artifact.path for artifact in client.list_artifacts(parent, "figures")}
    assert {"figures/report.md", "figures/error_vs_depth.png", "figures/backward_signal.pdf"} <= logged
    assert "12 finished runs" in (tmp_path / "out" / "report.md").read_text()


def test_plot_command_selects_by_experiment_filter_and_parent(tmp_path):
    client, experiment_id = experiment_store(tmp_path)
    first = sweep_run(client, experiment_id, "first sweep")
    reused = {}
    for (residual, depth), (train, test) in CLEAR.items():
        reused[name(residual, depth)] = log_run(
            client, experiment_id, depth, residual, 0, train[0], test[0], parent=first
        )
    client.set_terminated(first)
    # A later sweep that trained seed 1 of the 56-layer nets and reused seed 0 of the first sweep's.
    second = sweep_run(client, experiment_id, "second sweep")
    trained = [
        log_run(
            client, experiment_id, 56, residual, 1, CLEAR[residual, 56][0][1], CLEAR[residual, 56][1][1], parent=second
        )
        for residual in (False, True)
    ]
    members = pd.DataFrame({"run_id": trained + [reused["plain-56"], reused["resnet-56"]]})
    write_members(client, second, members, tmp_path / "members")
    client.set_terminated(second)
    uri = client.tracking_uri

    assert (
        plot.main(
            [
                "--uri",
                uri,
                "--experiment",
                "degradation",
                "--filter",
                "tags.residual = 'False'",
                "--out",
                str(tmp_path / "plain"),
            ]
        )
        == 0
    )
    report = (tmp_path / "plain" / "report.md").read_text()
    assert "| plain-56 | 2 |" in report and "resnet-56" not in report and "3 finished runs" in report

    assert plot.main(["--uri", uri, "--parent", first, "--out", str(tmp_path / "first")]) == 0
    report = (tmp_path / "first" / "report.md").read_text()
    assert "4 finished runs" in report and "| plain-20 | 1 |" in report

    assert plot.main(["--uri", uri, "--out", str(tmp_path / "latest")]) == 0  # the latest sweep: its members
    report = (tmp_path / "latest" / "report.md").read_text()
    assert "4 finished runs" in report and "| plain-56 | 2 |" in report and "plain-20" not in report
    assert "figures/report.md" in {a.path for a in client.list_artifacts(second, "figures")}

    assert plot.main(["--uri", uri, "--experiment", "nope"]) == 2
    assert plot.main(["--uri", uri, "--experiment", "degradation", "--confidence", "1.5"]) == 2
    assert plot.main(["--uri", uri, "--experiment", "degradation", "--filter", "tags.depth = '7'"]) == 2


@pytest.mark.integration
def test_notebook_runs_headless_against_a_store(three_seeds, tmp_path):
    from nbclient import NotebookClient

    client = three_seeds[0]
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    os.environ["HARNESS_TRACKING_URI"] = client.tracking_uri
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        del os.environ["HARNESS_TRACKING_URI"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert any("plain-56" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)
