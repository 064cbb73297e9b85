"""What the harness knows about Hydra's launcher plugins: where a job ran, how SLURM stops a job,
which SLURM jobs of a sweep vanished, and the one adapter that hydra-ray-launcher needs with Ray 2
(how many cores each job of a launcher may use: harness.cores)."""

import _thread
import glob
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write
from submitit.core import utils as submitit_utils
from submitit.core.utils import UncompletedJobError

from harness import record
from harness.cores import SWEEP_PROCESS_ENV
from harness.lease import BOOT, HOST, heartbeat_of, process_start

log = logging.getLogger(__name__)
# What submitit raises in a SLURM job when SLURM signals it before its time limit (`signal_delay_s`)
# and does not requeue it (the launcher's max_num_timeout: 0): the run is stopped, not broken.
SchedulerStop = UncompletedJobError
WATCH_SECONDS = 1.0  # how often a job looks for its sweep
GRACE_SECONDS = 30.0  # for the job to mark its run KILLED before the process exits regardless
_orphaned = threading.Event()
# Called on a Ctrl-C that reaches the command (the sweep marks its parent run KILLED). Kept here,
# not in harness.run, which runs as __main__ (a second import would be a second list).
INTERRUPT_HOOKS: list = []
_watching = threading.Lock()
_watcher: threading.Thread | None = None


def mark_sweep_process() -> None:
    """Called by the sweep: the jobs its launcher starts on this machine will watch this process."""
    os.environ[SWEEP_PROCESS_ENV] = f"{HOST}:{BOOT}:{os.getpid()}:{process_start(os.getpid())}"


def orphaned() -> bool:
    return _orphaned.is_set()


def watch_sweep() -> None:
    """In a job that a sweep's launcher started on this machine, in another process: a daemon
    thread that ends this process when the sweep's process is gone (killed, SIGKILL included),
    so that no job trains on as an orphan. The job gets a KeyboardInterrupt first, to mark its
    run KILLED; after GRACE_SECONDS the process exits regardless."""
    global _watcher
    value = os.environ.get(SWEEP_PROCESS_ENV, "")
    host, boot, pid, start = (value.split(":") + ["", "", "", ""])[:4]
    if not value or host != HOST or boot != BOOT or not pid.isdigit() or int(pid) == os.getpid():
        return  # no sweep, one on another machine (Ray, SLURM), or this job runs in the sweep's process
    with _watching:
        if _watcher is not None:
            return
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
            # A sweep started in the background by a shell (`&` in a script, nohup) passes its jobs
            # SIGINT ignored, and Python's interrupt_main does nothing for an ignored signal.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _watcher = threading.Thread(target=_watch, args=(int(pid), start), name="sweep-watch", daemon=True)
        _watcher.start()


def _watch(pid: int, start: str) -> None:
    while True:
        time.sleep(WATCH_SECONDS)
        now = process_start(pid)
        if now is None or (start.isdigit() and now not in (0, int(start))):
            break
    log.error("the sweep's process %d is gone: this job stops", pid)
    _orphaned.set()
    _thread.interrupt_main()
    time.sleep(GRACE_SECONDS)
    os._exit(1)


def placement_tags() -> dict[str, str]:
    """Where a job of a cluster launcher ran: its SLURM job, named as squeue and submitit's log
    folder (.submitit/JOB_ID) name it, and the Ray node that ran it."""
    tags = {}
    if "SLURM_ARRAY_JOB_ID" in os.environ:  # one element of the array that submitit submits a sweep as
        tags["slurm_job_id"] = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    elif "SLURM_JOB_ID" in os.environ:
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    ray = sys.modules.get("ray")  # imported only where Ray runs this job (or its sweep)
    if ray is not None and ray.is_initialized():
        tags["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return tags


# SLURM without accounting: submitit learns that a job ended from its result file alone.

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
SQUEUE_TIMEOUT = 60  # seconds; a controller that answers slower says nothing this time


def squeue_lists(job_ids: list[str]) -> set[str] | None:
    """Which of these SLURM jobs (as submitit names them: 17, or 17_3 for an array element)
    the scheduler still holds: pending, running, completing, requeued. None where squeue
    cannot say (no controller, no squeue). An ended job drops out of squeue's list; one the
    controller has forgotten (MinJobAge, 300 s by default) is refused as "Invalid job id",
    which squeue makes an error only when every id given is such."""
    if not job_ids:
        return set()
    try:
        listed = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i", f"--jobs={','.join(job_ids)}"],
            capture_output=True,
            text=True,
            timeout=SQUEUE_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return set() if "Invalid job id" in listed.stderr else None
    return set(listed.stdout.split()) & set(job_ids)


class SubmititJobs:
    """The SLURM jobs that Hydra's submitit launcher submitted for one sweep, as their folders
    (`hydra.launcher.submitit_folder`, `%j` the job id) show them: each holds the pickled job
    (JOB_submitted.pkl) and, once it ended, its result (JOB_0_result.pkl), which the sweep's
    process waits for."""

    def __init__(self, folder: str):
        self.folder = str(Path(folder).absolute())
        # A sweep folder given again (hydra.sweep.dir) holds the jobs of earlier launches: not ours.
        self.earlier = set(self.submitted())

    def paths(self, job_id: str) -> submitit_utils.JobPaths:
        return submitit_utils.JobPaths(self.folder, job_id=job_id, task_id=0)

    def submitted(self) -> list[str]:
        found = [Path(path) for path in glob.glob(str(self.paths("*").submitted_pickle))]
        jobs = [path.name.removesuffix("_submitted.pkl") for path in found]
        return [job for job, path in zip(jobs, found) if self.paths(job).submitted_pickle == path]

    def unfinished(self) -> list[str]:
        """This launch's jobs without a result yet."""
        return sorted(job for job in set(self.submitted()) - self.earlier if not self.has_result(job))

    def has_result(self, job_id: str) -> bool:
        folder = self.paths(job_id).folder
        try:  # as submitit does: a change to the folder makes NFS look at it again, not at its cache
            folder.chmod(folder.stat().st_mode)
        except OSError:
            pass
        return self.paths(job_id).result_pickle.exists()

    def job_call(self, job_id: str) -> tuple[int | None, list[str]]:
        """The job's number in the sweep (hydra.job.num) and its overrides, from its pickled call
        (the launcher's `__call__(overrides, job_dir_key, job_num, ...)`); (None, []) if unreadable."""
        try:
            args = submitit_utils.DelayedSubmission.load(self.paths(job_id).submitted_pickle).args
            return int(args[2]), list(args[0])
        except Exception:  # a pickle half written or from another version: the job goes unnamed
            return None, []

    def end_vanished(self, job_id: str) -> None:
        """Write the result that the job could not: a completed job without a value (its failure is
        recorded in the store, where the sweep's summary reads it), so that the launcher stops
        waiting for it and the sweep goes on to its summary. An error result would instead make
        Hydra abandon the whole sweep, summary and report included."""
        from hydra.core.utils import JobReturn, JobStatus

        with submitit_utils.temporary_save_path(self.paths(job_id).result_pickle) as temporary:
            submitit_utils.cloudpickle_dump(("success", JobReturn(status=JobStatus.COMPLETED)), temporary)


class VanishedJobs:
    """A SLURM job killed outright (scancel --signal=KILL, the kernel's OOM killer, a node lost)
    writes no result, and without SLURM accounting submitit never learns that it ended. A job
    that squeue did not list at two looks in a row, without a result, is ended for it: its run,
    if its heartbeat stopped too, is marked FAILED (environment: resumable), and the job's
    result written, so that the sweep goes on to its summary."""

    def __init__(self, submitit_folder: str, client, experiment_id: str):
        self.jobs = SubmititJobs(submitit_folder)
        self.client, self.experiment_id = client, experiment_id
        self.unlisted: set[str] = set()  # jobs without a result that squeue did not list at the last look
        self.failing = False

    def look(self, parent_run_id: str, vanished: dict[int, str]) -> None:
        """End the sweep's vanished jobs; those that vanished before opening their run go into
        `vanished` (job number -> SLURM job). A failing look is said once; the next tries again."""
        try:
            self.end_vanished(parent_run_id, vanished)
            self.failing = False
        except Exception as error:  # the store or squeue
            if not self.failing:
                log.warning("The sweep could not look for vanished SLURM jobs: %s: %s", type(error).__name__, error)
            self.failing = True

    def end_vanished(self, parent_run_id: str, vanished: dict[int, str]) -> None:
        waiting = self.jobs.unfinished()
        listed = squeue_lists(waiting)
        if listed is None:  # squeue cannot say: no conclusion from silence
            return
        unlisted = set(waiting) - listed
        confirmed, self.unlisted = unlisted & self.unlisted, unlisted
        if not confirmed:
            return
        children = self.client.search_runs([self.experiment_id], record.children_filter(parent_run_id))
        runs = {run.data.tags.get("slurm_job_id"): run for run in children}  # the job that trains each now
        for job in sorted(confirmed):
            if self.jobs.has_result(job):
                continue  # it ended meanwhile
            run = runs.get(job)
            if run is None:
                self.note_vanished_before_its_run(job, vanished)
            else:
                run = self.client.get_run(run.info.run_id)  # as fresh as can be: another launch may resume it
                beat = heartbeat_of(run)
                if run.info.status != "RUNNING":
                    log.error(
                        "The SLURM job %s vanished after it closed %s (MLflow run %s, %s): no result; the sweep stops "
                        "waiting for it.",
                        job,
                        run.info.run_name,
                        run.info.run_id,
                        run.info.status,
                    )
                elif beat is not None and beat.alive():
                    continue  # on another node a stopped heartbeat counts as such after lease.MISSED intervals
                else:
                    self.mark_vanished(run, job, beat)
            self.jobs.end_vanished(job)

    def mark_vanished(self, run, job: str, beat) -> None:
        then = (
            "the same command resumes it from its last checkpoint"
            if record.CHECKPOINT in run.data.tags
            else "the same command trains it again"
        )
        stopped = f"its heartbeat stopped {beat.age():.0f} s ago" if beat else "it has no heartbeat"
        reason = (
            f"the SLURM job {job} vanished: squeue no longer lists it, it wrote no result and {stopped} (killed "
            "outright: scancel --signal=KILL, out of memory, a node lost; its log may say which)"
        )
        self.client.set_tag(run.info.run_id, record.FAILURE, record.ENVIRONMENT)
        self.client.set_tag(run.info.run_id, record.ERROR, f"JobVanished: {reason}")
        self.client.set_terminated(run.info.run_id, "FAILED")
        log.error(
            "%s (MLflow run %s): %s; marked FAILED (environment); %s.", run.info.run_name, run.info.run_id, reason, then
        )

    def note_vanished_before_its_run(self, job: str, vanished: dict[int, str]) -> None:
        number, overrides = self.jobs.job_call(job)
        if number is not None:
            vanished[number] = job
        log.error(
            "The SLURM job %s%s vanished before it opened its run: squeue no longer lists it and it wrote no result; "
            "the sweep stops waiting for it. Its log: %s",
            job,
            f" ({' '.join(overrides)})" if overrides else "",
            self.jobs.paths(job).stdout,
        )


class RayObjectStore(Callback):
    """hydra-ray-launcher 1.2 passes ray.init a 78 MB object store, which Ray 2 refuses when it
    joins a running cluster ("object_store_memory must not be provided"), the launcher's main
    use. Unless the user set a size, Ray chooses one. Hydra creates the launcher from the config
    after this callback has run."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        init = config.hydra.launcher.get("ray", {}).get("init")
        if init is not None and "object_store_memory" not in init:
            with read_write(config.hydra), open_dict(init):
                init.object_store_memory = None
