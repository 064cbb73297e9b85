"""Tracked runs as pandas DataFrames: the one place that reads tag names, metric keys and
artifact paths back from an MLflow store (they are written by `harness.run`, `harness.train`,
`harness.analysis` and `harness.sweep` through the names in `harness.tracking`).

Errors come back in percent; everything downstream (statistics, figures, the report) works
on these frames and never touches MLflow.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from harness.config import NET_KEYS, PRESENTATION_KEYS
from harness.models import model_name
from harness.tracking import MEMBERS_TABLE, PROBE_FOLDER, probe_step
from harness.tracking.mlflow_store import RECIPE_TAG, ROLE_TAG

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per probe table is noise

RUN_COLUMNS = [
    "run_id", "name", "status", "parent_id", "recipe", "dataset", "family", "depth", "residual", "shortcut",
    "activation", "seed", "variant", "model", "iterations", "batch_size", "optimizer", "lr", "augment", "resize",
    "warmup", "eval_split", "train_error", "final_train_error", "eval_error", "response_std_mean",
]  # fmt: skip
CURVE_METRICS = {"train_error": "train_error", "test_error": "eval_error", "val_error": "eval_error"}


def _percent(metrics: dict, key: str) -> float:
    return 100 * metrics[key] if key in metrics else float("nan")


def _recipe_of(tags: dict, params: dict) -> str:
    """The recipe tag; runs of older harness versions get a hash of their non-net params."""
    if RECIPE_TAG in tags:
        return tags[RECIPE_TAG]
    skip = tuple(f"{key}" for key in NET_KEYS + PRESENTATION_KEYS)
    kept = {k: v for k, v in params.items() if not any(k == s or k.startswith(f"{s}.") for s in skip)}
    return "old-" + hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]


def _warmup(params: dict) -> str:
    """P1's warm-up rule as the run's params state it, in words."""
    lr = params.get("schedule.warmup_lr")
    if lr in (None, "None"):
        return "none"
    rule = f"lr {lr} until {100 * float(params['schedule.warmup_until_error']):.0f}% error"
    if params.get("schedule.warmup_max_iterations") not in (None, "None"):
        rule += f", at most {params['schedule.warmup_max_iterations']} iterations"
    if params.get("schedule.warmup_min_depth", "0") != "0":
        rule += f", depth ≥ {params['schedule.warmup_min_depth']}"
    return rule


def _row(run) -> dict:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    residual = tags["residual"] == "True"
    shortcut = tags["shortcut"] if residual else "none"
    activation = tags["activation"]
    depth = int(tags["depth"])
    eval_split = "validation" if "val_error" in metrics else "test"
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "parent_id": tags.get(MLFLOW_PARENT_RUN_ID),
        "recipe": _recipe_of(tags, params),
        "dataset": tags["dataset"],
        "family": tags.get("family", "cifar"),
        "depth": depth,
        "residual": residual,
        "shortcut": shortcut,
        "activation": activation,
        "seed": int(tags["seed"]),
        "variant": model_name(None, residual, shortcut if residual else "zero_pad", activation),
        "model": model_name(depth, residual, shortcut if residual else "zero_pad", activation),
        "iterations": int(params.get("schedule.iterations", 0)),
        "batch_size": int(params.get("schedule.batch_size", 0)),
        "optimizer": params.get("optimizer.name", "?"),
        "lr": float(params.get("optimizer.lr", "nan")),
        "augment": params.get("dataset.augment") == "True",
        "resize": params.get("dataset.resize", "None"),
        "warmup": _warmup(params),
        "eval_split": eval_split,
        # search_runs holds each metric's last value: the final running training error, the final
        # model's training error, and the final error on the whole evaluation split.
        "train_error": _percent(metrics, "train_error"),
        "final_train_error": _percent(metrics, "final_train_error"),
        "eval_error": _percent(metrics, "val_error" if eval_split == "validation" else "test_error"),
        "response_std_mean": metrics.get("response_std_mean", float("nan")),
    }


def load_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "", run_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per training run: its configuration (from tags and params), status and final
    errors in %. `run_ids` restricts the rows to those runs."""
    clauses = [f"tags.`{ROLE_TAG}` = 'job'"] + ([filter_string] if filter_string else [])
    if run_ids is not None:
        if not run_ids:
            return pd.DataFrame(columns=RUN_COLUMNS)
        clauses.append("attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in run_ids) + ")")
    found = client.search_runs(experiment_ids, filter_string=" AND ".join(clauses), max_results=50000)
    return pd.DataFrame([_row(run) for run in found], columns=RUN_COLUMNS)


