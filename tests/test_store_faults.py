"""The tracking store when it fails: a damaged SQLite file, and a server whose replies get lost."""

import http.client
import logging
import sqlite3
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

# Imported, the harness's store module (mlflow_store) also sets MLflow's client retries: the tests run under them.
from harness.tracking import writer
from harness.tracking.mlflow_store import MlflowRun, connect, store_error
from harness.tracking.writer import StoreOutage

from helpers.commands import harness_command
from helpers.stores import empty_store

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
# Headers about one connection, not the request: the proxy's two connections set their own.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


def test_a_damaged_sqlite_store_gets_one_paragraph_of_advice_that_fits(tmp_path):
    database = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{database}"
    connect(uri, "degradation")  # a real store, created as a launch creates it
    size = database.stat().st_size
    with database.open("r+b") as file:  # as a disk that filled up or a copy cut short leaves it
        file.truncate(size // 2)

    result = harness_command("harness.run", "schedule=smoke", f"tracking.uri={uri}", cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip() == errors[0], result.stderr
    assert f"The SQLite file {database} of the MLflow tracking store is damaged" in errors[0]
    assert "move it aside" in errors[0].lower() and f"mv {database} {database}.corrupt" in errors[0]
    assert "Start the tracking server" not in errors[0]  # the advice for a store that cannot be reached


def sqlite_error(database: Path, damage: str) -> sqlite3.DatabaseError:
    """The error SQLite raises on reading a database that is `damage`d: "not a database" (its header
    overwritten) or "locked" (another connection holds its write lock; the file is sound)."""
    sqlite3.connect(database).execute("CREATE TABLE runs (id)").connection.commit()
    if damage == "not a database":
        with database.open("r+b") as file:
            file.write(b"not the SQLite header")
    else:
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(database, timeout=0).execute("SELECT * FROM runs")
    except sqlite3.DatabaseError as error:
        return error
    raise AssertionError(f"{database} can be read")


@pytest.mark.parametrize("damage, damaged", [("not a database", True), ("locked", False)])
def test_the_advice_for_a_damaged_file_is_told_by_sqlites_error_not_its_type(tmp_path, damage, damaged):
    database = tmp_path / "mlflow.db"
    error = sqlite_error(database, damage)
    try:  # as MLflow's SQLAlchemy store raises it: wrapped, with SQLite's error as the cause
        raise RuntimeError("(sqlite3.DatabaseError) ...") from error
    except RuntimeError as wrapped:
        message = str(store_error(f"sqlite:///{database}", wrapped, "used"))
    assert (f"The SQLite file {database} of the MLflow tracking store is damaged" in message) == damaged
    assert ("Start the tracking server" in message) == (not damaged)


def test_a_store_failure_the_harness_reports_is_its_line_not_mlflows_tracebacks(store, caplog, capfd):
    """A store that refuses every write (here a read-only view of the file; a full disk fails the
    same way: sqlite3.OperationalError inside MLflow's SQLAlchemy store, issue 38) reaches the
    reader as the writer's one warning and the StoreOutage that stops the run, each with the
    error's type and message, not as MLflow's log of the same error with its tracebacks."""
    writable, experiment_id = connect(store, "degradation")
    run_id = writable.create_run(experiment_id).info.run_id
    database = store.removeprefix("sqlite:///")
    read_only = MlflowClient(f"sqlite:///file:{database}?mode=ro&uri=true")
    run = MlflowRun(read_only, run_id, "resnet-8", outage_limit=0)
    capfd.readouterr()
    caplog.set_level(logging.WARNING, logger=writer.__name__)
    run.log_metrics({"train_error": 0.5}, 10)
    with pytest.raises(StoreOutage) as stopped:
        run.sync()
    run.abandon()
    (said,) = [record.getMessage() for record in caplog.records if record.name == writer.__name__]
    for line in (said, str(stopped.value)):  # what the reader sees: the error's type and SQLite's words
        assert "MlflowException: " in line and "(sqlite3.OperationalError) attempt to write a readonly database" in line
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out and "SQLAlchemy database error" not in printed.err
    assert writable.get_metric_history(run_id, "train_error") == []


class ReplyDroppingProxy(ThreadingHTTPServer):
    """An HTTP proxy on loopback to an MLflow server that, for every `drop_every`-th POST to log-batch,
    forwards the request, reads the server's reply (the batch is committed by then) and closes the
    client's connection without sending it: what a client sees when a network or load balancer
    loses a reply. The client cannot tell whether the batch was stored, so it sends it again."""

    daemon_threads = True

    def __init__(self, upstream_uri: str, drop_every: int):
        super().__init__(("127.0.0.1", 0), ForwardingHandler)
        self.upstream = urllib.parse.urlsplit(upstream_uri)
        self.drop_every = drop_every
        self.log_batch_posts = 0  # retries included: they are POSTs to log-batch too
        self.dropped_replies = 0
        self.count_lock = threading.Lock()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def drops_reply(self, method: str, path: str) -> bool:
        if method != "POST" or urllib.parse.urlsplit(path).path != LOG_BATCH:
            return False
        with self.count_lock:
            self.log_batch_posts += 1
            drop = self.log_batch_posts % self.drop_every == 0
            self.dropped_replies += drop
        return drop


class ForwardingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's pooled connections carry many requests
    server: ReplyDroppingProxy

    def forward(self) -> None:
        # MLflow's client sends a Content-Length with every body, never a chunked one.
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP | {"host"}}
        upstream = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            reply = upstream.getresponse()
            reply_body = reply.read()
        finally:
            upstream.close()
        if self.server.drops_reply(self.command, self.path):
            self.close_connection = True  # nothing written: the client reads an end of stream
            return
        self.send_response(reply.status, reply.reason)
        for name, value in reply.getheaders():
            if name.lower() not in HOP_BY_HOP | {"content-length", "date", "server"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply_body)))
        self.end_headers()
        self.wfile.write(reply_body)

    do_GET = do_POST = do_PATCH = do_DELETE = forward

    def log_message(self, format, *args) -> None:  # one line per request would bury pytest's output
        pass


