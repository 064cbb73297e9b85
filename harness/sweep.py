"""The Hydra callback around a sweep (`-m`): check every job's config before the first one
trains, open the sweep's parent run and hand its id to every job, whichever launcher runs it
and wherever, and at the end record the study's members (the runs it trained and those it
reused from earlier sweeps), report on all of them and say which configurations failed. On
SLURM it also watches for jobs that vanished without a result, which the launcher would wait
for forever."""

import dataclasses
import functools
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path

import pandas as pd
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write
from tqdm import tqdm

from harness import identity, lease, plan, record
from harness.config import ConfigError, check, fail
from harness.device import pick_device
from harness.launchers import (
    INTERRUPT_HOOKS,
    SLURM_LAUNCHER,
    SubmititJobs,
    jobs_at_once,
    mark_sweep_process,
    squeue_lists,
)
from harness.lease import heartbeat_of
from harness.stats import claims
from harness.tracking.mlflow_store import StoreError, connect, find_run
from harness.tracking.runs import finished, load_runs, write_members
from harness.tracking.ui import closing_lines, describe_sweep

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 10.0  # how often the sweep looks for jobs that ended


def sweep_overrides(cfg: DictConfig) -> list[list[str]]:
    """The override list of every job of the sweep, expanded as Hydra's basic sweeper does."""
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + list(cfg.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def stop_on_error(hook):
    """Hydra turns an exception in a callback into a warning and goes on; a sweep without its
    parent run, or one that silently lost its figures, must end with an error instead."""

    @functools.wraps(hook)
    def checked(*args, **kwargs):
        try:
            return hook(*args, **kwargs)
        except Exception as error:
            log.exception("The sweep's %s failed", hook.__name__)
            fail(f"the sweep's {hook.__name__} failed: {type(error).__name__}: {error} (traceback above)", code=1)

    return checked


class SweepTracking(Callback):
    def __init__(self) -> None:
        self.client = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.fingerprints: list[str] = []  # one per job; jobs that train the same net share one
        self.job_overrides: list[list[str]] = []
        self.names: list[str] = []  # the net each job trains, as its run is named
        self.progress: plan.Progress | None = None  # None where a cluster runs the jobs: no estimate
        self.watching = threading.Event()  # set: the progress watcher stops
        self.estimate: float | None = None  # seconds, from the process's start
        self.slurm_jobs: SubmititJobs | None = None  # with the SLURM launcher only
        self.unlisted: set[str] = set()  # SLURM jobs without a result that squeue did not list at the last look
        self.vanished: dict[int, str] = {}  # job number -> SLURM job, of jobs that vanished before opening a run

    def __getstate__(self) -> dict:
        """The joblib and submitit launchers send the callbacks with every job; the watchers stay
        in the sweep's process."""
        return {key: value for key, value in self.__dict__.items() if key not in ("watching", "watcher", "job_watcher")}

    @stop_on_error
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        jobs = sweep_overrides(config)
        fingerprints, notes, configs = [], {}, []
        for overrides in jobs:
            try:
                job = compose(config_name=kwargs.get("config_name") or "config", overrides=overrides)
                check(job)
            except ConfigError as error:
                fail(f"{error} (in the sweep's job {' '.join(overrides)}; no job was started)")
            fingerprints.append(identity.fingerprint(job))
            configs.append(job)
            self.job_overrides.append(overrides)
            self.names.append(record.net_name(job))
            notes.update(dict.fromkeys(identity.unused_notes(job, overrides)))
        for note in notes:  # once for the sweep, not once per job
            print(note)
        distinct = len(set(fingerprints))
        if distinct < len(fingerprints):
            print(f"note: the sweep's {len(fingerprints)} jobs train {distinct} distinct nets; each is trained once.")
        self.fingerprints = fingerprints
        if config.plan:
            plan.show(configs, config.hydra.launcher)
            raise SystemExit(0)  # no parent run, no job
        try:
            self.client, experiment_id = connect(config.tracking.uri, config.tracking.experiment)
            self.experiment_id = experiment_id
        except StoreError as error:
            fail(str(error))
        self.note_other_precision(configs)
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        mark_sweep_process()  # the jobs that a local launcher starts end when this process ends
        if config.hydra.launcher.get("_target_") == SLURM_LAUNCHER:
            self.slurm_jobs = SubmititJobs(config.hydra.launcher.submitit_folder)
        INTERRUPT_HOOKS.append(self.on_interrupt)
        # What jobs need from here travels in their overrides, to whatever process or node runs
        # them: the parent run's id, and the sweep folder as an absolute path.
        with read_write(config.hydra):
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{sweep_dir}'")
            if config.tracking.parent_run_id:  # the user's own parent run
                self.parent_run_id = config.tracking.parent_run_id
            else:
                self.parent_run_id = self.open_parent_run(config, experiment_id, fingerprints, sweep_dir)
                config.hydra.overrides.task.append(f"tracking.parent_run_id='{self.parent_run_id}'")
        self.start_progress(configs, config.hydra.launcher)

    def start_progress(self, configs: list[DictConfig], launcher: DictConfig) -> None:
        """The sweep's estimate, and a thread that says each job's end with the time left. Where a
        cluster runs the jobs, this machine's rates say nothing of theirs: the count only."""
        at_once = jobs_at_once(launcher, configs[0].cores or len(os.sched_getaffinity(0)))
        made = plan.make_plan(
            configs, launcher, self.client, self.experiment_id, pick_device(configs[0].device),
            plan.calibrate if at_once else plan.no_calibration,
        )  # fmt: skip
        if at_once:
            print(plan.summary(made))
            self.estimate = made.wall_seconds if math.isfinite(made.wall_seconds) else None
        self.progress = plan.Progress(made)
        self.watcher = threading.Thread(target=self.watch_progress, name="sweep-progress", daemon=True)
        self.watcher.start()
        if self.slurm_jobs is not None:
            self.job_watcher = threading.Thread(target=self.watch_slurm_jobs, name="sweep-slurm-jobs", daemon=True)
            self.job_watcher.start()

    def watch_progress(self) -> None:
        while not self.watching.wait(PROGRESS_SECONDS):
            self.say_progress()

    def say_progress(self) -> None:
        """One line for each job of the sweep that ended since the last look."""
        try:
            runs = self.client.search_runs([self.experiment_id], record.children_filter(self.parent_run_id))
        except Exception:  # the store's trouble is the jobs' to report; the count waits
            return
        self.progress.running = {
            run.data.tags.get(record.FINGERPRINT): run.info.start_time / 1000
            for run in runs
            if run.info.status == "RUNNING"
        }
        ended = []
        for run in sorted(runs, key=lambda run: run.info.end_time or 0):
            info = run.info
            if info.status not in ("FINISHED", "FAILED", "KILLED") or not info.end_time:
                continue
            fingerprint = run.data.tags.get(record.FINGERPRINT)
            seconds = self.progress.run_seconds(fingerprint, run)
            if self.progress.finish(fingerprint, seconds, info.end_time / 1000):
                ended.append((info.run_name, info.status, fingerprint))
        for name, status, fingerprint in ended:
            tqdm.write(self.progress.line(name, status, fingerprint))

    def watch_slurm_jobs(self) -> None:
        failing = False
        while not self.watching.wait(lease.INTERVAL):  # a heartbeat's interval: no faster than jobs can tell
            try:
                self.end_vanished_jobs()
                failing = False
            except Exception as error:  # the store or squeue: the next look tries again
                if not failing:
                    log.warning("The sweep could not look for vanished SLURM jobs: %s: %s", type(error).__name__, error)
                failing = True

    def end_vanished_jobs(self) -> None:
        """A SLURM job killed outright (scancel --signal=KILL, the kernel's OOM killer, a node lost)
        writes no result, and without SLURM accounting submitit never learns that it ended. A job
        that squeue did not list at two looks in a row, without a result, is ended for it: its
        run, if its heartbeat stopped too, is marked FAILED (environment: resumable), and the
        job's result written, so that the sweep goes on to its summary."""
        waiting = self.slurm_jobs.unfinished()
        listed = squeue_lists(waiting)
        if listed is None:  # squeue cannot say: no conclusion from silence
            return
        unlisted = set(waiting) - listed
        confirmed, self.unlisted = unlisted & self.unlisted, unlisted
        if not confirmed:
            return
        children = self.client.search_runs([self.experiment_id], record.children_filter(self.parent_run_id))
        runs = {run.data.tags.get("slurm_job_id"): run for run in children}  # the job that trains each now
        for job in sorted(confirmed):
            if self.slurm_jobs.has_result(job):
                continue  # it ended meanwhile
            run = runs.get(job)
            if run is None:
                self.note_vanished_before_its_run(job)
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
            self.slurm_jobs.end_vanished(job)

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

    def note_vanished_before_its_run(self, job: str) -> None:
        number = self.slurm_jobs.job_number(job)
        known = number is not None and number < len(self.names)
        if known:
            self.vanished[number] = job
        net = f" ({self.names[number]}, {' '.join(self.job_overrides[number])})" if known else ""
        log.error(
            "The SLURM job %s%s vanished before it opened its run: squeue no longer lists it and it wrote no result; "
            "the sweep stops waiting for it. Its log: %s",
            job,
            net,
            self.slurm_jobs.paths(job).stdout,
        )

    def note_other_precision(self, configs: list[DictConfig]) -> None:
        """Where `precision=auto` resolves otherwise than on the machine that trained the store's
        runs of these nets, those runs are not reused: said once."""
        others = {}
        for job in configs:
            resolved = identity.effective_config(job)[0]["precision"]
            if job.precision != "auto" or find_run(self.client, self.experiment_id, identity.fingerprint(job)):
                continue
            for other in ("fp32", "bf16"):
                if other != resolved and find_run(
                    self.client, self.experiment_id, identity.fingerprint(identity.with_precision(job, other))
                ):
                    others.setdefault((resolved, other), set()).add(record.net_name(job))
        for (resolved, other), names in others.items():
            print(
                f"note: precision=auto is {resolved} on this machine; {len(names)} net(s) of this sweep have {other} "
                f"runs in the store (from a machine where auto is {other}, or from before the key), which it does not "
                f"reuse: {', '.join(sorted(names))}; precision={other} reuses them."
            )

    def open_parent_run(self, config: DictConfig, experiment_id: str, fingerprints: list[str], sweep_dir: str) -> str:
        # The same study launched again (after a kill, say) goes on in its parent run.
        study = identity.study(fingerprints)
        earlier = (
            None
            if config.rerun
            else self.client.search_runs(
                [experiment_id], record.study_filter(study), order_by=["attributes.start_time DESC"], max_results=1
            )
        )
        if earlier:
            run_id = earlier[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, record.SWEEP_DIR, sweep_dir)
            log.info("Sweep of %d jobs goes on in MLflow parent run %s", len(fingerprints), run_id)
            return run_id
        overrides = " ".join(config.hydra.overrides.task)
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep {overrides}"[:250],
            tags=record.sweep_tags(study, sweep_dir, len(fingerprints), overrides, record.source_commit()),
        )
        log.info("Sweep of %d jobs: MLflow parent run %s", len(fingerprints), run.info.run_id)
        return run.info.run_id

    @stop_on_error
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.progress is not None:
            self.watching.set()
            self.watcher.join()
            if self.slurm_jobs is not None:
                self.job_watcher.join()
            self.say_progress()  # the jobs that ended since the watcher last looked
        members = self.members()
        folder = Path(config.hydra.sweep.dir)
        if not members.empty:
            write_members(self.client, self.parent_run_id, members, folder)
        failed = members[members["status"] != "FINISHED"]
        missing = self.missing()  # jobs that stopped before they could open a run (their data, say)
        if missing:
            failed = pd.concat([failed, pd.DataFrame(missing, columns=members.columns)], ignore_index=True)
        trained = int((members["role"] == "trained").sum())
        reused = len(members) - trained
        for key, value in record.sweep_result_tags(len(members), trained).items():
            self.client.set_tag(self.parent_run_id, key, value)
        steps = self.next_steps(config, members)
        written = []
        if config.tracking.figures:
            # Here, not at the top: every job process loads this callback, none draws figures.
            from harness.report import report_sweep

            report = config.report
            figures = folder / record.FIGURES_FOLDER
            written = report_sweep(
                self.client, self.parent_run_id, figures, report.min_effect, report.confidence, steps
            )
        self.client.set_terminated(self.parent_run_id, "FAILED" if len(failed) else "FINISHED")
        reports = [path.resolve() for path in written if path.name in ("report.html", "report.md")]
        report_file = max(reports, key=lambda path: path.suffix == ".html", default=None)  # html where there is one
        describe_sweep(self.client, self.parent_run_id, members, report_file, steps)
        print(
            f"Sweep done: {len(members)} runs: {trained} trained, {reused} reused from earlier sweeps, "
            f"{len(failed)} not finished (MLflow parent run {self.parent_run_id})."
        )
        estimated = f" (estimated at its start: {plan.clock(self.estimate)})" if self.estimate is not None else ""
        print(f"Wall time: {plan.clock(plan.seconds_since_start())} from the command's start{estimated}.")
        if steps:
            print("What to run next:")
            for line in steps:
                print(f"  {line}")
        if written:
            print(f"Figures and report: {(folder / record.FIGURES_FOLDER).resolve()}")
        for line in closing_lines(config.tracking.uri, self.experiment_id, self.parent_run_id, report_file):
            print(line)
        if len(failed):
            names = ", ".join(
                f"{row.name} (run {row.run_id}, {row.overrides}): {self.stopped_as(row)}" for row in failed.itertuples()
            )
            fail(
                f"{len(failed)} run(s) did not finish: {names}; their errors are in the MLflow tag harness.error.",
                code=1,
            )

    def next_steps(self, config: DictConfig, members: pd.DataFrame) -> list[str]:
        """What to run next for the claims that this sweep's runs leave inconclusive, with the
        time more seeds would take here (harness.plan)."""
        if members.empty:
            return []
        runs = finished(load_runs(self.client, [self.experiment_id], run_ids=list(members["run_id"])))
        budget_curve = runs["iterations"].nunique() > 1
        found = []
        for _, nets in runs.groupby(["recipe", "family"]):
            budget = f" at {nets['iterations'].iloc[0]} iterations" if budget_curve else ""
            found += [
                dataclasses.replace(claim, nets=claim.nets + budget)
                for claim in claims(nets, config.report.min_effect, config.report.confidence)
            ]
        own = ("seed", "tracking.parent_run_id", "hydra.sweep.dir")
        kept = [o for o in config.hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in own]

        def more_seeds(seeds: int) -> tuple[str, float]:
            seed_list = ",".join(map(str, range(seeds)))
            jobs = {tuple(o for o in job if o.split("=", 1)[0] != "seed") for job in self.job_overrides}
            configs = [
                compose(config_name="config", overrides=[*job, f"seed={seed}"]) for job in jobs for seed in range(seeds)
            ]
            made = plan.make_plan(
                configs, config.hydra.launcher, self.client, self.experiment_id, pick_device(config.device)
            )
            return f"python -m harness.run -m {' '.join([*kept, f'seed={seed_list}'])}", made.wall_seconds

        return list(dict.fromkeys(plan.next_steps(found, more_seeds, config.report.confidence, budget_curve)))

    def stopped_as(self, row) -> str:
        """How a run of the sweep that did not finish stands: its status and the kind of failure."""
        failure = None if row.run_id == "none" else self.client.get_run(row.run_id).data.tags.get(record.FAILURE)
        return f"{row.status} ({failure})" if failure else row.status

    def missing(self) -> list[dict]:
        """The jobs of this sweep whose net has no run at all: they failed before opening one."""
        rows, seen = [], set()
        for number, (fp, overrides, name) in enumerate(zip(self.fingerprints, self.job_overrides, self.names)):
            if fp not in seen and find_run(self.client, self.experiment_id, fp) is None:
                vanished = self.vanished.get(number)
                rows.append(
                    {
                        "run_id": "none",
                        "name": name,
                        "seed": None,
                        "status": f"NOT STARTED (its SLURM job {vanished} vanished)" if vanished else "NOT STARTED",
                        "role": "trained",
                        "overrides": " ".join(overrides),
                    }
                )
            seen.add(fp)
        return rows

    def on_interrupt(self) -> None:
        """Ctrl-C: one line per run of this sweep that did not finish, the parent run KILLED."""
        if self.client is None or self.parent_run_id is None:
            print("Sweep stopped (Ctrl-C) before its parent run was opened.", file=sys.stderr)
            return
        try:
            deadline = time.monotonic() + 15  # jobs in other processes mark their runs KILLED themselves
            while True:
                members = self.members()
                ours = members[(members["role"] == "trained") & (members["status"] != "FINISHED")]
                running = [self.client.get_run(run_id) for run_id in ours[ours["status"] == "RUNNING"]["run_id"]]
                if not any(beat and beat.alive() for beat in map(heartbeat_of, running)) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for row in ours.itertuples():
                run = self.client.get_run(row.run_id)
                beat = heartbeat_of(run)
                alive = run.info.status == "RUNNING" and beat is not None and beat.alive()
                if run.info.status == "RUNNING" and not alive:
                    self.client.set_terminated(row.run_id, "KILLED")  # its process died before it could
                state = "still RUNNING in another process" if alive else "KILLED"
                print(f"stopped {row.name} (run {row.run_id}, {row.overrides}): {state}", file=sys.stderr)
            self.client.set_terminated(self.parent_run_id, "KILLED")
            print(
                f"Sweep stopped (Ctrl-C): MLflow parent run {self.parent_run_id} KILLED; the same command resumes "
                "its runs from their last checkpoints.",
                file=sys.stderr,
            )
        except BaseException as error:  # Ctrl-C again, or the store: one line
            print(
                f"Sweep stopped (Ctrl-C); its runs could not all be marked: {type(error).__name__}: {error}",
                file=sys.stderr,
            )

    def members(self) -> pd.DataFrame:
        """One row per distinct net of the sweep: the run that holds it now (trained by this sweep,
        or reused from an earlier one), with its status and the job overrides that asked for it."""
        rows, seen = [], set()
        for fp, overrides in zip(self.fingerprints, self.job_overrides):
            if fp in seen:
                continue
            seen.add(fp)
            run = find_run(self.client, self.experiment_id, fp)
            if run is None:  # the job failed before it could open a run
                continue
            rows.append(record.member_row(run, self.parent_run_id, " ".join(overrides)))
        return pd.DataFrame(rows, columns=record.MEMBER_COLUMNS)
