"""One run's life. What the store holds of a net decides what a launch does with it (`decide`:
skip, running elsewhere, resume, new run); the launch claims the run, trains it, and closes
it through one table of outcomes (finished, Ctrl-C, scheduler stop, lease lost, diverged,
environment failure, bug, ...), each with its status, failure tag and exit code. The job ends
by returning its `Outcome`: harness.run says it and chooses the exit.
"""

import contextlib
import gc
import logging
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from harness import OPENMP_WAIT, config, record
from harness.cores import why_fewer
from harness.data import DataError
from harness.data.memory import Data, load_data
from harness.device import deterministic_kernels, device_name, pick_device
from harness.identity import Job
from harness.launchers import SchedulerStop, placement_tags, watch_sweep
from harness.lease import Heartbeat, Lease, LeaseLost, claimed, generation_of, heartbeat_of
from harness.models.resnet import build_for
from harness.tracking.mlflow_store import (
    CheckpointError,
    CorruptCheckpoint,
    MlflowRun,
    StoreError,
    checkpoint_file,
    connect,
    find_run,
    latest_run_id,
    sqlite_folder,
    supersede,
)
from harness.tracking.writer import StoreOutage
from harness.train import DivergedError, Result, train_job

log = logging.getLogger(__name__)
SMALLEST_IMAGENET_INPUT = 64  # pixels; below it the ImageNet stem leaves stage 4 almost nothing
RESUMABLE = ("RUNNING", "KILLED")  # and FAILED runs whose failure was the environment's
CLAIM_ATTEMPTS = 5


# What the store holds, and what a launch does about it.

SKIP, ELSEWHERE, RESUME, NEW = "skip", "running elsewhere", "resume", "new run"


@dataclass(frozen=True)
class Stored:
    """The latest current run of a net in the store, as the decision needs it."""

    run_id: str
    status: str
    alive: bool  # its heartbeat is live: another launch trains it
    failure: str | None  # record.FAILURE
    has_checkpoint: bool
    heartbeat: Heartbeat | None = None
    run: Any = None  # the MLflow run itself


@dataclass(frozen=True)
class Decision:
    action: str  # SKIP, ELSEWHERE, RESUME or NEW
    run: Stored | None = None  # the run skipped, left alone or resumed; for NEW, the run it replaces


def decide(stored: Stored | None, rerun: bool) -> Decision:
    """What to do with a net whose latest run is `stored` (None: it has none)."""
    if stored is None:
        return Decision(NEW)
    if stored.status == "RUNNING" and stored.alive:
        return Decision(ELSEWHERE, stored)
    if rerun:  # a new run beside the earlier ones, which stay as they are
        return Decision(NEW)
    if stored.status == "FINISHED" or stored.failure == record.DIVERGED:
        return Decision(SKIP, stored)
    resumable = stored.status in RESUMABLE or stored.failure == record.ENVIRONMENT
    return Decision(RESUME if resumable and stored.has_checkpoint else NEW, stored)


def look(client, experiment_id: str, fingerprint: str, folder: Path | None) -> Stored | None:
    run = find_run(client, experiment_id, fingerprint)
    if run is None:
        return None
    beat = heartbeat_of(run)
    return Stored(
        run_id=run.info.run_id,
        status=run.info.status,
        alive=beat is not None and beat.alive(),
        failure=run.data.tags.get(record.FAILURE),
        has_checkpoint=folder is not None and checkpoint_file(folder, run.info.run_id).exists(),
        heartbeat=beat,
        run=run,
    )


def said(decision: Decision, name: str) -> str:
    """Why a launch leaves a net alone (SKIP, ELSEWHERE)."""
    stored = decision.run
    if decision.action == SKIP:
        ended = "FINISHED" if stored.status == "FINISHED" else "diverged (a result: the same seed diverges again)"
        return f"skip {name}: already {ended} as MLflow run {stored.run_id} (rerun=true trains it again)"
    beat = stored.heartbeat
    age = f"heartbeat {beat.age():.0f} s ago" if beat else "no heartbeat yet"
    return f"running elsewhere: {name} (MLflow run {stored.run_id}, {age}); not touched"


