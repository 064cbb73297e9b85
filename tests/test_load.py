"""Load: one `harness.server` under many training runs writing at once (issue 23, point 4).

Each writer process is a training run as far as the store can tell, without the training: an
`MlflowRun` on a run of its own, with a lease whose heartbeat beats every 3 s, logging what a
default run logs at ten times a default run's pace and handing it to its store writer at each
(simulated) checkpoint. Every request it makes is timed around the real HTTP call.

A default run (conf/schedule/cpu_short.yaml, harness/train.py) logs train_loss, train_error and
lr every 20 iterations, val/test loss and error every 100, two probe metrics every 250: 17.8
points per 100 iterations. With a checkpoint folder (always, in `harness.run`) its metrics go to
the store at each checkpoint, every 100 iterations: one log_batch of about 18 points. ResNet-20
on 2 cores runs about 8 iterations/s, so a default run sends 1.42 points/s in 0.08 log_batch/s,
and its heartbeat 2 requests (get_run, set_tag) every 30 s. Here: 80 iterations/s, so 14.2
points/s in 0.8 log_batch/s, and 2 heartbeat requests every 3 s.

    .venv/bin/python -m pytest tests/test_load.py -m slow -s -n 0

prints one summary line. HARNESS_LOAD_WRITERS (32), HARNESS_LOAD_SECONDS (120) and
HARNESS_LOAD_SERVER_WORKERS (harness.server's default) change the load and the server.
"""

import inspect
import itertools
import json
import multiprocessing
import os
import random
import threading
import time
import traceback
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import record, server
from harness.lease import Lease
from harness.tracking.mlflow_store import MlflowRun, connect

from helpers.servers import free_ports, server_state_folder, skip_without_postgres

WRITERS = int(os.environ.get("HARNESS_LOAD_WRITERS", "32"))
SECONDS = float(os.environ.get("HARNESS_LOAD_SECONDS", "120"))
DEFAULT_SERVER_WORKERS = inspect.signature(server.start).parameters["workers"].default
SERVER_WORKERS = int(os.environ.get("HARNESS_LOAD_SERVER_WORKERS", DEFAULT_SERVER_WORKERS))

ITERATIONS_PER_SECOND = 10 * 8  # ten times a default ResNet-20 run on 2 cores (docs/performance.md)
LOG_EVERY, EVAL_EVERY, ANALYSIS_EVERY, CHECKPOINT_EVERY = 20, 100, 250, 100  # conf/schedule/cpu_short.yaml
HEARTBEAT_SECONDS = 3.0  # a tenth of the default 30 s, like the rest of the load
SETUP_TIMEOUT = 180  # seconds for every writer to create its run and take its lease, on a busy machine
DRAIN_LIMIT = 15  # seconds a writer may take to send what is left at the end: more means it fell behind
TESTS = Path(__file__).resolve().parent


def default_run_metrics(iteration: int) -> dict[str, float]:
    """What harness.train logs at this iteration of a default run (values do not matter here)."""
    metrics = {}
    if iteration % LOG_EVERY == 0:
        metrics |= {record.TRAIN_LOSS: random.random(), record.TRAIN_ERROR: random.random(), record.LR: 0.1}
    if iteration % EVAL_EVERY == 0:
        metrics |= {record.eval_metric("test", "loss"): random.random(), record.eval_metric("test"): random.random()}
    if iteration % ANALYSIS_EVERY == 0:
        metrics |= {record.RESPONSE_STD_MEAN: random.random(), record.SIGNAL_RATIO: random.random()}
    return metrics


