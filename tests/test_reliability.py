"""One writer per run, sweeps that die whole, no progress lost to an I/O fault, every bad input
one line (issue 13). The unit tests run in process; the integration tests launch the command as
a user would, on a tiny budget (depth 8, one thread)."""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from harness import lease, record, server
from harness.config import ConfigError, check_values, compose_config
from harness.data.memory import data_lock, load_data
from harness.lease import Heartbeat, Lease, LeaseLost, claimed
from harness.record import HEARTBEAT
from harness.tracking.mlflow_store import CheckpointError, CorruptCheckpoint, MlflowRun, interrupts_deferred

from helpers.commands import harness_command, wait_for
from helpers.config import check_refused
from helpers.stores import empty_store
from helpers.sweeps import job_runs

# 100 iterations of ResNet-8 with a checkpoint every 10: long enough to be caught mid-run.
RUN = [
    "harness.run",
    "schedule=smoke",
    "depth=8",
    "threads=1",
    "dataset.validation_size=500",
    "analysis=false",
    "schedule.iterations=100",
    "schedule.checkpoint_every=10",
    "schedule.eval_every=50",
    "tracking.log_model=false",
    "tracking.figures=false",
]
STEPS = list(range(5, 101, 5))  # every train_error step of RUN, once each
FAST_LEASE = {"HARNESS_HEARTBEAT_SECONDS": "1"}  # stale after 3 s instead of 90 s


# ---------------------------------------------------------------- unit tests


def test_a_heartbeat_is_alive_while_fresh_and_its_local_owner_lives():
    mine = Heartbeat.now(1)
    assert mine.alive() and not mine.owner_gone()
    old = Heartbeat.now(1)
    old.time -= 3 * old.interval + 1
    assert not old.alive()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = Heartbeat(time.time(), f"{lease.HOST}:{dead.pid}:abc", 1, 30.0, lease.BOOT, 1)
    assert gone.owner_gone() and not gone.alive()  # a killed local owner frees the run at once
    elsewhere = Heartbeat(time.time(), f"other-node:{dead.pid}:abc", 1, 30.0, "other-boot", 1)
    assert elsewhere.alive()  # another machine's process: only its heartbeat's age tells
    assert Heartbeat.parse(mine.encode()) == mine and Heartbeat.parse("garbage") is None


def test_a_claim_is_won_by_exactly_one_of_simultaneous_claimers_and_leaves_nothing(tmp_path, monkeypatch):
    uri = empty_store(tmp_path / "mlflow.db")
    before, inside, results = threading.Barrier(6), threading.Barrier(6), []

    def contender():
        client = MlflowClient(uri)
        before.wait()
        with claimed(client, "abc after none") as won:
            results.append(won)
            inside.wait()  # the winner keeps its claim until every other launch has tried

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]
    client = MlflowClient(uri)
    assert client.search_registered_models() == []
    assert [e.name for e in client.search_experiments(ViewType.ALL)] == ["Default"]
    # A launch that claims later, once the state it saw has moved on, stands back.
    with claimed(client, "abc after none", unchanged=lambda: False) as won:
        assert not won
    # A claim whose claimer died inside its block is passed over once it is older than the threshold.
    client.create_registered_model(f"{record.CLAIM_PREFIX} abc after run1")
    with claimed(client, "abc after run1") as won:
        assert not won
    monkeypatch.setattr(lease, "INTERVAL", 0.0)
    with claimed(client, "abc after run1") as won:
        assert won
    assert [m.name for m in client.search_registered_models()] == [f"{record.CLAIM_PREFIX} abc after run1"]


