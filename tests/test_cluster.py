"""The SLURM recipe on a real SLURM cluster: slurmctld and slurmd on this machine,
jobs submitted by `hydra/launcher=slurm` through sbatch, tracked by the shared tracking server.

The cluster has no accounting database (slurmdbd), so `sacct` fails; submitit then says
"Bypassing sacct error" and learns that a job ended from its result file alone, which a job
killed outright never writes (the sweep then writes it: harness.launchers.VanishedJobs).

The tests marked `integration` and `cluster` start the cluster; the others are unit tests of
what the harness makes of SLURM's environment."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn
from mlflow.tracking import MlflowClient
from submitit.core.utils import DelayedSubmission
from submitit.slurm.slurm import SlurmJob

from harness import lease, record
from harness.launchers import SubmititJobs
from harness.lease import Heartbeat, earlier_incarnation, heartbeat_of, slurm_incarnation

from helpers.commands import harness_command, wait_for
from helpers.servers import free_ports
from helpers.sweeps import TINY, check_sweep

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
        munged = daemons[0]

        def logs() -> str:
            return "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(folder.glob("*.out")))

        def node_state() -> str:
            sinfo = subprocess.run([program["sinfo"], "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True)
            return sinfo.stdout.strip()

        socket_file = folder / "munge" / "munge.socket"
        wait_for(socket_file.exists, START_TIMEOUT, "munge socket", job=munged, interval=0.2, details=logs)
        start("slurmctld", "-D")
        start("slurmd", "-D", "-N", node)
        wait_for(
            lambda: node_state() == "idle",
            START_TIMEOUT,
            "idle SLURM node",
            interval=0.5,
            details=lambda: f"the SLURM node is {node_state() or 'not known'}\n{logs()}",
        )
        yield str(conf)
    finally:
        subprocess.run([program["scontrol"], "shutdown"], env=env, capture_output=True, timeout=30)
        for daemon in reversed(daemons):
            stop(daemon)
        shutil.rmtree(folder, ignore_errors=True)


def slurm_overrides(*overrides: str, data_root: Path, tracking_uri: str, experiment: str) -> list[str]:
    """The SLURM command's overrides, for a CPU-only partition of this machine."""
    return [
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
    ]


def slurm_sweep(*overrides: str, data_root: Path, tracking_uri: str, experiment: str, cwd: Path):
    """The SLURM command, run to its end."""
    args = slurm_overrides(*overrides, data_root=data_root, tracking_uri=tracking_uri, experiment=experiment)
    return harness_command("harness.run", *args, cwd=cwd)