# What a job needs around the loop.


def machine_of(device: torch.device) -> record.Machine:
    return record.Machine(
        device=device.type,
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        device_name=device_name(device),
        openmp_wait=OPENMP_WAIT,
        placement=placement_tags(),
    )


def checkpoint_dir(cfg: config.Config | DictConfig) -> Path | None:
    """Checkpoints go beside a SQLite store, else into ./checkpoints, unless configured."""
    if not cfg.schedule.checkpoint_every:
        return None
    if cfg.tracking.checkpoint_dir:
        return config.launch_dir() / cfg.tracking.checkpoint_dir
    store_folder = sqlite_folder(cfg.tracking.uri)
    return store_folder / "checkpoints" if store_folder else config.launch_dir() / "checkpoints"


def job_data(cfg: config.Config, device: torch.device) -> Data:
    dataset = cfg.dataset
    try:
        return load_data(
            dataset.name,
            config.launch_dir() / dataset.root,
            dataset.download,
            dataset.validation_size,
            device,
            resize=dataset.resize,
            normalize=dataset.normalize,
        )
    except OSError as error:
        raise DataError(f"dataset.root={dataset.root}: {error}") from error


# Opening the run.


def resume(client, stored: Stored, name: str, folder: Path | None, **writer_limits) -> MlflowRun | None | bool:
    """The stopped run, claimed and reopened at its checkpoint; None if another launch claimed it
    first; False if its checkpoint is unreadable (set aside: the net trains in a new run)."""
    generation = (stored.heartbeat.generation if stored.heartbeat else 0) + 1
    key = f"{stored.run_id} generation {generation}"
    with claimed(client, key, lambda: generation_of(client.get_run(stored.run_id)) == generation - 1) as won:
        if not won:
            return None
        stopped = MlflowRun(client, stored.run_id, name, folder, **writer_limits)
        stopped.lease = Lease.take(client, stopped.run_id, generation).start()
    try:
        state = stopped.read_checkpoint()
    except CorruptCheckpoint as error:
        aside = stopped.set_checkpoint_aside()
        log.warning(
            "corrupt checkpoint: %s; %s (MLflow run %s) cannot resume from it. Set it aside as %s; training restarts "
            "from iteration 0 in a new run.",
            error,
            name,
            stopped.run_id,
            aside,
        )
        stopped.lease.release()
        stopped.writer.close()
        return False
    log.info(
        "resume %s: MLflow run %s from its last checkpoint (iteration %d)", name, stored.run_id, state["iteration"]
    )
    stopped.reopen()
    stopped.set_tags(placement_tags())  # the SLURM job or Ray node that trains it now
    return stopped


def open_run(
    job: Job, client, experiment_id: str, machine: record.Machine, first: Decision, stored: Stored | None
) -> tuple[MlflowRun | str, bool]:
    """(run, resumed): the run that trains this job, with this process's lease on it; or why
    the launch leaves it alone (another launch has it).

    Two launches that decide at the same moment both claim what they saw (harness.lease.claimed):
    one wins; the other looks again and finds the winner's live run."""
    cfg, name, fingerprint, folder = job.config, job.name, job.fingerprint, checkpoint_dir(job.config)
    writer_limits = {"outage_limit": cfg.tracking.outage_limit, "buffer_points": cfg.tracking.buffer_points}
    decision = first
    for attempt in range(CLAIM_ATTEMPTS):
        if attempt:
            time.sleep(0.5 * attempt)  # the winner of a claim creates or reopens its run meanwhile
            stored = look(client, experiment_id, fingerprint, folder)
            decision = decide(stored, cfg.rerun)
        if decision.action in (SKIP, ELSEWHERE):
            return said(decision, name), False
        if decision.action == RESUME:
            resumed = resume(client, decision.run, name, folder, **writer_limits)
            if resumed is None:
                continue
            if resumed:
                return resumed, True
        # The same net may be trained in another experiment of the same store: claims are per experiment.
        prior = stored.run_id if stored else None
        key = f"{fingerprint} in {experiment_id} after {prior or 'none'}"
        with claimed(client, key, lambda: latest_run_id(client, experiment_id, fingerprint) == prior) as won:
            if not won:
                continue
            heartbeat = Heartbeat.now(1)
            tags = {**record.job_tags(job, machine, record.source_commit()), record.HEARTBEAT: heartbeat.encode()}
            run = MlflowRun.start(
                client,
                experiment_id,
                name,
                tags,
                parent_run_id=cfg.tracking.parent_run_id,
                checkpoint_dir=folder,
                **writer_limits,
            )
        run.lease = Lease(client, run.run_id, heartbeat).start()
        if decision.run is not None:
            supersede(client, decision.run.run, run.run_id)
        return run, False
    return (
        f"running elsewhere: {name}: other launches claimed it {CLAIM_ATTEMPTS} times at the same moment; not touched",
        False,
    )


