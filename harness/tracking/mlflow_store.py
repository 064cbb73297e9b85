"""MLflow behind the `Tracker` interface: one MLflow run per job, one parent run per sweep.

Everything goes through `MlflowClient` with explicit run ids, never MLflow's global active
run, because jobs of one sweep may live in other processes or on other machines.
"""

import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

ROLE_TAG = "harness.role"  # "sweep" on a sweep's parent run, "job" on every training run
SWEEP_DIR_TAG = "harness.sweep_dir"
ERROR_TAG = "harness.error"
CHECKPOINT_TAG = "harness.checkpoint"
FINGERPRINT_TAG = "harness.fingerprint"
RECIPE_TAG = "harness.recipe"  # what the nets of one study share: a report groups runs by it
SUPERSEDED_TAG = "harness.superseded_by"
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


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a SQLite store's database, None for other stores."""
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the id of the named experiment, created if new. A SQLite store keeps its
    artifacts in an `artifacts` folder beside the database."""
    store_folder = sqlite_folder(uri)
    if store_folder:
        store_folder.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    try:
        if uri.startswith(("http://", "https://")):
            # MLflow's own client retries for minutes; a server that is not there should fail now.
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        location = (store_folder / "artifacts").as_uri() if store_folder else None
        return client, client.create_experiment(experiment, artifact_location=location)
    except Exception as error:
        raise StoreError(
            f"The MLflow tracking store at tracking.uri={uri} cannot be used ({type(error).__name__}: "
            f"{str(error)[:300]}). Start the tracking server, fix the URI, or leave tracking.uri unset for the "
            "local SQLite store in ./mlruns."
        ) from error


def find_run(client: MlflowClient, experiment_id: str, config_fingerprint: str):
    """The latest run that trained this config in this experiment and is still part of its sweep."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{config_fingerprint}'",
        order_by=["attributes.start_time DESC"],
    )
    current = [run for run in runs if SUPERSEDED_TAG not in run.data.tags]
    return current[0] if current else None


def supersede(client: MlflowClient, old, new_run_id: str) -> None:
    """A retried config's new run takes the old one's place: the old run leaves the sweep, and
    an old RUNNING one (a process killed before its first checkpoint) is closed as KILLED."""
    client.set_tag(old.info.run_id, SUPERSEDED_TAG, new_run_id)
    if MLFLOW_PARENT_RUN_ID in old.data.tags:
        client.delete_tag(old.info.run_id, MLFLOW_PARENT_RUN_ID)
    if old.info.status == "RUNNING":
        client.set_terminated(old.info.run_id, "KILLED")


class MlflowRun:
    """One MLflow run. Metrics are buffered and written in batches, so that tracking costs
    a small, fixed share of a run's time whatever the logging interval.

    With a checkpoint folder, metrics reach the store only together with a checkpoint: what a
    killed run logged after its last checkpoint is never in the store, and the resumed run
    logs it again, identically, so its curves join without a repeated or missing step."""

    def __init__(self, client: MlflowClient, run_id: str, name: str, checkpoint_dir: Path | None = None):
        self.client = client
        self.run_id = run_id
        self.name = name
        self.checkpoint_path = checkpoint_dir / run_id / "last.pt" if checkpoint_dir else None
        self.flush_seconds = None if checkpoint_dir else 10.0
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        name: str,
        tags: dict[str, Any],
        parent_run_id: str | None = None,
        checkpoint_dir: Path | None = None,
    ) -> "MlflowRun":
        tags = {key: str(value) for key, value in tags.items()}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        started = cls(client, run.info.run_id, name, checkpoint_dir)
        if started.checkpoint_path:
            started.set_tags({CHECKPOINT_TAG: started.checkpoint_path})
        return started

    def reopen(self) -> None:
        """RUNNING again, to be resumed from the checkpoint: a stopped run's error is history."""
        self.client.update_run(self.run_id, status="RUNNING")
        if ERROR_TAG in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, ERROR_TAG)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if self.flush_seconds is not None and time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def checkpoint(self, state: dict) -> None:
        """Write the state with the metrics not yet in the store (atomically: a kill leaves the
        previous checkpoint whole), then send those metrics."""
        import torch

        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint_path.with_suffix(".partial")
        torch.save({**state, "pending_metrics": [(m.key, m.value, m.timestamp, m.step) for m in self.pending]}, partial)
        os.replace(partial, self.checkpoint_path)
        self.flush()

    def restore(self) -> dict | None:
        import torch

        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return None
        state = torch.load(self.checkpoint_path, weights_only=False)
        # The store may hold some of these already (a kill during the flush); MLflow ignores
        # a metric logged twice with the same key, step, timestamp and value.
        self.pending = [Metric(*m) for m in state.pop("pending_metrics")]
        self.flush()
        return state

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path is not None and self.checkpoint_path.exists()

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

    def log_table(self, table, artifact_file: str) -> None:
        self.log_text(table.to_csv(index=False), artifact_file)

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
        """Flush what is pending and close the run; a failed run keeps its error as a tag. A
        KILLED run keeps its checkpoint and sends nothing past it: it resumes from there."""
        try:
            if status == "KILLED" and self.has_checkpoint():
                self.pending = []
            self.flush()
            if status == "FINISHED" and self.has_checkpoint():
                self.checkpoint_path.unlink()
        finally:
            if error is not None:
                self.set_tags({ERROR_TAG: f"{type(error).__name__}: {error}"})
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.from_string(status)))