class TimedClient:
    """An MlflowClient that records each call: [method, started (monotonic), seconds, points, error]."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self.calls: list[list] = []  # the loop, the store writer and the lease call at once; append is atomic

    def __getattr__(self, name: str):
        method = getattr(self.client, name)
        if not callable(method):
            return method

        def timed(*args, **kwargs):
            started, error = time.monotonic(), None
            try:
                return method(*args, **kwargs)
            except Exception as caught:
                error = f"{type(caught).__name__}: {str(caught)[:200]}"
                raise
            finally:
                points = len(kwargs.get("metrics") or ())
                self.calls.append([name, started, time.monotonic() - started, points, error])

        return timed


def write_like_a_training_run(index: int, uri: str, experiment_id: str, barrier, results: Path) -> None:
    """One writer process: its outcome, or the traceback that ended it, in results/writer-INDEX.json."""
    outcome = {"index": index}
    try:
        outcome |= log_for_a_while(index, uri, experiment_id, barrier)
    except BaseException:
        outcome["error"] = traceback.format_exc()
        barrier.abort()  # the parent and the other writers stop waiting for this one
    (results / f"writer-{index}.json").write_text(json.dumps(outcome))


def log_for_a_while(index: int, uri: str, experiment_id: str, barrier) -> dict:
    client = TimedClient(MlflowClient(tracking_uri=uri))
    run = MlflowRun.start(client, experiment_id, f"writer-{index}", tags={})
    run.lease = Lease.take(client, run.run_id, 1).start()
    # harness.lease reads HARNESS_HEARTBEAT_SECONDS once, at import: in the forkserver that made us.
    assert run.lease.heartbeat.interval == HEARTBEAT_SECONDS, run.lease.heartbeat
    barrier.wait(timeout=SETUP_TIMEOUT)

    start, cpu_start = time.monotonic(), time.process_time()
    logged = most_waiting = 0
    most_late = 0.0
    for iteration in itertools.count(1):
        metrics = default_run_metrics(iteration)
        if not metrics:
            continue
        due = start + iteration / ITERATIONS_PER_SECOND
        if due > start + SECONDS:
            break
        # Late: this process did not get a core in time (the load is 32 processes on 2 cores).
        most_late = max(most_late, time.monotonic() - due)
        time.sleep(max(0.0, due - time.monotonic()))
        run.log_metrics(metrics, step=iteration)
        logged += len(metrics)
        if iteration % CHECKPOINT_EVERY == 0:  # where a default run's checkpoint flushes
            most_waiting = max(most_waiting, run.writer.waiting_points)
            run.flush()
    cpu_seconds = time.process_time() - cpu_start

    drain_start = time.monotonic()
    run.sync()
    drain_seconds = time.monotonic() - drain_start
    run.finish("FINISHED")
    return {
        "run_id": run.run_id,
        "start": start,
        "logged": logged,
        "most_waiting": most_waiting,
        "most_late": most_late,
        "drain_seconds": drain_seconds,
        "cpu_seconds": cpu_seconds,
        "generation": run.lease.heartbeat.generation,  # above 1: the lease lapsed and was taken again
        "calls": client.calls,
    }


def cpu_seconds(processes) -> float:
    """The CPU time (user + system) that the live processes in `processes` have used."""
    ticks = 0
    for fields in processes:
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: /proc/PID/stat fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")


def server_processes(state: Path) -> tuple[list, list]:
    """The /proc stat fields of the MLflow server's processes (its process group: uvicorn and its
    workers) and of PostgreSQL's (the postmaster and its children: one backend per connection)."""
    paths = server.Paths(state)
    mlflow_group = int(paths.pid.read_text())
    postmaster = int(paths.pg_pid.read_text().split("\n", 1)[0])
    mlflow, postgres = [], []
    for folder in Path("/proc").glob("[0-9]*"):
        fields = server.process_fields(folder.name)
        if not fields:
            continue
        if int(fields[2]) == mlflow_group:
            mlflow.append(fields)
        elif int(folder.name) == postmaster or int(fields[1]) == postmaster:
            postgres.append(fields)
    return mlflow, postgres


