"""The paper's figures from DataFrames (`harness.tracking.runs`): each function takes runs of
one recipe (and curves or probe tables) and returns a matplotlib figure, or None when the runs
hold none of the nets it compares. No I/O: `harness.report` saves them.

One grammar everywhere: one colour per depth; dashed = training error, bold = test (or
validation) error, as in P1; where plain and residual nets share a panel, dotted = plain;
seeds drawn as their mean with a band or interval; y axes from 0; a subtitle that says the data
set, the budget and the number of seeds.
"""

import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from harness.models import PARAMETER_KEYS, variant_words
from harness.palette import depth_colour
from harness.stats import base_variant, t_interval
from harness.tracking.runs import describe_recipe


def eval_name(runs: pd.DataFrame) -> str:
    return "validation" if (runs["eval_split"] == "validation").any() else "test"


def subtitle(runs: pd.DataFrame) -> str:
    seeds = runs.groupby("model")["seed"].nunique()
    counted = (
        f"{seeds.min()} seed{'s' if seeds.min() > 1 else ''}"
        if seeds.min() == seeds.max()
        else f"{seeds.min()}–{seeds.max()} seeds"
    )
    return f"{describe_recipe(runs)}; {counted} per net"


def titled(fig: plt.Figure, title: str, runs: pd.DataFrame) -> plt.Figure:
    width = int(fig.get_figwidth() * 14)  # characters of the subtitle's font that fit across
    fig.suptitle(f"{title}\n" + textwrap.fill(subtitle(runs), width), fontsize=10)
    fig.tight_layout()
    return fig


def draw_curves(ax: plt.Axes, runs: pd.DataFrame, curves: pd.DataFrame, metrics=("train_error", "eval_error")) -> None:
    """Seeds of one net as their mean with a min-max band. Intermediate test points may use a
    subset of the evaluation split (`schedule.eval_subset`); the last point, on all of it, is
    drawn as a filled marker."""
    for depth, group in runs.groupby("depth"):
        colour = depth_colour(depth)
        for metric in metrics:
            points = curves[curves["run_id"].isin(group["run_id"]) & (curves["metric"] == metric)]
            if points.empty:
                continue
            by_step = points.groupby("step")["value"].agg(["mean", "min", "max"])
            bold = metric == "eval_error"
            ax.plot(
                by_step.index,
                by_step["mean"],
                color=colour,
                linestyle="-" if bold else "--",
                linewidth=2.0 if bold else 1.0,
            )
            if bold:
                ax.plot(by_step.index[-1:], by_step["mean"].iloc[-1:], "o", color=colour, markersize=5)
            if group["seed"].nunique() > 1:
                ax.fill_between(by_step.index, by_step["min"], by_step["max"], color=colour, alpha=0.15, linewidth=0)
    if not curves.empty and curves["step"].max() >= 10_000:
        ax.ticklabel_format(axis="x", style="sci", scilimits=(4, 4))  # P1 counts iterations in 1e4
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def legend(ax: plt.Axes, runs: pd.DataFrame, styles: bool = True) -> None:
    """Depths (colours) and, once, the line styles."""
    handles = [
        Line2D([], [], color=depth_colour(d), linewidth=2, label=m)
        for d, m in runs.groupby("depth")["model"].first().items()
    ]
    if styles:
        handles += [
            Line2D([], [], color="grey", linestyle="--", linewidth=1, label="train (running)"),
            Line2D([], [], color="grey", linewidth=2, label=eval_name(runs)),
            Line2D([], [], color="grey", marker="o", linestyle="", label=f"whole {eval_name(runs)} set"),
        ]
    if runs["seed"].nunique() > 1:
        handles.append(plt.Rectangle((0, 0), 1, 1, color="grey", alpha=0.2, label="min–max over seeds"))
    ax.legend(handles=handles, fontsize=7, loc="best")