def test_a_lost_lease_stops_every_write(tmp_path):
    client = MlflowClient(empty_store(tmp_path / "mlflow.db"))
    experiment = client.create_experiment("x")
    run = MlflowRun.start(client, experiment, "resnet-8", {}, checkpoint_dir=tmp_path / "ckpt")
    run.lease = Lease.take(client, run.run_id, 1)
    run.log_metrics({"train_error": 0.5}, step=5)
    run.sync()
    other = Heartbeat(time.time(), "other-node:1:xyz", 2, 30.0)
    client.set_tag(run.run_id, HEARTBEAT, other.encode())  # another launch took the run over
    run.lease.beat()  # the renewing thread's next beat reads the store
    assert run.lease.lost.is_set()
    run.log_metrics({"train_error": 0.4}, step=10)
    with pytest.raises(LeaseLost):
        run.checkpoint({"iteration": 10})
    with pytest.raises(LeaseLost):
        run.finish("FINISHED")
    assert [m.step for m in client.get_metric_history(run.run_id, "train_error")] == [5]
    assert client.get_run(run.run_id).info.status == "RUNNING"  # left to its new owner
    assert not (tmp_path / "ckpt" / run.run_id / "last.pt").exists()


def test_a_lapsed_lease_is_taken_again_before_the_next_write_if_nobody_took_the_run(tmp_path):
    client = MlflowClient(empty_store(tmp_path / "mlflow.db"))
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    held = Lease.take(client, run_id, 1)
    held.written -= 2 * held.heartbeat.interval + 1  # as if the store had been unreachable for 2 intervals
    assert held.expired() and held.heartbeat.alive()
    held.check()  # the loop trains on: an outage is not someone else's claim
    held.ensure()  # the writer's next write takes the run again first, through a claim
    stored = Heartbeat.parse(client.get_run(run_id).data.tags[HEARTBEAT])
    assert not held.expired() and stored.generation == 2 and stored.owner == held.heartbeat.owner


def test_a_lapsed_lease_whose_run_was_taken_meanwhile_stops_without_writing(tmp_path):
    client = MlflowClient(empty_store(tmp_path / "mlflow.db"))
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    held = Lease.take(client, run_id, 1)
    held.written -= 3 * held.heartbeat.interval + 1
    with claimed(client, f"{run_id} generation 2") as won:  # a relaunch elsewhere resumed the run
        assert won
        taker = Heartbeat(time.time(), "other-node:1:xyz", 2, 30.0)
        client.set_tag(run_id, HEARTBEAT, taker.encode())
    with pytest.raises(LeaseLost, match="taken over"):
        held.ensure()
    with pytest.raises(LeaseLost):
        held.check()
    assert Heartbeat.parse(client.get_run(run_id).data.tags[HEARTBEAT]) == taker


class NoStore:
    def log_batch(self, *args, **kwargs):
        raise AssertionError("nothing is pending here")


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_why(tmp_path, monkeypatch):
    run = MlflowRun(NoStore(), "run1", "resnet-8", tmp_path)
    run.checkpoint({"iteration": 10, "weights": torch.ones(3)})

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError) as failed:
        run.checkpoint({"iteration": 20, "weights": torch.zeros(3)})
    message = str(failed.value)
    assert "no space left on device" in message and str(tmp_path / "run1" / "last.partial") in message
    assert "previous checkpoint" in message and "intact" in message
    assert sorted(p.name for p in (tmp_path / "run1").iterdir()) == ["last.pt"]
    monkeypatch.undo()
    state = MlflowRun(NoStore(), "run1", "resnet-8", tmp_path).read_checkpoint()
    assert state["iteration"] == 10 and torch.equal(state["weights"], torch.ones(3))