def stored_points(state: Path, run_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per run: the rows of PostgreSQL's metrics table, and the distinct (key, step) among them."""
    paths = server.Paths(state)
    with server.connect_postgres(paths, server.pg_port(paths)) as db, db.cursor() as cursor:
        cursor.execute(
            "SELECT run_uuid, count(*), count(DISTINCT (key, step)) FROM metrics "
            "WHERE run_uuid = ANY(%s) GROUP BY run_uuid",
            (run_ids,),
        )
        return {run_id: (rows, distinct) for run_id, rows, distinct in cursor.fetchall()}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


@pytest.mark.integration
@pytest.mark.slow  # about 3.5 minutes: 32 writers for 2 minutes, and their start
def test_one_server_takes_many_runs_logging_at_ten_times_the_default_rate(tmp_path, monkeypatch):
    skip_without_postgres()
    monkeypatch.setenv("HARNESS_HEARTBEAT_SECONDS", str(HEARTBEAT_SECONDS))
    # The writers fork from one process that has imported this module (and so MLflow, the harness and
    # torch): 32 interpreters importing them each took over 3 minutes of both cores. Python 3.11's
    # forkserver ignores the sys.path it is given, and without tests/ on it the preload fails silently.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    port, pg_port = free_ports(2)
    writers = []
    with server_state_folder() as state:
        try:
            uri = server.start(state, port=port, pg_port=pg_port, workers=SERVER_WORKERS)
            client, experiment_id = connect(uri, "load")
            barrier = context.Barrier(WRITERS + 1)  # the parent too: it measures the server over the same window
            for index in range(WRITERS):
                arguments = (index, uri, experiment_id, barrier, tmp_path)
                writers.append(context.Process(target=write_like_a_training_run, args=arguments))
                writers[-1].start()
            mlflow_before = mlflow_after = postgres_before = postgres_after = 0.0
            try:
                barrier.wait(timeout=SETUP_TIMEOUT)
                mlflow_before, postgres_before = map(cpu_seconds, server_processes(state))
                time.sleep(SECONDS)
                mlflow_after, postgres_after = map(cpu_seconds, server_processes(state))
            except threading.BrokenBarrierError:
                pass  # a writer failed (its file says why), or they were not all ready in time
            for writer in writers:
                writer.join(timeout=SETUP_TIMEOUT)
            outcomes = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("writer-*.json"))]
            done = [outcome for outcome in outcomes if "error" not in outcome]
            run_ids = [outcome["run_id"] for outcome in done]
            stored = stored_points(state, run_ids) if run_ids else {}
            statuses = {run_id: client.get_run(run_id).info.status for run_id in run_ids}
        finally:
            for writer in writers:
                if writer.is_alive():
                    writer.kill()
            server.stop(state)

    def in_window(outcome, call) -> bool:
        return outcome["start"] <= call[1] < outcome["start"] + SECONDS

    calls = [call for outcome in done for call in outcome["calls"] if in_window(outcome, call)]
    batches = [call for call in calls if call[0] == "log_batch" and call[4] is None]
    heartbeats = [call for call in calls if call[0] == "set_tag" and call[4] is None]
    failed = [call for outcome in done for call in outcome["calls"] if call[4] is not None]
    milliseconds = [1000 * call[2] for call in batches]
    beat_milliseconds = [1000 * call[2] for call in heartbeats]
    writer_cpu = sum(outcome["cpu_seconds"] for outcome in done)
    points_per_second = sum(map(len, map(default_run_metrics, range(1, 1001)))) / 1000 * ITERATIONS_PER_SECOND
    summary = (
        f"load: {len(done)}/{WRITERS} writers at 10x a default run ({points_per_second:.1f} points/s, "
        f"{ITERATIONS_PER_SECOND / CHECKPOINT_EVERY:.1f} log_batch/s each, a heartbeat every "
        f"{HEARTBEAT_SECONDS:.0f} s) for {SECONDS:.0f} s against harness.server --workers "
        f"{SERVER_WORKERS} on {os.cpu_count()} cores: {len(calls) / SECONDS:.1f} requests/s "
        f"({len(batches) / SECONDS:.1f} log_batch/s), {sum(call[3] for call in batches) / SECONDS:.0f} points/s; "
        f"log_batch p50 {percentile(milliseconds, 0.5):.0f} ms, p99 {percentile(milliseconds, 0.99):.0f} ms, "
        f"max {max(milliseconds, default=float('nan')):.0f} ms; heartbeat set_tag p50 "
        f"{percentile(beat_milliseconds, 0.5):.0f} ms, p99 {percentile(beat_milliseconds, 0.99):.0f} ms; "
        f"CPU cores used: MLflow server {(mlflow_after - mlflow_before) / SECONDS:.2f}, PostgreSQL "
        f"{(postgres_after - postgres_before) / SECONDS:.2f}, writers {writer_cpu / SECONDS:.2f}; "
        f"most points waiting in a writer {max((o['most_waiting'] for o in done), default=0)}, longest final "
        f"drain {max((o['drain_seconds'] for o in done), default=0):.2f} s, latest a writer fell behind its "
        f"schedule {max((o['most_late'] for o in done), default=0):.2f} s; {len(failed)} failed requests, "
        f"{sum(o['generation'] > 1 for o in done)} leases taken again"
    )
    print(f"\n{summary}")

    errors = [outcome["error"] for outcome in outcomes if "error" in outcome]
    cause = next((error for error in errors if "BrokenBarrierError" not in error), None)
    assert not errors, cause or f"the writers were not all ready to log within {SETUP_TIMEOUT} s"
    assert len(outcomes) == WRITERS and all(writer.exitcode == 0 for writer in writers), summary
    assert set(statuses.values()) == {"FINISHED"}, statuses
    for outcome in done:  # every point once: as many rows as points logged, no (key, step) twice
        assert stored[outcome["run_id"]] == (outcome["logged"], outcome["logged"]), outcome["index"]
    slow_to_drain = {o["index"]: round(o["drain_seconds"], 1) for o in done if o["drain_seconds"] > DRAIN_LIMIT}
    assert not slow_to_drain, f"writers that took over {DRAIN_LIMIT} s to send what was left: {slow_to_drain}"