def figure_1(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure | None:
    """P1 Fig. 1: the shallowest and the deepest plain CIFAR-style net, training error left,
    test error right."""
    plain = base_variant(runs[runs["family"] == "cifar"], residual=False)
    if plain["depth"].nunique() < 2:
        return None
    pair = plain[plain["depth"].isin([plain["depth"].min(), plain["depth"].max()])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, metric, title in zip(
        axes, ("train_error", "eval_error"), ("training error (running)", f"{eval_name(runs)} error")
    ):
        draw_curves(ax, pair, curves, metrics=(metric,))
        ax.set_title(title, fontsize=9)
        legend(ax, pair, styles=False)
    return titled(fig, "Plain nets, shallowest vs deepest (P1 Fig. 1)", runs)


def curve_panels(
    panels: list[tuple[str, pd.DataFrame]], curves: pd.DataFrame, title: str, runs: pd.DataFrame
) -> plt.Figure | None:
    panels = [(name, nets) for name, nets in panels if not nets.empty]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (name, nets) in zip(axes[0], panels):
        draw_curves(ax, nets, curves)
        ax.set_title(name, fontsize=9)
        legend(ax, nets)
    return titled(fig, title, runs)


def figure_6(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure | None:
    """P1 Fig. 6: plain nets, residual nets, and the deepest pair of residual nets (CIFAR-style)."""
    cifar = runs[runs["family"] == "cifar"]
    plain, residual = base_variant(cifar, residual=False), base_variant(cifar, residual=True)
    deepest = sorted(residual["depth"].unique())[-2:]
    panels = [("plain", plain), ("residual", residual)]
    if len(deepest) == 2 and residual["depth"].nunique() > 2:
        panels.append((f"residual, deepest: {deepest[0]} vs {deepest[1]}", residual[residual["depth"].isin(deepest)]))
    return curve_panels(
        panels, curves, "Training (dashed) and test (bold) error of the CIFAR-style nets (P1 Fig. 6)", runs
    )


def figure_4(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure | None:
    """P1 Fig. 4 analogue: plain-18/34 and ResNet-18/34 (ImageNet-style nets)."""
    imagenet = runs[runs["family"] == "imagenet"]
    panels = [("plain", base_variant(imagenet, residual=False)), ("ResNet", base_variant(imagenet, residual=True))]
    return curve_panels(
        panels, curves, "Training (dashed) and test (bold) error of the ImageNet-style nets (P1 Fig. 4)", runs
    )


def variant_style(variant: str) -> dict:
    """Where plain and residual nets share a panel: dotted = plain, solid = residual (P1 Fig. 7),
    dash-dot = any other variant; a marker shape per variant."""
    if variant == "plain":
        return {"linestyle": ":", "marker": "o"}
    return {"linestyle": "-", "marker": "s"} if variant == "resnet" else {"linestyle": "-.", "marker": "^"}


def error_vs_depth(runs: pd.DataFrame, confidence: float = 0.95) -> plt.Figure | None:
    """Final training error (of the final model) and final test error against depth, one line
    per variant; each depth in its colour; with 2 or more seeds the mean and its t interval as
    error bars."""
    if runs["depth"].nunique() < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    several = runs.groupby("model")["seed"].nunique().max() > 1
    for variant, group in runs.groupby("variant"):
        style = variant_style(variant)
        for ax, metric in zip(axes, ("final_train_error", "eval_error")):
            rows = [
                (depth, t_interval(values.dropna(), confidence)) for depth, values in group.groupby("depth")[metric]
            ]
            ax.plot(
                [d for d, _ in rows],
                [i.mean for _, i in rows],
                color="dimgrey",
                linewidth=1.5,
                linestyle=style["linestyle"],
            )
            for depth, interval in rows:
                half = interval.high - interval.mean if several and interval.n > 1 else None
                ax.errorbar(
                    [depth],
                    [interval.mean],
                    yerr=None if half is None else [[half], [half]],
                    color=depth_colour(depth),
                    marker=style["marker"],
                    markersize=7,
                    capsize=4,
                    linestyle="",
                )
    handles = [
        Line2D([], [], color="dimgrey", label=variant, **variant_style(variant)) for variant in runs["variant"].unique()
    ]
    handles += [
        Line2D([], [], color=depth_colour(d), marker="o", linestyle="", label=f"depth {d}")
        for d in sorted(runs["depth"].unique())
    ]
    for ax, title in zip(
        axes, ("final training error (final model, training images)", f"final {eval_name(runs)} error")
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("depth (weighted layers)")
        ax.set_xticks(sorted(runs["depth"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(handles=handles, fontsize=7)
    axes[0].set_ylabel("error (%)")
    bars = f", bars: {confidence:.0%} t interval of the mean over seeds" if several else ""
    return titled(fig, f"Error against depth{bars}", runs)


def final_probes(runs: pd.DataFrame, analysis: pd.DataFrame, kind: str, last: bool = True) -> pd.DataFrame:
    """Each net's first or last probe of one kind, the mean over seeds per layer index."""
    steps = analysis.groupby("run_id")["step"].transform("max" if last else "min")
    at = analysis[(analysis["step"] == steps) & (analysis["kind"] == kind)]
    merged = at.merge(runs[["run_id", "depth", "variant", "model"]], on="run_id")
    return merged.groupby(["depth", "variant", "model", "index"], as_index=False)["value"].mean()


def figure_7(runs: pd.DataFrame, analysis: pd.DataFrame) -> plt.Figure | None:
    """P1 Fig. 7: std of each 3x3 layer's response (after BN, before ReLU/addition) by layer
    index (top) and sorted in descending order (bottom), plain (dotted) vs residual (solid)."""
    nets = pd.concat([base_variant(runs[runs["family"] == "cifar"], residual) for residual in (False, True)])
    responses = final_probes(nets, analysis, "response")
    if responses.empty:
        return None
    fig, (by_layer, by_size) = plt.subplots(2, 1, figsize=(8, 7))
    for (depth, variant, model), net in responses.groupby(["depth", "variant", "model"]):
        style = dict(
            color=depth_colour(depth), linestyle=variant_style(variant)["linestyle"], linewidth=1.5, label=model
        )
        by_layer.plot(net["index"], net["value"], **style)
        by_size.plot(range(1, len(net) + 1), net["value"].sort_values(ascending=False), **style)
    by_layer.set_xlabel("layer index (original)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    for ax in (by_layer, by_size):
        ax.set_ylabel("std")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return titled(fig, "Std of 3x3 layer responses at the last probe, plain dotted, residual solid (P1 Fig. 7)", runs)


def deepest_pair(runs: pd.DataFrame) -> int | None:
    """The deepest CIFAR-style depth that has both a plain and a residual net."""
    cifar = runs[runs["family"] == "cifar"]
    both = set(cifar[cifar["residual"]]["depth"]) & set(cifar[~cifar["residual"]]["depth"])
    return max(both) if both else None


def probe_profiles(ax: plt.Axes, net: pd.DataFrame) -> None:
    """One line per probe (first, middle, last), coloured by iteration."""
    steps = sorted(net["step"].unique())
    shown = sorted({steps[0], steps[len(steps) // 2], steps[-1]}) if steps else []
    colours = plt.get_cmap("viridis")([i / max(1, len(shown) - 1) for i in range(len(shown))])
    for step, colour in zip(shown, colours):
        at_step = net[net["step"] == step].groupby("index")["value"].mean()
        ax.plot(at_step.index, at_step.values, color=colour, linewidth=1.2, label=f"iteration {step}")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    if shown:  # a net whose run has no probe tables draws an empty panel
        ax.legend(fontsize=7)


def gradient_profile(runs: pd.DataFrame, analysis: pd.DataFrame) -> plt.Figure | None:
    """Top: the backward signal, RMS of the loss gradient at each unit's output, by unit index
    from the input (P1 §4.1: do plain nets' signals vanish?). Bottom: each conv layer's relative
    update size, weight-gradient norm over weight norm. Plain vs residual at the deepest
    common depth, at the first, middle and last probe."""
    depth = deepest_pair(runs)
    if depth is None or not (analysis["kind"] == "output_grad").any():
        return None
    convs = analysis[analysis["layer"].str.contains("conv")]
    grads = convs[convs["kind"] == "grad_norm"].set_index(["run_id", "step", "index"])["value"]
    weights = convs[convs["kind"] == "weight_norm"].set_index(["run_id", "step", "index"])["value"]
    relative = (grads / weights).dropna().reset_index().sort_values(["run_id", "step", "index"])
    relative["index"] = relative.groupby(["run_id", "step"]).cumcount() + 1  # numbered among the convs
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharey="row")
    for column, residual in enumerate((False, True)):
        nets = base_variant(runs[(runs["family"] == "cifar") & (runs["depth"] == depth)], residual)
        signal = analysis[(analysis["kind"] == "output_grad") & analysis["run_id"].isin(nets["run_id"])]
        probe_profiles(axes[0, column], signal)
        axes[0, column].set_title(nets["model"].iloc[0] if not nets.empty else "", fontsize=9)
        axes[0, column].set_xlabel("unit index (from the input)")
        probe_profiles(axes[1, column], relative[relative["run_id"].isin(nets["run_id"])])
        axes[1, column].set_xlabel("conv layer index (from the input)")
    axes[0, 0].set_ylabel("RMS of dLoss/d(unit output)")
    axes[1, 0].set_ylabel("||grad|| / ||weight||")
    return titled(
        fig, "Backward signal per unit (top) and relative update size per conv layer (bottom) (P1 §4.1)", runs
    )


def claims_vs_budget(table: pd.DataFrame, min_effect: float, confidence: float = 0.95) -> plt.Figure | None:
    """Each claim's mean paired difference against the training budget (iterations), with its t
    interval: how the gaps move as the budget grows. `table` has one row per (claim, nets, budget):
    key, nets, iterations, mean, low, high, n (from `harness.report.budget_table`). A claim draws a
    line per pair of nets it compares (Fig. 7 one per depth; C2 at the deepest depth trained at
    each budget), never one line through different nets."""
    if table.empty or table["iterations"].nunique() < 2:
        return None
    keys = list(dict.fromkeys(table["key"]))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        claim = table[table["key"] == key]
        pairs = list(dict.fromkeys(claim["nets"]))
        for i, nets in enumerate(pairs):
            rows = claim[claim["nets"] == nets].sort_values("iterations")
            half = (rows["high"] - rows["mean"]).fillna(0)
            shift = 1 + 0.03 * (i - (len(pairs) - 1) / 2)  # side by side, the bars apart
            ax.errorbar(rows["iterations"] * shift, rows["mean"], yerr=half, marker="o", capsize=4, label=nets)
        ax.axhline(0, color="grey", linewidth=1)
        unit = claim["unit"].iloc[0]
        if unit == "points":
            ax.axhline(min_effect, color="tab:green", linestyle=":", linewidth=1)
        ax.set_title(key if len(pairs) > 1 else f"{key}: {pairs[0]}", fontsize=9)
        if len(pairs) > 1:
            ax.legend(fontsize=7)
        budgets = sorted(claim["iterations"].unique())
        ax.set_xscale("log")  # budgets double
        ax.set_xticks(budgets, [str(n) for n in budgets])
        ax.minorticks_off()
        ax.set_xlabel("iterations")
        ax.set_ylabel(f"paired difference ({'points of error' if unit == 'points' else '% of plain'})")
        ax.grid(alpha=0.3)
    seeds = f"{table['n'].min()}–{table['n'].max()}" if table["n"].nunique() > 1 else f"{table['n'].iloc[0]}"
    fig.suptitle(
        f"Each claim's gap against the budget: mean over {seeds} seeds, bars: {confidence:.0%} t interval; "
        "above 0 = as claimed, dotted: minimum effect",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# P2's studies: one colour per variant of the same net.


def variant_colours(nets: pd.DataFrame) -> dict[str, tuple]:
    models = list(dict.fromkeys(nets["model"]))
    return dict(zip(models, plt.get_cmap("tab10").colors))


def variant_label(net: pd.Series) -> str:
    """A legend's name for a P2 variant: P2's words, then the net's own name."""
    if not net["residual"]:
        return net["model"]
    parameters = {key: net[key] for key in PARAMETER_KEYS if pd.notna(net[key])}
    return f"{variant_words(net['shortcut'], net['activation'], **parameters)} ({net['model']})"


def p2_curves(nets: pd.DataFrame, curves: pd.DataFrame, title: str) -> plt.Figure | None:
    """P2 Fig. 1, 3 and 6: running training error (left) and test or validation error (right)
    against iterations, one colour per variant, the mean over seeds with a min-max band. A
    variant that diverged ends where it did."""
    if nets.empty or curves.empty:
        return None
    colours = variant_colours(nets)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, metric, name in zip(axes, ("train_error", "eval_error"), ("training (running)", eval_name(nets))):
        for model, group in nets.groupby("model", sort=False):
            points = curves[curves["run_id"].isin(group["run_id"]) & (curves["metric"] == metric)]
            if points.empty:
                continue
            by_step = points.groupby("step")["value"].agg(["mean", "min", "max"])
            label = variant_label(group.iloc[0])
            ax.plot(by_step.index, by_step["mean"], color=colours[model], linewidth=1.5, label=label)
            if group["seed"].nunique() > 1:
                ax.fill_between(by_step.index, by_step["min"], by_step["max"], color=colours[model], alpha=0.12)
        ax.set_title(f"{name} error", fontsize=9)
        ax.set_xlabel("iterations")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%)")
    axes[0].legend(fontsize=7, loc="best")
    return titled(fig, title, nets)


# The factor P2's equations put on the backward signal at each unit's shortcut, where it is a constant
# (scaling by lambda, frozen gating) or, at initialisation, an expectation (dropout, a gate's 1 - g
# with W_g x around 0): through k units the signal is multiplied by it k times (P2 eq. 8).
def shortcut_factor(net: pd.Series) -> float | None:
    if net["shortcut"] in ("scaling", "frozen_gating"):
        return net["shortcut_lambda"]
    if net["shortcut"] == "dropout":
        return 1 - net["shortcut_dropout"]
    if net["shortcut"] in ("exclusive_gating", "shortcut_only_gating"):
        return 1 - 1 / (1 + math.exp(-net["gate_bias"]))
    return None


def p2_backward_signal(nets: pd.DataFrame, analysis: pd.DataFrame, title: str) -> plt.Figure | None:
    """The backward signal, RMS of the loss gradient at each unit's output, by unit index from the
    input, at the first probe (left) and the last (right), the geometric mean over seeds; dotted,
    what P2's equations predict from the last unit's value where a shortcut multiplies it by a
    factor: that factor to the power of the units between."""
    signal = analysis[(analysis["kind"] == "output_grad") & analysis["run_id"].isin(nets["run_id"])]
    if signal.empty:
        return None
    colours, predicted_any = variant_colours(nets), False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, last, name in zip(axes, (False, True), ("first probe", "last probe")):
        steps = signal.groupby("run_id")["step"].transform("max" if last else "min")
        at = signal[signal["step"] == steps].merge(nets[["run_id", "model"]], on="run_id")
        for model, group in at.groupby("model", sort=False):
            profile = group.groupby("index")["value"].apply(lambda v: float(np.exp(np.log(v).mean())))
            net = nets[nets["model"] == model].iloc[0]
            ax.plot(profile.index, profile.values, color=colours[model], linewidth=1.5, label=variant_label(net))
            factor = shortcut_factor(net)
            if factor is not None and 0 < factor < 1:
                units = profile.index.max()
                predicted = profile.iloc[-1] * factor ** (units - profile.index.to_numpy())
                ax.plot(profile.index, predicted, color=colours[model], linestyle=":", linewidth=1.2)
                predicted_any = True
        ax.set_yscale("log")
        ax.set_title(f"{name} (iteration {int(at['step'].max())})", fontsize=9)
        ax.set_xlabel("unit index (from the input)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("RMS of dLoss/d(unit output)")
    handles, _ = axes[0].get_legend_handles_labels()
    if predicted_any:
        # Three decades below the lowest measured value: a prediction far below leaves the panel, its slope seen.
        axes[0].set_ylim(bottom=signal["value"].min() / 1e3)
        handles.append(Line2D([], [], color="grey", linestyle=":", label="P2: factor^(units to the last)"))
    axes[0].legend(handles=handles, fontsize=7, loc="best")
    return titled(fig, title, nets)
