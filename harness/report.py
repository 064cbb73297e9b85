"""The report of a selection of runs: one section per recipe (runs of different budgets or
recipes are never pooled), each with its claims as statistics (`harness.stats`), the backward
signal's verdicts, a table of final errors and the paper's figures (`harness.figures`).
`write_report` writes report.md and the figures as PNG and PDF; `report_sweep` does it for one
sweep and logs the files to its parent run.
"""

import base64
import math
import re
from pathlib import Path

import markdown
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from harness import figures, record
from harness.models import ACTIVATIONS, SHORTCUTS, SHORTCUTS_P1
from harness.paper import p2_test_error, published_test_error
from harness.record import design_of
from harness.sequential import Design
from harness.stats import claims, t_interval
from harness.tracking.runs import describe_recipe, finished, load_analysis, load_curves, load_runs, sweep_members

VANISHING, EXPLODING = 0.01, 100.0  # first/last unit backward-signal ratios (docs/studies.md)
NET_ORDER = ["family", "residual", "shortcut", "activation", "depth"]


def signal_verdicts(runs: pd.DataFrame, analysis: pd.DataFrame) -> list[str]:
    """Per net, at its first and last probe: how the backward signal (RMS of the loss gradient
    at each unit's output) changes from the last unit to the first. Ratios are geometric means
    over seeds, with their range."""
    signal = analysis[analysis["kind"] == "output_grad"]
    if signal.empty:
        return []
    lines = []
    for net in runs.sort_values(NET_ORDER)["model"].unique():
        ids = runs[runs["model"] == net]["run_id"]
        mine = signal[signal["run_id"].isin(ids)]
        if mine.empty:
            continue
        parts = []
        for label, pick in (("first probe", "min"), ("last probe", "max")):
            at = mine[mine["step"] == mine.groupby("run_id")["step"].transform(pick)]
            per_run = at.sort_values("index").groupby("run_id")["value"].agg(lambda v: v.iloc[0] / v.iloc[-1])
            units = at.groupby("run_id")["index"].max().iloc[0]
            ratio = float(np.exp(np.log(per_run).mean()))
            slope = math.log10(ratio) / max(1, units - 1)
            state = (
                "vanishing"
                if ratio < VANISHING
                else "exploding"
                if ratio > EXPLODING
                else "neither vanishing nor exploding"
            )
            spread = f" (seeds {per_run.min():.3g}–{per_run.max():.3g})" if len(per_run) > 1 else ""
            parts.append(
                f"{label} (iteration {int(at['step'].max())}) first/last unit {ratio:.3g}{spread}, "
                f"{slope:+.3f} decades per unit: {state}"
            )
        lines.append(f"{net}: " + "; ".join(parts))
    return lines


