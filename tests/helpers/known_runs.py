"""Stores whose runs are known: each run logged through the record's writers as harness.job logs it,
with the errors and probe tables a test chooses, for the tests of the report chain."""

from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness import record
from harness.config import compose_config
from harness.tracking.mlflow_store import MlflowRun

from helpers.config import resolved
from helpers.stores import empty_store

LAYERS = ["stem.conv", "s1.b01.conv1", "s2.b01.conv1", "s3.b01.conv1", "fc"]


def experiment_store(folder: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(empty_store(folder / "mlflow.db"))
    return client, client.create_experiment("degradation", artifact_location=(folder / "artifacts").as_uri())


def probe_rows(residual: bool, seed: int, step: int, signal_ratio: float) -> pd.DataFrame:
    """A probe table of the four kinds: 3x3 responses smaller in residual nets, a backward
    signal whose first unit over last unit is `signal_ratio`, and conv grad / weight norms."""
    scale = (0.5 if residual else 1.0) + 0.01 * seed + step / 100_000
    rows = [("response", i, name, scale * (4 - i)) for i, name in enumerate(LAYERS[:4], 1)]
    signal = {1: signal_ratio, 2: signal_ratio**0.5, 3: 1.0}  # unit index from the input
    rows += [
        ("output_grad", i, f"s{i}.b01", 0.01 * signal[i]) for i in (3, 2, 1)
    ]  # as probe lists them: last unit first
    rows += [("grad_norm", i, name, 0.1 * i) for i, name in enumerate(LAYERS, 1)]
    rows += [("weight_norm", i, name, 2.0 * i) for i, name in enumerate(LAYERS, 1)]
    return pd.DataFrame(rows, columns=["kind", "index", "layer", "value"])


def log_run(
    client,
    experiment_id,
    depth,
    residual,
    seed=0,
    final_train=10.0,
    test=12.0,
    *,
    parent=None,
    iterations=1000,
    split="test",
    signal_ratio=0.5,
    status="FINISHED",
    dataset="fashion_mnist",
    net=(),
    diverged_at=None,
) -> str:
    """One training run as harness.job logs it, through the record's writers; errors given in %.
    `net`: more overrides of the net (its shortcut, unit, ...). A run that diverged at an
    iteration is logged up to it and FAILED there, without final metrics or probes."""
    overrides = [
        f"depth={depth}",
        f"residual={residual}",
        f"seed={seed}",
        f"schedule.iterations={iterations}",
        f"dataset={dataset}",
        *net,
    ] + (["dataset.validation_size=5000"] if split == "validation" else [])
    cfg = compose_config(*overrides)
    machine = record.Machine()
    job = resolved(cfg)
    run = MlflowRun.start(client, experiment_id, job.name, record.job_tags(job, machine, "unknown"), parent)
    run.log_params(record.job_params(job, machine))
    steps = [iterations // 4 * k for k in (1, 2, 3, 4)]
    fall = [3.0, 2.0, 1.0, 0.0]  # points above the final value
    for step, above in zip(steps, fall):
        if diverged_at is not None and step >= diverged_at:
            run.set_tags({record.FAILURE: record.DIVERGED, record.DIVERGED_AT: diverged_at})
            run.sync()  # the tags are written beside the test, as a job's are: here before it goes on
            client.set_terminated(run.run_id, "FAILED")
            return run.run_id
        run.log_metrics(
            {record.TRAIN_ERROR: (final_train + 1 + above) / 100, record.eval_metric(split): (test + above) / 100}, step
        )
    responses = probe_rows(residual, seed, iterations, signal_ratio).query("kind == 'response'")["value"]
    run.log_metrics(
        {record.FINAL_TRAIN_ERROR: final_train / 100, record.RESPONSE_STD_MEAN: responses.mean()}, iterations
    )
    run.sync()
    for step in (iterations // 2, iterations):
        run.log_table(probe_rows(residual, seed, step, signal_ratio), record.probe_table(step))
    client.set_terminated(run.run_id, status)
    return run.run_id


def sweep_run(client, experiment_id, name: str = "sweep") -> str:
    """A sweep's parent run, through the record's writer."""
    tags = record.sweep_tags(study=name, sweep_dir="/nowhere", jobs=0, overrides="", commit="unknown")
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def table_row(report: str, model: str) -> list[str]:
    (row,) = [line for line in report.splitlines() if line.startswith(f"| {model} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]
