"""Plan a launch before running it (`plan=true`): what each distinct net would do with the store
(skip its finished run, leave one running elsewhere, resume, train), and how long training would
take on this machine with the chosen launcher. A plan trains nothing and writes nothing.

Step rates come from measurement: the store's finished runs of the same net, batch, image size,
precision, device and threads (their `seconds_per_iteration`, evaluations and probes included),
else a calibration of the net here (a few training steps and one evaluation batch: seconds).
So does each job's peak memory (harness.memory): a launch starts together only the jobs that fit
in the memory available now, and refuses one that does not fit even alone.
`next_steps` turns a study's open claims into its design's next look and what it would cost.
"""

import functools
import math
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness import identity, memory, record
from harness.analysis import PROBE_IMAGES
from harness.config import Config
from harness.cores import BUSY_CORES, cpu_seconds, jobs_at_once, others_busy
from harness.data import DATASETS
from harness.device import device_name
from harness.job import ELSEWHERE, NEW, RESUME, SKIP, checkpoint_dir, decide, look
from harness.lease import process_start

CALIBRATION_STEPS = 3  # timed, after 2 warm-up steps
# A calibration costs about ten steps, an evaluation of a few hundred images and a net built:
# a run shorter than this is not estimated (a test's smoke run would spend half its time on it).
CALIBRATED_FROM = 200  # iterations
# Each net's calibration, once per process: a study's plan asks again for its later looks.
CALIBRATIONS: dict[tuple, tuple[float, float, float, float]] = {}
# The time left scales by the jobs that ended last, this many per slot: they ran under the
# machine's load of now, and a test suite beside the sweep an hour ago says nothing of the rest.
RECENT_JOBS = 2
RATE_RUNS = 1000  # the latest finished runs of a net on this machine that its rate is the median of


@dataclass
class NetPlan:
    name: str  # resnet-56, plain-20, ... with the seed
    fingerprint: str
    action: str  # harness.job's skip, running elsewhere, resume, new run
    run_id: str | None  # the stored run skipped, left alone or resumed
    iterations: int  # left to train
    seconds: float  # the job's estimated wall time here; 0 when nothing is trained
    source: str  # where the rate came from, in words
    ended: str = "FINISHED"  # a skipped run's end: FINISHED, or diverged (a result)
    memory: float = math.nan  # bytes a job of it needs at its peak (harness.memory); NaN: unknown


@dataclass
class Plan:
    nets: list[NetPlan]
    jobs: int
    at_once: int | None  # jobs that run at once (those that fit in memory); None where a cluster schedules them
    threads: int
    startup: float  # seconds: this launch's own start-up until the plan, measured
    asked: int | None = None  # the launcher's jobs at once, before memory; None: as at_once
    free: float = math.nan  # bytes available to the jobs as the launch plans (harness.memory.available)

    @property
    def fits(self) -> bool:
        """Whether one job at a time, at least, fits in the memory available."""
        return self.at_once != 0

    @property
    def training(self) -> list[NetPlan]:
        return [net for net in self.nets if net.action in (NEW, RESUME)]

    @property
    def wall_seconds(self) -> float:
        """The launch's estimated wall time: jobs in order on the first free slot of `at_once`
        (a cluster: all at once), plus one start-up per slot."""
        seconds = [net.seconds for net in self.training]
        if not self.fits:
            return math.nan
        slots = self.at_once or max(1, len(seconds))
        return makespan(seconds, slots) + self.startup * min(slots, max(1, len(seconds)))


def makespan(seconds: list[float], slots: int) -> float:
    """The end of the last of these jobs, each started in order on the first slot that is free."""
    free = [0.0] * slots
    for job in seconds:
        free[free.index(min(free))] += job
    return max(free, default=0.0)


def clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@functools.cache
def startup_seconds() -> float:
    """A launch's own start-up (imports, Hydra, the checks): this process's age when first asked."""
    return seconds_since_start()


def seconds_since_start() -> float:
    """This process's age (0 where /proc does not say)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = process_start(os.getpid())
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK")) if ticks else 0.0


# Rates.


def speed_key(model, family, dataset, resize, batch_size, precision, device, name, threads) -> tuple[str, ...]:
    """What a step's time depends on: a run imported from another machine (harness.archive) or
    trained there beside this one on a shared store is not this machine's measure."""
    return tuple(str(part) for part in (model, family, dataset, resize, batch_size, precision, device, name, threads))


