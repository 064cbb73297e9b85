"""What the MLflow UI shows first: the tags that a tracking client may set for it.

MLflow's UI reads a few tags as display settings. We set the experiment's kind (model
development; MLflow 3.17's UI ignores it and follows its GenAI / Model training switch, so the
addresses we print carry `workflowType=machine_learning`), each run's colour (the depth palette
of `harness.palette`), MLflow's own source, commit and user tags, a description
(`mlflow.note.content`) on a sweep's parent run, and one saved view of the experiment that
groups the runs by net with their errors as columns. The rest of the UI's defaults (which
columns, which runs expanded, the charts' order, GenAI or model training) live in the browser
and cannot be set from here (docs/ui.md).
"""

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from harness import record

log = logging.getLogger(__name__)
MODEL_DEVELOPMENT = "custom_model_development"  # the experiment's kind (record.EXPERIMENT_KIND)
SAVED_VIEW_ID = "harness-errors"
SAVED_VIEW_NAME = "harness: errors"
MODEL_TRAINING = "workflowType=machine_learning"  # MLflow 3.17's UI opens GenAI pages unless told so


def saved_view() -> str:
    """The experiment's saved view "harness: errors" (Views menu): runs grouped by net (the tag
    `model`, seeds averaged; sweeps' parents under "Additional runs"), with the final errors,
    depth, variant and seed as columns, every run drawn in the charts. The UI's own format: an
    envelope whose `state` holds the search facets and UI state as JSON. Errors are fractions,
    as stored; the parent run's description has them in percent."""
    errors = (
        record.FINAL_TRAIN_ERROR,
        record.eval_metric("test"),
        record.eval_metric("validation"),
        record.TRAIN_ERROR,
    )
    columns = [f"metrics.`{key}`" for key in errors]
    columns += [f"tags.`{key}`" for key in ("depth", "residual", "shortcut", "activation", "seed")]
    state = {
        "selectedColumns": columns,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "model"}]},
        "runsHiddenMode": "SHOW_ALL",
    }
    now = int(time.time() * 1000)
    return json.dumps({"name": SAVED_VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def experiment_tags() -> dict[str, str]:
    return {record.EXPERIMENT_KIND: MODEL_DEVELOPMENT, record.SAVED_VIEW_PREFIX + SAVED_VIEW_ID: saved_view()}


def mark_experiment(client, experiment) -> str:
    """Give an existing experiment the tags it lacks (a user's own choices stay); returns its id."""
    for key, value in experiment_tags().items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def describe_sweep(client, parent_run_id: str, members, report: Path | None, next_steps=(), verdicts=()) -> str | None:
    """The parent run's description: one row per net of the sweep with its final errors in
    percent (mean over seeds), the verdicts (the design, then a line per claim), what to run
    next, and where its report is. A store error only costs the description."""
    try:
        return _describe_sweep(client, parent_run_id, members, report, next_steps, verdicts)
    except Exception as error:  # the sweep's results are stored; this is presentation
        log.warning(
            "could not write the description of MLflow run %s: %s: %s", parent_run_id, type(error).__name__, error
        )
        return None


def _describe_sweep(client, parent_run_id: str, members, report: Path | None, next_steps, verdicts) -> str:
    rows = {}
    for member in members.itertuples():
        run = client.get_run(member.run_id)
        metrics = run.data.metrics
        split = record.eval_split_of(metrics)
        row = rows.setdefault(
            member.name,
            {
                "seeds": 0,
                "status": set(),
                "final_train": [],
                "eval": [],
                "split": split,
                "order": record.order_key(run, member.name),
            },
        )
        row["seeds"] += 1
        row["status"].add(member.status)
        if record.FINAL_TRAIN_ERROR in metrics:
            row["final_train"].append(metrics[record.FINAL_TRAIN_ERROR])
        if record.eval_metric(split) in metrics:
            row["eval"].append(metrics[record.eval_metric(split)])

    def mean(values):
        return sum(values) / len(values) if values else None

    split_name = "validation" if any(row["split"] == "validation" for row in rows.values()) else "test"
    lines = [f"| net | seeds | final training error % | {split_name} error % | status |", "|---|---|---|---|---|"]
    for name, row in sorted(rows.items(), key=lambda item: item[1]["order"]):
        lines.append(
            f"| {name} | {row['seeds']} | {_percent(mean(row['final_train']))} | {_percent(mean(row['eval']))} "
            f"| {', '.join(sorted(row['status']))} |"
        )
    parent = client.get_run(parent_run_id)
    artifacts = f"#/experiments/{parent.info.experiment_id}/runs/{parent_run_id}/artifacts?{MODEL_TRAINING}"
    text = [f"The {len(members)} runs of this sweep: final errors in percent, mean over seeds.", "", *lines, ""]
    if verdicts:
        design, *claims = verdicts
        text += [f"Verdicts ({design}):", "", *[f"- {line}" for line in claims], ""]
    if next_steps:
        text += ["What to run next:", "", *[f"- {line}" for line in next_steps], ""]
    if report is not None:
        text.append(
            f"Report with figures and claims: artifact [`{record.FIGURES_FOLDER}/{report.name}`]({artifacts}) "
            "of this run (Artifacts tab)."
        )
    note = "\n".join(text)
    client.set_tag(parent_run_id, record.NOTE, note)
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
    where = f'(the sweep is run {parent_run_id}; Views > "{SAVED_VIEW_NAME}" groups the runs by net)'
    lines = [f"Report: {report}" if report else "Report: none (tracking.figures=false)"]
    if uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI: {uri.rstrip('/')}/{page} {where}")
    else:
        lines.append(f"MLflow UI: {mlflow_program()} ui --backend-store-uri {shlex.quote(uri)}")
        lines.append(f"  then open http://127.0.0.1:5000/{page} {where}")
    return lines
