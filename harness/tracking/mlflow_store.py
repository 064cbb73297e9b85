"""MLflow behind the `Tracker` interface: one MLflow run per job, one parent run per sweep.

Everything goes through `MlflowClient` with explicit run ids, never MLflow's global active
run, because jobs of one sweep may live in other processes or on other machines.
"""

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

ROLE_TAG = "harness.role"  # "sweep" on a sweep's parent run, "job" on every training run
SWEEP_DIR_TAG = "harness.sweep_dir"
ERROR_TAG = "harness.error"
PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values


class StoreError(RuntimeError):
    """The tracking store cannot be reached or used."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params are flat."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the id of the named experiment, created if new. A SQLite store keeps its
    artifacts in an `artifacts` folder beside the database."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        return client, client.create_experiment(experiment, artifact_location=location)
    except Exception as error:
        raise StoreError(
            f"The MLflow tracking store at tracking.uri={uri} cannot be used ({type(error).__name__}: "
            f"{str(error)[:300]}). Start the tracking server, fix the URI, or leave tracking.uri unset for the "
            "local SQLite store in ./mlruns."
        ) from error


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep_dir: str) -> str | None:
    """The parent run of the sweep writing to `sweep_dir`. Looked up in the store, so it is found
    from any process or machine that shares the store."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'sweep' AND tags.`{SWEEP_DIR_TAG}` = '{sweep_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


class MlflowRun:
    """One MLflow run. Metrics are buffered and written in batches, so that tracking costs
    a small, fixed share of a run's time whatever the logging interval."""

    def __init__(self, client: MlflowClient, run_id: str, name: str, flush_seconds: float = 10.0):
        self.client = client
        self.run_id = run_id
        self.name = name
        self.flush_seconds = flush_seconds
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()

    @classmethod
    def start(
        cls, client: MlflowClient, experiment_id: str, name: str, tags: dict[str, Any], parent_run_id: str | None = None
    ) -> "MlflowRun":
        tags = {key: str(value) for key, value in tags.items()}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        return cls(client, run.info.run_id, name)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.pending), 1000):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(self.run_id, metrics=self.pending[start : start + 1000])
        self.pending = []
        self.last_flush = time.monotonic()

    def log_params(self, params: dict[str, Any]) -> None:
        entries = [Param(key, str(value)[:PARAM_VALUE_LIMIT]) for key, value in params.items()]
        for start in range(0, len(entries), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=entries[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value)[:PARAM_VALUE_LIMIT])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, data: dict, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2, default=str), artifact_file)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_torch_state(self, state: dict, artifact_file: str) -> None:
        import torch

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / artifact_file
            torch.save(state, path)
            self.log_file(path)

    def finish(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Flush what is pending and close the run; a failed run keeps its error as a tag."""
        try:
            self.flush()
        finally:
            if error is not None:
                self.set_tags({ERROR_TAG: f"{type(error).__name__}: {error}"})
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.from_string(status)))
