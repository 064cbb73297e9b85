"""Tiny sweeps launched as a user launches them, and what their store must then hold."""

import subprocess
from pathlib import Path

from harness import record

from helpers.commands import harness_command

# A tiny budget: 20 iterations of 32 images, curves every 5 and evaluations every 10
# iterations, evaluated on 500 held-out training images instead of the 10k test images.
TINY = ["schedule=smoke", "dataset.validation_size=500"]

# Every metric of a TINY run, and the steps it must have: curves every 5 iterations,
# evaluations (on the 500 held-out images: val_*, never test_*) and probes every 10, the final
# model's training error once at the end. No warm-up in the smoke schedule: no warmup_ended_at.
EXPECTED_STEPS = {
    "train_error": [5, 10, 15, 20], "train_loss": [5, 10, 15, 20], "lr": [5, 10, 15, 20],
    "val_error": [10, 20], "val_loss": [10, 20], "final_train_error": [20], "final_train_loss": [20],
    "response_std_mean": [10, 20], "output_grad_first_over_last": [10, 20], "seconds_per_iteration": [20],
    "peak_rss_mb": [20],
}  # fmt: skip


# The threads and precision of a sweep that a later launch must find again: left to the load, a
# launch beside the suite's other tests takes 1 thread and the next, on a quiet moment, 2; and
# precision=auto, measured busy, is measured again by the first quiet launch.
STEADY = ["threads=1", "precision=fp32"]


def sweep(tmp_path: Path, store: str, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """A tiny sweep (TINY, STEADY) of these overrides into `store`, as a user launches it; it must
    succeed."""
    result = harness_command(
        "harness.run", "-m", *overrides, *TINY, *STEADY, f"tracking.uri={store}", f"dataset.root={data_root}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def check_sweep(client, jobs: int, experiment: str = "degradation") -> list:
    """One parent run with `jobs` FINISHED children, each with every metric step; returns them."""
    experiment = client.get_experiment_by_name(experiment)
    parents = client.search_runs([experiment.experiment_id], record.SWEEPS_FILTER)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], record.children_filter(parents[0].info.run_id))
    assert len(children) == jobs
    assert len(client.search_runs([experiment.experiment_id], record.JOBS_FILTER)) == jobs
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get(record.ERROR)
        assert set(run.data.metrics) == set(EXPECTED_STEPS)
        for key, steps in EXPECTED_STEPS.items():
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps, (run.info.run_name, key)
    assert len({(r.data.tags["residual"], r.data.tags["seed"]) for r in children}) == jobs
    return children


def job_runs(client, experiment: str = "degradation") -> list:
    """The training runs of an experiment (none where it does not exist yet)."""
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], record.JOBS_FILTER) if found else []


def most_at_once(runs) -> int:
    """The largest number of runs that were training at the same moment."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak
