"""A sweep's study in the store, as plain functions of an MLflow client: the parent run that
holds it, its members (the runs it trained and those it reused from earlier sweeps), the jobs
that never opened a run, what to run next, and how the study ends. The sweep's callbacks
(harness.sweep) call them; a test calls them without Hydra."""

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import identity, plan, record
from harness.config import ConfigError
from harness.identity import Job
from harness.lease import heartbeat_of
from harness.sequential import Design
from harness.stats import claims
from harness.tracking.mlflow_store import find_run
from harness.tracking.runs import finished, load_runs, write_members
from harness.tracking.ui import closing_lines, describe_sweep

log = logging.getLogger(__name__)

# `hydra/sweeper=sequential`'s target: a sweep it runs grows look by look (harness.grow). The plugin,
# which Hydra imports on every start, keeps its own copy of the name (a growing study in
# tests/test_sweep.py prints no sweep-wide estimate only while the two agree).
GROWING_SWEEPER = "hydra_plugins.harness_sequential.SequentialSweeper"


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: the overrides Hydra's sweeper gave it, and its config resolved."""

    overrides: tuple[str, ...]
    job: Job


@dataclass
class Sweep:
    """A sweep as the store holds it: its parent run, and the jobs that make it."""

    client: object
    experiment_id: str
    parent_run_id: str
    jobs: list[SweepJob]
    vanished: dict[int, str] = dataclasses.field(default_factory=dict)  # job number -> SLURM job that vanished
    planned: plan.Plan | None = None  # the launch's plan (harness.plan), made before its parent run opened
    estimate: float | None = None  # the sweep's wall time as planned (a growing study's: its looks' so far)
    grows: bool = False  # look by look (hydra/sweeper=sequential, harness.grow)
    progress: plan.Progress | None = None  # the jobs it trains now (a growing study's: its look's), as planned


def other_precision_notes(client, experiment_id: str, jobs: list[Job]) -> list[str]:
    """Where `precision=auto` resolves otherwise than on the machine that trained the store's
    runs of these nets, those runs are not reused: one note per pair of precisions."""
    others: dict[tuple[str, str], set[str]] = {}
    for job in jobs:
        if job.requested.precision != "auto" or find_run(client, experiment_id, job.fingerprint):
            continue
        for other in ("fp32", "bf16"):
            if other != job.config.precision and find_run(
                client, experiment_id, identity.fingerprint(job.requested, other)
            ):
                others.setdefault((job.config.precision, other), set()).add(job.name)
    return [
        f"note: precision=auto is {resolved} on this machine; {len(names)} net(s) of this sweep have {other} runs in "
        f"the store (from a machine where auto is {other}, or from before the key), which it does not reuse: "
        f"{', '.join(sorted(names))}; precision={other} reuses them."
        for (resolved, other), names in others.items()
    ]


def open_parent_run(
    client,
    experiment_id: str,
    jobs: list[SweepJob],
    sweep_dir: str,
    overrides: str,
    rerun: bool,
    design: Design = Design(),
) -> str:
    """The sweep's parent run: the one of the same study launched before (after a kill, say),
    which goes on, unless `rerun`; else a new one. Either holds the study's design from its first
    look on, and a launch that asks for another is refused (ConfigError) before anything changes."""
    fingerprints = [sweep_job.job.fingerprint for sweep_job in jobs]
    study = identity.study(fingerprints)
    earlier = (
        None
        if rerun
        else client.search_runs(
            [experiment_id], record.study_filter(study), order_by=["attributes.start_time DESC"], max_results=1
        )
    )
    if earlier:
        run_id = earlier[0].info.run_id
        declare(client, earlier[0], design)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, record.SWEEP_DIR, sweep_dir)
        log.info("Sweep of %d jobs goes on in MLflow parent run %s", len(jobs), run_id)
        return run_id
    run = client.create_run(
        experiment_id,
        run_name=f"sweep {overrides}"[:250],
        tags=record.sweep_tags(study, sweep_dir, len(fingerprints), overrides, record.source_commit()),
    )
    declare(client, run, design)
    log.info("Sweep of %d jobs: MLflow parent run %s", len(jobs), run.info.run_id)
    return run.info.run_id


