"""`python -m harness.plot`: the paper's figures, tables and verdicts from tracked runs.

Everything is read from MLflow (run tags, final metrics, and full curves through
`MlflowClient.get_metric_history`), so any store that holds the runs can be plotted.

    python -m harness.plot                       # the latest sweep in ./mlruns
    python -m harness.plot --parent RUN_ID       # one sweep
    python -m harness.plot --experiment degradation --filter "tags.dataset = 'cifar10'"
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per probe table is noise
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from harness.config import default_store
from harness.models import model_name
from harness.paper import published_test_error
from harness.tracking.mlflow_store import ROLE_TAG

CURVES = ("train_error", "test_error")
CONFIG_KEYS = ["family", "depth", "residual", "shortcut", "activation"]
DEPTH_COLOURS = {
    20: "tab:blue", 32: "tab:orange", 44: "tab:green", 56: "tab:red", 110: "tab:purple", 1202: "tab:brown",
    18: "tab:cyan", 34: "tab:olive", 50: "tab:pink", 101: "tab:gray", 152: "black",
}  # fmt: skip
OTHER_COLOURS = plt.get_cmap("tab20").colors


def depth_colour(depth: int) -> tuple | str:
    """The same colour for a depth in every panel and every figure."""
    return DEPTH_COLOURS.get(depth, OTHER_COLOURS[depth % len(OTHER_COLOURS)])


# ---------------------------------------------------------------------------- reading runs


def load_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> pd.DataFrame:
    """One row per training run: its configuration (from tags), status and final errors in %."""
    job_filter = f"tags.`{ROLE_TAG}` = 'job'" + (f" AND {filter_string}" if filter_string else "")
    rows = []
    for run in client.search_runs(experiment_ids, filter_string=job_filter, max_results=50000):
        tags, metrics = run.data.tags, run.data.metrics
        residual = tags["residual"] == "True"
        row = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "dataset": tags["dataset"],
            "family": tags.get("family", "cifar"),
            "depth": int(tags["depth"]),
            "residual": residual,
            "shortcut": tags["shortcut"],
            "activation": tags["activation"],
            "seed": int(tags["seed"]),
            "iterations": int(run.data.params.get("schedule.iterations", 0)),
            # search_runs holds each metric's last value: the final running training error and
            # the final test error, measured on the whole evaluation split.
            "train_error": 100 * metrics["train_error"] if "train_error" in metrics else float("nan"),
            "test_error": 100 * metrics["test_error"] if "test_error" in metrics else float("nan"),
        }
        shortcut = row["shortcut"] if residual else "zero_pad"  # plain runs are tagged "none"
        row["variant"] = model_name(None, residual, shortcut, row["activation"])
        row["model"] = model_name(row["depth"], residual, shortcut, row["activation"])
        rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", "status", "dataset", *CONFIG_KEYS, "seed", "iterations",
                                       "train_error", "test_error", "variant", "model"])  # fmt: skip


def load_curves(client: MlflowClient, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table (run_id, metric, step, value in %) of the full training and test curves."""
    rows = [
        (run_id, key, point.step, 100 * point.value)
        for run_id in runs["run_id"]
        for key in CURVES
        for point in client.get_metric_history(run_id, key)
    ]
    return pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])


