"""Tracked runs as pandas DataFrames: the store's queries, each run parsed by `harness.record`.

Errors come back in percent; everything downstream (statistics, figures, the report) works
on these frames and never touches MLflow.
"""

import os
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness import record

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per probe table is noise


def load_runs(
    client: MlflowClient, experiment_ids: list[str], filter_string: str = "", run_ids: list[str] | None = None
) -> pd.DataFrame:
    """One row per training run: its configuration (from tags and params), status, final errors
    in % and its early training error (record.early_train_error, from its training curve: one
    query per run). `run_ids` restricts the rows to those runs."""
    clauses = [record.JOBS_FILTER] + ([filter_string] if filter_string else [])
    if run_ids is not None:
        if not run_ids:
            return pd.DataFrame(columns=record.RUN_COLUMNS)
        clauses.append("attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in run_ids) + ")")
    found = client.search_runs(experiment_ids, filter_string=" AND ".join(clauses), max_results=50000)
    runs = pd.DataFrame([record.parse_job(run) for run in found], columns=record.RUN_COLUMNS)
    runs["early_train_error"] = [
        record.early_train_error(client.get_metric_history(run.run_id, record.TRAIN_ERROR), run.iterations)
        for run in runs.itertuples()
    ]
    return runs


def load_curves(client: MlflowClient, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table (run_id, metric, step, value in %) of the training curve and the test (or
    validation) curve, the latter as `eval_error`, from `get_metric_history`."""
    rows = [
        (run_id, name, point.step, 100 * point.value)
        for run_id in runs["run_id"]
        for key, name in record.CURVE_METRICS.items()
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
                artifacts = client.list_artifacts(run.run_id, record.PROBE_FOLDER)
                for artifact in artifacts:
                    table = pd.read_csv(client.download_artifacts(run.run_id, artifact.path, folder))
                    tables.append(table.assign(run_id=run.run_id, step=record.probe_step(artifact.path)))
            except Exception as error:  # an unreadable artifact store: said, not hidden
                missing.append(
                    f"{run.model} seed {run.seed} (run {run.run_id}): probe tables unreadable ({type(error).__name__})"
                )
                continue
            if not artifacts and not pd.isna(run.response_std_mean):  # it probed, but the tables are gone
                missing.append(
                    f"{run.model} seed {run.seed} (run {run.run_id}): probe tables missing; left out of "
                    "the Fig. 7 and backward-signal figures and verdicts"
                )
    columns = ["run_id", "step", "kind", "index", "layer", "value"]
    return (pd.concat(tables)[columns] if tables else pd.DataFrame(columns=columns)), missing


def sweep_members(client: MlflowClient, parent_run_id: str) -> list[str]:
    """The runs a sweep's report covers: its member table (runs trained by it and runs it
    reused), or, for sweeps of older harness versions, its child runs."""
    names = [artifact.path for artifact in client.list_artifacts(parent_run_id)]
    if record.MEMBERS_TABLE in names:
        with tempfile.TemporaryDirectory() as folder:
            return list(pd.read_csv(client.download_artifacts(parent_run_id, record.MEMBERS_TABLE, folder))["run_id"])
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs([experiment_id], record.children_filter(parent_run_id), max_results=50000)
    return [run.info.run_id for run in children]


def latest_sweep(client: MlflowClient) -> str | None:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, record.SWEEPS_FILTER, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "FINISHED"]


def describe_recipe(runs: pd.DataFrame) -> str:
    """The budget and recipe shared by these runs (one recipe), in words."""
    first = runs.iloc[0]
    resize = "" if first["resize"] in ("None", None) else f", resized to {first['resize']} px"
    augment = "pad-crop-flip augmentation" if first["augment"] else "no augmentation"
    precision = ", bf16 autocast" if first.get("precision") == "bf16" else ""
    return (
        f"{first['dataset']}{resize}, {first['iterations']} iterations × batch {first['batch_size']}, "
        f"{first['optimizer']} lr {first['lr']:g}, {augment}, warm-up: {first['warmup']}{precision}"
    )


def write_members(client: MlflowClient, parent_run_id: str, members: pd.DataFrame, folder: Path) -> None:
    """The sweep's member table as an artifact of its parent run (run_id, name, seed, status, role)."""
    path = Path(folder) / record.MEMBERS_TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    members.to_csv(path, index=False)
    client.log_artifact(parent_run_id, str(path))
