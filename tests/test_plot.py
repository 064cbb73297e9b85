"""Figures, tables and verdicts drawn from runs whose curves are known."""

import os
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from nbclient import NotebookClient

from harness import plot

REPO = Path(__file__).resolve().parents[1]
STEPS = [10, 20, 30, 40]


def curve(final: float, seed: int) -> list[float]:
    """A falling error curve that ends at `final`, slightly different for each seed."""
    return [final + 0.3 * (1 - i / 3) + 0.001 * seed for i in range(len(STEPS))]


def probe_table(residual: bool, depth: int, seed: int, step: int) -> pd.DataFrame:
    """Three 3x3 layers whose response std is smaller in residual nets; conv gradient norms
    spanning a factor of 4 (plain) or 2 (residual)."""
    scale = (0.5 if residual else 1.0) * depth / 20 + 0.01 * seed + step / 1000
    layers = ["s1.b01.conv1", "s2.b01.conv1", "s3.b01.conv1"]
    rows = [("response", i + 1, name, scale * (3 - i)) for i, name in enumerate(layers)]
    rows += [("grad_norm", i + 1, name, g) for i, (name, g) in enumerate(zip(layers, [0.25, 1.0, 0.5] if not residual else [0.5, 1.0, 0.5]))]
    return pd.DataFrame(rows, columns=["kind", "index", "layer", "value"])


def log_run(client, experiment_id, parent_id, depth, residual, seed=0, train_final=0.1, test_final=0.12, **tags):
    name = f"{'resnet' if residual else 'plain'}-{depth}"
    run_tags = {"harness.role": "job", MLFLOW_PARENT_RUN_ID: parent_id, "depth": str(depth), "residual": str(residual),
                "shortcut": "zero_pad" if residual else "none", "activation": "post", "dataset": "fashion_mnist",
                "seed": str(seed), "family": "imagenet" if depth in (18, 34) else "cifar", **tags}  # fmt: skip
    run = client.create_run(experiment_id, run_name=name, tags=run_tags)
    now = int(time.time() * 1000)
    metrics = [Metric("train_error", v, now, s) for s, v in zip(STEPS, curve(train_final, seed))]
    metrics += [Metric("test_error", v, now, s) for s, v in zip(STEPS, curve(test_final, seed))]
    client.log_batch(run.info.run_id, metrics=metrics)
    for step in (20, 40):
        client.log_text(run.info.run_id, probe_table(residual, depth, seed, step).to_csv(index=False), f"analysis/step-{step:07d}.csv")
    client.log_param(run.info.run_id, "schedule.iterations", "40")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture
def sweep(tmp_path):
    """A store with one sweep: plain nets degrade (56 worse than 20), residual nets do not, two
    seeds of each configuration."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("degradation", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="sweep", tags={"harness.role": "sweep"}).info.run_id
    finals = {("plain", 20): 0.10, ("plain", 56): 0.20, ("resnet", 20): 0.09, ("resnet", 56): 0.05}
    for (kind, depth), final in finals.items():
        for seed in (0, 1):
            log_run(client, experiment_id, parent, depth, kind == "resnet", seed, final, final + 0.02)
    return client, experiment_id, parent


def test_runs_and_their_final_errors_come_from_mlflow(sweep):
    client, experiment_id, parent = sweep
    runs = plot.load_runs(client, [experiment_id])
    assert len(runs) == 8
    row = runs[(runs["model"] == "plain-56") & (runs["seed"] == 1)].iloc[0]
    assert row["train_error"] == pytest.approx(100 * (0.20 + 0.001))
    assert set(runs["variant"]) == {"plain", "resnet"}


def test_figure_6_draws_the_logged_curves_as_seed_means(sweep):
    client, experiment_id, _ = sweep
    runs = plot.load_runs(client, [experiment_id])
    fig = plot.figure_6(runs, plot.load_curves(client, runs))
    plain_ax, residual_ax = fig.axes  # two depths only: no "deepest pair" panel
    assert [ax.get_title() for ax in fig.axes] == ["plain", "residual"]
    lines = {line.get_label(): line for line in plain_ax.get_lines()}
    expected = np.mean([curve(0.20, 0), curve(0.20, 1)], axis=0) * 100
    assert list(lines["plain-56 train"].get_xdata()) == STEPS
    np.testing.assert_allclose(lines["plain-56 train"].get_ydata(), expected)
    assert lines["plain-56 train"].get_linestyle() == "--" and lines["plain-56 test"].get_linestyle() == "-"
    assert lines["plain-56 test"].get_linewidth() > lines["plain-56 train"].get_linewidth()
    assert lines["plain-20 train"].get_color() == residual_ax.get_lines()[0].get_color()  # colour by depth
    legend = [text.get_text() for text in plain_ax.get_legend().get_texts()]
    assert legend == ["plain-20", "plain-56", "train", "test"]


def test_panels_without_runs_are_left_out(sweep):
    client, experiment_id, _ = sweep
    runs = plot.load_runs(client, [experiment_id])
    curves = plot.load_curves(client, runs)
    assert plot.figure_4(runs, curves) is None  # no ImageNet-style runs
    only_plain = runs[~runs["residual"]]
    assert [ax.get_title() for ax in plot.figure_6(only_plain, curves).axes] == ["plain"]


def test_error_against_depth_plots_the_mean_over_seeds(sweep):
    client, experiment_id, _ = sweep
    fig = plot.error_vs_depth(plot.load_runs(client, [experiment_id]))
    train_ax = fig.axes[0]
    lines = {line.get_label(): line for line in train_ax.get_lines()}
    assert list(lines["plain"].get_xdata()) == [20, 56]
    np.testing.assert_allclose(lines["plain"].get_ydata(), [100 * 0.1005, 100 * 0.2005])
    assert len(train_ax.collections) == 2  # a min-max band per variant


def test_report_table_and_verdicts_follow_the_numbers(sweep, tmp_path):
    client, experiment_id, parent = sweep
    written = plot.report_sweep(client, parent, tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.md", "error_vs_depth.png", "fig1_plain_20_vs_56.png", "fig6_cifar_curves.pdf"} <= names
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| fashion_mnist | plain-56 | 2 | 20.05 ± 0.07 | 22.05 ± 0.07 | – |" in report
    assert "Degradation (deeper plain net trains worse) reproduced" in report
    assert "plain-56 train error 20.1% > plain-20 10.1%" in report
    assert "Shortcuts fix the deep plain net reproduced" in report
    assert "P1 Fig. 4" in report and "left out" in report
    logged = {a.path for a in client.list_artifacts(parent, "figures")}
    assert "figures/report.md" in logged


def test_verdicts_say_not_reproduced_when_the_numbers_disagree(sweep):
    client, experiment_id, _ = sweep
    runs = plot.load_runs(client, [experiment_id])
    swapped = runs.copy()
    swapped.loc[swapped["model"] == "plain-56", "train_error"] = 1.0
    lines = plot.verdicts(swapped)
    assert any(line.startswith("Degradation (deeper plain net trains worse) NOT reproduced") for line in lines)
    assert any("plain-56 train error 1.0% <= plain-20 10.1%" in line for line in lines)


def test_published_values_stand_beside_cifar10_runs_only(sweep):
    client, experiment_id, _ = sweep
    runs = plot.load_runs(client, [experiment_id])
    table = plot.summary_table(runs)
    assert table["paper_test"].isna().all()
    runs["dataset"] = "cifar10"
    table = plot.summary_table(runs).set_index("model")
    assert table.loc["resnet-56", "paper_test"] == 6.97


def test_plot_command_selects_by_experiment_and_filter(sweep, tmp_path):
    client, _, _ = sweep
    code = plot.main(["--uri", client.tracking_uri, "--experiment", "degradation", "--filter", "tags.residual = 'False'",
                      "--out", str(tmp_path / "filtered")])  # fmt: skip
    assert code == 0
    report = (tmp_path / "filtered" / "report.md").read_text()
    assert "plain-56" in report and "resnet-56" not in report
    assert plot.main(["--uri", client.tracking_uri, "--experiment", "nope"]) == 2


def test_notebook_runs_headless_against_a_store(sweep, tmp_path):
    client, _, _ = sweep
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    os.environ["HARNESS_TRACKING_URI"] = client.tracking_uri
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["HARNESS_TRACKING_URI"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert any("plain-56" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)


def test_figure_7_and_the_gradient_profile_draw_the_logged_probe_tables(sweep):
    client, experiment_id, _ = sweep
    runs = plot.load_runs(client, [experiment_id])
    analysis = plot.load_analysis(client, runs)
    assert sorted(analysis["step"].unique()) == [20, 40]
    by_layer, by_size = plot.figure_7(runs, analysis).axes
    lines = {line.get_label(): line for line in by_layer.get_lines()}
    expected = np.mean([probe_table(False, 56, seed, 40).query("kind == 'response'")["value"] for seed in (0, 1)], axis=0)
    np.testing.assert_allclose(lines["plain-56"].get_ydata(), expected)
    assert lines["plain-56"].get_linestyle() == ":" and lines["resnet-56"].get_linestyle() == "-"
    sorted_lines = {line.get_label(): line for line in by_size.get_lines()}
    assert list(sorted_lines["resnet-20"].get_ydata()) == sorted(sorted_lines["resnet-20"].get_ydata(), reverse=True)

    plain_ax, residual_ax = plot.gradient_profile(runs, analysis).axes
    assert (plain_ax.get_title(), residual_ax.get_title()) == ("plain-56", "resnet-56")
    assert [line.get_label() for line in plain_ax.get_lines()] == ["iteration 20", "iteration 40"]
    np.testing.assert_allclose(plain_ax.get_lines()[1].get_ydata(), [0.25, 1.0, 0.5])


def test_analysis_verdicts_follow_the_probe_tables(sweep):
    client, experiment_id, _ = sweep
    runs = plot.load_runs(client, [experiment_id])
    analysis = plot.load_analysis(client, runs)
    lines = plot.analysis_verdicts(runs, analysis)
    assert "Residual functions closer to zero (P1 Fig. 7) reproduced: ResNet-56 mean response std 2.890 < plain-56 5.690" in lines
    assert "plain-56 smallest conv-layer gradient norm / largest = 0.25: no vanishing gradients (threshold 0.01)" in lines
    swapped = analysis.copy()
    plain_56 = runs[runs["model"] == "plain-56"]["run_id"]
    swapped.loc[swapped["run_id"].isin(plain_56) & (swapped["kind"] == "response"), "value"] = 0.1
    swapped.loc[swapped["run_id"].isin(plain_56) & (swapped["layer"] == "s1.b01.conv1") & (swapped["kind"] == "grad_norm"), "value"] = 1e-4
    lines = plot.analysis_verdicts(runs, swapped)
    assert any(line.startswith("Residual functions closer to zero (P1 Fig. 7) NOT reproduced: ResNet-56") for line in lines)
    assert "plain-56 smallest conv-layer gradient norm / largest = 0.0001: gradients vanish (threshold 0.01)" in lines
