"""The Hydra callback around a sweep (`-m`), listed in conf/config.yaml: `Study` checks every
job's config before the first one trains, decides what this machine gives each job (harness.edge),
plans the sweep (harness.plan: its jobs' time and memory, and as many at once as fit in memory),
opens the sweep's parent run and hands its id to every job, whichever launcher runs it and
wherever; at the end it records the study's members, reports on them and says which
configurations failed (harness.study). It owns the sweep it opened (`Study.sweep`) and the parts
that watch it while it runs, each one concern:

- `Progress` prints the sweep's estimate as it starts and a line as each job ends (harness.plan);
  a growing study's looks say their own estimates, and each look's last lines before its verdicts.
- `VanishedSlurmJobs`, on SLURM, ends the jobs that vanished without a result, which the launcher
  would wait for forever (harness.launchers).
"""

import functools
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write
from tqdm import tqdm

from harness import edge, identity, plan, record, study
from harness.config import ConfigError, check
from harness.cores import jobs_at_once, why_fewer
from harness.device import pick_device
from harness.errors import Ended, HarnessError
from harness.launchers import INTERRUPT_HOOKS, SLURM_LAUNCHER, VanishedJobs, mark_sweep_process
from harness.lease import INTERVAL
from harness.sequential import Design
from harness.tracking.mlflow_store import connect

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 10.0  # how often the sweep looks for jobs that ended


def sweep_overrides(cfg: DictConfig) -> list[list[str]]:
    """The override list of every job of the sweep, as the sweeper expands them (the basic
    sweeper's expansion, which the sequential one shares): its params, then the command line's."""
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()]
    (jobs,) = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides(params + list(cfg.hydra.overrides.task)), None
    )
    return jobs


def stop_on_error(hook):
    """Hydra turns an exception in a callback into a warning and goes on; a sweep without its
    parent run, or one that silently lost its figures, must end the command instead."""

    @functools.wraps(hook)
    def checked(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except HarnessError as error:
            raise Ended(error) from error
        except Exception as error:
            name = f"{type(self).__name__}.{hook.__name__}"
            log.exception("The sweep's %s failed", name)
            failed = HarnessError(f"the sweep's {name} failed: {type(error).__name__}: {error} (traceback above)", 1)
            raise Ended(failed) from error

    return checked


class Repeating(threading.Thread):
    """`look` every `seconds` in a daemon thread, until `stop`."""

    def __init__(self, look: Callable[[], None], seconds: float, name: str):
        super().__init__(name=name, daemon=True)
        self.look, self.seconds, self.stopping = look, seconds, threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.seconds):
            self.look()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class SweepCallback(Callback):
    """The joblib and submitit launchers send the callbacks with every job, which calls none of
    these hooks: their state (threads included) stays in the sweep's process."""

    def __getstate__(self) -> dict:
        return {}


