"""MLflow behind the `Tracker` interface: one MLflow run per job, one parent run per sweep.

Everything goes through `MlflowClient` with explicit run ids, never MLflow's global active
run, because jobs of one sweep may live in other processes or on other machines.
"""

import contextlib
import errno
import functools
import io
import json
import logging
import os
import shlex
import signal
import sqlite3
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
from harness.errors import HarnessError
from harness.lease import LeaseLost
from harness.tracking.ui import experiment_tags, mark_experiment
from harness.tracking.writer import BATCH_POINTS, StoreWriter, Write

PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
STOPPED_WAIT = 10.0  # seconds a stopped run waits for the store: its checkpoint holds the rest
# MLflow's client retries a failed request 7 times over about four minutes inside one call, each
# try waiting up to 120 s. A run's writer tries again itself across an outage (and says so), and
# every other call should fail within seconds with its own error: a few quick retries instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class RaisedStoreErrorLog(logging.Filter):
    """MLflow's SQLAlchemy store (mlflow.store.db.utils) logs each database error (a full disk, a
    locked SQLite file, a database that went away) with its whole traceback, then raises it as an
    MlflowException whose message and cause are that same error. The harness says each store
    failure itself, in one line with the error's type and message (the writer's "cannot be
    reached", the run's "error:" line), and an error nobody catches still prints the whole chain:
    the log is a second copy, three or four tracebacks and about 90 lines before the harness's
    line on a full disk. Dropped, unless MLflow logs at DEBUG (MLFLOW_LOGGING_LEVEL=DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        raised = any(
            cls.__module__ == "sqlalchemy.exc" and cls.__name__ == "OperationalError" for cls in type(error).__mro__
        )
        return not raised or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


STORE_ERROR_LOGGER = logging.getLogger("mlflow.store.db.utils")
if not any(isinstance(f, RaisedStoreErrorLog) for f in STORE_ERROR_LOGGER.filters):
    STORE_ERROR_LOGGER.addFilter(RaisedStoreErrorLog())


class StoreError(HarnessError):
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


DAMAGED_FILE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)  # "malformed", "not a database"


def damaged_sqlite_file(error: BaseException) -> sqlite3.DatabaseError | None:
    """The error, among `error` and its causes, in which SQLite says the database file itself is
    damaged: told by SQLite's result code, not the exception's type, because a busy or locked
    database raises a DatabaseError too (sqlite3.OperationalError), and it is not damaged."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = getattr(error, "sqlite_errorcode", None)
        # The low byte is the primary code; extended codes such as SQLITE_CORRUPT_INDEX share it.
        if isinstance(error, sqlite3.DatabaseError) and code is not None and code & 0xFF in DAMAGED_FILE_CODES:
            return error
        error = error.__cause__ or error.__context__
    return None


def store_error(uri: str, error: Exception, what: str) -> StoreError:
    damage = damaged_sqlite_file(error) if uri.startswith("sqlite:///") else None
    if damage is not None:  # no server or URI to fix: the file has to be replaced
        path = uri.removeprefix("sqlite:///")
        aside = shlex.quote(f"{path}.corrupt")
        return StoreError(
            f"The SQLite file {path} of the MLflow tracking store is damaged and cannot be {what} "
            f"(sqlite3.DatabaseError: {damage}). Move it aside (mv {shlex.quote(path)} {aside}), then "
            "put back a copy of it from a backup, or launch again to start a fresh, empty store; the "
            "checkpoints and artifacts folders beside it stay as they are. To try to save some of its "
            f"runs: sqlite3 {aside} .recover | sqlite3 {shlex.quote(path)}"
        )
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


def missing_sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store that does not exist yet (None for any other store):
    a reader must not open it, as MLflow would create it."""
    path = Path(uri.removeprefix("sqlite:///"))
    return path if sqlite_folder(uri) and not path.exists() else None


def look_in(uri: str, experiment: str) -> tuple[MlflowClient | None, str | None]:
    """A client of an existing store and the id of the named experiment, for reading only: no
    store, folder or experiment is created ((None, None) where there is no store yet)."""
    if missing_sqlite_file(uri):
        return None, None
    try:
        client = CompleteCalls(MlflowClient(tracking_uri=uri))
        found = client.get_experiment_by_name(experiment)
    except Exception as error:
        raise store_error(uri, error, "read") from error
    return client, found.experiment_id if found else None


def checkpoint_file(checkpoint_dir: Path, run_id: str) -> Path:
    return checkpoint_dir / run_id / "last.pt"


def latest_run_id(client: MlflowClient, experiment_id: str, config_fingerprint: str) -> str | None:
    run = find_run(client, experiment_id, config_fingerprint)
    return run.info.run_id if run else None


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
    a small, fixed share of a run's time whatever the logging interval, and sent by a writer
    beside the loop (`harness.tracking.writer`), so that the loop never waits on the store.

    With a checkpoint folder, metrics reach the store only after a checkpoint that holds them
    (with every point not yet sent): what a killed run logged after its last checkpoint is never
    in the store, and the resumed run sends the checkpoint's unsent points again (MLflow keeps
    one copy of an identical point) and logs the rest again, identically, so its curves join
    without a repeated or missing step. The params are written at once, before training."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        name: str,
        checkpoint_dir: Path | None = None,
        outage_limit: float = 600.0,
        buffer_points: int = 100_000,
    ):
        self.client = client
        self.run_id = run_id
        self.name = name
        self.checkpoint_path = checkpoint_file(checkpoint_dir, run_id) if checkpoint_dir else None
        self.flush_seconds = None if checkpoint_dir else 10.0
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()
        self.lease = None  # harness.lease.Lease: checked before every write
        self.writer = StoreWriter(name, self._log_metrics_now, self.ensure_lease, outage_limit, buffer_points)
        self.saved_state: dict | None = None  # the checkpoint as read_checkpoint found it
        self.saved_iteration: int | None = None  # of the last checkpoint written or read
        self.checkpoint_inode: int | None = None  # of the checkpoint file this launch wrote or read

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        name: str,
        tags: dict[str, Any],
        parent_run_id: str | None = None,
        checkpoint_dir: Path | None = None,
        **writer_limits,
    ) -> "MlflowRun":
        tags = {key: str(value) for key, value in tags.items()}
        if parent_run_id:
            tags[record.PARENT] = parent_run_id
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        started = cls(client, run.info.run_id, name, checkpoint_dir, **writer_limits)
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
        """In the loop: raise what stopped the writer, or LeaseLost."""
        self.writer.check()
        if self.lease is not None:
            self.lease.check()

    def ensure_lease(self) -> None:
        if self.lease is not None:
            self.lease.ensure()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.writer.check()
        timestamp = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if self.flush_seconds is not None and time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def checkpoint(self, state: dict) -> None:
        """Write the state with the metrics not yet in the store (atomically: a kill leaves the
        previous checkpoint whole), then send those metrics."""
        import torch

        self.check_lease()
        self.check_checkpoint_is_ours()
        unsent = self.writer.unsent_metrics() + self.pending
        # Serialised in memory first: torch.save on a full disk fails deep in its zip writer
        # ("unexpected pos") without saying why; a plain write says ENOSPC.
        buffer = io.BytesIO()
        torch.save({**state, "pending_metrics": [(m.key, m.value, m.timestamp, m.step) for m in unsent]}, buffer)
        partial = self.checkpoint_path.with_suffix(".partial")
        try:
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.checkpoint_path)
            self.checkpoint_inode = self.checkpoint_path.stat().st_ino
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
            self.checkpoint_inode = self.checkpoint_path.stat().st_ino
        return self.saved_state

    def check_checkpoint_is_ours(self) -> None:
        """A launch whose lease lapsed trains on while it cannot reach the store; if another
        launch took the run over meanwhile (it reached the store), that launch's checkpoint has
        replaced ours, and this one must stop before it overwrites it."""
        if self.checkpoint_inode is None or self.lease is None or not self.lease.expired():
            return
        try:
            ours = self.checkpoint_path.stat().st_ino == self.checkpoint_inode
        except FileNotFoundError:
            ours = False
        if not ours:
            if self.lease is not None:
                self.lease.lost.set()
            raise LeaseLost(
                f"the checkpoint {self.checkpoint_path} was replaced by another launch, which took MLflow run "
                f"{self.run_id} over; this one stops without writing more"
            )

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
        """Hand the pending metrics to the writer."""
        if self.pending:
            self.check_lease()
        for start in range(0, len(self.pending), BATCH_POINTS):
            self.writer.put(Write(metrics=self.pending[start : start + BATCH_POINTS]))
        self.pending = []
        self.last_flush = time.monotonic()

    def _log_metrics_now(self, metrics: list[Metric]) -> None:
        self.client.log_batch(self.run_id, metrics=metrics)

    def sync(self) -> None:
        """Everything logged so far in the store: waits for the writer (up to its outage limit)."""
        self.flush()
        self.writer.drain()

    def log_params(self, params: dict[str, Any]) -> None:
        entries = [Param(key, str(value)[:PARAM_VALUE_LIMIT]) for key, value in params.items()]
        for start in range(0, len(entries), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=entries[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        tags = {key: str(value)[:PARAM_VALUE_LIMIT] for key, value in tags.items()}
        self.writer.put(Write(functools.partial(self._set_tags, tags)))

    def _set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.writer.put(Write(functools.partial(self.client.log_text, self.run_id, text, artifact_file)))

    def log_table(self, table, artifact_file: str) -> None:
        self.log_text(table.to_csv(index=False), artifact_file)

    def log_json(self, data: dict, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2, default=str), artifact_file)

    def log_torch_state(self, state: dict, artifact_file: str) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.writer.put(Write(functools.partial(self._log_bytes, buffer.getvalue(), artifact_file)))

    def _log_bytes(self, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / artifact_file
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path))

    def abandon(self) -> None:
        """Stop writing, and leave the run as it is: another launch holds it now."""
        self.writer.close()
        if self.lease is not None:
            self.lease.release()

    def finish(
        self,
        status: str = "FINISHED",
        error: BaseException | None = None,
        resumable: bool = False,
        tags: dict[str, Any] | None = None,
    ) -> None:
        """Send what is logged and close the run; a failed run keeps its error as a tag. A KILLED
        run keeps its checkpoint and sends nothing past it: it resumes from there. A run whose
        lease another launch took is left to that launch (LeaseLost). A `resumable` failure
        (disk, store, data) is kept like a KILLED run: it resumes from its checkpoint. `tags`
        (what the next launch decides by: the failure's kind) are written with the status.

        A finished run waits for the store up to the writer's outage limit (past it, StoreOutage:
        the run keeps its checkpoint and resumes from it); a stopped one waits STOPPED_WAIT
        seconds at most, as its checkpoint holds whatever is not sent."""
        try:
            self.check_lease()
            kept = (status == "KILLED" or resumable) and self.has_checkpoint()
            if kept:
                self.pending = []
            self.flush()
            self.writer.drain(STOPPED_WAIT if kept else None)
            if status == "FINISHED" and self.has_checkpoint():
                self.checkpoint_path.unlink()
            # Past the writer's queue, which a full disk can hold up for good: a status without its
            # failure's kind would make the next launch train the net anew instead of resuming it.
            closing = (tags or {}) | ({record.ERROR: f"{type(error).__name__}: {error}"} if error is not None else {})
            for key, value in closing.items():
                self.client.set_tag(self.run_id, key, str(value)[:PARAM_VALUE_LIMIT])
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.from_string(status)))
        finally:
            self.abandon()