@pytest.mark.parametrize("interrupts", [1, 2])
def test_a_ctrl_c_during_a_store_call_waits_for_the_call_and_a_second_one_does_not(interrupts):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                for _ in range(interrupts):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.2)  # the handler runs between bytecodes
                done.append("the call")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done == (["the call"] if interrupts == 1 else [])


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, None])
def test_a_corrupt_checkpoint_is_named_and_set_aside(tmp_path, content):
    run = MlflowRun(NoStore(), "run1", "resnet-8", tmp_path)
    run.checkpoint({"iteration": 10})
    path = tmp_path / "run1" / "last.pt"
    path.write_bytes(content if content is not None else path.read_bytes()[:100])  # None: truncated
    with pytest.raises(CorruptCheckpoint) as corrupt:
        MlflowRun(NoStore(), "run1", "resnet-8", tmp_path).read_checkpoint()
    assert str(path) in str(corrupt.value)
    assert run.set_checkpoint_aside() == path.with_name("last.pt.corrupt") and not path.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("+foo=1", "Key 'foo' not in 'Config'"),
        ("+dataset.bar=2", "Key 'dataset.bar' not in 'Config'"),
        ("schedule.batch_size=100000", "schedule.batch_size=100000 is larger than the 60000 training images"),
        ("dataset.validation_size=0", "dataset.validation_size=0 must be null"),
        ("dataset.validation_size=60000", "dataset.validation_size=60000 must be null"),
    ],
)
def test_values_outside_the_schema_or_the_data_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        check_values(compose_config(override))


def test_a_batch_may_take_every_training_image_left():
    check_values(compose_config("schedule.batch_size=59500", "dataset.validation_size=500"))
    with pytest.raises(ConfigError, match="59501 is larger than the 59500 training images"):
        check_values(compose_config("schedule.batch_size=59501", "dataset.validation_size=500"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["depth=abc"], "'abc' is not a valid integer; use 6n+2"),
        (["-m", "depth=20,abc"], "'abc' is not a valid integer; use 6n+2"),
        (["residual=maybe"], "'maybe' is not a valid bool; use true (ResNet) or false"),
        (["schedule.iterations=1.5"], "'1.5' is not a valid integer"),
        (["+foo=1"], "Key 'foo' not in 'Config'"),
        (
            [
                "-m",
                "+experiment=degradation",
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2",
                "dataset=cifar10",
                "dataset.validation_size=null",
                "optimizer.lr=1e-3",
                "depth=range(20,60,6)",
            ],
            None,
        ),
    ],
)
def test_overrides_of_the_wrong_type_name_the_valid_values(args, message):
    check_refused(args, message)


def test_the_data_lock_moves_to_the_temporary_folder_for_a_read_only_root(tmp_path, monkeypatch):
    assert data_lock(tmp_path, "fashion_mnist").lock_file == str(tmp_path / ".fashion_mnist.lock")

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "touch", read_only)
    lock = data_lock(tmp_path, "fashion_mnist")
    assert not lock.lock_file.startswith(str(tmp_path)) and "harness-data-fashion_mnist-" in lock.lock_file
    with lock:
        pass


# ---------------------------------------------------------------- integration tests


def launch(
    args: list[str], cwd: Path, name: str, env: dict | None = None, ignore_sigint: bool = False
) -> subprocess.Popen:
    """Start `python -m ARGS` in `cwd`, its output in files (read with output()); with
    `ignore_sigint`, as a shell starts a command in the background (`&` in a script)."""
    out, err = (open(cwd / f"{name}.{kind}", "w") for kind in ("out", "err"))
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    job = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=full_env,
        stdout=out,
        stderr=err,
        start_new_session=True,
        preexec_fn=ignore,
    )
    job.name = name
    LAUNCHED.append(job)
    return job


LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def reap_launched():
    """A failed test leaves none of its launches running."""
    yield
    while LAUNCHED:
        job = LAUNCHED.pop()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def output(job: subprocess.Popen, cwd: Path) -> tuple[str, str]:
    return (cwd / f"{job.name}.out").read_text(), (cwd / f"{job.name}.err").read_text()


def steps(client: MlflowClient, run_id: str, key: str = "train_error") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def checkpoints(folder: Path) -> list[Path]:
    return list(folder.glob("*/last.pt"))


@pytest.fixture
def filled_data_root(data_root) -> Path:
    load_data("fashion_mnist", data_root, False, 500, torch.device("cpu"))  # unzips the data once
    return data_root