class Study(SweepCallback):
    sweep: study.Sweep | None = None  # the sweep this process runs, once opened
    progress: "Progress | None" = None  # its line as each job ends (a growing study's looks call it too)
    parts: tuple = ()  # what watches it while it runs

    @stop_on_error
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        composed = []
        for overrides in sweep_overrides(config):
            try:
                cfg = compose(config_name=kwargs.get("config_name") or "config", overrides=overrides)
                check(cfg)
            except ConfigError as error:
                raise ConfigError(f"{error} (in the sweep's job {' '.join(overrides)}; no job was started)") from None
            composed.append((tuple(overrides), cfg))
        jobs = resolved(composed, config.hydra.launcher)
        notes = [note for sweep_job in jobs for note in identity.unused_notes(sweep_job.job, sweep_job.overrides)]
        for note in dict.fromkeys(notes):  # once for the sweep, not once per job
            print(note)
        if (distinct := len(study.distinct(jobs))) < len(jobs):
            print(f"note: the sweep's {len(jobs)} jobs train {distinct} distinct nets; each is trained once.")
        if config.plan:
            plan.show([sweep_job.job for sweep_job in jobs], config.hydra.launcher)
            raise Ended()  # no parent run, no job
        client, experiment_id = connect(config.tracking.uri, config.tracking.experiment)
        for note in study.other_precision_notes(client, experiment_id, [sweep_job.job for sweep_job in jobs]):
            print(note)
        made, jobs = planned_to_fit(config, composed, jobs, client, experiment_id)
        mark_sweep_process()  # the jobs that a local launcher starts end when this process ends
        INTERRUPT_HOOKS.append(self.on_interrupt)
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        self.user_overrides = list(config.hydra.overrides.task)
        # What jobs need from here travels in their overrides, to whatever process or node runs
        # them: the parent run's id, the sweep folder as an absolute path, and, where they run on
        # this machine, the threads decided here for every job (a job in another process would look
        # at a load its siblings make); a cluster's node decides its own.
        with read_write(config.hydra):
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{sweep_dir}'")
            threads = {sweep_job.job.decided.threads for sweep_job in jobs}
            here = made.at_once is not None
            if here and len(threads) == 1 and not any(cfg.threads for _, cfg in composed):
                config.hydra.overrides.task.append(f"threads={min(threads)}")
                if fewer := why_fewer(composed[0][1], min(threads), config.hydra.launcher):
                    print(fewer)
            parent_run_id = config.tracking.parent_run_id  # the user's own parent run, if given
            if not parent_run_id:
                try:
                    parent_run_id = study.open_parent_run(
                        client,
                        experiment_id,
                        jobs,
                        sweep_dir,
                        " ".join(self.user_overrides),
                        config.rerun,
                        Design.of(config.design),
                    )
                except ConfigError as error:
                    raise ConfigError(f"{error} (no job was started)") from None
                config.hydra.overrides.task.append(f"tracking.parent_run_id='{parent_run_id}'")
        grows = config.hydra.sweeper.get("_target_") == study.GROWING_SWEEPER
        self.sweep = study.Sweep(client, experiment_id, parent_run_id, jobs, planned=made, grows=grows)
        self.progress = Progress(self.sweep)
        self.parts = (self.progress, VanishedSlurmJobs(config, self.sweep))

    @stop_on_error
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        for part in reversed(self.parts):
            part.stop()
        sweep = self.sweep
        estimate, when = sweep.estimate, "look by look" if sweep.grows else "at its start"
        wall_time = f"Wall time: {plan.clock(plan.seconds_since_start())} from the command's start" + (
            f" (estimated {when}: {plan.clock(estimate)})." if estimate is not None else "."
        )
        figures = config.tracking.figures
        ending = study.conclude(
            sweep, Path(config.hydra.sweep.dir), config.tracking.uri, config.report, self.more_seeds(config), figures,
            wall_time,
        )  # fmt: skip
        for line in ending.lines:
            print(line)
        if ending.failure:
            raise HarnessError(ending.failure, code=1)

    def more_seeds(self, config: DictConfig) -> Callable[[int], tuple[str, float]]:
        """(the command that trains this sweep's nets on seeds 0..n-1, its estimated seconds here)."""
        own = ("seed", "tracking.parent_run_id")
        kept = [o for o in self.user_overrides if o.split("=", 1)[0].lstrip("+~") not in own]

        def command(seeds: int) -> tuple[str, float]:
            seed_list = ",".join(map(str, range(seeds)))
            jobs = {
                tuple(o for o in sweep_job.overrides if o.split("=", 1)[0] != "seed") for sweep_job in self.sweep.jobs
            }
            composed = [
                (overrides, compose(config_name="config", overrides=overrides))
                for overrides in ([*job, f"seed={n}"] for job in jobs for n in range(seeds))
            ]
            seeded = [sweep_job.job for sweep_job in resolved(composed, config.hydra.launcher)]
            made = plan.make_plan(
                seeded, config.hydra.launcher, self.sweep.client, self.sweep.experiment_id, pick_device(config.device)
            )
            return f"python -m harness.run -m {' '.join([*kept, f'seed={seed_list}'])}", made.wall_seconds

        return command

    def on_interrupt(self) -> None:
        """Ctrl-C: one line per run of this sweep that did not finish, the parent run KILLED."""
        if self.sweep is None:
            print("Sweep stopped (Ctrl-C) before its parent run was opened.", file=sys.stderr)
            return
        try:
            for line in study.interrupted(self.sweep):
                print(line, file=sys.stderr)
            print(
                f"Sweep stopped (Ctrl-C): MLflow parent run {self.sweep.parent_run_id} KILLED; the same command "
                "resumes its runs from their last checkpoints.",
                file=sys.stderr,
            )
        except BaseException as error:  # Ctrl-C again, or the store: one line
            print(
                f"Sweep stopped (Ctrl-C); its runs could not all be marked: {type(error).__name__}: {error}",
                file=sys.stderr,
            )