def declare(client, parent, design: Design) -> None:
    """Record the study's design on its parent run, unless it holds one; refuse another."""
    if record.DESIGN not in parent.data.tags:
        client.set_tag(parent.info.run_id, record.DESIGN, json.dumps(design.as_dict()))
        return
    kept = record.design_of(parent)
    if kept != design:
        keys = " ".join(
            f"design.{key}=" + (f"[{','.join(map(str, value))}]" if isinstance(value, list) else f"{value}")
            for key, value in kept.as_dict().items()
        )
        raise ConfigError(
            f"this study (MLflow parent run {parent.info.run_id}) declared its design at its first look: "
            f"{kept.describe()}; this launch asks for {design.describe()}. A design changed after a look no longer "
            f"keeps its error rate. Go on with the recorded one ({keys}), or start a new study on new seeds in another "
            "experiment "
            "(tracking.experiment=NAME)."
        )


def distinct(jobs: list[SweepJob]) -> list[tuple[int, SweepJob]]:
    """(job number, job) of the first job of each net: jobs that train the same net share it."""
    seen: set[str] = set()
    first = []
    for number, sweep_job in enumerate(jobs):
        if sweep_job.job.fingerprint not in seen:
            seen.add(sweep_job.job.fingerprint)
            first.append((number, sweep_job))
    return first


def members(sweep: Sweep) -> pd.DataFrame:
    """One row per distinct net of the sweep: the run that holds it now (trained by this sweep,
    or reused from an earlier one), with its status and the job overrides that asked for it.
    A job that failed before it could open a run has none."""
    rows = []
    for _, sweep_job in distinct(sweep.jobs):
        run = find_run(sweep.client, sweep.experiment_id, sweep_job.job.fingerprint)
        if run is not None:
            rows.append(record.member_row(run, sweep.parent_run_id, " ".join(sweep_job.overrides)))
    return pd.DataFrame(rows, columns=record.MEMBER_COLUMNS)


def not_started(sweep: Sweep) -> list[dict]:
    """The jobs of this sweep whose net has no run at all: they failed before opening one."""
    rows = []
    for number, sweep_job in distinct(sweep.jobs):
        if find_run(sweep.client, sweep.experiment_id, sweep_job.job.fingerprint) is None:
            vanished = sweep.vanished.get(number)
            rows.append(
                {
                    "run_id": "none",
                    "name": sweep_job.job.name,
                    "seed": None,
                    "status": f"NOT STARTED (its SLURM job {vanished} vanished)" if vanished else "NOT STARTED",
                    "role": "trained",
                    "overrides": " ".join(sweep_job.overrides),
                }
            )
    return rows


def stopped_as(client, row) -> str:
    """How a run of the sweep that did not finish stands: its status and the kind of failure."""
    failure = None if row.run_id == "none" else client.get_run(row.run_id).data.tags.get(record.FAILURE)
    return f"{row.status} ({failure})" if failure else row.status


def judged_claims(sweep: Sweep, min_effect: float, confidence: float, design: Design) -> list:
    """The claims of the sweep's runs that finished (or diverged: a result), judged by its
    design, for each recipe and family of nets."""
    held = members(sweep)
    runs = load_runs(sweep.client, [sweep.experiment_id], run_ids=list(held["run_id"]))
    return judge_runs(runs, min_effect, confidence, design)


def judge_runs(runs: pd.DataFrame, min_effect: float, confidence: float, design: Design) -> list:
    """Claims for each recipe and family of nets; where a study holds several budgets (the budget
    curve), each claim names its budget."""
    runs = finished(runs)
    budget_curve = runs["iterations"].nunique() > 1
    found = []
    for _, nets in runs.groupby(["recipe", "family"]):
        budget = f" at {nets['iterations'].iloc[0]} iterations" if budget_curve else ""
        found += [
            dataclasses.replace(claim, nets=claim.nets + budget)
            for claim in claims(nets, min_effect, confidence, design=design)
        ]
    return found


def not_finished(sweep: Sweep, jobs: list[SweepJob]) -> list[str]:
    """The jobs whose nets have no FINISHED run, nor one that diverged (a result), one phrase each."""
    missing = []
    for sweep_job in jobs:
        run = find_run(sweep.client, sweep.experiment_id, sweep_job.job.fingerprint)
        diverged = run is not None and record.DIVERGED_AT in run.data.tags
        if run is None or (run.info.status != "FINISHED" and not diverged):
            state = "no run" if run is None else run.info.status
            missing.append(f"{sweep_job.job.name} seed {sweep_job.job.config.seed}: {state}")
    return missing


def next_steps(found: list, design: Design, more_seeds: Callable, budget_curve: bool) -> list[str]:
    """What to run next for the claims the study leaves open: its design's next look."""
    return list(dict.fromkeys(plan.next_steps(found, design, more_seeds, budget_curve)))