@pytest.mark.integration
def test_two_launches_at_the_same_instant_on_a_fresh_store_train_one_run_once(tmp_path, filled_data_root):
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # not there yet: both launches create it
    args = [*RUN, f"tracking.uri={store}", f"dataset.root={filled_data_root}"]
    jobs = [launch(args, tmp_path, f"launch{i}", FAST_LEASE) for i in range(2)]
    for job in jobs:
        job.wait(timeout=1800)
    outputs = [output(job, tmp_path) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert not any("Traceback" in err or "already exists" in err for _, err in outputs)
    (run,) = job_runs(MlflowClient(store))
    assert run.info.status == "FINISHED"
    assert steps(MlflowClient(store), run.info.run_id) == STEPS
    assert sum(f"running elsewhere: resnet-8 (MLflow run {run.info.run_id}" in out for out, _ in outputs) == 1


@pytest.mark.integration
def test_a_second_launch_leaves_a_live_run_alone(tmp_path, store, filled_data_root):
    """While one launch trains, the same command again says `running elsewhere` and touches nothing."""
    # fp32: a second launch beside the first takes 1 thread, whose precision=auto a fresh cache would measure first
    args = [
        *RUN,
        "schedule.iterations=400",
        "precision=fp32",
        f"tracking.uri={store}",
        f"dataset.root={filled_data_root}",
    ]
    first = launch(args, tmp_path, "first", FAST_LEASE)
    wait_for(lambda: checkpoints(tmp_path / "mlruns" / "checkpoints"), job=first, what="the first checkpoint")
    second = launch(args, tmp_path, "second", FAST_LEASE)
    assert second.wait(timeout=1800) == 0, output(second, tmp_path)[1][-2000:]
    assert first.poll() is None, "the first launch ended before the second decided: make it longer"
    assert first.wait(timeout=1800) == 0, output(first, tmp_path)[1][-2000:]
    client = MlflowClient(store)
    (run,) = job_runs(client)
    out, err = output(second, tmp_path)
    assert f"running elsewhere: resnet-8 (MLflow run {run.info.run_id}, heartbeat " in out, out + err
    assert "resume" not in out
    assert run.info.status == "FINISHED" and steps(client, run.info.run_id) == list(range(5, 401, 5))


@pytest.mark.integration
def test_the_same_net_trains_in_two_experiments_of_one_store_one_after_the_other(tmp_path, store, filled_data_root):
    """A claim is per experiment: the net just trained in one experiment (its claim seconds old)
    is not `running elsewhere` in another experiment of the same store."""
    client = MlflowClient(store)
    for experiment in ("first", "second"):
        args = [*RUN, f"tracking.uri={store}", f"tracking.experiment={experiment}", f"dataset.root={filled_data_root}"]
        job = launch(args, tmp_path, experiment)
        assert job.wait(timeout=1800) == 0, output(job, tmp_path)[1][-2000:]
        assert "running elsewhere" not in output(job, tmp_path)[0]
        (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], record.JOBS_FILTER)
        assert run.info.status == "FINISHED" and steps(client, run.info.run_id) == STEPS