def load_curves(client: MlflowClient, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table (run_id, metric, step, value in %) of the training curve and the test (or
    validation) curve, the latter as `eval_error`, from `get_metric_history`."""
    rows = [
        (run_id, name, point.step, 100 * point.value)
        for run_id in runs["run_id"]
        for key, name in CURVE_METRICS.items()
        for point in client.get_metric_history(run_id, key)
    ]
    return pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])


def load_analysis(client: MlflowClient, runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(long table (run_id, step, kind, index, layer, value) of the runs' probe tables, a note
    for every run whose tables could not be read)."""
    tables, missing = [], []
    with tempfile.TemporaryDirectory() as folder:
        for run in runs.itertuples():
            try:
                artifacts = client.list_artifacts(run.run_id, PROBE_FOLDER)
                for artifact in artifacts:
                    table = pd.read_csv(client.download_artifacts(run.run_id, artifact.path, folder))
                    tables.append(table.assign(run_id=run.run_id, step=probe_step(artifact.path)))
            except Exception as error:  # an unreadable artifact store: said, not hidden
                missing.append(f"{run.model} seed {run.seed} (run {run.run_id}): probe tables unreadable ({type(error).__name__})")
                continue
            if not artifacts and not pd.isna(run.response_std_mean):  # it probed, but the tables are gone
                missing.append(f"{run.model} seed {run.seed} (run {run.run_id}): probe tables missing; left out of "
                               "the Fig. 7 and backward-signal figures and verdicts")  # fmt: skip
    columns = ["run_id", "step", "kind", "index", "layer", "value"]
    return (pd.concat(tables)[columns] if tables else pd.DataFrame(columns=columns)), missing


def sweep_members(client: MlflowClient, parent_run_id: str) -> list[str]:
    """The runs a sweep's report covers: its member table (runs trained by it and runs it
    reused), or, for sweeps of older harness versions, its child runs."""
    names = [artifact.path for artifact in client.list_artifacts(parent_run_id)]
    if MEMBERS_TABLE in names:
        with tempfile.TemporaryDirectory() as folder:
            return list(pd.read_csv(client.download_artifacts(parent_run_id, MEMBERS_TABLE, folder))["run_id"])
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'", max_results=50000)
    return [run.info.run_id for run in children]


def latest_sweep(client: MlflowClient) -> str | None:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "FINISHED"]


def describe_recipe(runs: pd.DataFrame) -> str:
    """The budget and recipe shared by these runs (one recipe), in words."""
    first = runs.iloc[0]
    resize = "" if first["resize"] in ("None", None) else f", resized to {first['resize']} px"
    augment = "pad-crop-flip augmentation" if first["augment"] else "no augmentation"
    return (f"{first['dataset']}{resize}, {first['iterations']} iterations × batch {first['batch_size']}, "
            f"{first['optimizer']} lr {first['lr']:g}, {augment}, warm-up: {first['warmup']}")  # fmt: skip


def write_members(client: MlflowClient, parent_run_id: str, members: pd.DataFrame, folder: Path) -> None:
    """The sweep's member table as an artifact of its parent run (run_id, name, seed, status, role)."""
    path = Path(folder) / MEMBERS_TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    members.to_csv(path, index=False)
    client.log_artifact(parent_run_id, str(path))