def job_key(job: identity.Job, device, name: str, threads: int) -> tuple[str, ...]:
    """The speed key of a job on `device`, named `name` (harness.device.device_name)."""
    cfg = job.config
    return speed_key(
        job.name,
        cfg.family,
        cfg.dataset.name,
        cfg.dataset.resize,
        cfg.schedule.batch_size,
        cfg.precision,
        device.type,
        name,
        threads,
    )


def run_key(run) -> tuple[str, ...]:
    tags, params = run.data.tags, run.data.params
    return speed_key(
        tags["model"],
        tags.get("family", "cifar"),
        tags["dataset"],
        params.get("dataset.resize", "None"),
        params.get("schedule.batch_size"),
        tags.get("precision", "fp32"),  # runs of earlier versions trained in fp32
        tags.get("device"),
        tags.get("device_name"),  # runs of earlier versions named no CPU: calibrated instead
        tags.get("threads"),
    )


def run_rate(run) -> float | None:
    """Seconds per iteration of a finished run: as it measured itself, or for runs of earlier
    versions its time in the store over its iterations."""
    if record.SECONDS_PER_ITERATION in run.data.metrics:
        return run.data.metrics[record.SECONDS_PER_ITERATION]
    iterations = int(run.data.params.get("schedule.iterations", 0))
    if not iterations or not run.info.end_time:
        return None
    return (run.info.end_time - run.info.start_time) / 1000 / iterations


def run_peak(run) -> float | None:
    """A finished run's peak memory in bytes, as it recorded it: on CUDA its tensors' on the
    device, else its process's resident set."""
    key = record.PEAK_GPU_MB if run.data.tags.get("device") == "cuda" else record.PEAK_RSS_MB
    peak = run.data.metrics.get(key)
    return peak * 2**20 if peak else None


def measured_runs(client, experiments: list[str], key: tuple[str, ...]) -> list:
    """The finished training runs of this speed key in these experiments of the store, latest
    first. The store is asked for this machine's runs of this net only: its cost does not grow
    with the store."""
    model, _, dataset, _, _, _, _, name, _ = key
    wanted = f"tags.model = '{model}' AND tags.dataset = '{dataset}' AND tags.device_name = '{name}'"
    found = []
    for start in range(0, len(experiments), 100):  # search_runs takes at most 100 experiments
        runs = client.search_runs(
            experiments[start : start + 100],
            f"{record.JOBS_FILTER} AND attributes.status = 'FINISHED' AND {wanted}",
            max_results=RATE_RUNS,
            order_by=["attributes.start_time DESC"],
        )
        found += [run for run in runs if run_key(run) == key]
    return found


def evaluated_images(cfg: Config, iterations: int) -> int:
    """Images a run's evaluations forward in `iterations` of its schedule: the evaluation subset
    every eval_every iterations, then the whole evaluation split and the final training sample."""
    schedule, dataset = cfg.schedule, cfg.dataset
    split = dataset.validation_size or DATASETS[dataset.name].test_images
    trainable = DATASETS[dataset.name].train_images - (dataset.validation_size or 0)
    intermediate = (iterations - 1) // schedule.eval_every * min(schedule.eval_subset or split, split)
    return intermediate + split + min(schedule.final_train_subset or trainable, trainable)