def start_slurm_sweep(*overrides: str, data_root: Path, tracking_uri: str, experiment: str, cwd: Path):
    """The SLURM command in the background, its output in cwd/sweep.out and sweep.err."""
    args = slurm_overrides(*overrides, data_root=data_root, tracking_uri=tracking_uri, experiment=experiment)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    with open(cwd / "sweep.out", "w") as out, open(cwd / "sweep.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "harness.run", *args], cwd=cwd, env=env, stdout=out, stderr=err)


def checkpointed_run(client: MlflowClient, experiment: str, **tags: str):
    """The job run of `experiment` with these tags whose first checkpoint is on disk, or None."""
    found = client.get_experiment_by_name(experiment)
    for run in client.search_runs([found.experiment_id], record.JOBS_FILTER) if found else []:
        checkpoint = run.data.tags.get(record.CHECKPOINT)
        if all(run.data.tags.get(k) == v for k, v in tags.items()) and checkpoint and Path(checkpoint).exists():
            return run
    return None


def squeue_state(job_id: str) -> str:
    """The job's state as squeue says it ('' once it ended)."""
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def ended(sweep: subprocess.Popen, cwd: Path, timeout: float) -> tuple[int, str, str]:
    """The background sweep's exit code, stdout and stderr; killed and failed after `timeout` seconds."""
    try:
        code = sweep.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        sweep.kill()
        sweep.wait()
        pytest.fail(f"the sweep did not end in {timeout:.0f} s: {(cwd / 'sweep.out').read_text()[-3000:]}")
    return code, (cwd / "sweep.out").read_text(), (cwd / "sweep.err").read_text()


def job_logs(folder: Path, job_id: str) -> list[Path]:
    """The submitit logs of one SLURM job, where docs/clusters.md says they are."""
    return list(folder.glob(f"multirun/*/*/.submitit/{job_id}/{job_id}_0_log.out"))


@pytest.mark.integration
@pytest.mark.cluster
def test_slurm_runs_a_sweep_through_sbatch(slurm_cluster, tracking_server, data_root, tmp_path, monkeypatch):
    """2 jobs of 1 CPU each through sbatch on a 2-core node, both at once: one parent run, every
    metric step once, torch threads as the CPUs SLURM gave, and each run names its SLURM job and
    its logs."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    result = slurm_sweep(
        "depth=8",
        "residual=true,false",
        *TINY,
        data_root=data_root,
        tracking_uri=tracking_server,
        experiment="slurm",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Sweep done: 2 runs: 2 trained, 0 reused from earlier sweeps, 0 not finished" in result.stdout
    children = check_sweep(MlflowClient(tracking_server), 2, experiment="slurm")
    assert {run.data.tags["threads"] for run in children} == {"1"}
    job_ids = {run.data.tags.get("slurm_job_id") for run in children}
    assert len(job_ids) == 2 and None not in job_ids
    for job_id in job_ids:
        assert len(job_logs(tmp_path, job_id)) == 1, job_id


@pytest.mark.slow  # 4 minutes, most of it SLURM's 30-s ticks
@pytest.mark.integration
@pytest.mark.cluster
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


def mid_run_sweep(residual: str, iterations: int) -> list[str]:
    """Overrides of a sweep of ResNet-8s that checkpoint every 100 of `iterations`: a stop after
    the first checkpoint comes mid-run."""
    training = [f"schedule.iterations={iterations}", "schedule.checkpoint_every=100", "schedule.eval_every=500"]
    return ["depth=8", f"residual={residual}", *TINY, *training, "analysis=false"]


@pytest.mark.slow  # 2 minutes; what it resumes is the local resume (test_run), its lease takeover below
@pytest.mark.integration
@pytest.mark.cluster
def test_a_requeued_job_takes_over_its_own_run(slurm_cluster, tracking_server, data_root, tmp_path, monkeypatch):
    """`scontrol requeue` of a sweep's job while it trains: SLURM kills it (submitit ignores the
    SIGTERM, SIGKILL follows KillWait later) and runs the same job again, with
    SLURM_RESTART_COUNT=1, and submitit runs the pickled job again; it resumes its own run from
    the checkpoint (same MLflow run, every metric step once), and the sweep, which waits for
    the job's result file, ends as if nothing had happened. On this one node the requeued job
    would find its predecessor's process gone anyway; the test makes the heartbeat say another
    node, fresh, as a job requeued onto another node finds it, where only the SLURM job's
    incarnation tells that it is its own (before harness.lease knew it: "running elsewhere")."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    iterations = 1000  # 10 times the first checkpoint's 100: the requeue comes mid-run, also on a quiet machine
    command = mid_run_sweep("true", iterations)
    where = {"data_root": data_root, "tracking_uri": tracking_server, "experiment": "slurm-requeue", "cwd": tmp_path}
    sweep = start_slurm_sweep(*command, **where)
    client = MlflowClient(tracking_server)
    try:
        run = wait_for(lambda: checkpointed_run(client, "slurm-requeue"), 300, "run with a checkpoint", interval=0.5)
        job = run.data.tags["slurm_job_id"]
        subprocess.run(["scontrol", "requeue", job], check=True)
        wait_for(
            lambda: squeue_state(job) == "PENDING", 60, "requeued job pending", interval=0.5
        )  # its process is gone by then
        beat = heartbeat_of(client.get_run(run.info.run_id))
        assert beat.slurm_job == f"{job}.0"
        beat.owner, beat.boot, beat.time = f"another-node:{beat.owner.split(':', 1)[1]}", "another-boot", time.time()
        client.set_tag(run.info.run_id, record.HEARTBEAT, beat.encode())
        # SLURM holds a requeued job for 120 s (BeginTime); the test does not wait for that.
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
        code, out, err = ended(sweep, tmp_path, 300)
    finally:
        sweep.kill()
    assert code == 0, out[-3000:] + err[-3000:]
    assert "Sweep done: 1 runs: 1 trained, 0 reused from earlier sweeps, 0 not finished" in out
    [finished] = client.search_runs([run.info.experiment_id], record.JOBS_FILTER)
    assert finished.info.run_id == run.info.run_id and finished.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(finished.info.run_id, "train_error")]
    assert steps == list(range(5, iterations + 1, 5))
    assert heartbeat_of(finished).slurm_job == f"{job}.1"  # SLURM_RESTART_COUNT reached the job's srun step
    [log] = job_logs(tmp_path, job)  # one log: submitit's sbatch appends (--open-mode=append)
    text = log.read_text()
    assert text.count(f"Starting with JobEnvironment(job_id={job},") == 2
    assert f"resume resnet-8: MLflow run {run.info.run_id} from its last checkpoint" in text


