"""Sweeps through Hydra's launcher plugins: jobs in other processes and on a Ray cluster, all
tracked under one parent run, with the threads of parallel jobs budgeted to the cores."""

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from harness import OPENMP_SPIN_COUNT, record
from harness.cores import cpus_per_job
from harness.launchers import placement_tags
from harness.precision import choose, decision_key

from helpers.commands import harness_command
from helpers.servers import free_ports
from helpers.sweeps import TINY, check_sweep, most_at_once

FOUR_JOBS = ["-m", "depth=8", "residual=true,false", "seed=0,1", *TINY]


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
def test_joblib_runs_jobs_at_once_into_sqlite(tmp_path, data_root, monkeypatch):
    """The default store, written by 2 processes at once: no lost run or metric point, one
    parent, and each job with one of the 2 cores it is told it has (torch alone would take 2
    threads). precision=auto is decided by the sweep, at the jobs' 1 thread, once: the sweep once
    decided it at 2 threads while its jobs measured again at 1 and trained runs the sweep could
    not find (CI, 2026-12-07: both NOT STARTED)."""
    # What precision=auto is at 1 thread, kept as a quiet launch keeps it: the sweep reads it and
    # measures nothing; deciding at 2 threads, it would measure and keep a second entry.
    cache, one_thread = tmp_path / "cache", decision_key("cpu", 1)
    cache.mkdir()
    (cache / "precision.json").write_text(json.dumps({one_thread: asdict(choose(one_thread, 100.0, 100.0))}))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    result = harness_command(
        "harness.run",
        "-m",
        "depth=8",
        "residual=true,false",
        *TINY,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "cores=2",
        f"dataset.root={data_root}",
        "tracking.figures=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep done: 2 runs: 2 trained, 0 reused from earlier sweeps, 0 not finished" in result.stdout
    children = check_sweep(MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"), 2)
    assert {run.data.tags["threads"] for run in children} == {"1"}
    # The sweep's workers wait as the harness set it before torch loaded (issue 14).
    assert {run.data.tags["openmp_wait"] for run in children} == {f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}"}
    assert most_at_once(children) >= 2
    assert list(json.loads((cache / "precision.json").read_text())) == [one_thread]
    assert "precision=auto is" not in result.stdout


@pytest.mark.integration
def test_submitit_local_runs_jobs_as_slurm_would(tmp_path, store, data_root):
    """submitit_local goes through the same submission path as submitit_slurm: pickled jobs in
    fresh processes, their logs in the sweep folder."""
    result = harness_command(
        "harness.run",
        "-m",
        "depth=8",
        "residual=true,false",
        *TINY,
        "hydra/launcher=submitit_local",
        f"tracking.uri={store}",
        f"dataset.root={data_root}",
        "tracking.figures=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_sweep(MlflowClient(store), 2)
    assert len(list((tmp_path / "multirun").glob("*/*/.submitit/*/*_log.out"))) == 2


def test_a_run_names_its_slurm_job_as_squeue_and_submitit_do(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert "slurm_job_id" not in placement_tags()
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert placement_tags()["slurm_job_id"] == "42"
    # An element of an array has a job id of its own, but squeue and submitit's logs name it by the array's.
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert placement_tags()["slurm_job_id"] == "40_2"


def test_slurm_config_asks_for_what_the_readme_says(tmp_path):
    result = harness_command(
        "harness.run", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path
    )
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
    start = [
        ray,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=4",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    started = subprocess.run(start, cwd=folder, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    yield f"127.0.0.1:{port}", folder
    subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow  # a Ray cluster's start and its workers' imports, 4 to 5 minutes on 2 cores
@pytest.mark.integration
@pytest.mark.cluster
def test_ray_runs_four_jobs_into_the_postgres_server(tmp_path, data_root, ray_cluster, tracking_server):
    """4 jobs on a Ray cluster, tracked by the MLflow server on PostgreSQL, with the artifacts
    served by it; relative paths and the sweep folder mean the launch directory's."""
    address, ray_folder = ray_cluster
    (tmp_path / "data").symlink_to(data_root)
    result = harness_command(
        "harness.run",
        *FOUR_JOBS,
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={address}",
        "dataset.root=data",
        f"tracking.uri={tracking_server}",
        "tracking.experiment=ray",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep done: 4 runs: 4 trained, 0 reused from earlier sweeps, 0 not finished" in result.stdout
    client = MlflowClient(tracking_server)
    children = check_sweep(client, 4, experiment="ray")
    assert most_at_once(children) >= 2
    assert {run.data.tags["threads"] for run in children} == {"1"}
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:") for run in children)
    assert "summary.json" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert len(list(tmp_path.glob("multirun/*/*/*/.hydra"))) == 4 and not list(ray_folder.glob("multirun"))
    assert list(tmp_path.glob("multirun/*/*/figures/report.md"))


@pytest.fixture
def two_node_ray_cluster(tmp_path_factory, monkeypatch):
    """Ray's own multi-node test cluster: a head and a second node on this machine, each its own
    raylet of one CPU, so that two jobs at once run on different nodes. Each node is started in
    a folder of its own (its workers start there), as nodes of a real cluster have their own."""
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is not installed (pip install ray)")
    gcs_port, agent_port, dashboard_port = free_ports(3)
    folders = [tmp_path_factory.mktemp("ray-head"), tmp_path_factory.mktemp("ray-node")]
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    cluster = cluster_utils.Cluster(shutdown_at_exit=False)
    try:
        head_ports = {
            "gcs_server_port": gcs_port,
            "dashboard_agent_listen_port": agent_port,
            "dashboard_port": dashboard_port,
        }
        for folder, ports in zip(folders, [head_ports, {}]):
            # On the machine's address (Ray's default), not loopback: a Ray client turns 127.0.0.1 into that address.
            with contextlib.chdir(folder):
                cluster.add_node(num_cpus=1, include_dashboard=False, **ports)
        cluster.wait_for_nodes()
        yield cluster.address, {node.node_id for node in cluster.list_all_nodes()}, folders
    finally:
        cluster.shutdown()


@pytest.mark.slow  # two raylets, 2 minutes
@pytest.mark.integration
@pytest.mark.cluster
def test_ray_runs_jobs_on_two_nodes_under_one_parent(tmp_path, data_root, two_node_ray_cluster, tracking_server):
    """The Ray recipe of docs/clusters.md on two nodes: the runs of both nodes under one parent, their
    artifacts on the tracking server, their checkpoints in ./checkpoints of the launch directory."""
    address, node_ids, node_folders = two_node_ray_cluster
    (tmp_path / "data").symlink_to(data_root)
    result = harness_command(
        "harness.run",
        "-m",
        "depth=8",
        "residual=true,false",
        "seed=0,1",
        *TINY,
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={address}",
        "dataset.root=data",
        "tracking=server",
        f"tracking.uri={tracking_server}",
        "tracking.experiment=ray-two-nodes",
        "tracking.figures=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_server)
    children = check_sweep(client, 4, experiment="ray-two-nodes")
    assert {run.data.tags["ray_node_id"] for run in children} == node_ids
    for run in children:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {"summary.json", "model.pt", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        checkpoint = tmp_path / "checkpoints" / run.info.run_id / "last.pt"
        assert run.data.tags[record.CHECKPOINT] == str(checkpoint) and checkpoint.parent.is_dir()
    for folder in node_folders:
        assert not list(folder.glob("multirun")) and not list(folder.glob("checkpoints"))