@pytest.fixture
def reply_dropping_proxy(tracking_server):
    """A proxy to the session's tracking server that loses the reply of every third log-batch POST."""
    proxy = ReplyDroppingProxy(tracking_server, drop_every=3)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join()


def points(batch: int, per_batch: int = 10) -> list[Metric]:
    """A batch of distinct points, each with its own step and an explicit timestamp."""
    steps = range(batch * per_batch, (batch + 1) * per_batch)
    return [Metric("train_loss", 1.0 / (step + 1), 1_700_000_000_000 + step, step) for step in steps]


@pytest.mark.integration
def test_a_batch_whose_reply_was_lost_is_sent_again_and_stored_once(tracking_server, reply_dropping_proxy):
    """A reply lost after the server committed the batch makes MLflow's client send the same batch
    again (urllib3 retries every method on a dropped connection in MLflow's session), and the server
    must keep one copy of each point. This test exists so that an MLflow that stops retrying a
    lost reply, or stops keeping one copy of an identical point, fails here rather than in a
    sweep with a hole or a repeated step in its curves."""
    through_proxy = MlflowClient(tracking_uri=reply_dropping_proxy.uri)
    experiment_id = through_proxy.create_experiment(f"lost-replies-{uuid.uuid4().hex[:8]}")
    run_id = through_proxy.create_run(experiment_id).info.run_id
    batches = 60

    for batch in range(batches):
        through_proxy.log_batch(run_id, metrics=points(batch))  # raises if the retry did not get through
    through_proxy.set_terminated(run_id)

    # Every third POST lost its reply (29 of 89), and each of those batches was sent once more.
    assert reply_dropping_proxy.dropped_replies == reply_dropping_proxy.log_batch_posts // 3 > 0
    assert reply_dropping_proxy.log_batch_posts == batches + reply_dropping_proxy.dropped_replies
    direct = MlflowClient(tracking_uri=tracking_server)
    assert direct.get_run(run_id).info.status == "FINISHED"
    history = direct.get_metric_history(run_id, "train_loss")
    assert sorted(point.step for point in history) == list(range(batches * 10))


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.integration)])
def tracking_uri(request, tmp_path: Path) -> str:
    """Each kind of store the harness writes to: a local SQLite file, and the PostgreSQL-backed server."""
    if request.param == "server":
        return request.getfixturevalue("tracking_server")
    return empty_store(tmp_path / "mlflow.db")


def test_the_store_keeps_one_copy_of_a_point_logged_twice(tracking_uri):
    """A resumed run may log again points that reached the store before it was killed, and a retried
    request may send a batch the store already committed: the harness relies on the store keeping one
    copy of an identical (key, step, timestamp, value). This test exists so that an MLflow that stops
    doing so is caught here, not in the curves of a resumed run."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(f"logged-twice-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment_id).info.run_id

    client.log_batch(run_id, metrics=points(0))
    client.log_batch(run_id, metrics=points(0))  # a retried request
    client.log_batch(run_id, metrics=points(0) + points(1))  # a resumed run: logged again, then new points

    history = client.get_metric_history(run_id, "train_loss")
    assert sorted((point.step, point.timestamp, point.value) for point in history) == sorted(
        (point.step, point.timestamp, point.value) for point in points(0) + points(1)
    )


def test_a_failure_behind_writes_the_store_refuses_is_recorded_with_its_kind(tmp_path, monkeypatch):
    """A full disk can refuse the writer's queued metrics for good while a small write still goes
    through: the failure's kind goes to the store beside the FAILED status, not behind that queue,
    or the next launch would train the net anew instead of resuming it from its checkpoint."""
    from mlflow.exceptions import MlflowException

    from harness import record
    from harness.job import Kind, record_failure
    from harness.tracking import mlflow_store

    monkeypatch.setattr(mlflow_store, "STOPPED_WAIT", 0.5)
    client, experiment_id = connect(empty_store(tmp_path / "mlflow.db"), "degradation")
    run = MlflowRun.start(client, experiment_id, "resnet-8", {}, checkpoint_dir=tmp_path / "checkpoints")
    run.checkpoint({"iteration": 10})

    def refused(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(client, "log_batch", refused)
    run.log_metrics({record.TRAIN_ERROR: 0.5}, step=20)
    run.flush()
    record_failure(run, OSError(28, "No space left on device"), Kind.ENVIRONMENT_FAILURE)

    stored = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags[record.FAILURE] == record.ENVIRONMENT
    assert stored.data.tags[record.ERROR].startswith("OSError: [Errno 28] No space left on device")