def error_table(runs: pd.DataFrame, confidence: float) -> str:
    """Final errors per net: mean ± sd over seeds, the t interval of the mean, and P1/P2's
    published CIFAR-10 test error where one exists (beside test errors only)."""
    split = figures.eval_name(runs)
    lines = [
        f"| net | seeds | final training error % | running training error % | {split} error % | "
        f"{confidence:.0%} CI of {split} error | paper test error % |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(values: pd.Series) -> str:
        values = values.dropna()
        if values.empty:
            return "–"
        return f"{values.mean():.2f}" if len(values) < 2 else f"{values.mean():.2f} ± {values.std():.2f}"

    for model, group in runs.sort_values(NET_ORDER).groupby("model", sort=False):
        interval = t_interval(group["eval_error"].dropna(), confidence)
        ci = "–" if interval.n < 2 else f"{interval.low:.2f} to {interval.high:.2f}"
        published = published_test_error(group["dataset"].iloc[0], model) if split == "test" else None
        paper = f"{published.error:.2f} ({published.statistic}, {published.source})" if published else "–"
        lines.append(
            f"| {model} | {group['seed'].nunique()} | {cell(group['final_train_error'])} "
            f"| {cell(group['train_error'])} | {cell(group['eval_error'])} | {ci} | {paper} |"
        )
    return "\n".join(lines)


def variant_table(runs: pd.DataFrame) -> list[str]:
    """The lines of a table of the residual variants side by side at each depth (mean final
    errors over seeds), whenever the runs have more than one; none otherwise. A column is one net
    without its depth (shortcut option, unit, P2's shortcut and its parameter): a cell never
    pools two different nets."""
    residual = runs[runs["residual"]].sort_values(["shortcut", "activation"], key=p2_order, kind="stable")
    if residual["variant"].nunique() < 2:
        return []
    wide = residual.pivot_table(index="depth", columns="variant", values="eval_error", aggfunc="mean", sort=False)
    lines = [
        f"#### Residual variants (shortcut A = zero_pad, B, C; unit (a) post to (e) pre; P2's shortcuts), "
        f"{figures.eval_name(runs)} error %",
        "",
        "| depth | " + " | ".join(map(str, wide.columns)) + " |",
        "|---|" + "---|" * len(wide.columns),
    ]
    lines += [
        f"| {depth} | " + " | ".join("–" if pd.isna(v) else f"{v:.2f}" for v in values) + " |"
        for depth, values in wide.sort_index().iterrows()
    ]
    return [*lines, ""]


def p2_studies(runs: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(title, file stem, P2's figure of its curves, nets) of each of P2's studies among these runs
    (finished or diverged): Table 1, the shortcuts on the original unit beside identity (P2's, and any of your own: all
    but P1's option B, a projection only where dimensions change), where more than P1's options
    are there; Table 2, the unit arrangements with identity shortcuts, where more than P1's (a)
    and P2's (e) are there; Fig. 1, the original unit and full pre-activation in P2's CIFAR
    bottleneck nets."""
    residual = runs[runs["residual"]]
    table1 = residual[(residual["activation"] == "post") & (residual["shortcut"] != "projection")]
    table2 = residual[residual["shortcut"] == "zero_pad"]
    studies = []
    if (~table1["shortcut"].isin(SHORTCUTS_P1)).any():
        studies.append(("P2 Table 1: shortcuts", "p2_shortcuts", "P2 Fig. 3", table1))
    if (~table2["activation"].isin(("post", "pre"))).any():
        studies.append(("P2 Table 2: residual units", "p2_units", "P2 Fig. 6", table2))
    deep = residual[(residual["family"] == "cifar_bottleneck") & residual["activation"].isin(("post", "pre"))]
    if not deep.empty:
        studies.append(("P2 Fig. 1: original and pre-activation bottleneck nets", "p2_deep", "P2 Fig. 1", deep))
    return studies


def p2_order(column: pd.Series) -> pd.Series:
    """P2's order: identity before its other shortcuts (P2's Table 1, then yours), the original
    unit (a) before (b) to (e)."""
    order = {"shortcut": SHORTCUTS, "activation": ACTIVATIONS}.get(column.name)
    return column if order is None else column.map({value: i for i, value in enumerate(order)})


def p2_table(nets: pd.DataFrame, confidence: float) -> str:
    """Each variant's final training and test error, mean and t interval over seeds, the seeds
    that diverged (failed to train), and P2's number for the variant."""
    split = figures.eval_name(nets)
    lines = [
        f"| net | seeds | final training error % | {split} error % | failed to train | P2's CIFAR-10 test error % "
        "(of the net its source names) |",
        "|---|---|---|---|---|---|",
    ]

    def cell(values: pd.Series) -> str:
        interval = t_interval(values.dropna(), confidence)
        if interval.n == 0:
            return "–"
        return f"{interval.mean:.2f}" + ("" if interval.n < 2 else f" ({interval.low:.2f} to {interval.high:.2f})")

    for model, group in nets.groupby("model", sort=False):
        diverged = group[group["diverged_at"].notna()]
        failed = (
            f"diverged in {len(diverged)} of {len(group)} (at iteration "
            + ", ".join(str(int(i)) for i in diverged["diverged_at"])
            + ")"
            if len(diverged)
            else "–"
        )
        published = p2_test_error(group["variant"].iloc[0])
        paper = (
            "–" if published is None else f"{published.statistic if math.isnan(published.error) else published.error}"
        )
        if published is not None and not math.isnan(published.error):
            paper += f" ({published.statistic}, {published.source})"
        elif published is not None:
            paper += f" ({published.source})"
        lines.append(
            f"| {model} | {group['seed'].nunique()} | {cell(group['final_train_error'])} | "
            f"{cell(group['eval_error'])} | {failed} | {paper} |"
        )
    return "\n".join(lines)


def p2_section(
    title: str,
    stem: str,
    figure: str,
    nets: pd.DataFrame,
    found,
    curves,
    analysis,
    out_dir: Path,
    prefix: str,
    confidence: float,
):
    """(markdown lines, files written) of one of P2's studies."""
    nets = nets.sort_values(["depth", "shortcut", "activation"], key=p2_order, kind="stable")
    text = [
        f"### {title}",
        "",
        f"Mean and {confidence:.0%} t interval over seeds. P2's numbers are CIFAR-10 test errors of ResNet-110 "
        '(Tables 1 and 2) or ResNet-164 (Table 2) after 64k iterations ("fail": above 20%), a different data set, '
        "depth and budget: they show P2's ranking, not a value to meet.",
        "",
        p2_table(nets, confidence),
        "",
        *[f"- {claim.line(confidence)}" for claim in found],
        "",
    ]
    written = []
    drawings = (
        ("curves", f"training and test error per variant ({figure})", figures.p2_curves(nets, curves, title)),
        (
            "signal",
            "backward signal per unit, measured and as P2's equations predict",
            figures.p2_backward_signal(nets, analysis, f"{title}: backward signal per unit"),
        ),
    )
    for name, caption, fig in drawings:
        if fig is not None:
            written += save_figure(fig, out_dir, f"{prefix}{stem}_{name}")
            text.append(f"#### {title}: {caption}\n\n![{caption}]({prefix}{stem}_{name}.png)\n")
    return text, written


def save_figure(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """The figure as PNG (for the report) and PDF (for a paper), then closed."""
    paths = [out_dir / f"{stem}{suffix}" for suffix in (".png", ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


FIGURES = {  # file stem: (caption, function of (runs, curves, analysis))
    "error_vs_depth": ("Error against depth", lambda runs, curves, analysis: figures.error_vs_depth(runs)),
    "fig1_plain_shallow_vs_deep": (
        "P1 Fig. 1: plain nets, shallowest vs deepest",
        lambda r, c, a: figures.figure_1(r, c),
    ),
    "fig6_cifar_curves": ("P1 Fig. 6: CIFAR-style nets", lambda r, c, a: figures.figure_6(r, c)),
    "fig4_imagenet_curves": ("P1 Fig. 4: ImageNet-style nets", lambda r, c, a: figures.figure_4(r, c)),
    "fig7_layer_responses": ("P1 Fig. 7: layer responses", lambda r, c, a: figures.figure_7(r, a)),
    "backward_signal": (
        "P1 §4.1: backward signal and relative update size",
        lambda r, c, a: figures.gradient_profile(r, a),
    ),
}


BUDGET_FREE = ["dataset", "batch_size", "optimizer", "lr", "augment", "resize", "warmup", "family"]


def budget_table(runs: pd.DataFrame, min_effect: float, confidence: float, design: Design = Design()) -> pd.DataFrame:
    """Every claim of every recipe, one row each, for recipes that differ only in their number
    of iterations: the material of the gap-against-budget figure and table."""
    rows = []
    for _, same in runs.groupby(BUDGET_FREE):
        if same["iterations"].nunique() < 2:
            continue
        for iterations, nets in same.groupby("iterations"):
            for claim in claims(nets, min_effect, confidence, design=design):
                i = claim.interval
                rows.append(
                    {
                        "key": claim.key,
                        "nets": claim.nets,
                        "text": claim.text,
                        "unit": claim.unit,
                        "iterations": iterations,
                        "n": i.n,
                        "mean": i.mean,
                        "low": i.low,
                        "high": i.high,
                        "verdict": claim.verdict,
                    }
                )
    columns = ["key", "nets", "text", "unit", "iterations", "n", "mean", "low", "high", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def budget_section(table: pd.DataFrame, out_dir: Path, min_effect: float, confidence: float):
    """(markdown lines, files written): the claims against the budget, when the selection holds
    one recipe at several budgets."""
    fig = figures.claims_vs_budget(table, min_effect, confidence)
    if fig is None:
        return [], []
    written = save_figure(fig, out_dir, "claims_vs_budget")
    lines = [
        "## Claims against the budget",
        "",
        f"| claim | nets | iterations | seeds | mean | {confidence:.0%} CI | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.sort_values(["key", "nets", "iterations"]).itertuples():
        ci = "–" if row.n < 2 else f"{row.low:+.2f} to {row.high:+.2f}"
        cells = [row.key, row.nets, row.iterations, row.n, f"{row.mean:+.2f} {row.unit}", ci, row.verdict]
        lines.append(f"| {' | '.join(map(str, cells))} |")
    lines += ["", "![Claims against the budget](claims_vs_budget.png)", ""]
    return lines, written


def recipe_section(
    runs: pd.DataFrame,
    curves,
    analysis,
    out_dir: Path,
    prefix: str,
    min_effect: float,
    confidence: float,
    diverged: pd.DataFrame | None = None,
    design: Design = Design(),
):
    """(markdown lines, files written) for the finished runs of one recipe, beside those of its
    runs that diverged (a result: they failed to train)."""
    results = runs if diverged is None or diverged.empty else pd.concat([runs, diverged])
    text = [f"Recipe: {describe_recipe(runs)}.", "", "### Claims", ""]
    p2_found = []
    for family, nets in results.groupby("family"):
        found = claims(nets, min_effect, confidence, design=design)
        p2_found += [claim for claim in found if claim.key.startswith("P2")]
        found = [claim for claim in found if not claim.key.startswith("P2")]
        text += [f"- {family}-style nets, {claim.line(confidence)}" for claim in found] or [
            f"- {family}-style nets: no claim of P1 can be checked (too few depths or variants)."
        ]
    written = []
    for title, stem, figure, nets in p2_studies(results):
        mine = [claim for claim in p2_found if set(claim.failed) <= set(nets["model"])]
        section, files = p2_section(title, stem, figure, nets, mine, curves, analysis, out_dir, prefix, confidence)
        text += ["", *section]
        written += files
    text += ["", "### Backward signal (P1 §4.1)", ""]
    text += [f"- {line}" for line in signal_verdicts(runs, analysis)] or [
        "- No probe tables with output gradients among these runs."
    ]
    text += [
        "",
        "### Final errors",
        "",
        error_table(runs, confidence),
        "",
        *variant_table(runs),
        "### Figures",
        "",
    ]
    for stem, (caption, draw) in FIGURES.items():
        fig = draw(runs, curves, analysis)
        if fig is None:
            continue
        written += save_figure(fig, out_dir, f"{prefix}{stem}")
        text.append(f"#### {caption}\n\n![{caption}]({prefix}{stem}.png)\n")
    return text, written


def write_report(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    analysis: pd.DataFrame,
    out_dir: Path,
    title: str,
    min_effect: float = 1.0,
    confidence: float = 0.95,
    notes: list[str] = (),
    next_steps: list[str] = (),
    design: Design = Design(),
) -> list[Path]:
    """Figures (PNG and PDF) and report.md in `out_dir`, one section per recipe, its claims judged
    by the study's design, and what to run next where the sweep gave it (harness.plan); returns
    the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = finished(runs)
    diverged = runs[runs["diverged_at"].notna()]
    recipes = done.groupby("recipe", sort=False)
    text = [
        f"# {title}",
        "",
        f"{len(done)} finished runs ({len(runs) - len(done)} not finished) of {len(recipes)} recipe(s). Claims compare "
        f"nets seed by seed (paired differences) and give the mean, its {confidence:.0%} Student t interval and the "
        f"number of seeds: a description. The verdicts are the study's design's ({design.describe()}; "
        "docs/studies.md): judged only at a look, a claim is reproduced where its t crosses the look's boundary as "
        f"claimed and its mean reaches {min_effect:g} point(s) (for responses: percent of the plain net's value), "
        "contradicted where it crosses the other way, open until then, inconclusive at the last look. Over all "
        f"looks and claims of the family, a verdict where no effect is has a chance of at most {design.alpha:g}. "
        "Training-error claims use the final "
        "model's error on the training images (`final_train_error`); the running training error is P1's dashed "
        "curve. Published values are P1/P2's CIFAR-10 test errors, shown only beside CIFAR-10 test errors.",
        "",
    ]
    written = []
    for number, (_, group) in enumerate(recipes, 1):
        prefix = f"recipe{number}_" if len(recipes) > 1 else ""
        section, files = recipe_section(
            group,
            curves[curves["run_id"].isin(group["run_id"])],
            analysis[analysis["run_id"].isin(group["run_id"])],
            out_dir,
            prefix,
            min_effect,
            confidence,
            diverged[diverged["recipe"] == group["recipe"].iloc[0]],
            design,
        )
        text += [f"## Recipe {number}" if len(recipes) > 1 else "## Results", "", *section]
        written += files
    table = budget_table(done, min_effect, confidence, design)
    section, files = budget_section(table, out_dir, min_effect, confidence)
    text += section
    written += files
    if next_steps:
        text += ["## What to run next", "", *[f"- {line}" for line in next_steps], ""]
    missing = [
        f"{r.model} seed {r.seed} (run {r.run_id}): no final_train_error (an older harness run); left out of "
        "training-error claims"
        for r in done.itertuples()
        if math.isnan(r.final_train_error)
    ]
    if len(runs) > len(done) or missing or notes:
        text += ["## Runs not finished or incomplete", ""]
        text += [
            f"- {r.model} seed {r.seed} (run {r.run_id}): {r.status}"
            for r in runs[runs["status"] != "FINISHED"].itertuples()
        ]
        text += [f"- {line}" for line in [*missing, *notes]]
    (out_dir / "report.md").write_text("\n".join(text) + "\n")
    return [*written, out_dir / "report.md", write_html("\n".join(text), out_dir, title)]


def write_html(text: str, out_dir: Path, title: str) -> Path:
    """report.html: the markdown report as one self-contained page, figures embedded, so that
    MLflow's artifact view (and any browser, from any folder) shows it whole."""
    body = markdown.markdown(text, extensions=["tables"])

    def embed(match: re.Match) -> str:
        data = base64.b64encode((out_dir / match.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"/]+\.png)"', embed, body)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}"
    )
    head = f'<meta charset="utf-8"><title>{title}</title><style>{style}</style>'
    page = f"<!DOCTYPE html>\n<html><head>{head}</head>\n<body>{body}</body></html>\n"
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def report_runs(
    client: MlflowClient,
    runs: pd.DataFrame,
    out_dir: Path,
    title: str,
    min_effect: float = 1.0,
    confidence: float = 0.95,
    next_steps: list[str] = (),
    design: Design = Design(),
) -> list[Path]:
    """Read the finished runs' curves and probe tables, then write the report."""
    done = runs[(runs["status"] == "FINISHED") | runs["diverged_at"].notna()]  # a divergence is a result too
    analysis, notes = load_analysis(client, done)
    curves = load_curves(client, done)
    return write_report(runs, curves, analysis, out_dir, title, min_effect, confidence, notes, next_steps, design)


def report_sweep(
    client: MlflowClient,
    parent_run_id: str,
    out_dir: Path,
    min_effect: float = 1.0,
    confidence: float = 0.95,
    next_steps: list[str] = (),
) -> list[Path]:
    """The report of one sweep: every run it covers (trained or reused), written to `out_dir`
    and logged to its parent run."""
    parent = client.get_run(parent_run_id)
    runs = load_runs(client, [parent.info.experiment_id], run_ids=sweep_members(client, parent_run_id))
    if runs.empty:
        return []
    title = f"Report of {parent.info.run_name}"
    written = report_runs(client, runs, out_dir, title, min_effect, confidence, next_steps, design_of(parent))
    for path in written:
        client.log_artifact(parent_run_id, str(path), record.FIGURES_FOLDER)
    return written