def sweep_processes(sweep_pid: int) -> list[int]:
    """Live processes that a sweep's launcher started (they carry the sweep's pid in their environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == sweep_pid:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f":{sweep_pid}:".encode() in environ and b"HARNESS_SWEEP_PROCESS=" in environ and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.integration
# The foreground case is the background one without SIG_IGN: slow, out of the default suite's time.
@pytest.mark.parametrize(
    "ignore_sigint",
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["foreground", "started-in-the-background"],
)
def test_kill_9_of_a_joblib_sweep_leaves_no_orphan_and_a_relaunch_resumes(
    tmp_path, store, filled_data_root, ignore_sigint
):
    args = [
        RUN[0],
        "-m",
        *RUN[1:],
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"tracking.uri={store}",
        f"dataset.root={filled_data_root}",
    ]
    sweep = launch(args, tmp_path, "sweep", ignore_sigint=ignore_sigint)
    wait_for(
        lambda: len(checkpoints(tmp_path / "mlruns" / "checkpoints")) == 2, job=sweep, what="both first checkpoints"
    )
    workers = sweep_processes(sweep.pid)
    assert workers, "the joblib workers were not found"
    sweep.kill()
    sweep.wait()
    wait_for(lambda: not sweep_processes(sweep.pid), timeout=45, what="the orphaned workers to exit")

    again = launch([a for a in args], tmp_path, "again")
    assert again.wait(timeout=1800) == 0, output(again, tmp_path)[1][-3000:]
    out, err = output(again, tmp_path)
    assert out.count("resume resnet-8") == 2 and "running elsewhere" not in out, out
    client = MlflowClient(store)
    runs = job_runs(client)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert steps(client, run.info.run_id) == STEPS
        assert steps(client, run.info.run_id, "val_error") == [50, 100]
    (parent,) = {r.data.tags[record.PARENT] for r in runs}
    assert client.get_run(parent).info.status == "FINISHED"


@pytest.mark.integration
def test_ctrl_c_of_a_sweep_marks_its_parent_killed_without_a_traceback(tmp_path, store, filled_data_root):
    args = [RUN[0], "-m", *RUN[1:], "seed=0,1", f"tracking.uri={store}", f"dataset.root={filled_data_root}"]
    sweep = launch(args, tmp_path, "sweep")
    wait_for(lambda: checkpoints(tmp_path / "mlruns" / "checkpoints"), job=sweep, what="the first checkpoint")
    os.killpg(sweep.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    assert sweep.wait(timeout=600) == 130
    out, err = output(sweep, tmp_path)
    assert "Traceback" not in err, err[-3000:]
    client = MlflowClient(store)
    (run,) = job_runs(client)
    assert run.info.status == "KILLED"
    (line,) = [line for line in err.splitlines() if line.startswith("stopped ")]
    assert (
        line.startswith(f"stopped resnet-8 (run {run.info.run_id}, ") and "seed=0" in line and line.endswith("KILLED")
    )
    parent = client.get_run(run.data.tags[record.PARENT])
    assert parent.info.status == "KILLED" and f"parent run {parent.info.run_id} KILLED" in err


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted afterwards; skipped where this process may not mount."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)])


@pytest.mark.integration
def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_the_relaunch_resumes(
    tmp_path, store, filled_data_root, small_disk
):
    args = [*RUN, f"tracking.checkpoint_dir={small_disk}", f"tracking.uri={store}", f"dataset.root={filled_data_root}"]
    job = launch(args, tmp_path, "full")
    wait_for(lambda: checkpoints(small_disk), job=job, what="the first checkpoint")
    with open(small_disk / "filler", "wb") as filler:  # the rest of the disk
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    assert job.wait(timeout=1800) == 1
    out, err = output(job, tmp_path)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
    (last,) = checkpoints(small_disk)
    assert "no space left on device" in err and str(last.with_suffix(".partial")) in err
    assert not list(small_disk.glob("*/*.partial"))
    client = MlflowClient(store)
    (failed,) = job_runs(client)
    assert failed.info.status == "FAILED" and failed.data.tags[record.FAILURE] == "environment"

    (small_disk / "filler").unlink()
    again = launch(args, tmp_path, "again")
    assert again.wait(timeout=1800) == 0, output(again, tmp_path)[1][-3000:]
    assert f"resume resnet-8: MLflow run {failed.info.run_id} from its last checkpoint" in output(again, tmp_path)[0]
    (run,) = job_runs(client)
    assert run.info.status == "FINISHED" and steps(client, run.info.run_id) == STEPS
    assert record.FAILURE not in run.data.tags and record.ERROR not in run.data.tags


@pytest.mark.integration
def test_a_corrupt_checkpoint_is_set_aside_with_one_line_and_training_restarts(tmp_path, store, filled_data_root):
    args = [*RUN, f"tracking.uri={store}", f"dataset.root={filled_data_root}"]
    job = launch(args, tmp_path, "killed")
    wait_for(lambda: checkpoints(tmp_path / "mlruns" / "checkpoints"), job=job, what="the first checkpoint")
    job.kill()
    job.wait()
    (last,) = checkpoints(tmp_path / "mlruns" / "checkpoints")
    last.write_bytes(last.read_bytes()[:1000])  # truncated

    again = launch(args, tmp_path, "again")
    assert again.wait(timeout=1800) == 0, output(again, tmp_path)[1][-3000:]
    out, _ = output(again, tmp_path)
    (line,) = [line for line in out.splitlines() if "corrupt checkpoint" in line]
    assert str(last) in line and "last.pt.corrupt" in line and "restarts" in line
    assert last.with_name("last.pt.corrupt").exists()
    client = MlflowClient(store)
    runs = {r.info.status: r for r in job_runs(client)}
    assert set(runs) == {"KILLED", "FINISHED"}
    assert runs["KILLED"].data.tags[record.SUPERSEDED_BY] == runs["FINISHED"].info.run_id
    assert steps(client, runs["FINISHED"].info.run_id) == STEPS


BAD_INPUTS = [
    ("dataset.root=/proc/nonexistent", "dataset.root=/proc/nonexistent cannot be used"),
    ("tracking.uri=garbage://x", "tracking.uri=garbage://x cannot be used"),
    ("+foo=1", "Key 'foo' not in 'Config'"),
    ("schedule.batch_size=100000", "schedule.batch_size=100000 is larger than the 59500 training images"),
    ("depth=abc", "'abc' is not a valid integer; use 6n+2"),
    ("residual=maybe", "'maybe' is not a valid bool; use true (ResNet) or false"),
    ("dataset.validation_size=0", "dataset.validation_size=0 must be null"),
    ("precision=fp8", "precision=fp8 is not valid; use auto"),
]


@pytest.mark.integration
def test_every_bad_input_gets_one_line_and_stores_nothing(tmp_path, filled_data_root):
    """All cases at once (each is its own process), then one by one: exit code 2, one line on
    stderr, no traceback, no run in the store."""
    jobs = []
    for i, (bad, _) in enumerate(BAD_INPUTS):
        cwd = tmp_path / f"case{i}"
        cwd.mkdir()
        store = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
        jobs.append(launch([*RUN, f"tracking.uri={store}", f"dataset.root={filled_data_root}", bad], cwd, "bad"))
    for i, ((bad, message), job) in enumerate(zip(BAD_INPUTS, jobs)):
        job.wait(timeout=1800)
        out, err = output(job, tmp_path / f"case{i}")
        assert job.returncode == 2, (bad, err[-2000:])
        assert len(err.strip().splitlines()) == 1 and message in err, (bad, err)
        db = tmp_path / f"case{i}" / "mlruns" / "mlflow.db"
        assert not db.exists() or not job_runs(MlflowClient(f"sqlite:///{db}")), bad


@pytest.fixture
def read_only_copy(tmp_path, filled_data_root):
    """The data root, bind-mounted read-only; skipped where this process may not mount."""
    folder = tmp_path / "ro-data"
    folder.mkdir()
    for command in (
        ["mount", "--bind", str(filled_data_root), str(folder)],
        ["mount", "-o", "remount,ro,bind", str(folder)],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
            pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip() or done.returncode}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)])


@pytest.mark.integration
def test_a_read_only_data_root_that_holds_the_data_works(tmp_path, store, read_only_copy):
    with pytest.raises(OSError):
        (read_only_copy / "probe").touch()
    done = harness_command(
        *RUN, "schedule.iterations=20", f"tracking.uri={store}", f"dataset.root={read_only_copy}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = job_runs(MlflowClient(store))
    assert run.info.status == "FINISHED"


def stop_mlflow_server(paths: server.Paths) -> None:
    server.stop_group(server.server_pid(paths))


def kill_postmaster(paths: server.Paths) -> None:
    os.kill(int(paths.pg_pid.read_text().splitlines()[0]), signal.SIGKILL)


@pytest.mark.integration
# PostgreSQL killed is slow: `harness.server start` restarting it alone is test_server's.
@pytest.mark.parametrize("outage", [stop_mlflow_server, pytest.param(kill_postmaster, marks=pytest.mark.slow)])
def test_a_run_trains_on_while_the_store_is_down_and_sends_every_step_once(
    outage, tracking_server, tracking_server_state, tmp_path, filled_data_root
):
    """The MLflow server stopped, or PostgreSQL killed, mid-run for longer than the lease allows;
    then `harness.server start` heals it. The run's checkpoints go on meanwhile, the console says
    once that the store is gone and once that it is back, and the run finishes in the store with
    every step once. (Whether the lease lapses meanwhile depends on how long the heartbeat's own
    retries last; the lease's unit tests cover taking it again.)"""
    experiment = f"store-outage-{outage.__name__}"
    args = [*RUN, "schedule.iterations=600", "tracking=server", f"tracking.uri={tracking_server}",
            f"tracking.experiment={experiment}", f"dataset.root={filled_data_root}"]  # fmt: skip
    job = launch(args, tmp_path, "outage", FAST_LEASE)
    folder = tmp_path / "checkpoints"
    wait_for(lambda: checkpoints(folder), job=job, what="the first checkpoint")
    paths = server.Paths(tracking_server_state)
    outage(paths)
    down = time.monotonic()
    [checkpoint] = checkpoints(folder)
    before = checkpoint.stat().st_mtime_ns
    time.sleep(15)  # longer than MLflow's own retries inside one call (3, about 7 s), and the lease's 3 intervals
    trained_on = checkpoint.exists() and checkpoint.stat().st_mtime_ns != before
    server.start(tracking_server_state, port=int(tracking_server.rsplit(":", 1)[1]), workers=2)
    outage = time.monotonic() - down
    assert job.wait(timeout=1800) == 0, output(job, tmp_path)[1][-3000:]
    said = "".join(output(job, tmp_path))
    assert trained_on or "trained to its end" in said, "no checkpoint was written while the store was down"
    assert said.count("the tracking store cannot be reached") == 1, said[-3000:]
    assert said.count("the tracking store answers again") == 1, said[-3000:]
    client = MlflowClient(tracking_server)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], record.JOBS_FILTER)
    assert run.info.status == "FINISHED" and steps(client, run.info.run_id) == list(range(5, 601, 5))
    print(f"store down for {outage:.0f} s; the run finished with every step once")


