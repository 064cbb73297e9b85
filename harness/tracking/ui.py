"""What the MLflow UI shows first: the tags that a tracking client may set for it.

MLflow's UI reads a few tags as display settings. We set the experiment's kind (model
development; MLflow 3.17's UI ignores it and follows its GenAI / Model training switch, so the
addresses we print carry `workflowType=machine_learning`), each run's colour (the depth palette
of `harness.figures`), MLflow's own source, commit and user tags, a description
(`mlflow.note.content`) on a sweep's parent run, and one saved view of the experiment that
groups the runs by net with their errors as columns. The rest of the UI's defaults (which
columns, which runs expanded, the charts' order, GenAI or model training) live in the browser
and cannot be set from here (README, "Comparing in the MLflow UI").
"""

import getpass
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_DIRTY,
    MLFLOW_RUN_NOTE,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

log = logging.getLogger(__name__)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3.17's UI writes it (inferred) but does not follow it
MODEL_DEVELOPMENT = "custom_model_development"
RUN_COLOUR_TAG = "mlflow.runColor"  # a hex colour: the run's lines and legend entry in every chart
SWEEP_COLOUR = "#dddddd"  # a sweep's parent has no curves: a light neutral grey, lighter than any depth's tint
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."  # an experiment tag per saved view, listed under "Saved views"
SAVED_VIEW_ID = "harness-errors"
SAVED_VIEW_NAME = "harness: errors"
MODEL_TRAINING = "workflowType=machine_learning"  # MLflow 3.17's UI opens GenAI pages unless told so
SOURCE_NAME = "harness.run"
PLAIN_TINT = 0.5  # a plain net's colour: its depth's colour half-way to white
VARIANT_SHADE = 0.35  # projection shortcuts or pre-activation: the depth's colour 35% towards black


def _mix(colour: str, towards: str, amount: float) -> str:
    from matplotlib.colors import to_hex, to_rgb

    return to_hex([(1 - amount) * a + amount * b for a, b in zip(to_rgb(colour), to_rgb(towards))])


def run_colour(depth: int, residual: bool, shortcut: str = "zero_pad", activation: str = "post", default_shortcut: str = "zero_pad") -> str:
    """The UI colour of a net: its depth's colour in our figures (`figures.depth_colour`), as the
    figures draw a residual net; a plain net gets a lighter tint of it (the UI has one line style,
    so lightness stands for plain vs residual), a residual net with other than its depth's default
    shortcut or with pre-activation a darker shade."""
    from harness.figures import depth_colour  # matplotlib: only when a run starts

    base = depth_colour(depth)
    if not residual:
        return _mix(base, "white", PLAIN_TINT)
    if shortcut != default_shortcut or activation == "pre":  # towards black; black itself (152) towards grey
        return _mix(base, "black", VARIANT_SHADE) if _mix(base, "white", 0.0) != "#000000" else _mix(base, "white", VARIANT_SHADE / 2)
    return _mix(base, "white", 0.0)


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or $USER
        return "unknown"


def source_tags(commit: str) -> dict[str, str]:
    """MLflow's own tags, shown as "Source", "Created by" and the commit in the UI. `commit` is
    `harness.run.git_commit()`: a hash, "HASH-dirty" or "unknown"."""
    tags = {MLFLOW_SOURCE_NAME: SOURCE_NAME, MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_USER: user()}
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit.removesuffix("-dirty")
        tags[MLFLOW_GIT_DIRTY] = str(commit.endswith("-dirty")).lower()
    return tags