# Training it.


def execute(
    job: Job, run: MlflowRun, device: torch.device, machine: record.Machine, resumed: bool, data: Data
) -> Result:
    if not resumed:  # a resumed run has its params already, and MLflow never changes a param
        run.log_params(record.job_params(job, machine))
        run.log_text(OmegaConf.to_yaml(OmegaConf.to_container(job.requested, resolve=True)), record.CONFIG_FILE)
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        run.log_text(OmegaConf.to_yaml(overrides), record.OVERRIDES_FILE)

    if job.config.family == "imagenet" and data.image_size < SMALLEST_IMAGENET_INPUT:
        # The 7x7/2 stem and max pool shrink a 28-pixel image to 7, and stage 4 convolves 1x1 maps.
        log.warning(
            "%s: an ImageNet-style net on %dx%d inputs (under %d pixels): its last stage sees 1x1 maps; "
            "dataset.resize=96 gives the starting project's setting",
            run.name,
            data.image_size,
            data.image_size,
            SMALLEST_IMAGENET_INPUT,
        )
        run.set_tags({record.SMALL_INPUT: data.image_size})
    model = build_for(job, data.in_channels, data.num_classes).to(device, memory_format=torch.channels_last)
    result = train_job(job, model, data, run, device)

    run.log_json({"run": run.name, **vars(result)}, record.SUMMARY_FILE)
    if job.config.tracking.log_model:
        run.log_torch_state(model.state_dict(), record.MODEL_FILE)
    return result


# Closing it: one row per way a job can end.

# Failures of the machine, not of the run: disk, tracking store, data. A run stopped by one
# resumes from its checkpoint when launched again; any other failure trains it anew.
ENVIRONMENT_ERRORS = (OSError, CheckpointError, StoreError, StoreOutage, DataError, MlflowException)

# How a person is told a job's last word (harness.run says it): INFO, a log line; NOTE, a
# line on stdout; STDERR, a plain line on stderr; ERROR, "error: ..." alone and a logged error
# in a sweep, whose summary names the job.
INFO, NOTE, STDERR, LOG, ERROR = "info", "note", "stderr", "log", "error"


class Kind(Enum):
    """How a job can end: (in words, its run's last status (None: left as it was, or no run), the
    failure tag, the command's exit code when the job runs alone, how it is said)."""

    FINISHED = ("finished", "FINISHED", None, 0, INFO)
    SKIPPED = ("skipped", None, None, 0, NOTE)  # finished or diverged before, or trained elsewhere now
    CTRL_C = ("Ctrl-C", "KILLED", None, 130, STDERR)  # resumes from its last checkpoint
    SCHEDULER_STOP = ("scheduler stop", "KILLED", None, 1, LOG)  # SLURM's time limit is near: stopped, not failed
    LEASE_LOST = ("lease lost", None, None, 1, STDERR)  # another launch trains the run
    DIVERGED = ("diverged", "FAILED", record.DIVERGED, 1, ERROR)  # a result: a relaunch keeps it
    ENVIRONMENT_FAILURE = ("environment failure", "FAILED", record.ENVIRONMENT, 1, ERROR)  # resumes from its checkpoint
    BUG = ("bug", "FAILED", record.RUN, 1, ERROR)  # alone: with its traceback
    NOT_CLOSED = ("not closed", None, None, 1, ERROR)  # trained to its end, but the store did not take the end
    NOT_OPENED = ("not opened", None, None, 1, ERROR)  # its data or the store failed before the run opened
    BAD_CONFIG = ("bad config", None, None, 2, ERROR)

    def __init__(self, words: str, status: str | None, failure: str | None, exit_code: int, said_as: str):
        self.words, self.status, self.failure, self.exit_code, self.said_as = words, status, failure, exit_code, said_as


@dataclass(frozen=True)
class Outcome:
    """How a job ended, and what a person reads."""

    kind: Kind
    message: str = ""
    eval_error: float | None = None  # a finished run's final test (or validation) error
    error: BaseException | None = None  # a bug's own exception: alone, it ends with its traceback

    @property
    def status(self) -> str | None:
        return self.kind.status

    @property
    def failure(self) -> str | None:
        return self.kind.failure

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code

    @property
    def said_as(self) -> str:
        return self.kind.said_as


def scheduler_stop(error: BaseException | None) -> SchedulerStop | None:
    """SLURM's stop, also where it came in the middle of a store call and the store's client
    raised its own error while handling it (MLflow: "API request ... failed with exception ...")."""
    while error is not None:
        if isinstance(error, SchedulerStop):
            return error
        error = error.__cause__ or error.__context__
    return None


def outcome_of(error: BaseException | None) -> Kind:
    if error is None:
        return Kind.FINISHED
    if scheduler_stop(error) is not None and not isinstance(error, KeyboardInterrupt):
        return Kind.SCHEDULER_STOP
    for kind, errors in (
        (Kind.CTRL_C, KeyboardInterrupt),
        (Kind.LEASE_LOST, LeaseLost),
        (Kind.DIVERGED, DivergedError),
        (Kind.ENVIRONMENT_FAILURE, ENVIRONMENT_ERRORS),
    ):
        if isinstance(error, errors):
            return kind
    return Kind.BUG


def record_failure(run: MlflowRun, error: BaseException, kind: Kind) -> str:
    """Mark the run FAILED with its failure tag; the message that says so."""
    resumable = kind.failure == record.ENVIRONMENT and run.has_checkpoint()
    tags = {record.FAILURE: kind.failure}
    if isinstance(error, DivergedError):
        tags[record.DIVERGED_AT] = error.step
    message = f"{run.name} (MLflow run {run.run_id}) failed: {error}"
    if resumable:
        message += "; the same command resumes it from its last checkpoint"
    try:
        run.check_lease()
        run.finish("FAILED", error, resumable=resumable, tags=tags)
    except LeaseLost as lost:
        message = f"{run.name}: {lost}"
    except Exception as store_error:  # the store itself is what failed
        message += (
            "; the store, which cannot be reached, still shows it RUNNING"
            if store_error is error
            else f" (and the store could not record it: {type(store_error).__name__}: {str(store_error)[:200]})"
        )
    return message


def then(run: MlflowRun) -> str:
    """What the same command does next with a run that stopped."""
    if run.has_checkpoint():
        return "the same command resumes it from its last checkpoint"
    return "the same command trains it again"