@pytest.mark.slow  # 3 minutes; the result written for the vanished job: test_a_vanished_jobs_result_lets_submitit...
@pytest.mark.integration
@pytest.mark.cluster
def test_a_job_killed_outright_is_noticed_and_resumes_when_launched_again(
    slurm_cluster, tracking_server, data_root, tmp_path, monkeypatch
):
    """`scancel --signal=KILL` of one of a sweep's 2 jobs mid-run: it writes no result, and
    without accounting submitit would wait for it forever. The sweep sees it gone from squeue
    with its heartbeat stopped, marks its run FAILED (environment), writes the job's result for
    it and ends with its summary: the other run FINISHED, the vanished one named. The same
    command launched again resumes the vanished run from its checkpoint and finishes it."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    monkeypatch.setenv("HARNESS_HEARTBEAT_SECONDS", "2")  # the sweep looks for vanished jobs every interval
    iterations = 1000  # 10 times the first checkpoint's 100: the kill comes mid-run, also on a quiet machine
    command = mid_run_sweep("true,false", iterations)
    where = {"data_root": data_root, "tracking_uri": tracking_server, "experiment": "slurm-vanished", "cwd": tmp_path}
    sweep = start_slurm_sweep(*command, **where)
    client = MlflowClient(tracking_server)
    try:
        victim = wait_for(
            lambda: checkpointed_run(client, "slurm-vanished", residual="True"), 300, "checkpoint", interval=0.5
        )
        job = victim.data.tags["slurm_job_id"]
        subprocess.run(["scancel", "--signal=KILL", job], check=True)
        killed = time.monotonic()
        code, out, err = ended(sweep, tmp_path, 240)
        noticed = time.monotonic() - killed
    finally:
        sweep.kill()
    assert code == 1, out[-3000:] + err[-3000:]
    assert f"the SLURM job {job} vanished: squeue no longer lists it" in out, out[-3000:]
    assert "Sweep done: 2 runs: 2 trained, 0 reused from earlier sweeps, 1 not finished" in out
    assert f"1 run(s) did not finish: resnet-8 (run {victim.info.run_id}, " in err
    assert "): FAILED (environment); why: the MLflow tag harness.error" in err
    runs = {r.data.tags["residual"]: r for r in client.search_runs([victim.info.experiment_id], record.JOBS_FILTER)}
    assert runs["False"].info.status == "FINISHED"
    vanished = runs["True"]
    assert vanished.info.run_id == victim.info.run_id and vanished.info.status == "FAILED"
    assert vanished.data.tags[record.FAILURE] == record.ENVIRONMENT
    assert vanished.data.tags[record.ERROR].startswith(f"JobVanished: the SLURM job {job} vanished")
    print(f"the sweep ended {noticed:.0f} s after the kill")

    again = slurm_sweep(*command, **where)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 not finished" in again.stdout
    resumed = client.get_run(victim.info.run_id)
    assert resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "train_error")]
    assert steps == list(range(5, iterations + 1, 5))
    [log] = job_logs(tmp_path, resumed.data.tags["slurm_job_id"])
    assert f"resume resnet-8: MLflow run {victim.info.run_id} from its last checkpoint" in log.read_text()


# What the harness makes of SLURM's environment and of submitit's files, without a cluster.


def test_the_slurm_incarnation_counts_the_requeues(monkeypatch):
    """SLURM sets SLURM_RESTART_COUNT only in a job it requeued (22.05: unset in the first run)."""
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert slurm_incarnation() == "17.0"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert slurm_incarnation() == "17.2"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert slurm_incarnation() == ""  # not a SLURM job: the sweep's own process, a laptop


@pytest.mark.parametrize(
    ("recorded", "current", "earlier"),
    [
        ("17.0", "17.1", True),  # requeued once
        ("17.1", "17.3", True),
        ("17.1", "17.1", False),  # the same incarnation: two launches in one allocation
        ("17.2", "17.1", False),
        ("18.0", "17.1", False),  # another job
        ("", "17.1", False),  # a heartbeat from outside SLURM, or from before the field
        ("17.0", "", False),  # this launch is outside SLURM
    ],
)
def test_earlier_incarnation(recorded, current, earlier):
    assert earlier_incarnation(recorded, current) is earlier


def fresh_heartbeat_from_another_node(slurm_job: str) -> Heartbeat:
    return Heartbeat(time.time(), "another-node:4242:beef", 1, 30.0, "another-boot", 12345, slurm_job)


def test_a_requeued_job_counts_its_earlier_incarnations_heartbeat_as_dead(monkeypatch):
    """On another node, younger than the threshold: alive for any launch but the same SLURM job
    requeued."""
    beat = fresh_heartbeat_from_another_node("17.0")
    monkeypatch.setattr(lease, "SLURM_JOB", "17.1")
    assert beat.owner_gone() and not beat.alive()
    for other in ("17.0", "18.1", ""):  # the same incarnation, another job, no SLURM job
        monkeypatch.setattr(lease, "SLURM_JOB", other)
        assert not beat.owner_gone() and beat.alive(), other
    older = Heartbeat.parse(beat.encode().replace(',"slurm_job":"17.0"', ""))  # written before the field
    monkeypatch.setattr(lease, "SLURM_JOB", "17.1")
    assert older is not None and older.alive()


def test_a_vanished_jobs_result_lets_submitit_and_hydra_go_on(tmp_path):
    """The result the sweep writes for a vanished job is one submitit reads back as the job's
    return, and Hydra's sweeper as a completed job: no exception that would end the sweep before
    its summary. The job's number and overrides come from its pickled call."""
    folder = str(tmp_path / ".submitit" / "%j")
    earlier = SubmititJobs(folder)
    (tmp_path / ".submitit" / "16_0").mkdir(parents=True)  # an earlier launch into the same sweep folder
    (tmp_path / ".submitit" / "16_0" / "16_0_submitted.pkl").touch()
    jobs = SubmititJobs(folder)
    assert earlier.earlier == set() and jobs.earlier == {"16_0"}
    (tmp_path / ".submitit" / "17_3").mkdir()
    DelayedSubmission(print, ["depth=8"], "hydra.sweep.dir", 3, "job_id_for_3", {}).dump(
        jobs.paths("17_3").submitted_pickle
    )
    assert jobs.unfinished() == ["17_3"] and jobs.job_call("17_3") == (3, ["depth=8"])
    jobs.end_vanished("17_3")
    assert jobs.unfinished() == []
    [result] = SlurmJob(folder=folder, job_id="17_3").results()
    assert isinstance(result, JobReturn) and result.return_value is None
