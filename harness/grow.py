"""A study that grows itself, look after look of its design (harness.sequential): each look
trains the seeds it adds only for the nets that the claims still open compare (a shared
baseline once), judges the family, and the study stops when every claim is settled or its last
look is judged. Hydra's sweeper `hydra/sweeper=sequential` (hydra_plugins/harness_sequential)
runs it, as Optuna's sweeper launches its batches; a study's experiment file picks it:

    python -m harness.run -m +experiment=p2_shortcuts

The sweep's `seed` values are the first look's seeds. A relaunch judges the looks again from the
store, in order: their finished runs are skipped, not trained, and the first look whose runs are
not all there trains the rest. A look cut short (killed, Ctrl-C, a run that failed) is not
judged, so it never counts as a look.
"""

import math
import os
from pathlib import Path

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness import edge, identity, plan, study
from harness.config import ConfigError
from harness.cores import jobs_at_once
from harness.device import pick_device
from harness.sequential import Design
from harness.sweep import study_of
from harness.tracking.runs import write_members


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def nets_and_seeds(jobs: list[list[str]]) -> tuple[list[tuple[str, ...]], list[int]]:
    """The sweep's nets (each job's overrides but its seed, in the sweep's order) and its seeds."""
    nets = list(dict.fromkeys(tuple(o for o in job if key_of(o) != "seed") for job in jobs))
    seeds = sorted({int(o.split("=", 1)[1]) for job in jobs for o in job if key_of(o) == "seed"})
    return nets, seeds


def resolved(overrides: list[str], launcher) -> identity.Job:
    """A job of the study, with what this machine decides for it (its threads: the sweep's, in
    its overrides)."""
    cfg = compose(config_name="config", overrides=overrides)
    return identity.resolve(cfg, edge.decide(cfg, launcher))


def grow(sweeper, arguments: list[str]) -> list:
    """The sequential sweeper's sweep: the looks, each a batch for Hydra's launcher."""
    callback = study_of(sweeper.hydra_context.callbacks)
    sweep = callback.sweep
    config, launcher = sweeper.config, sweeper.launcher
    design = Design.of(config.design)
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    (grid,) = sweeper.split_arguments(parser.parse_overrides(sweeper._parse_config() + list(arguments)), None)
    nets, seeds = nets_and_seeds(grid)
    if seeds and seeds != list(range(design.looks[0])):
        raise ConfigError(
            f"seed={','.join(map(str, seeds))}: a growing study's seeds are its design's, "
            f"{', '.join(map(str, range(design.looks[0])))} at the first look (design.looks={list(design.looks)}); "
            "leave `seed` out, or set the looks."
        )
    names = {net: resolved([*net, "seed=0"], config.hydra.launcher).name for net in nets}
    returns, needed, trained_to = [], list(nets), 0
    for number, seeds_at_look in enumerate(design.looks, 1):
        batch = [[*net, f"seed={seed}"] for seed in range(trained_to, seeds_at_look) for net in needed]
        look_jobs = [study.SweepJob(tuple(job), resolved(job, config.hydra.launcher)) for job in batch]
        # The study is the looks' jobs: the first look's replace the Study callback's expansion of the grid.
        sweep.jobs = look_jobs if number == 1 else sweep.jobs + look_jobs
        announce(sweep, design, number, look_jobs, len(needed), trained_to, config.hydra.launcher)
        returns.append(launcher.launch(batch, initial_job_idx=sum(map(len, returns))))
        callback.progress.look()  # the look's last jobs' lines, before its verdicts
        trained_to = seeds_at_look
        # The study as the store holds it after each look: its report, plot and archive cover the
        # runs so far while later looks train for hours.
        write_members(sweep.client, sweep.parent_run_id, study.members(sweep), Path(config.hydra.sweep.dir))
        found = study.judged_claims(sweep, config.report.min_effect, config.report.confidence, design)
        print(f"Look {number} of {len(design.looks)} ({seeds_at_look} seeds):")
        for claim in found:
            print(f"  {claim.key} {claim.nets}: {claim.verdict} ({claim.reason})")
        if missing := study.not_finished(sweep, look_jobs):
            print(f"Look {number} is not whole ({', '.join(missing)}); the same command goes on from it.")
            break
        open_nets = {name for claim in found if claim.verdict == "open" for name in claim.pair}
        needed = [net for net in nets if names[net] in open_nets]
        if not needed:
            print("Every claim of the study's family is settled or final: the study ends here.")
            break
    return returns


def announce(sweep, design: Design, number: int, look_jobs, needed: int, trained_to: int, launcher) -> None:
    """The look's jobs and its time here, and the worst case to the last look: every net still
    needed trained to the last look's seeds."""
    seeds_at_look = design.looks[number - 1]
    jobs = [sweep_job.job for sweep_job in look_jobs]
    at_once = jobs_at_once(launcher, jobs[0].config.cores or len(os.sched_getaffinity(0)))
    made = plan.make_plan(
        jobs, launcher, sweep.client, sweep.experiment_id, pick_device(jobs[0].config.device),
        plan.calibrate if at_once else plan.no_calibration,
    )  # fmt: skip
    sweep.progress = plan.Progress(made)
    if math.isfinite(made.wall_seconds):
        sweep.estimate = (sweep.estimate or 0.0) + made.wall_seconds
    trained = [net.seconds for net in made.training]
    per_job = sum(trained) / len(trained) if trained else math.nan
    later = (design.looks[-1] - seeds_at_look) * needed
    time = f", about {plan.clock(made.wall_seconds)} here" if math.isfinite(made.wall_seconds) else ""
    worst = (
        f"; at worst {later} more job(s) after it, about {plan.clock(later * per_job / (at_once or 1))}"
        if later and math.isfinite(per_job)
        else ""
    )
    print(
        f"Look {number} of {len(design.looks)}: seeds {trained_to} to {seeds_at_look - 1} of {needed} net(s), "
        f"{len(look_jobs)} job(s){time}{worst}."
    )
