"""Sweeps through Hydra's launcher plugins: jobs in other processes and on a Ray cluster, all
tracked under one parent run, with the threads of parallel jobs budgeted to the cores."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import TINY, free_ports, harness_command
from harness.launchers import cpus_per_job

# Every metric of a TINY run, and the steps it must have: curves every 5 iterations,
# evaluations (on the 500 held-out images: val_*, never test_*) and probes every 10, the final
# model's training error once at the end. No warm-up in the smoke schedule: no warmup_ended_at.
EXPECTED_STEPS = {
    "train_error": [5, 10, 15, 20], "train_loss": [5, 10, 15, 20], "lr": [5, 10, 15, 20],
    "val_error": [10, 20], "val_loss": [10, 20], "final_train_error": [20], "final_train_loss": [20],
    "response_std_mean": [10, 20], "output_grad_first_over_last": [10, 20],
}  # fmt: skip
EIGHT_JOBS = ["-m", "depth=20", "residual=true,false", "seed=0,1,2,3", *TINY]


def check_sweep(client: MlflowClient, jobs: int, experiment: str = "degradation") -> list:
    """One parent run with `jobs` FINISHED children, each with every metric step; returns them."""
    experiment = client.get_experiment_by_name(experiment)
    parents = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    )  # fmt: skip
    assert len(children) == jobs
    assert len(client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'job'")) == jobs
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get("harness.error")
        assert set(run.data.metrics) == set(EXPECTED_STEPS)
        for key, steps in EXPECTED_STEPS.items():
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps, (run.info.run_name, key)
    assert len({(r.data.tags["residual"], r.data.tags["seed"]) for r in children}) == jobs
    return children


def most_at_once(runs) -> int:
    """The largest number of runs that were training at the same moment."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize(
    ("launcher", "cores", "expected"),
    [
        ({}, 8, 8),  # basic launcher: one job at a time gets every core
        ({"n_jobs": 4}, 8, 2),  # joblib: 4 jobs share 8 cores
        ({"n_jobs": 4}, 2, 0),  # more jobs than cores: torch_threads raises this to 1
        ({"n_jobs": -1}, 8, 1),  # joblib's -1: one job per core
        ({"n_jobs": -3}, 8, 1),  # all cores but two: 6 jobs at once
        ({"n_jobs": -7}, 8, 4),  # 2 jobs at once
        ({"ray": {"init": {}, "remote": {}}}, 8, 1),  # Ray's default: one CPU per task
        ({"ray": {"init": {}, "remote": {"num_cpus": 3}}}, 8, 3),
        ({"cpus_per_task": None}, 8, 1),  # submitit / SLURM's default allocation
        ({"cpus_per_task": 4}, 8, 4),
    ],
)
def test_threads_per_job_follow_the_launcher(launcher, cores, expected):
    assert cpus_per_job(OmegaConf.create(launcher), cores) == expected


@pytest.mark.integration
def test_joblib_runs_eight_jobs_four_at_a_time_into_sqlite(tmp_path, data_root):
    """The default store, written by 4 processes at once: no lost run or metric point, one
    parent, and each job with a quarter of the 4 cores it is told it has (torch alone would
    take 2 threads here)."""
    result = harness_command(
        "harness.run", *EIGHT_JOBS, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "cores=4",
        f"dataset.root={data_root}", "tracking.figures=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep done: 8 runs: 8 trained, 0 reused from earlier sweeps, 0 not finished" in result.stdout
    children = check_sweep(MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"), 8)
    assert {run.data.tags["threads"] for run in children} == {"1"}
    assert most_at_once(children) >= 2


@pytest.mark.integration
def test_submitit_local_runs_jobs_as_slurm_would(tmp_path, store, data_root):
    """submitit_local goes through the same submission path as submitit_slurm: pickled jobs in
    fresh processes, their logs in the sweep folder."""
    result = harness_command(
        "harness.run", "-m", "depth=20", "residual=true,false", *TINY, "hydra/launcher=submitit_local",
        f"tracking.uri={store}", f"dataset.root={data_root}", "tracking.figures=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    check_sweep(MlflowClient(store), 2)
    assert len(list((tmp_path / "multirun").glob("*/*/.submitit/*/*_log.out"))) == 2


def test_slurm_config_asks_for_what_the_readme_says(tmp_path):
    result = harness_command("harness.run", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    launcher = OmegaConf.create(result.stdout.split("\n", 1)[1])
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.cpus_per_task, launcher.gpus_per_node, launcher.timeout_min) == (4, 1, 240)
    assert cpus_per_job(launcher, 64) == 4


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real one-node Ray cluster on loopback that declares 4 CPUs, so that 4 jobs run at once.
    It is started in a folder of its own: Ray's workers start there, not in the sweep's."""
    ray = Path(sys.executable).parent / "ray"
    folder = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    (port,) = free_ports(1)
    start = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    started = subprocess.run(start, cwd=folder, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    yield f"127.0.0.1:{port}", folder
    subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.integration
def test_ray_runs_eight_jobs_into_the_postgres_server(tmp_path, data_root, ray_cluster, tracking_server):
    """8 jobs on a Ray cluster, tracked by the MLflow server on PostgreSQL, with the artifacts
    served by it; relative paths and the sweep folder mean the launch directory's."""
    address, ray_folder = ray_cluster
    (tmp_path / "data").symlink_to(data_root)
    result = harness_command(
        "harness.run", *EIGHT_JOBS, "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}",
        "dataset.root=data", f"tracking.uri={tracking_server}", "tracking.experiment=ray", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep done: 8 runs: 8 trained, 0 reused from earlier sweeps, 0 not finished" in result.stdout
    client = MlflowClient(tracking_server)
    children = check_sweep(client, 8, experiment="ray")
    assert most_at_once(children) >= 2
    assert {run.data.tags["threads"] for run in children} == {"1"}
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:") for run in children)
    assert "summary.json" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert len(list(tmp_path.glob("multirun/*/*/*/.hydra"))) == 8 and not list(ray_folder.glob("multirun"))
    assert list(tmp_path.glob("multirun/*/*/figures/report.md"))
