"""MLflow behind the `Tracker` interface: one MLflow run per job, one parent run per sweep.

Everything goes through `MlflowClient` with explicit run ids, never MLflow's global active
run, because jobs of one sweep may live in other processes or on other machines.
"""

import contextlib
import errno
import io
import json
import os
import signal
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import record
from harness.tracking.ui import experiment_tags, mark_experiment

PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values


class StoreError(RuntimeError):
    """The tracking store cannot be reached or used."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the previous one is intact."""


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file that cannot be read back."""

    def __init__(self, path: Path, cause: BaseException):
        super().__init__(f"{path} cannot be read ({type(cause).__name__}: {str(cause)[:200]})")
        self.path = path


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a SQLite store's database, None for other stores."""
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def interrupts_deferred():
    """In the main thread, a Ctrl-C (or the sweep watcher's interrupt) that comes during the block
    takes effect when the block is done; a second one at once."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught = []

    def defer(signum, frame):
        if caught:  # a second Ctrl-C: the user means now, even in a call that hangs
            raise KeyboardInterrupt
        caught.append(signum)

    signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if caught:
            raise KeyboardInterrupt


class CompleteCalls:
    """An MlflowClient whose calls are never cut short by a Ctrl-C: a KeyboardInterrupt inside
    SQLAlchemy leaves SQLite's write lock with a connection nobody closes, and marking the run
    KILLED then fails with "database is locked"."""

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name: str):
        if name == "_client":  # unpickling (a launcher sends the sweep's callback to its workers)
            raise AttributeError(name)
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            with interrupts_deferred():
                return attribute(*args, **kwargs)

        return call


def store_error(uri: str, error: Exception, what: str) -> StoreError:
    return StoreError(
        f"The MLflow tracking store at tracking.uri={uri} cannot be {what} ({type(error).__name__}: "
        f"{str(error)[:300]}). Start the tracking server, fix the URI, or leave tracking.uri unset for the "
        "local SQLite store in ./mlruns."
    )


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the id of the named experiment, created if new. A SQLite store keeps its
    artifacts in an `artifacts` folder beside the database."""
    store_folder = sqlite_folder(uri)
    try:
        lock = contextlib.nullcontext()
        if store_folder:
            store_folder.mkdir(parents=True, exist_ok=True)
            # MLflow creates a fresh SQLite store's tables on first use, and two launches that
            # start together would both create them ("table ... already exists"): one at a time.
            lock = FileLock(store_folder / f"{Path(uri).name}.lock", timeout=120)
        if uri.startswith(("http://", "https://")):
            # MLflow's own client retries for minutes; a server that is not there should fail now.
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
        with lock:
            client = CompleteCalls(MlflowClient(tracking_uri=uri))
            found = client.get_experiment_by_name(experiment)
            if found is not None:  # created elsewhere, or by an older harness: the UI's tags if missing
                return client, mark_experiment(client, found)
            location = (store_folder / "artifacts").as_uri() if store_folder else None
            try:
                return client, client.create_experiment(experiment, artifact_location=location, tags=experiment_tags())
            except MlflowException as error:  # a server's other client was first
                found = client.get_experiment_by_name(experiment)
                if error.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
                    raise
                return client, mark_experiment(client, found)
    except Exception as error:
        raise store_error(uri, error, "used") from error


def look_in(uri: str, experiment: str) -> tuple[MlflowClient | None, str | None]:
    """A client of an existing store and the id of the named experiment, for reading only: no
    store, folder or experiment is created ((None, None) where there is no store yet)."""
    store_folder = sqlite_folder(uri)
    if store_folder and not Path(uri.removeprefix("sqlite:///")).exists():
        return None, None
    try:
        client = CompleteCalls(MlflowClient(tracking_uri=uri))
        found = client.get_experiment_by_name(experiment)
    except Exception as error:
        raise store_error(uri, error, "read") from error
    return client, found.experiment_id if found else None


def find_run(client: MlflowClient, experiment_id: str, config_fingerprint: str):
    """The latest run that trained this config in this experiment and is still part of its sweep."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=record.fingerprint_filter(config_fingerprint),
        order_by=["attributes.start_time DESC"],
    )
    current = [run for run in runs if record.is_current(run)]
    return current[0] if current else None


def supersede(client: MlflowClient, old, new_run_id: str) -> None:
    """A retried config's new run takes the old one's place: the old run leaves the sweep, and
    an old RUNNING one (a process killed before its first checkpoint) is closed as KILLED."""
    client.set_tag(old.info.run_id, record.SUPERSEDED_BY, new_run_id)
    if record.PARENT in old.data.tags:
        client.delete_tag(old.info.run_id, record.PARENT)
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
        self.lease = None  # harness.lease.Lease: checked before every write of metrics
        self.saved_state: dict | None = None  # the checkpoint as read_checkpoint found it
        self.saved_iteration: int | None = None  # of the last checkpoint written or read

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
            tags[record.PARENT] = parent_run_id
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        started = cls(client, run.info.run_id, name, checkpoint_dir)
        if started.checkpoint_path:
            started.set_tags({record.CHECKPOINT: started.checkpoint_path})
        return started

    def reopen(self) -> None:
        """RUNNING again, to be resumed from the checkpoint: a stopped run's error is history."""
        self.client.update_run(self.run_id, status="RUNNING")
        tags = self.client.get_run(self.run_id).data.tags
        for tag in (record.ERROR, record.FAILURE):
            if tag in tags:
                self.client.delete_tag(self.run_id, tag)

    def check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if self.flush_seconds is not None and time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def checkpoint(self, state: dict) -> None:
        """Write the state with the metrics not yet in the store (atomically: a kill leaves the
        previous checkpoint whole), then send those metrics."""
        import torch

        self.check_lease()
        # Serialised in memory first: torch.save on a full disk fails deep in its zip writer
        # ("unexpected pos") without saying why; a plain write says ENOSPC.
        buffer = io.BytesIO()
        torch.save({**state, "pending_metrics": [(m.key, m.value, m.timestamp, m.step) for m in self.pending]}, buffer)
        partial = self.checkpoint_path.with_suffix(".partial")
        try:
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.checkpoint_path)
            self.saved_iteration = state.get("iteration")
        except OSError as error:
            with contextlib.suppress(OSError):
                partial.unlink()
            cause = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error)).lower()
            kept = (
                f"the previous checkpoint {self.checkpoint_path} is intact"
                if self.checkpoint_path.exists()
                else "there is no earlier checkpoint"
            )
            raise CheckpointError(
                f"could not write the checkpoint {partial}: {cause}; the partial file was removed and {kept}"
            ) from error
        self.flush()

    def read_checkpoint(self) -> dict | None:
        """The last checkpoint's state (None if there is none); CorruptCheckpoint if it cannot be
        read. Read once: `restore` takes it from here."""
        import torch

        if self.saved_state is None and self.has_checkpoint():
            try:
                state = torch.load(self.checkpoint_path, weights_only=False)
                if not isinstance(state, dict) or not {"iteration", "pending_metrics"} <= state.keys():
                    raise ValueError("not a checkpoint of this harness")
            except Exception as error:
                raise CorruptCheckpoint(self.checkpoint_path, error) from error
            self.saved_state = state
            self.saved_iteration = state["iteration"]
        return self.saved_state

    def set_checkpoint_aside(self) -> Path:
        """Move an unreadable checkpoint out of the way (kept for inspection): last.pt.corrupt."""
        aside = self.checkpoint_path.with_name(self.checkpoint_path.name + ".corrupt")
        os.replace(self.checkpoint_path, aside)
        return aside

    def restore(self) -> dict | None:
        state = self.read_checkpoint()
        self.saved_state = None
        if state is None:
            return None
        # The store may hold some of these already (a kill during the flush); MLflow ignores
        # a metric logged twice with the same key, step, timestamp and value.
        self.pending = [Metric(*m) for m in state.pop("pending_metrics")]
        self.flush()
        return state

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path is not None and self.checkpoint_path.exists()

    def flush(self) -> None:
        if self.pending:
            self.check_lease()
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

    def finish(self, status: str = "FINISHED", error: BaseException | None = None, resumable: bool = False) -> None:
        """Flush what is pending and close the run; a failed run keeps its error as a tag. A
        KILLED run keeps its checkpoint and sends nothing past it: it resumes from there. A run
        whose lease another launch took is left to that launch (LeaseLost). A `resumable` failure
        (disk, store, data) is kept like a KILLED run: it resumes from its checkpoint."""
        try:
            self.check_lease()
        except BaseException:
            if self.lease is not None:
                self.lease.release()
            raise
        try:
            if (status == "KILLED" or resumable) and self.has_checkpoint():
                self.pending = []
            self.flush()
            if status == "FINISHED" and self.has_checkpoint():
                self.checkpoint_path.unlink()
        finally:
            if error is not None:
                self.set_tags({record.ERROR: f"{type(error).__name__}: {error}"})
            try:
                self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.from_string(status)))
            finally:
                if self.lease is not None:
                    self.lease.release()