def calibrate(job: identity.Job, device) -> tuple[float, float, float]:
    """(seconds per training step, seconds per evaluated image, bytes a job needs at its peak) of
    the job's net here, through the harness's own loop and evaluation on random images of its
    data set's shape, with the job's threads and kernels: a run of 2 steps and one of
    2 + CALIBRATION_STEPS, whose difference leaves out what both pay once. The peak is the
    first run's (the net built, its optimizer's state made, a step's activations held for
    backward), and the data set a job holds besides."""
    import torch

    from harness.data.memory import random_data
    from harness.device import deterministic_kernels
    from harness.models.resnet import build_for
    from harness.tracking import MemoryTracker
    from harness.train import eval_batch, evaluate, train_job

    cfg, threads = job.config, job.decided.threads
    evaluated = eval_batch(device)
    data = random_data(cfg.dataset.name, max(2 * cfg.schedule.batch_size, evaluated), device, cfg.dataset.resize)
    images, labels = data.eval_images[:evaluated], data.eval_labels[:evaluated]
    settings = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.set_num_threads(threads)
    deterministic_kernels(cfg.deterministic)
    try:
        model = build_for(job, data.in_channels, data.num_classes).to(device, memory_format=torch.channels_last)

        def seconds(iterations: int) -> float:
            schedule = replace(cfg.schedule, iterations=iterations, eval_every=iterations + 1, final_train_subset=1)
            run = replace(job, config=replace(cfg, schedule=schedule, analysis=False))
            start = time.perf_counter()
            train_job(run, model, data, MemoryTracker(), device)
            return time.perf_counter() - start

        with memory.Peak(device) as peak:  # the first run pays the first steps' costs, as the short one does not
            longer = seconds(2 + CALIBRATION_STEPS)
        step = (longer - seconds(2)) / CALIBRATION_STEPS
        evaluate(model, data, images, labels, cfg.precision)  # warm-up
        start = time.perf_counter()
        evaluate(model, data, images, labels, cfg.precision)
        return max(step, 0.0), (time.perf_counter() - start) / evaluated, peak.peak + dataset_bytes(cfg)
    finally:
        torch.set_num_threads(settings[0])
        torch.use_deterministic_algorithms(settings[1], warn_only=settings[2])
        torch.backends.cudnn.benchmark = settings[3]


def dataset_bytes(cfg: Config) -> int:
    """The data set a job holds in memory, both splits as bytes per pixel (harness.data)."""
    data_set = DATASETS[cfg.dataset.name]
    images = data_set.train_images + data_set.test_images
    return images * data_set.channels * data_set.image_size**2


def calibrated_under_load(calibrate_nets, job: identity.Job, device) -> tuple[float, float, float, float]:
    """(step, per image, peak bytes, cores that other processes kept busy meanwhile): a
    calibration beside other work measures their share of the machine, not the job's (1,193 ms
    against 220 ms alone)."""
    before, start = cpu_seconds(), time.perf_counter()
    step, per_image, peak = calibrate_nets(job, device)
    return step, per_image, peak, others_busy(before, time.perf_counter() - start)


def no_calibration(job: identity.Job, device) -> tuple[float, float, float]:
    """Where the jobs run elsewhere: no estimate for a net this machine has not measured."""
    return math.nan, math.nan, math.nan


def estimated_seconds(cfg: Config, iterations: int, step: float, per_image: float) -> float:
    """A run's wall time from its calibrated step and evaluation: the steps, the evaluations and
    the probes (each an evaluation forward and a training step of PROBE_IMAGES)."""
    probes = iterations // cfg.schedule.analysis_every + 1 if cfg.analysis else 0
    probe = PROBE_IMAGES * per_image + PROBE_IMAGES / cfg.schedule.batch_size * step
    return iterations * step + evaluated_images(cfg, iterations) * per_image + probes * probe


# The plan.


def iterations_left(client, stored, cfg: Config) -> int:
    """A resumed run trains from its last checkpoint, where its training curve was last flushed."""
    history = client.get_metric_history(stored.run_id, record.TRAIN_ERROR)
    done = max((point.step for point in history), default=0)
    return max(0, cfg.schedule.iterations - done)