def saved_view() -> str:
    """The experiment's saved view "harness: errors" (Views menu): runs grouped by net (the tag
    `model`, seeds averaged; sweeps' parents under "Additional runs"), with the final errors,
    depth, variant and seed as columns, every run drawn in the charts. The UI's own format: an
    envelope whose `state` holds the search facets and UI state as JSON. Errors are fractions,
    as stored; the parent run's description has them in percent."""
    columns = [f"metrics.`{key}`" for key in ("final_train_error", "test_error", "val_error", "train_error")]
    columns += [f"tags.`{key}`" for key in ("depth", "residual", "shortcut", "activation", "seed")]
    state = {
        "selectedColumns": columns,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "model"}]},
        "runsHiddenMode": "SHOW_ALL",
    }
    now = int(time.time() * 1000)
    return json.dumps({"name": SAVED_VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def experiment_tags() -> dict[str, str]:
    return {EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT, SAVED_VIEW_PREFIX + SAVED_VIEW_ID: saved_view()}


def mark_experiment(client, experiment) -> str:
    """Give an existing experiment the tags it lacks (a user's own choices stay); returns its id."""
    for key, value in experiment_tags().items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def sweep_tags(commit: str, jobs: int) -> dict[str, str]:
    """A sweep's parent run: neutral, and a description until `describe_sweep` replaces it."""
    note = f"A sweep of {jobs} jobs. When it ends, this description holds its final errors and where its report is."
    return {RUN_COLOUR_TAG: SWEEP_COLOUR, MLFLOW_RUN_NOTE: note, **source_tags(commit)}


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def describe_sweep(client, parent_run_id: str, members, report: Path | None) -> str | None:
    """The parent run's description: one row per net of the sweep with its final errors in
    percent (mean over seeds), and where its report is. A store error only costs the description."""
    try:
        return _describe_sweep(client, parent_run_id, members, report)
    except Exception as error:  # the sweep's results are stored; this is presentation
        log.warning("could not write the description of MLflow run %s: %s: %s", parent_run_id, type(error).__name__, error)
        return None


def _describe_sweep(client, parent_run_id: str, members, report: Path | None) -> str:
    rows = {}
    for member in members.itertuples():
        run = client.get_run(member.run_id)
        metrics = run.data.metrics
        split = "val" if "val_error" in metrics else "test"
        order = (run.data.tags.get("residual") == "True", int(run.data.tags.get("depth", 0)), member.name)  # plain first
        row = rows.setdefault(member.name, {"seeds": 0, "status": set(), "final_train": [], "eval": [], "split": split,
                                            "order": order})  # fmt: skip
        row["seeds"] += 1
        row["status"].add(member.status)
        if "final_train_error" in metrics:
            row["final_train"].append(metrics["final_train_error"])
        if f"{split}_error" in metrics:
            row["eval"].append(metrics[f"{split}_error"])

    def mean(values):
        return sum(values) / len(values) if values else None

    split_name = "validation" if any(row["split"] == "val" for row in rows.values()) else "test"
    lines = [f"| net | seeds | final training error % | {split_name} error % | status |", "|---|---|---|---|---|"]
    for name, row in sorted(rows.items(), key=lambda item: item[1]["order"]):
        lines.append(f"| {name} | {row['seeds']} | {_percent(mean(row['final_train']))} | {_percent(mean(row['eval']))} "
                     f"| {', '.join(sorted(row['status']))} |")  # fmt: skip
    parent = client.get_run(parent_run_id)
    artifacts = f"#/experiments/{parent.info.experiment_id}/runs/{parent_run_id}/artifacts?{MODEL_TRAINING}"
    text = [f"The {len(members)} runs of this sweep: final errors in percent, mean over seeds.", "", *lines, ""]
    if report is not None:
        text.append(f"Report with figures and claims: artifact [`figures/{report.name}`]({artifacts}) of this run "
                    "(Artifacts tab).")  # fmt: skip
    note = "\n".join(text)
    client.set_tag(parent_run_id, MLFLOW_RUN_NOTE, note)
    return note


def mlflow_program() -> str:
    """`mlflow` as the user can type it: from the venv of this Python (`.venv/bin/mlflow` when
    the venv is below the current folder), else from PATH."""
    program = Path(sys.executable).parent / "mlflow"
    if not program.exists():
        return "mlflow"
    try:
        return os.path.relpath(program) if not os.path.relpath(program).startswith("..") else str(program)
    except ValueError:
        return str(program)


def closing_lines(uri: str, experiment_id: str, parent_run_id: str, report: Path | None) -> list[str]:
    """How to look at a finished sweep: its report, its parent run and the UI command."""
    page = f"#/experiments/{experiment_id}/runs?{MODEL_TRAINING}"
    where = f"(the sweep is run {parent_run_id}; Views > \"{SAVED_VIEW_NAME}\" groups the runs by net)"
    lines = [f"Report: {report}" if report else "Report: none (tracking.figures=false)"]
    if uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI: {uri.rstrip('/')}/{page} {where}")
    else:
        lines.append(f"MLflow UI: {mlflow_program()} ui --backend-store-uri {shlex.quote(uri)}")
        lines.append(f"  then open http://127.0.0.1:5000/{page} {where}")
    return lines
