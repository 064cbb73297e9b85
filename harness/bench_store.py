"""`python -m harness.bench --plan-store N [N ...]`: what a plan's questions to the store cost as the
store grows. For each N, a fresh SQLite store holds N finished training runs of the harness's own
shape (tags, params, curves) from another machine and one run of each of the card's nets from this
one; the planner plans the card's sweep there (its store queries: the runs a net would reuse or
resume, and this machine's measured rates), timed as the median of 3, without a calibration.
"""

import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import torch

from harness import edge, identity, plan, record
from harness.config import compose_config
from harness.device import device_name
from harness.tracking.mlflow_store import MlflowRun, connect

CARD_NETS = [(depth, residual) for depth in (20, 56) for residual in (True, False)]


def finished_run(client, experiment_id: str, overrides: list[str], machine_name: str) -> str:
    """A finished run as a job logs it: its tags and params through the record's writers, its curve."""
    cfg = compose_config(*overrides, "precision=fp32", "threads=2", "device=cpu")
    machine = record.Machine(threads=2, device_name=machine_name)
    job = identity.resolve(cfg, edge.decide(cfg))
    run = MlflowRun.start(client, experiment_id, job.name, record.job_tags(job, machine, "unknown"), None)
    run.log_params(record.job_params(job, machine))
    for step in range(20, cfg.schedule.iterations + 1, 20):
        run.log_metrics({record.TRAIN_ERROR: 0.1, record.TRAIN_LOSS: 0.3}, step)
    run.log_metrics({record.SECONDS_PER_ITERATION: 0.3}, cfg.schedule.iterations)
    run.sync()
    client.set_terminated(run.run_id, "FINISHED")
    return run.run_id


def clone(database: Path, run_id: str, copies: int) -> None:
    """`copies` more runs like `run_id`, written straight into SQLite (MLflow takes minutes for 10,000)."""
    new_ids = [uuid.uuid4().hex for _ in range(copies)]
    with sqlite3.connect(database) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            if "run_uuid" not in columns:
                continue
            rows = db.execute(f"SELECT * FROM {table} WHERE run_uuid = ?", (run_id,)).fetchall()
            at = columns.index("run_uuid")
            marks = ", ".join("?" * len(columns))
            for new in new_ids:
                db.executemany(f"INSERT INTO {table} VALUES ({marks})", [(*r[:at], new, *r[at + 1 :]) for r in rows])


def plan_seconds(runs: int) -> float:
    configs = [compose_config(f"depth={d}", f"residual={r}", "precision=fp32", "threads=2") for d, r in CARD_NETS]
    jobs = [identity.resolve(cfg, edge.decide(cfg)) for cfg in configs]
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        client, experiment_id = connect(f"sqlite:///{folder}/mlflow.db", "degradation")
        if runs:
            template = finished_run(client, experiment_id, ["depth=32", "seed=9"], "Another CPU (AVX512)")
            clone(Path(folder) / "mlflow.db", template, runs - 1)
        for depth, residual in CARD_NETS:  # this machine's measured rates, of other seeds
            finished_run(
                client, experiment_id, [f"depth={depth}", f"residual={residual}", "seed=7"], device_name(device)
            )
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            made = plan.make_plan(jobs, None, client, experiment_id, device, plan.no_calibration)
            seconds.append(time.perf_counter() - start)
        assert all(net.source.startswith("measured") for net in made.nets), [net.source for net in made.nets]
    return statistics.median(seconds)


def main(counts: list[int]) -> None:
    print("finished runs of another machine  plan of the card's sweep (s, median of 3)")
    for runs in counts:
        print(f"{runs:32d}  {plan_seconds(runs):.2f}", flush=True)