def make_plan(
    jobs: list[identity.Job],
    launcher: DictConfig | None,
    client,
    experiment_id: str | None,
    device,
    calibrate_nets=calibrate,
) -> Plan:
    """What a launch of these jobs (resolved at the launch's edge: harness.edge) by this Hydra
    launcher would do, how long it would take here, and how many of its jobs fit in this
    machine's memory at once."""
    threads = jobs[0].decided.threads
    here = device_name(device)
    nets, seen, measured = [], set(), {}
    experiments = [experiment.experiment_id for experiment in client.search_experiments()] if client else []
    for job in jobs:
        cfg, fingerprint = job.config, job.fingerprint
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        name = f"{job.name} seed {cfg.seed}"
        stored = look(client, experiment_id, fingerprint, checkpoint_dir(cfg)) if experiment_id else None
        decision = decide(stored, cfg.rerun)
        if decision.action not in (NEW, RESUME):
            ended = "FINISHED" if decision.run.status == "FINISHED" else "diverged"
            nets.append(NetPlan(name, fingerprint, decision.action, decision.run.run_id, 0, 0.0, "", ended))
            continue
        iterations = cfg.schedule.iterations
        if decision.action == RESUME:
            iterations = iterations_left(client, decision.run, cfg)
        key = job_key(job, device, here, threads)
        if key not in measured:
            measured[key] = measured_runs(client, experiments, key)
        rates = [rate for run in measured[key] if (rate := run_rate(run))]
        peaks = [peak for run in measured[key] if (peak := run_peak(run))]
        need = statistics.median(peaks) if peaks else math.nan
        if rates:
            seconds = iterations * statistics.median(rates)
            source = f"measured: {len(rates)} finished run(s) here"
        elif iterations < CALIBRATED_FROM:
            seconds, source = math.nan, f"not estimated: under {CALIBRATED_FROM} iterations, not worth a calibration"
        else:
            if (calibrate_nets, key) not in CALIBRATIONS:
                CALIBRATIONS[calibrate_nets, key] = calibrated_under_load(calibrate_nets, job, device)
            step, per_image, need, busy = CALIBRATIONS[calibrate_nets, key]
            seconds = estimated_seconds(cfg, iterations, step, per_image)
            source = f"calibrated: {1000 * step:.0f} ms a step"
            if busy > BUSY_CORES:
                source += f", under load ({busy:.1f} cores busy with other work: too slow an estimate)"
        run_id = decision.run.run_id if decision.action == RESUME else None
        nets.append(NetPlan(name, fingerprint, decision.action, run_id, iterations, seconds, source, memory=need))
    cores = jobs[0].config.cores or len(os.sched_getaffinity(0))
    made = Plan(nets, len(jobs), jobs_at_once(launcher, cores), threads, startup_seconds())
    if made.at_once is not None:  # a cluster's nodes are not this machine: their memory is the scheduler's
        made.asked, made.free = made.at_once, memory.available(device)
        made.at_once = memory.jobs_that_fit([net.memory for net in made.training], made.asked, made.free)
    return made


def memory_line(plan: Plan) -> str | None:
    """What the plan's jobs need of this machine's memory, and what the launch does about it; None
    where nothing is known (a cluster, or no net measured)."""
    needs = sorted((net.memory for net in plan.training if math.isfinite(net.memory)), reverse=True)
    if plan.asked is None or not needs or not math.isfinite(plan.free):
        return None
    largest = max(plan.training, key=lambda net: net.memory if math.isfinite(net.memory) else -1)
    free = f"{memory.gib(plan.free)} available here now (MemAvailable, or the device's free memory)"
    if not plan.fits:
        return (
            f"Memory: one job of {largest.name} needs {memory.gib(largest.memory)} at its peak, more than the "
            f"{free}: the launch refuses to start. Free memory, or train a shallower net or a smaller batch "
            "(schedule.batch_size) on this machine."
        )
    together = sum(needs[: plan.asked])
    if plan.at_once == plan.asked:
        return f"Memory: {plan.asked} job(s) at once need at most {memory.gib(together)} at their peaks; {free}."
    return (
        f"Memory: {plan.asked} jobs at once would need up to {memory.gib(together)} at their peaks ({largest.name}: "
        f"{memory.gib(largest.memory)} each), more than the {free}: the launch runs {plan.at_once} at a time "
        "(the launcher's n_jobs lowered)."
    )