@pytest.mark.integration
def test_a_store_down_past_the_outage_limit_stops_the_run_non_zero_and_it_resumes(
    tracking_server, tracking_server_state, tmp_path, filled_data_root
):
    experiment = "store-outage-past-limit"
    iterations = 400  # the run stops 3 s into the outage: it must still train then
    args = [*RUN, f"schedule.iterations={iterations}", "tracking=server", f"tracking.uri={tracking_server}",
            f"tracking.experiment={experiment}", f"dataset.root={filled_data_root}"]  # fmt: skip
    job = launch([*args, "tracking.outage_limit=3"], tmp_path, "first", FAST_LEASE)
    wait_for(lambda: checkpoints(tmp_path / "checkpoints"), job=job, what="the first checkpoint")
    paths = server.Paths(tracking_server_state)
    stop_mlflow_server(paths)
    try:
        assert job.wait(timeout=600) == 1
    finally:
        server.start(tracking_server_state, port=int(tracking_server.rsplit(":", 1)[1]), workers=2)
    out, err = output(job, tmp_path)
    assert "past tracking.outage_limit=3 s" in out + err and "resumes it from its last checkpoint" in out + err
    assert "Traceback" not in err
    client = MlflowClient(tracking_server)
    [stopped] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], record.JOBS_FILTER)
    again = launch(args, tmp_path, "again")
    assert again.wait(timeout=1800) == 0, output(again, tmp_path)[1][-3000:]
    assert f"resume resnet-8: MLflow run {stopped.info.run_id}" in output(again, tmp_path)[0]
    assert client.get_run(stopped.info.run_id).info.status == "FINISHED"
    assert steps(client, stopped.info.run_id) == list(range(5, iterations + 1, 5))
