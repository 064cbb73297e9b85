"""The SLURM recipe on a real SLURM cluster: slurmctld and slurmd on this machine,
jobs submitted by `hydra/launcher=slurm` through sbatch, tracked by the shared tracking server.

The cluster has no accounting database (slurmdbd), so `sacct` fails; submitit then says
"Bypassing sacct error" and learns that a job ended from its result file alone, which every
job below writes."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import record

from conftest import TINY, check_sweep, free_ports, harness_command

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

SLURM_PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # the daemons live in sbin
PARTITION = "harness"
START_TIMEOUT = 60  # seconds for the node to register as idle


def slurm_config(folder: Path, node: str, ctld_port: int, slurmd_port: int) -> str:
    """One node with this machine's cores, everything in `folder`: no cgroups, accounting or MPI,
    which a container lacks, and a short KillWait so that a job over its time limit ends soon."""
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    return f"""\
ClusterName=harness
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=2
OverTimeLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def slurm_cluster():
    """A one-node SLURM cluster with its own munged, on free ports; yields its SLURM_CONF."""
    missing = [name for name in SLURM_PROGRAMS if shutil.which(name, path=SEARCH_PATH) is None]
    if missing:
        pytest.skip(f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge")
    program = {name: shutil.which(name, path=SEARCH_PATH) for name in SLURM_PROGRAMS}
    # Not under pytest's tmp_path: munged wants its socket's folder open to every user.
    folder = Path(tempfile.mkdtemp(prefix="harness-slurm-"))
    folder.chmod(0o755)
    for part in ("munge", "state", "spool"):
        (folder / part).mkdir(mode=0o755)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_config(folder, node, *free_ports(2)))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run([program["mungekey"], "--create", f"--keyfile={folder}/munge/munge.key"], check=True)
    daemons = []

    def start(name: str, *args: str) -> None:
        log = open(folder / f"{name}.out", "w")
        daemons.append(subprocess.Popen([program[name], *args], env=env, stdout=log, stderr=subprocess.STDOUT))

    try:
        start(
            "munged",
            "--foreground",
            f"--socket={folder}/munge/munge.socket",
            f"--key-file={folder}/munge/munge.key",
            f"--pid-file={folder}/munge/munged.pid",
            f"--log-file={folder}/munge/munged.log",
            f"--seed-file={folder}/munge/munged.seed",
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not (folder / "munge" / "munge.socket").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        start("slurmctld", "-D")
        start("slurmd", "-D", "-N", node)
        state = ""
        while time.monotonic() < deadline:
            sinfo = subprocess.run([program["sinfo"], "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True)
            state = sinfo.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(folder.glob("*.out")))
        assert state == "idle", f"the SLURM node is {state or 'not known'} after {START_TIMEOUT} s\n{logs}"
        yield str(conf)
    finally:
        subprocess.run([program["scontrol"], "shutdown"], env=env, capture_output=True, timeout=30)
        for daemon in reversed(daemons):
            stop(daemon)
        shutil.rmtree(folder, ignore_errors=True)


def slurm_sweep(*overrides: str, data_root: Path, tracking_uri: str, experiment: str, cwd: Path):
    """The SLURM command, for a CPU-only partition of this machine."""
    return harness_command(
        "harness.run",
        "-m",
        *overrides,
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={PARTITION}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.mem_gb=1",
        "tracking=server",
        f"tracking.uri={tracking_uri}",
        f"tracking.experiment={experiment}",
        f"dataset.root={data_root}",
        "tracking.figures=false",
        cwd=cwd,
    )


def job_logs(folder: Path, job_id: str) -> list[Path]:
    """The submitit logs of one SLURM job, where docs/clusters.md says they are."""
    return list(folder.glob(f"multirun/*/*/.submitit/{job_id}/{job_id}_0_log.out"))


def test_slurm_runs_a_sweep_through_sbatch(slurm_cluster, tracking_server, data_root, tmp_path, monkeypatch):
    """4 jobs of 1 CPU each through sbatch on a 2-core node: one parent run, every metric step
    once, torch threads as the CPUs SLURM gave, and each run names its SLURM job and its logs."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    result = slurm_sweep(
        "depth=8",
        "residual=true,false",
        "seed=0,1",
        *TINY,
        data_root=data_root,
        tracking_uri=tracking_server,
        experiment="slurm",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Sweep done: 4 runs: 4 trained, 0 reused from earlier sweeps, 0 not finished" in result.stdout
    children = check_sweep(MlflowClient(tracking_server), 4, experiment="slurm")
    assert {run.data.tags["threads"] for run in children} == {"1"}
    job_ids = {run.data.tags.get("slurm_job_id") for run in children}
    assert len(job_ids) == 4 and None not in job_ids
    for job_id in job_ids:
        assert len(job_logs(tmp_path, job_id)) == 1, job_id


def test_a_run_that_slurm_stops_at_its_time_limit_resumes_when_launched_again(
    slurm_cluster, tracking_server, data_root, tmp_path, monkeypatch
):
    """A run longer than its 1-minute limit: SLURM signals it before the limit (`signal_delay_s`;
    slurmctld looks every 30 s, so the signal comes 30 to 60 s after the start), the run is
    marked KILLED with its checkpoint kept, and the command launched again with a longer limit
    (launcher keys are not part of a study) finishes it in the same MLflow run and parent, every
    metric step once."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    # About 100 s of training on one core of a 2-core VM: the signal comes at most 60 s after the
    # job started, so a machine almost twice as fast still trains when it comes.
    iterations = 2500
    command = [
        "depth=8",
        "residual=true",
        *TINY,
        f"schedule.iterations={iterations}",
        "schedule.checkpoint_every=100",  # few store calls for the signal to land in (test_job: one that does)
        "schedule.eval_every=500",
        "analysis=false",
        "hydra.launcher.signal_delay_s=1",
    ]
    first = slurm_sweep(
        *command,
        "hydra.launcher.timeout_min=1",
        data_root=data_root,
        tracking_uri=tracking_server,
        experiment="slurm-timeout",
        cwd=tmp_path,
    )
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "1 run(s) did not finish" in first.stderr
    client = MlflowClient(tracking_server)
    experiment_id = client.get_experiment_by_name("slurm-timeout").experiment_id
    [stopped] = client.search_runs([experiment_id], record.JOBS_FILTER)
    assert stopped.info.status == "KILLED"
    assert "timed-out" in stopped.data.tags[record.ERROR]  # submitit's word for SLURM's signal
    checkpoint = Path(stopped.data.tags[record.CHECKPOINT])
    assert checkpoint.parent == tmp_path / "checkpoints" / stopped.info.run_id and checkpoint.exists()
    [log] = job_logs(tmp_path, stopped.data.tags["slurm_job_id"])
    assert "Caught signal SIGUSR2" in log.read_text()

    again = slurm_sweep(
        *command,
        "hydra.launcher.timeout_min=5",
        data_root=data_root,
        tracking_uri=tracking_server,
        experiment="slurm-timeout",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Sweep done: 1 runs: 1 trained, 0 reused from earlier sweeps, 0 not finished" in again.stdout
    [finished] = client.search_runs([experiment_id], record.JOBS_FILTER)
    assert finished.info.run_id == stopped.info.run_id and finished.info.status == "FINISHED"
    resumed = [path for path in tmp_path.glob("multirun/*/*/.submitit/*/*_log.out") if path != log]
    assert (
        len(resumed) == 1
        and f"resume resnet-8: MLflow run {stopped.info.run_id} from its last checkpoint" in resumed[0].read_text()
    )
    assert job_logs(tmp_path, finished.data.tags["slurm_job_id"]) == resumed  # the tag names the job that finished it
    steps = [m.step for m in client.get_metric_history(finished.info.run_id, "train_error")]
    assert steps == list(range(5, iterations + 1, 5))
    [parent] = client.search_runs([experiment_id], record.SWEEPS_FILTER)
    assert parent.info.status == "FINISHED" and finished.data.tags[record.PARENT] == parent.info.run_id