def resolved(composed: list[tuple[tuple[str, ...], DictConfig]], launcher: DictConfig) -> list[study.SweepJob]:
    """The sweep's jobs, each resolved with what this machine decides for it under this launcher."""
    return [study.SweepJob(overrides, identity.resolve(cfg, edge.decide(cfg, launcher))) for overrides, cfg in composed]


def sweep_plan(config: DictConfig, jobs: list[study.SweepJob], client, experiment_id: str) -> plan.Plan:
    """The plan of the sweep's jobs with its launcher as configured now. Where a cluster runs the
    jobs, this machine's rates say nothing of theirs: nothing is calibrated."""
    launcher, first = config.hydra.launcher, jobs[0].job.config
    at_once = jobs_at_once(launcher, first.cores or len(os.sched_getaffinity(0)))
    return plan.make_plan(
        [sweep_job.job for sweep_job in jobs], launcher, client, experiment_id, pick_device(first.device),
        plan.calibrate if at_once else plan.no_calibration,
    )  # fmt: skip


def planned_to_fit(
    config: DictConfig, composed: list, jobs: list[study.SweepJob], client, experiment_id: str
) -> tuple[plan.Plan, list[study.SweepJob]]:
    """The sweep's plan and jobs, with no more jobs at once than fit in memory: joblib's n_jobs
    lowered before Hydra makes the launcher from it, the jobs resolved again at the threads that
    leaves each, and the plan made again; where one job alone does not fit, the launch is
    refused with the numbers, before its parent run opens or a job starts."""
    made = sweep_plan(config, jobs, client, experiment_id)
    if not made.fits:
        raise HarnessError(plan.memory_line(made).removeprefix("Memory: "))
    if made.at_once is not None and made.at_once < made.asked:
        print(plan.memory_line(made))
        with read_write(config.hydra.launcher):
            config.hydra.launcher.n_jobs = made.at_once
        jobs = resolved(composed, config.hydra.launcher)  # fewer jobs at once: more threads each
        made = sweep_plan(config, jobs, client, experiment_id)
    return made, jobs


class Progress:
    """The sweep's estimate, and a line as each job ends with the time left. Where a cluster
    runs the jobs, the count only."""

    def __init__(self, sweep: study.Sweep):
        self.sweep, made = sweep, sweep.planned
        if made.at_once and not sweep.grows:  # a growing study's looks each announce their own (harness.grow)
            print(plan.summary(made))
            sweep.estimate = made.wall_seconds if math.isfinite(made.wall_seconds) else None
        sweep.progress = plan.Progress(made)
        self.lock = threading.Lock()  # the watcher's looks and a growing study's, at the end of each look
        self.watcher = Repeating(self.look, PROGRESS_SECONDS, "sweep-progress")
        self.watcher.start()

    def look(self) -> None:
        with self.lock:
            try:
                runs = self.sweep.client.search_runs(
                    [self.sweep.experiment_id], record.children_filter(self.sweep.parent_run_id)
                )
            except Exception:  # the store's trouble is the jobs' to report; the count waits
                return
            for line in self.sweep.progress.lines(runs):
                tqdm.write(line)

    def stop(self) -> None:
        self.watcher.stop()
        self.look()  # the jobs that ended since the watcher last looked


class VanishedSlurmJobs:
    """With the SLURM launcher: every heartbeat's interval (no faster than a job can tell), the
    jobs that squeue no longer lists and that wrote no result are ended for them."""

    def __init__(self, config: DictConfig, sweep: study.Sweep):
        self.watcher = None
        if config.hydra.launcher.get("_target_") != SLURM_LAUNCHER:
            return
        jobs = VanishedJobs(config.hydra.launcher.submitit_folder, sweep.client, sweep.experiment_id)
        self.watcher = Repeating(lambda: jobs.look(sweep.parent_run_id, sweep.vanished), INTERVAL, "sweep-slurm")
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()


def study_of(callbacks) -> Study:
    """The Study among a Hydra run's callbacks (a sweeper's `hydra_context.callbacks`)."""
    return next(callback for callback in callbacks.callbacks if isinstance(callback, Study))