def close(run: MlflowRun, result: Result | None, error: BaseException | None) -> Outcome:
    """Close the run as its outcome says, and say how it ended."""
    kind = outcome_of(error)
    if kind is Kind.FINISHED:
        try:
            run.finish("FINISHED")
        except (LeaseLost, *ENVIRONMENT_ERRORS) as error:  # trained, but its last writes did not reach the store
            return Outcome(
                Kind.NOT_CLOSED,
                f"{run.name} (MLflow run {run.run_id}) trained to its end but was not closed as FINISHED: {error}; "
                f"{then(run)}",
            )
        return Outcome(
            kind,
            f"{run.name}: final training error {100 * result.final_train_error:.2f}%, {result.eval_split} error "
            f"{100 * result.eval_error:.2f}% in {result.seconds:.0f} s",
            eval_error=result.eval_error,
        )
    if kind is Kind.LEASE_LOST:
        run.abandon()
        return Outcome(kind, f"{run.name}: {error}")
    if kind is Kind.SCHEDULER_STOP:
        with contextlib.suppress(LeaseLost):
            run.finish("KILLED", scheduler_stop(error))
        return Outcome(
            kind,
            f"{run.name} (MLflow run {run.run_id}) stopped by SLURM and marked KILLED ({scheduler_stop(error)}); "
            f"{then(run)}",
        )
    if kind is Kind.CTRL_C:
        with contextlib.suppress(LeaseLost):
            run.finish("KILLED", error)
        if not run.has_checkpoint():
            return Outcome(
                kind,
                f"stopped {run.name}: MLflow run {run.run_id} marked KILLED before its first checkpoint; "
                "the same command trains it again.",
            )
        at = f" at iteration {run.saved_iteration}" if run.saved_iteration else ""
        return Outcome(
            kind,
            f"stopped {run.name}: MLflow run {run.run_id} marked KILLED; the same command resumes it from its last "
            f"checkpoint{at}.",
        )
    return Outcome(kind, record_failure(run, error, kind), error=error if kind is Kind.BUG else None)


# The whole life.


def setup(job: Job) -> tuple[Any, str, torch.device]:
    """The store, and this process's torch settings."""
    cfg = job.config
    device = pick_device(cfg.device)
    client, experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment)
    watch_sweep()  # a job that a sweep's launcher started ends when the sweep's process is gone
    deterministic_kernels(cfg.deterministic)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(threads := job.decided.threads)
    if fewer := why_fewer(job.requested, threads):  # its share, as asked
        log.info("%s", fewer)
    # What the job's start-up has loaded (the store's client, Hydra's plugins) lives to its end:
    # frozen like harness.run's imports, after a collection that leaves no earlier job's garbage.
    gc.collect()
    gc.freeze()
    return client, experiment_id, device


def run_job(job: Job) -> Outcome:
    """Train and track the net of a checked config: how it ended. Nothing here prints or exits:
    harness.run says the outcome, and a sweep goes on to its other jobs."""
    cfg = job.config
    try:
        client, experiment_id, device = setup(job)
    except (config.ConfigError, StoreError) as error:
        return Outcome(Kind.BAD_CONFIG, str(error))
    try:
        stored = look(client, experiment_id, job.fingerprint, checkpoint_dir(cfg))
        decision = decide(stored, cfg.rerun)
        if decision.action in (SKIP, ELSEWHERE):
            return Outcome(Kind.SKIPPED, said(decision, job.name))
        data = job_data(cfg, device)  # before anything of this run is stored
        run, resumed = open_run(job, client, experiment_id, machine_of(device), decision, stored)
    except (DataError, MlflowException, OSError) as error:
        message = (
            str(error)
            if isinstance(error, DataError)
            else (
                f"the tracking store at tracking.uri={cfg.tracking.uri} failed while the run was opened: "
                f"{type(error).__name__}: {str(error)[:300]}"
            )
        )
        return Outcome(Kind.NOT_OPENED, message)
    if isinstance(run, str):  # another launch has it
        return Outcome(Kind.SKIPPED, run)
    log.info("%s: MLflow run %s in %s", run.name, run.run_id, cfg.tracking.uri)
    try:
        result = execute(job, run, device, machine_of(device), resumed, data)
    except (KeyboardInterrupt, Exception) as error:
        return close(run, None, error)
    return close(run, result, None)