@dataclass(frozen=True)
class Ending:
    """How a sweep ended: what it says, and the error that ends the command, if any."""

    lines: list[str]
    failure: str | None


def conclude(
    sweep: Sweep, folder: Path, uri: str, report, more_seeds: Callable, figures: bool, wall_time: str
) -> Ending:
    """Record the study's members on its parent run, report on them (figures and report into
    `folder`), close the parent run and say how the sweep ended."""
    client, parent = sweep.client, sweep.parent_run_id
    held = members(sweep)
    if not held.empty:
        write_members(client, parent, held, folder)
    failed = held[held["status"] != "FINISHED"]
    missing = not_started(sweep)
    if missing:
        failed = pd.concat([failed, pd.DataFrame(missing, columns=held.columns)], ignore_index=True)
    trained = int((held["role"] == "trained").sum())
    for key, value in record.sweep_result_tags(len(held), trained).items():
        client.set_tag(parent, key, value)
    runs = load_runs(client, [sweep.experiment_id], run_ids=list(held["run_id"]))
    design = record.design_of(client.get_run(parent))
    found = judge_runs(runs, report.min_effect, report.confidence, design)
    steps = next_steps(found, design, more_seeds, finished(runs)["iterations"].nunique() > 1) if found else []
    verdicts = [claim.verdict_line() for claim in found]
    written = []
    if figures:
        from harness.report import report_sweep  # figures load matplotlib: not in every job's process

        written = report_sweep(
            client, parent, folder / record.FIGURES_FOLDER, report.min_effect, report.confidence, steps
        )
    client.set_terminated(parent, "FAILED" if len(failed) else "FINISHED")
    reports = [path.resolve() for path in written if path.name in ("report.html", "report.md")]
    report_file = max(reports, key=lambda path: path.suffix == ".html", default=None)  # html where there is one
    describe_sweep(client, parent, held, report_file, steps, [design.describe(), *verdicts])

    lines = [
        f"Sweep done: {len(held)} runs: {trained} trained, {len(held) - trained} reused from earlier sweeps, "
        f"{len(failed)} not finished (MLflow parent run {parent}).",
        wall_time,
    ]
    if verdicts:
        lines += [f"Verdicts ({design.describe()}):", *(f"  {line}" for line in verdicts)]
    if steps:
        lines += ["What to run next:", *(f"  {line}" for line in steps)]
    if written:
        lines.append(f"Figures and report: {(folder / record.FIGURES_FOLDER).resolve()}")
    lines += closing_lines(uri, sweep.experiment_id, parent, report_file)
    if not len(failed):
        return Ending(lines, None)
    names = ", ".join(
        f"{row.name} (run {row.run_id}, {row.overrides}): {stopped_as(client, row)}" for row in failed.itertuples()
    )
    where = [f"the MLflow tag {record.ERROR}" if (failed["run_id"] != "none").any() else None]
    where += [f"the job's log under {folder.resolve()}" if (failed["run_id"] == "none").any() else None]
    return Ending(lines, f"{len(failed)} run(s) did not finish: {names}; why: {' and '.join(filter(None, where))}.")


def interrupted(sweep: Sweep, grace_seconds: float = 15.0) -> list[str]:
    """Ctrl-C: each run of this sweep that did not finish, marked KILLED where its process died
    before it could (jobs in other processes mark theirs), and the parent run KILLED; one line each."""
    client = sweep.client
    deadline = time.monotonic() + grace_seconds
    while True:
        held = members(sweep)
        ours = held[(held["role"] == "trained") & (held["status"] != "FINISHED")]
        running = [client.get_run(run_id) for run_id in ours[ours["status"] == "RUNNING"]["run_id"]]
        if not any(beat and beat.alive() for beat in map(heartbeat_of, running)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lines = []
    for row in ours.itertuples():
        run = client.get_run(row.run_id)
        beat = heartbeat_of(run)
        alive = run.info.status == "RUNNING" and beat is not None and beat.alive()
        if run.info.status == "RUNNING" and not alive:
            client.set_terminated(row.run_id, "KILLED")  # its process died before it could
        state = "still RUNNING in another process" if alive else "KILLED"
        lines.append(f"stopped {row.name} (run {row.run_id}, {row.overrides}): {state}")
    client.set_terminated(sweep.parent_run_id, "KILLED")
    return lines