def plan_lines(plan: Plan, device) -> list[str]:
    at_once = (
        "a cluster schedules them"
        if plan.at_once is None
        else f"{plan.at_once} at a time, {plan.threads} thread(s) each"
        if plan.fits
        else "none fits in memory"
    )
    width = max([28, *(len(net.name) for net in plan.nets)])  # resnet-1001-bottleneck-B-pre seed 11
    lines = [
        f"Plan: {plan.jobs} job(s), {len(plan.nets)} distinct net(s); on {device.type} here, {at_once}.",
        f"  {'net':{width}} {'action':18} {'iterations':>10} {'estimate':>9} {'memory':>9}  from",
    ]
    for net in plan.nets:
        what = {SKIP: f"skip ({net.ended} run {net.run_id})"}.get(net.action, net.action)
        if net.action == RESUME:
            what = f"resume run {net.run_id[:8]}"
        if net.action not in (NEW, RESUME):
            lines.append(f"  {net.name:{width}} {what}")
            continue
        lines.append(
            f"  {net.name:{width}} {what:18} {net.iterations:10d} {clock(net.seconds):>9} "
            f"{memory.gib(net.memory).replace('unknown', '?'):>9}  {net.source}"
        )
    trained = plan.training
    reused = sum(net.action == SKIP for net in plan.nets)
    elsewhere = len(plan.nets) - len(trained) - reused
    total = (
        f"estimated wall time here {clock(plan.wall_seconds)} (training {clock(sum(n.seconds for n in trained))} "
        f"of job time, start-up {plan.startup:.0f} s per process), the report not included"
        if plan.at_once is not None
        else f"estimated job time {clock(sum(n.seconds for n in trained))} in all, the longest job "
        f"{clock(max((n.seconds for n in trained), default=0))}, at this machine's rates"
    )
    lines.append(
        f"{len(trained)} to train, {reused} reused, {elsewhere} running elsewhere: {total}."
        if trained
        else f"Nothing to train: {reused} reused, {elsewhere} running elsewhere."
    )
    return lines + [line for line in [memory_line(plan)] if line]


def show(jobs: list[identity.Job], launcher: DictConfig | None) -> None:
    """Print the plan of a launch of these jobs; nothing is trained or stored."""
    from harness.device import pick_device
    from harness.tracking.mlflow_store import look_in

    cfg = jobs[0].config
    device = pick_device(cfg.device)
    client, experiment_id = look_in(cfg.tracking.uri, cfg.tracking.experiment)
    for line in plan_lines(make_plan(jobs, launcher, client, experiment_id, device), device):
        print(line)
    if len(jobs) > 1:  # a study
        for line in design_lines(jobs, launcher, client, experiment_id, device):
            print(line)
    print("Nothing was trained or stored (plan=true); the same command without it runs this.")


ASSUMED_SD = 2.75  # points: the paired sd of P2's shortcuts study at 3 seeds, where a study has none yet
UNTRAINED_SEED = 1_000_000  # a seed no study trains: the planner's estimate of a net's next seed