def load_analysis(client: MlflowClient, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table (run_id, step, kind, index, layer, value) of the runs' probe tables, the
    artifacts analysis/step-NNNNNNN.csv written by `harness.analysis.record`."""
    tables = []
    with tempfile.TemporaryDirectory() as folder:
        for run_id in runs["run_id"]:
            for artifact in client.list_artifacts(run_id, "analysis"):
                table = pd.read_csv(client.download_artifacts(run_id, artifact.path, folder))
                tables.append(table.assign(run_id=run_id, step=int(Path(artifact.path).stem.removeprefix("step-"))))
    columns = ["run_id", "step", "kind", "index", "layer", "value"]
    return pd.concat(tables)[columns] if tables else pd.DataFrame(columns=columns)


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "FINISHED"]


def base_variant(runs: pd.DataFrame, residual: bool) -> pd.DataFrame:
    """The runs of one variant for the curve figures: P1's own (option A, post-activation) when
    present, else the most common one."""
    runs = runs[runs["residual"] == residual]
    if runs.empty:
        return runs
    preferred = "resnet" if residual else "plain"
    variant = preferred if (runs["variant"] == preferred).any() else runs["variant"].mode()[0]
    return runs[runs["variant"] == variant]


# ---------------------------------------------------------------------------- drawing


def draw_curves(ax: plt.Axes, runs: pd.DataFrame, curves: pd.DataFrame, metrics=CURVES) -> None:
    """One colour per depth; dashed = training error, bold = test error (P1's grammar). Seeds of
    one configuration become their mean with a min-max band."""
    for depth, group in runs.groupby("depth"):
        label = group["model"].iloc[0]
        for metric in metrics:
            points = curves[curves["run_id"].isin(group["run_id"]) & (curves["metric"] == metric)]
            if points.empty:
                continue
            by_step = points.groupby("step")["value"].agg(["mean", "min", "max"])
            test = metric == "test_error"
            few_points = len(by_step) <= 20  # short budgets: mark the sparse test points
            ax.plot(by_step.index, by_step["mean"], color=depth_colour(depth), linestyle="-" if test else "--",
                    linewidth=2.0 if test else 1.0, marker="o" if test and few_points else None, markersize=3,
                    label=f"{label} {'test' if test else 'train'}")  # fmt: skip
            if len(group) > 1:
                ax.fill_between(by_step.index, by_step["min"], by_step["max"], color=depth_colour(depth), alpha=0.15)
    if curves["step"].max() >= 10_000:
        ax.ticklabel_format(axis="x", style="sci", scilimits=(4, 4))  # P1 counts iterations in 1e4
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def style_legend(ax: plt.Axes, runs: pd.DataFrame, with_styles: bool = True) -> None:
    """A legend of depths (colours) and, once, of line styles: short enough to stay readable."""
    handles = [Line2D([], [], color=depth_colour(d), linewidth=2, label=m)
               for d, m in runs.groupby("depth")["model"].first().items()]  # fmt: skip
    if with_styles:
        handles += [Line2D([], [], color="grey", linestyle="--", linewidth=1, label="train"),
                    Line2D([], [], color="grey", linewidth=2, label="test")]  # fmt: skip
    ax.legend(handles=handles, fontsize=8, loc="best")


def figure_1(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure | None:
    """P1 Fig. 1: the shallowest and the deepest plain CIFAR net, training error left, test right."""
    plain = base_variant(runs[runs["family"] == "cifar"], residual=False)
    if plain["depth"].nunique() < 2:
        return None
    pair = plain[plain["depth"].isin([plain["depth"].min(), plain["depth"].max()])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, metric, title in zip(axes, CURVES, ("training error", "test error")):
        draw_curves(ax, pair, curves, metrics=(metric,))
        ax.set_title(title)
        style_legend(ax, pair, with_styles=False)
    fig.suptitle("Plain nets: the deeper one has higher training and test error (P1 Fig. 1)")
    fig.tight_layout()
    return fig


def curve_panels(panels: list[tuple[str, pd.DataFrame]], curves: pd.DataFrame, title: str) -> plt.Figure | None:
    panels = [(name, runs) for name, runs in panels if not runs.empty]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), sharey=True, squeeze=False)
    for ax, (name, runs) in zip(axes[0], panels):
        draw_curves(ax, runs, curves)
        ax.set_title(name)
        style_legend(ax, runs)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_6(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure | None:
    """P1 Fig. 6: plain nets, residual nets, and the deepest pair of residual nets (CIFAR family)."""
    cifar = runs[runs["family"] == "cifar"]
    plain, residual = base_variant(cifar, residual=False), base_variant(cifar, residual=True)
    deepest = sorted(residual["depth"].unique())[-2:]
    panels = [("plain", plain), ("residual", residual)]
    if len(deepest) == 2 and residual["depth"].nunique() > 2:
        panels.append((f"residual, deepest: {deepest[0]} vs {deepest[1]}", residual[residual["depth"].isin(deepest)]))
    return curve_panels(panels, curves, "Training (dashed) and test (bold) error, CIFAR-style nets (P1 Fig. 6)")


def figure_4(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure | None:
    """P1 Fig. 4 analogue: plain-18/34 and ResNet-18/34 (ImageNet-style family)."""
    imagenet = runs[runs["family"] == "imagenet"]
    panels = [("plain", base_variant(imagenet, residual=False)), ("ResNet", base_variant(imagenet, residual=True))]
    return curve_panels(panels, curves, "Training (dashed) and test (bold) error, ImageNet-style nets (P1 Fig. 4)")


def error_vs_depth(runs: pd.DataFrame) -> plt.Figure | None:
    """Final training and test error against depth, one line per variant (plain, resnet, ...),
    the mean over seeds with a min-max band: degradation at a glance."""
    if runs["depth"].nunique() < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    styles = {"plain": ("tab:red", "o"), "resnet": ("tab:blue", "s")}
    others = iter(OTHER_COLOURS[4:])
    for variant, group in runs.groupby("variant"):
        colour, marker = styles.get(variant) or (next(others), "^")
        for ax, metric in zip(axes, CURVES):
            stats = group.groupby("depth")[metric].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], color=colour, marker=marker, linewidth=2, label=variant)
            if (group.groupby("depth").size() > 1).any():
                ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15)
    for ax, title in zip(axes, ("final training error", "final test error")):
        ax.set_title(title)
        ax.set_xlabel("depth (weighted layers)")
        ax.set_xticks(sorted(runs["depth"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    seeds = runs.groupby(["variant", "depth"]).size().max()
    fig.suptitle("Error against depth" + (f" (mean and min-max of up to {seeds} seeds)" if seeds > 1 else ""))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- tables and verdicts


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Final errors per configuration: mean, std over seeds, number of runs, published value."""
    table = (
        runs.groupby(["dataset", "model", *CONFIG_KEYS], sort=True)
        .agg(runs=("run_id", "size"), train_mean=("train_error", "mean"), train_std=("train_error", "std"),
             test_mean=("test_error", "mean"), test_std=("test_error", "std"))  # fmt: skip
        .reset_index()
        .sort_values(["dataset", "family", "residual", "shortcut", "activation", "depth"])
    )
    published = [published_test_error(d, m) for d, m in zip(table["dataset"], table["model"])]
    table["paper_test"] = [p[0] if p else None for p in published]
    table["paper_source"] = [p[1] if p else "" for p in published]
    return table


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| data set | net | runs | train error % | test error % | paper test error % |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in table.itertuples():
        paper = f"{row.paper_test:.2f} ({row.paper_source})" if row.paper_source else "–"
        lines.append(f"| {row.dataset} | {row.model} | {row.runs} | {mean_std(row.train_mean, row.train_std)} "
                     f"| {mean_std(row.test_mean, row.test_std)} | {paper} |")  # fmt: skip
    return "\n".join(lines)


def factor_tables(runs: pd.DataFrame) -> list[str]:
    """Shortcut options and post- vs pre-activation, side by side at each depth, whenever the
    runs vary them."""
    residual = runs[runs["residual"]]
    sections = []
    for factor, title in (("shortcut", "Shortcut options (A zero-pad, B projection, C all projections)"),
                          ("activation", "Post- vs pre-activation")):  # fmt: skip
        if residual[factor].nunique() < 2:
            continue
        wide = residual.pivot_table(index=["dataset", "depth"], columns=factor, values="test_error", aggfunc="mean")
        header = "| data set | depth | " + " | ".join(f"{c} test error %" for c in wide.columns) + " |"
        lines = [f"### {title}", "", header, "|---|---|" + "---|" * len(wide.columns)]
        for (dataset, depth), values in wide.iterrows():
            cells = " | ".join("–" if pd.isna(v) else f"{v:.2f}" for v in values)
            lines.append(f"| {dataset} | {depth} | {cells} |")
        sections.append("\n".join(lines))
    return sections


def verdicts(runs: pd.DataFrame) -> list[str]:
    """One line per claim of P1, computed from the mean final errors of the selected runs."""
    lines = []
    means = runs.groupby(["dataset", "family", "variant", "depth"])[["train_error", "test_error"]].mean()
    for (dataset, family), group in means.groupby(level=["dataset", "family"]):
        group = group.droplevel(["dataset", "family"])
        where = f"{dataset}, {family}-style nets"

        def compare(claim: str, metric: str, worse: tuple[str, int], better: tuple[str, int]) -> None:
            a, b = group.loc[worse, metric], group.loc[better, metric]
            ok = a > b
            what = metric.replace("_", " ")
            lines.append(
                f"{claim} {'reproduced' if ok else 'NOT reproduced'} ({where}): "
                f"{worse[0]}-{worse[1]} {what} {a:.1f}% {'>' if ok else '<='} {better[0]}-{better[1]} {b:.1f}%"
            )

        variants = group.index.get_level_values("variant")
        plain_depths = sorted(group.loc["plain"].index) if "plain" in variants else []
        res_depths = sorted(group.loc["resnet"].index) if "resnet" in variants else []
        if len(plain_depths) >= 2:
            shallow, deep = plain_depths[0], plain_depths[-1]
            compare("Degradation (deeper plain net trains worse)", "train_error", ("plain", deep), ("plain", shallow))
        if len(res_depths) >= 2:
            shallow, deep = res_depths[0], res_depths[-1]
            compare("Deeper residual net trains better", "train_error", ("resnet", shallow), ("resnet", deep))
            compare("Deeper residual net tests better", "test_error", ("resnet", shallow), ("resnet", deep))
        for depth in sorted(set(plain_depths) & set(res_depths))[-1:]:
            compare("Shortcuts fix the deep plain net", "train_error", ("plain", depth), ("resnet", depth))
    return lines


def final_probes(runs: pd.DataFrame, analysis: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Each configuration's last probe of one kind, the mean over seeds per layer index."""
    last = analysis[analysis["step"] == analysis.groupby("run_id")["step"].transform("max")]
    merged = last[last["kind"] == kind].merge(runs[["run_id", "depth", "variant", "model"]], on="run_id")
    return merged.groupby(["depth", "variant", "model", "index"], as_index=False)["value"].mean()


def figure_7(runs: pd.DataFrame, analysis: pd.DataFrame) -> plt.Figure | None:
    """P1 Fig. 7: std of each 3x3 layer's response (after BN, before ReLU/addition) by layer
    index (top) and sorted in descending order (bottom), plain (dotted) vs residual (solid)."""
    nets = pd.concat([base_variant(runs[runs["family"] == "cifar"], residual) for residual in (False, True)])
    responses = final_probes(nets, analysis, "response")
    if responses.empty:
        return None
    fig, (by_layer, by_size) = plt.subplots(2, 1, figsize=(8, 6.5))
    for (depth, variant, model), net in responses.groupby(["depth", "variant", "model"]):
        style = dict(color=depth_colour(depth), linestyle=":" if variant == "plain" else "-", linewidth=1.5, label=model)
        by_layer.plot(net["index"], net["value"], **style)
        by_size.plot(range(1, len(net) + 1), net["value"].sort_values(ascending=False), **style)
    by_layer.set_xlabel("layer index (original)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    for ax in (by_layer, by_size):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Standard deviation of 3x3 layer responses at the end of training (P1 Fig. 7)")
    fig.tight_layout()
    return fig


def deepest_pair(runs: pd.DataFrame) -> int | None:
    """The deepest CIFAR depth that has both a plain and a residual net."""
    cifar = runs[runs["family"] == "cifar"]
    both = set(cifar[cifar["residual"]]["depth"]) & set(cifar[~cifar["residual"]]["depth"])
    return max(both) if both else None


def gradient_profile(runs: pd.DataFrame, analysis: pd.DataFrame) -> plt.Figure | None:
    """Gradient norm of every conv layer, by index from the input (log scale), plain vs
    residual at the same depth, at the first, middle and last probe of training."""
    depth = deepest_pair(runs)
    # The conv layers only: BN layers' much smaller gradients would turn the profile into a zigzag.
    grads = analysis[(analysis["kind"] == "grad_norm") & analysis["layer"].str.contains("conv")]
    if depth is None or grads.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, residual in zip(axes, (False, True)):
        nets = base_variant(runs[(runs["family"] == "cifar") & (runs["depth"] == depth)], residual)
        net = grads[grads["run_id"].isin(nets["run_id"])]
        steps = sorted(net["step"].unique())
        shown = sorted({steps[0], steps[len(steps) // 2], steps[-1]}) if steps else []
        colours = plt.get_cmap("viridis")([i / max(1, len(shown) - 1) for i in range(len(shown))])
        for step, colour in zip(shown, colours):
            at_step = net[net["step"] == step].groupby("index")["value"].mean()
            ax.plot(range(1, len(at_step) + 1), at_step.values, color=colour, linewidth=1.2, label=f"iteration {step}")
        ax.set_yscale("log")
        ax.set_title(nets["model"].iloc[0] if not nets.empty else "")
        ax.set_xlabel("conv layer index (from the input)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("gradient L2 norm (probe batch)")
    fig.suptitle("Gradient norms by layer: do plain nets' first layers starve? (P1 §4.1)")
    fig.tight_layout()
    return fig


VANISHING = 0.01  # smallest / largest conv-layer gradient norm below this: vanishing gradients


def analysis_verdicts(runs: pd.DataFrame, analysis: pd.DataFrame) -> list[str]:
    lines = []
    cifar = runs[runs["family"] == "cifar"]
    nets = pd.concat([base_variant(cifar, residual) for residual in (False, True)])
    responses = final_probes(nets, analysis, "response")
    means = responses.groupby(["depth", "variant", "model"])["value"].mean()
    for depth in sorted(set(nets["depth"])):
        if ("plain" not in means.get(depth, pd.Series()).index) or ("resnet" not in means.get(depth, pd.Series()).index):
            continue
        plain, residual = means[depth]["plain"].iloc[0], means[depth]["resnet"].iloc[0]
        ok = residual < plain
        lines.append(
            f"Residual functions closer to zero (P1 Fig. 7) {'reproduced' if ok else 'NOT reproduced'}: ResNet-{depth} mean "
            f"response std {residual:.3f} {'<' if ok else '>='} plain-{depth} {plain:.3f}"
        )
    grads = final_probes(nets, analysis[analysis["layer"].str.contains("conv")], "grad_norm")
    for (depth, variant, model), net in grads[grads["variant"] == "plain"].groupby(["depth", "variant", "model"]):
        ratio = net["value"].min() / net["value"].max()
        verdict = "no vanishing gradients" if ratio >= VANISHING else "gradients vanish"
        lines.append(f"{model} smallest conv-layer gradient norm / largest = {ratio:.3g}: {verdict} (threshold {VANISHING})")
    return lines


# ---------------------------------------------------------------------------- the report


def write_report(runs: pd.DataFrame, curves: pd.DataFrame, analysis: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    """Figures (PNG and PDF), report.md and report.html in `out_dir`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = finished(runs)
    notes, written = [], []
    figures = {
        "error_vs_depth": ("Error against depth", error_vs_depth(done)),
        "fig1_plain_20_vs_56": ("P1 Fig. 1: plain nets, shallow vs deep", figure_1(done, curves)),
        "fig6_cifar_curves": ("P1 Fig. 6: CIFAR-style nets", figure_6(done, curves)),
        "fig4_imagenet_curves": ("P1 Fig. 4: ImageNet-style nets", figure_4(done, curves)),
        "fig7_layer_responses": ("P1 Fig. 7: layer responses", figure_7(done, analysis)),
        "gradient_norms": ("Gradient norms by layer", gradient_profile(done, analysis)),
    }
    sections = []
    for stem, (caption, fig) in figures.items():
        if fig is None:
            notes.append(f"- {caption}: left out, the selected runs have none of the nets it compares.")
            continue
        for suffix in (".png", ".pdf"):
            fig.savefig(out_dir / f"{stem}{suffix}", dpi=120)
            written.append(out_dir / f"{stem}{suffix}")
        plt.close(fig)
        sections.append(f"### {caption}\n\n![{caption}]({stem}.png)")

    failed = runs[runs["status"] != "FINISHED"]
    datasets = ", ".join(sorted(runs["dataset"].unique()))
    iterations = ", ".join(str(i) for i in sorted(runs["iterations"].unique()))
    text = [
        f"# {title}",
        "",
        f"{len(done)} finished runs ({len(failed)} not finished) on {datasets}; {iterations} iterations; "
        f"seeds {', '.join(str(s) for s in sorted(runs['seed'].unique()))}. Errors are final: the running training "
        "error of the last logging window and the test error on the whole evaluation split. Published values are "
        "P1/P2's on CIFAR-10 and are shown only beside CIFAR-10 runs.",
        "",
        "## Verdicts",
        "",
        *([f"- {line}" for line in verdicts(done)] or ["- No claim can be checked: too few depths or variants."]),
        "",
        "## Layer responses and gradients",
        "",
        *([f"- {line}" for line in analysis_verdicts(done, analysis)] or ["- No probe tables among the selected runs."]),
        "",
        "## Final errors",
        "",
        markdown_table(summary_table(done)),
        "",
        *[section + "\n" for section in factor_tables(done)],
        "## Figures",
        "",
        *[section + "\n" for section in sections],
        *notes,
    ]
    if not failed.empty:
        text += ["", "## Runs that did not finish", ""] + [f"- {r.model} seed {r.seed}: {r.status}" for r in failed.itertuples()]
    markdown = "\n".join(text) + "\n"
    (out_dir / "report.md").write_text(markdown)
    written.append(out_dir / "report.md")
    try:
        import markdown as md  # optional: an HTML copy when the package is there

        (out_dir / "report.html").write_text(md.markdown(markdown, extensions=["tables"]))
        written.append(out_dir / "report.html")
    except ImportError:
        pass
    return written


def report_sweep(client: MlflowClient, parent_run_id: str, out_dir: Path) -> list[Path]:
    """The figures and report of one sweep, written to `out_dir` and logged to its parent run."""
    parent = client.get_run(parent_run_id)
    runs = load_runs(client, [parent.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")
    if runs.empty:
        return []
    done = finished(runs)
    written = write_report(runs, load_curves(client, done), load_analysis(client, done), out_dir, f"Report of {parent.info.run_name}")
    for path in written:
        client.log_artifact(parent_run_id, str(path), "figures")
    return written


def latest_sweep(client: MlflowClient) -> str | None:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=None, help="tracking URI (default: the SQLite store in ./mlruns)")
    parser.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--experiment", help="every run of this experiment instead of one sweep")
    parser.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"tags.dataset = 'cifar10'\"")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: figures/<selection>)")
    args = parser.parse_args(argv)

    client = MlflowClient(tracking_uri=args.uri or default_store())
    if args.experiment or (args.filter and not args.parent):
        names = [args.experiment] if args.experiment else None
        experiments = [e for e in client.search_experiments() if names is None or e.name in names]
        if not experiments:
            print(f"error: no experiment named {args.experiment!r} in {client.tracking_uri}.", file=sys.stderr)
            return 2
        runs = load_runs(client, [e.experiment_id for e in experiments], args.filter)
        label = args.experiment or "filtered"
        if runs.empty:
            print(f"error: no runs match experiment={args.experiment!r} filter={args.filter!r}.", file=sys.stderr)
            return 2
        out = args.out or Path("figures") / label
        done = finished(runs)
        written = write_report(runs, load_curves(client, done), load_analysis(client, done), out, f"Runs of {label}")
    else:
        parent = args.parent or latest_sweep(client)
        if parent is None:
            print(f"error: no sweep in {client.tracking_uri}; run one with python -m harness.run -m ...", file=sys.stderr)
            return 2
        out = args.out or Path("figures") / parent
        written = report_sweep(client, parent, out)
        if not written:
            print(f"error: sweep {parent} has no runs to plot.", file=sys.stderr)
            return 2
    print(f"Wrote {len(written)} files to {out}: {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