def design_lines(jobs: list[identity.Job], launcher, client, experiment_id, device) -> list[str]:
    """What the study's design promises, simulated with the function its report calls: the rate
    of false verdicts where no net differs, the power and seeds at the claims' `min_effect`, and
    what each look would cost here with every claim still open."""
    from harness.sequential import Design, simulate
    from harness.stats import claims
    from harness.tracking.runs import load_runs

    cfg = jobs[0].requested
    design, min_effect = Design.of(cfg.design), cfg.report.min_effect
    family = [claim for claim in claims(_unrun(jobs), min_effect, design=design) if claim.verdict != "not judged"]
    if not family:
        return [f"Design: {design.describe()}; no claim of the table compares these nets."]
    stored = load_runs(client, [experiment_id]) if experiment_id else None
    known = [] if stored is None else claims(stored[stored["model"].isin({job.name for job in jobs})], design=design)
    sds = sorted(claim.interval.sd for claim in known if claim.interval.n >= 2 and claim.verdict != "not judged")
    sd, source = (sds[len(sds) // 2], "the median of this study's claims so far") if sds else (ASSUMED_SD, "assumed")
    null = simulate(design, [0.0] * len(family), sd, min_effect)
    power = simulate(design, [min_effect] * len(family), sd, min_effect)
    lines = [
        f"Design: {design.describe()}; {len(family)} claim(s) in its family.",
        f"  Simulated ({null.studies:,} studies, the claims sharing one baseline net, paired sd {sd:.2f} points, "
        f"{source}): a false verdict where no net differs in {null.any_verdict:.1%} of studies (at most "
        f"{design.alpha:.0%}); at an effect of {min_effect:g} point(s), each claim reproduced in "
        f"{sum(power.settled) / len(family):.0%} of studies, after {power.expected_seeds:.1f} seeds on average, "
        f"{power.largest_seeds} at most.",
    ]
    nets = {job.fingerprint: job for job in jobs}
    fresh = [
        identity.resolve(OmegaConf.merge(job.requested, {"seed": UNTRAINED_SEED}), job.decided) for job in nets.values()
    ]
    per_net = [net.seconds for net in make_plan(fresh, launcher, client, experiment_id, device).training]
    if per_net and all(math.isfinite(seconds) for seconds in per_net):
        at_once = make_plan(fresh[:1], launcher, None, None, device, no_calibration).at_once or len(per_net)
        costs = []
        for before, after in zip(design.looks, design.looks[1:]):
            seconds = makespan(per_net * (after - before), at_once)
            costs.append(f"look {design.looks_reached(after)} ({after} seeds): {len(per_net) * (after - before)} "
                         f"jobs, about {clock(seconds)}")  # fmt: skip
        lines.append(f"  Each later look here, every claim still open: {'; '.join(costs)}.")
    return lines


def _unrun(jobs):
    """The jobs' nets as the report's rows, without results: what the claims table compares."""
    import pandas as pd

    from harness.record import RUN_COLUMNS

    rows = []
    for job in jobs:
        trained = job.trained
        row = dict.fromkeys(RUN_COLUMNS, math.nan)
        variant = job.name.replace(f"-{trained['depth']}", "", 1)
        row |= {
            "model": job.name, "variant": variant, "depth": trained["depth"], "residual": trained["residual"],
            "shortcut": job.config.shortcut, "activation": trained["activation"], "family": job.config.family,
            "seed": trained["seed"], "eval_split": "test", "status": "FINISHED",
        }  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


# What to run next.


BUDGET_CLAIMS = ("C3", "C3-test")  # their gap shrinks with the budget: P1 claims them of full training


def next_steps(found, design, more_seeds, budget_curve: bool = False) -> list[str]:
    """What to run next: the study's next look, for the claims it leaves open, with the command
    that trains its seeds and the time here. Never a number of seeds at which an interval would
    exclude zero: judged there at 95% a growing study errs far more than 5% (harness.sequential).
    And, for a claim bound to the budget that goes against P1, the budget curve, unless these
    claims are one already (`budget_curve`). `more_seeds(n)` is (the command that trains seeds
    0..n-1, its estimated seconds here)."""
    lines = []
    for claim in found:
        interval = claim.interval
        named = f"{claim.key} {claim.nets}" if claim.nets else claim.key
        against = claim.verdict != "reproduced" and interval.n >= 1 and interval.mean < 0
        if claim.key in BUDGET_CLAIMS and against and not budget_curve:
            lines.append(
                f"{named} goes against the claim at this budget, which P1 makes of full training: the budget "
                "curve, `python -m harness.run -m +experiment=budget_curve`, draws its gap against iterations."
            )
    still_open = [claim for claim in found if claim.verdict == "open" and claim.look and claim.look.next_seeds]
    if not still_open:
        return lines
    seeds = min(claim.look.next_seeds for claim in still_open)
    look = design.looks_reached(seeds)
    names = "; ".join(dict.fromkeys(f"{claim.key} {claim.nets}" if claim.nets else claim.key for claim in still_open))
    command, seconds = more_seeds(seeds)
    cost = f", about {clock(seconds)} here" if math.isfinite(seconds) else ""
    later = f"; at worst the last look at {design.looks[-1]} seeds" if seeds < design.looks[-1] else ""
    return [
        f"The design's next look, {look} of {len(design.looks)}, is at {seeds} seeds for the claims still open "
        f"({names}): `{command}`{cost}{later}. The verdicts are judged there, not between looks; "
        "hydra/sweeper=sequential goes on look after look and trains only the nets open claims compare.",
        *lines,
    ]


class Progress:
    """Where a sweep stands: its jobs done of those it trains, and the time left, from the plan's
    estimates scaled by how the latest finished jobs' real times compared with theirs."""

    def __init__(self, plan: Plan):
        self.estimates = {net.fingerprint: net.seconds for net in plan.training}
        self.iterations = {net.fingerprint: net.iterations for net in plan.training}
        self.at_once = plan.at_once or max(1, len(self.estimates))
        self.done: dict[str, float] = {}  # fingerprint: its real seconds
        self.running: dict[str, float] = {}  # fingerprint: when its run started (seconds since the epoch)
        self.since = time.time()

    def finish(self, fingerprint: str, seconds: float, ended: float = math.inf) -> bool:
        """Count a job of the sweep as done; False if it was counted already, is not one it trains,
        or ended (seconds since the epoch) before this launch: an earlier launch stopped it, and
        this one resumes it."""
        if fingerprint not in self.estimates or fingerprint in self.done or ended < self.since:
            return False
        self.done[fingerprint] = seconds
        return True

    def run_seconds(self, fingerprint: str, run) -> float:
        """A finished job's time: its run's, or for a run that an earlier launch began (resumed
        here) its loop's time over the iterations this launch trained: the gap between the
        launches is nobody's job time, and would swell the time left."""
        info = run.info
        if info.start_time / 1000 >= self.since:
            return (info.end_time - info.start_time) / 1000
        rate = run.data.metrics.get(record.SECONDS_PER_ITERATION)
        iterations = self.iterations.get(fingerprint, 0)
        return rate * iterations if rate and iterations else info.end_time / 1000 - self.since

    def seconds_left(self, now: float | None = None) -> float:
        """The running jobs' rest on their slots, then the queued jobs on the first slot free."""
        now = time.time() if now is None else now
        recent = list(self.done)[-RECENT_JOBS * self.at_once :]
        estimated = sum(self.estimates[fingerprint] for fingerprint in recent)
        scale = sum(self.done[fingerprint] for fingerprint in recent) / estimated if estimated else 1.0
        running, queued = [], []
        for fingerprint, seconds in self.estimates.items():
            if fingerprint in self.done:
                continue
            if fingerprint in self.running:
                elapsed = now - max(self.running[fingerprint], self.since)
                running.append(max(scale * seconds - elapsed, 0.0))  # max keeps an unknown (NaN) rest unknown
            else:
                queued.append(scale * seconds)
        return makespan(running + queued, self.at_once)

    def lines(self, runs) -> list[str]:
        """From the sweep's runs as the store holds them now: which are running, and one line for
        each job that ended since the last look."""
        self.running = {
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
            if self.finish(fingerprint, self.run_seconds(fingerprint, run), info.end_time / 1000):
                ended.append((info.run_name, info.status, fingerprint))
        return [self.line(name, status, fingerprint) for name, status, fingerprint in ended]

    def line(self, name: str, status: str, fingerprint: str | None = None) -> str:
        """The line of a job that ended (by default the latest counted). The time left comes on the
        latest's only: jobs seen ended at one look are all counted first, or the earlier lines
        would count the later jobs as still to run."""
        done = list(self.done)
        count = done.index(fingerprint) + 1 if fingerprint else len(done)
        seconds = self.done[done[count - 1]]
        head = f"sweep: {count}/{len(self.estimates)} jobs done ({name} {status} in {clock(seconds)})"
        if count < len(done) or count == len(self.estimates) or math.isnan(left := self.seconds_left()):
            return head
        return f"{head}; about {clock(left)} left"


def summary(plan: Plan) -> str:
    """The estimate a sweep prints as it starts."""
    trained = plan.training
    sources = sorted({net.source.split(":")[0] for net in trained})
    counts = [f"{len(trained)} net(s) to train"]
    for action, word in ((SKIP, "reused"), (ELSEWHERE, "running elsewhere")):
        if n := sum(net.action == action for net in plan.nets):
            counts.append(f"{n} {word}")
    if not math.isfinite(plan.wall_seconds):
        short = f"runs under {CALIBRATED_FROM} iterations are not calibrated"
        return f"Estimate: {', '.join(counts)}; no time estimate: {short}."
    return (
        f"Estimate: {', '.join(counts)}; about {clock(plan.wall_seconds)} here "
        f"({' and '.join(sources) or 'nothing to train'}; plan=true details it)."
    )
