"""Planning a launch (`plan=true`, harness.plan): it trains and stores nothing, its estimates are
the arithmetic of the store's measured rates (or a calibration), and the seeds a claim needs
are the t-based sample size."""

import math
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from harness import memory, plan, record, sweep
from harness.config import compose_config
from harness.device import device_name
from harness.errors import HarnessError
from harness.stats import make_claim
from harness.tracking.mlflow_store import MlflowRun, connect

from helpers.commands import harness_command
from helpers.config import resolved
from helpers.stores import empty_store

# Long enough to be calibrated (plan.CALIBRATED_FROM): a plan trains none of it.
SWEEP = [
    "-m",
    "depth=8,14",
    "residual=true,false",
    "schedule=smoke",
    "schedule.iterations=200",
    "threads=2",
    "device=cpu",
]


def finished_run(client, experiment_id: str, *overrides: str, seconds_per_iteration: float, machine_name=None) -> str:
    """A finished training run as harness.job logs it, through the record's writers (on this
    machine, unless another's name is given)."""
    cfg = compose_config(*overrides)
    machine = record.Machine(threads=2, device_name=machine_name or device_name(torch.device("cpu")))
    job = resolved(cfg)
    run = MlflowRun.start(client, experiment_id, job.name, record.job_tags(job, machine, "unknown"), None)
    run.log_params(record.job_params(job, machine))
    run.log_metrics({record.SECONDS_PER_ITERATION: seconds_per_iteration}, cfg.schedule.iterations)
    run.sync()
    client.set_terminated(run.run_id, "FINISHED")
    return run.run_id


def row_counts(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in tables}


def test_the_estimate_is_the_measured_rate_times_the_iterations(tmp_path):
    """Three stored runs of plain-8 (0.02, 0.04 and 0.03 s an iteration): the median, 0.03, times
    the planned 600 iterations; a finished net of the plan is reused, not estimated; two jobs at
    a time share the work out in order."""
    store = empty_store(tmp_path / "mlflow.db")
    client, experiment_id = connect(store, "degradation")
    common = ("depth=8", "residual=false", "threads=2", "device=cpu", "precision=fp32")
    finished_run(client, experiment_id, *common, "seed=5", seconds_per_iteration=0.02)
    finished_run(client, experiment_id, *common, "seed=6", seconds_per_iteration=0.04)
    done = finished_run(client, experiment_id, *common, "seed=0", "schedule.iterations=600", seconds_per_iteration=0.03)
    jobs = [resolved(compose_config(*common, f"seed={seed}", "schedule.iterations=600")) for seed in (0, 1, 2)]

    def no_calibration(*args):
        raise AssertionError("a net with measured runs is not calibrated")

    made = plan.make_plan(jobs, None, client, experiment_id, torch.device("cpu"), no_calibration)
    assert [(net.action, net.run_id) for net in made.nets[:1]] == [("skip", done)]
    assert [net.action for net in made.nets[1:]] == ["new run", "new run"]
    assert [net.seconds for net in made.nets[1:]] == pytest.approx([600 * 0.03, 600 * 0.03])
    assert "measured: 3 finished run(s)" in made.nets[1].source
    made.startup = 0.0
    assert made.wall_seconds == pytest.approx(2 * 18.0)  # the basic launcher: one after the other
    made.at_once = 2
    assert made.wall_seconds == pytest.approx(18.0)


def test_runs_of_another_machine_are_not_this_ones_measure(tmp_path):
    """An archive imported from an AVX2 host (or runs of a version that named no CPU) says
    nothing of this machine's speed: the net is calibrated here."""
    client, experiment_id = connect(empty_store(tmp_path / "mlflow.db"), "degradation")
    common = ("depth=8", "residual=false", "threads=2", "device=cpu", "precision=fp32", "schedule.iterations=600")
    finished_run(client, experiment_id, *common, "seed=5", seconds_per_iteration=9.0, machine_name="Other CPU (AVX2)")
    calls = []

    def calibration(job, device):
        calls.append(job.config.seed)
        return 0.05, 0.001, math.nan

    made = plan.make_plan(
        [resolved(compose_config(*common, "seed=0"))], None, client, experiment_id, torch.device("cpu"), calibration
    )
    assert calls == [0] and made.nets[0].source.startswith("calibrated")


def test_the_plan_asks_the_store_for_this_machines_runs_of_its_nets_only(tmp_path):
    """A store of many machines and nets: the planner's rate query returns this machine's runs of
    the planned net and nothing else, so its cost does not grow with the store."""
    client, experiment_id = connect(empty_store(tmp_path / "mlflow.db"), "degradation")
    common = ("residual=false", "threads=2", "device=cpu", "precision=fp32", "schedule.iterations=600")
    finished_run(client, experiment_id, "depth=8", *common, "seed=5", seconds_per_iteration=0.03)
    finished_run(client, experiment_id, "depth=14", *common, "seed=5", seconds_per_iteration=0.05)
    for seed in range(3):
        finished_run(client, experiment_id, "depth=8", *common, f"seed={seed}", seconds_per_iteration=9.0,
                     machine_name="Other CPU (AVX2)")  # fmt: skip
    asked = []

    class Recording:
        def __getattr__(self, name):
            return getattr(client, name)

        def search_runs(self, experiment_ids, filter_string="", **options):
            runs = client.search_runs(experiment_ids, filter_string, **options)
            asked.append((filter_string, len(runs)))
            return runs

    jobs = [resolved(compose_config("depth=8", *common, "seed=9"))]
    made = plan.make_plan(jobs, None, Recording(), experiment_id, torch.device("cpu"), plan.no_calibration)
    assert made.nets[0].source == "measured: 1 finished run(s) here"
    assert made.nets[0].seconds == pytest.approx(600 * 0.03)
    rate_queries = [(query, found) for query, found in asked if "FINISHED" in query]
    here = device_name(torch.device("cpu"))
    assert len(rate_queries) == 1 and rate_queries[0][1] == 1
    assert f"tags.device_name = '{here}'" in rate_queries[0][0] and "tags.model = 'plain-8'" in rate_queries[0][0]


def test_a_calibration_beside_other_work_says_so():
    """A process that keeps a core busy while the net is calibrated: the estimate says it was
    measured under load."""
    spinner = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"]
    )

    def calibration(job, device):
        time.sleep(1.5)  # the calibration's own work is not other work
        return 0.05, 0.001, math.nan

    try:
        time.sleep(0.3)
        iterations = f"schedule.iterations={plan.CALIBRATED_FROM}"
        jobs = [resolved(compose_config("depth=8", "schedule=smoke", iterations, "precision=fp32"))]
        made = plan.make_plan(jobs, None, None, None, torch.device("cpu"), calibration)
    finally:
        spinner.kill()
        spinner.wait()
    assert "under load (" in made.nets[0].source and "cores busy with other work" in made.nets[0].source


def test_a_net_without_measured_runs_is_calibrated_once():
    calls = []

    def calibration(job, device):
        calls.append(job.config.depth)
        return 0.05, 0.001, math.nan  # seconds a step, seconds an evaluated image, bytes at the peak

    smoke = ["depth=8", "schedule=smoke", f"schedule.iterations={plan.CALIBRATED_FROM}", "device=cpu"]
    jobs = [resolved(compose_config(*smoke, f"seed={seed}")) for seed in (0, 1)]
    made = plan.make_plan(jobs, None, None, None, torch.device("cpu"), calibration)
    cfg = jobs[0].config
    iterations = cfg.schedule.iterations
    probes = iterations // cfg.schedule.analysis_every + 1
    probe = 256 * 0.001 + 256 / cfg.schedule.batch_size * 0.05
    expected = iterations * 0.05 + plan.evaluated_images(cfg, iterations) * 0.001 + probes * probe
    assert calls == [8]
    assert [net.seconds for net in made.nets] == pytest.approx([expected, expected])
    assert made.nets[0].source.startswith("calibrated")


def test_a_resumed_run_counts_the_time_this_launch_trained_it_not_the_gap_before():
    """Stopped at the end of one session and resumed in the next, a run's start is hours back:
    its job time is its loop's rate over the iterations this launch trained."""
    nets = [plan.NetPlan(f"net {i}", f"fp{i}", "resume", None, 100, 50.0, "measured") for i in range(2)]
    progress = plan.Progress(plan.Plan(nets, jobs=2, at_once=1, threads=2, startup=0.0))

    def run(started: float, ended: float, metrics: dict) -> SimpleNamespace:
        info = SimpleNamespace(start_time=1000 * started, end_time=1000 * ended)
        return SimpleNamespace(info=info, data=SimpleNamespace(metrics=metrics))

    resumed = run(progress.since - 3600, progress.since + 60, {record.SECONDS_PER_ITERATION: 0.5})
    assert progress.run_seconds("fp0", resumed) == pytest.approx(50.0)  # 100 iterations at 0.5 s
    killed = run(progress.since - 3600, progress.since + 30, {})  # no rate: it did not reach the end
    assert progress.run_seconds("fp1", killed) == pytest.approx(30.0)
    new = run(progress.since + 10, progress.since + 70, {record.SECONDS_PER_ITERATION: 0.5})
    assert progress.run_seconds("fp1", new) == pytest.approx(60.0)
    progress.finish("fp0", progress.run_seconds("fp0", resumed))
    assert progress.seconds_left() == pytest.approx(50.0)  # as estimated, not 73 times it


def test_a_run_too_short_for_a_calibration_is_not_estimated():
    def no_calibration(*args):
        raise AssertionError("a 20-iteration run is not calibrated")

    jobs = [resolved(compose_config("depth=8", "schedule=smoke", f"seed={seed}", "device=cpu")) for seed in (0, 1)]
    made = plan.make_plan(jobs, None, None, None, torch.device("cpu"), no_calibration)
    assert all(math.isnan(net.seconds) and net.source.startswith("not estimated") for net in made.nets)
    assert "2 net(s) to train; no time estimate" in plan.summary(made)
    assert "estimated wall time here unknown" in plan.plan_lines(made, torch.device("cpu"))[-1]
    progress = plan.Progress(made)
    progress.finish(made.nets[0].fingerprint, 3.0)
    assert progress.line("resnet-8", "FINISHED") == "sweep: 1/2 jobs done (resnet-8 FINISHED in 0:03)"


def test_evaluated_images_follow_the_schedule():
    cfg = compose_config()  # 1000 iterations, 1000 test images every 100, then all 10k and 5k training images
    assert plan.evaluated_images(cfg, 1000) == 9 * 1000 + 10000 + 5000


def test_makespan_starts_each_job_on_the_first_free_slot():
    assert plan.makespan([3, 1, 1, 1], 2) == 3
    assert plan.makespan([1, 1, 3], 2) == 4
    assert plan.makespan([], 4) == 0


def test_next_steps_name_the_designs_next_look_never_a_seed_count_for_an_interval():
    """Open claims: the design's next look, its command and time, one line for them all; C3
    against the claim points to the budget curve; settled claims need nothing (issue 44)."""
    import pandas as pd

    from harness.sequential import Design
    from harness.stats import judge_family

    design = Design(looks=(3, 5, 8))

    def claim(key, differences):
        return make_claim(key, key, "points", pd.Series(differences), 1.0, 0.95)

    found = judge_family(
        [claim("C1", [2.0]), claim("C2", [4.0, -1.0, 3.0]), claim("C3", [-3.0, -2.5, -3.5])], design, 1.0
    )
    asked = []

    def more_seeds(n):
        asked.append(n)
        return f"python -m harness.run -m seed={','.join(map(str, range(n)))}", 60.0 * n

    lines = plan.next_steps(found, design, more_seeds)
    assert asked == [3]  # C1 has 1 seed: the family's first look is not whole yet
    assert lines[0].startswith("The design's next look, 1 of 3, is at 3 seeds for the claims still open (C1; C2; C3)")
    assert "`python -m harness.run -m seed=0,1,2`, about 3:00 here; at worst the last look at 8 seeds" in lines[0]
    assert lines[1].startswith("C3 goes against the claim at this budget") and "+experiment=budget_curve" in lines[1]
    assert not any("interval that excludes zero" in line for line in lines)
    whole = judge_family([claim("C2", [4.0, -1.0, 3.0]), claim("C3", [-3.0, -2.5, -3.5])], design, 1.0)
    (step, curve) = plan.next_steps(whole, design, more_seeds, budget_curve=False)
    assert asked[-1] == 5 and step.startswith("The design's next look, 2 of 3, is at 5 seeds") and "C3" in curve
    # In a budget curve the curve is not suggested again.
    assert len(plan.next_steps(whole, design, more_seeds, budget_curve=True)) == 1
    # A settled family: nothing to run.
    settled = judge_family([claim("C2", [4.0, 4.1, 3.9])], Design(looks=(3,)), 1.0)
    assert settled[0].verdict == "reproduced" and plan.next_steps(settled, design, more_seeds) == []


def test_plan_mode_trains_nothing_and_writes_nothing(tmp_path, data_root):
    """Against a store with one finished net of the sweep: the plan says skip for it and gives
    estimates for the others; the store's rows are the same before and after, and no
    multirun folder or checkpoint appears."""
    database = tmp_path / "mlruns" / "mlflow.db"
    client, experiment_id = connect(f"sqlite:///{database}", "degradation")
    done = finished_run(
        client, experiment_id, "depth=8", "residual=true", "schedule=smoke", "schedule.iterations=200", "threads=2",
        "device=cpu", seconds_per_iteration=0.01,
    )  # fmt: skip
    before = row_counts(database)
    result = harness_command("harness.run", *SWEEP, f"dataset.root={data_root}", "plan=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert row_counts(database) == before
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlruns" / "checkpoints").exists()
    out = result.stdout
    assert "Plan: 4 job(s), 4 distinct net(s)" in out
    assert f"skip (FINISHED run {done})" in out
    assert out.count("new run") == 3 and out.count("calibrated") == 3
    assert "3 to train, 1 reused, 0 running elsewhere: estimated wall time here" in out
    assert "Nothing was trained or stored" in out


def test_plan_mode_without_a_store_creates_none(tmp_path, data_root):
    result = harness_command(
        "harness.run", "depth=8", "schedule=smoke", f"dataset.root={data_root}", "plan=true", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "1 to train" in result.stdout
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("args", [["precision=fp8", "plan=true"], ["-m", "depth=8,13", "plan=true"]])
def test_bad_input_in_plan_mode_gets_the_launchs_error(tmp_path, args):
    planned = harness_command("harness.run", *args, cwd=tmp_path)
    launched = harness_command("harness.run", *[a for a in args if a != "plan=true"], cwd=tmp_path)
    assert planned.returncode == launched.returncode == 2

    def error(result) -> list[str]:  # a sweep's error names the job, with its overrides
        return [
            line.split(" (in the sweep's job")[0] for line in result.stderr.splitlines() if line.startswith("error:")
        ]

    assert error(planned) and error(planned) == error(launched)
    assert not (tmp_path / "mlruns").exists()


def test_the_time_left_is_the_rest_scaled_by_how_the_finished_jobs_compared():
    nets = [plan.NetPlan(f"net {i}", f"fp{i}", "new run", None, 1000, seconds, "calibrated") for i, seconds in
            enumerate([100.0, 100.0, 200.0, 200.0])]  # fmt: skip
    progress = plan.Progress(plan.Plan(nets, jobs=4, at_once=1, threads=2, startup=0.0))
    assert progress.seconds_left() == 600
    assert progress.finish("fp0", 150.0) and not progress.finish("fp0", 150.0) and not progress.finish("other", 1)
    assert progress.seconds_left() == pytest.approx(1.5 * 500)  # the first job took 1.5x its estimate
    assert progress.line("net 0", "FINISHED") == "sweep: 1/4 jobs done (net 0 FINISHED in 2:30); about 12:30 left"
    progress.at_once = 2
    assert progress.seconds_left() == pytest.approx(1.5 * 300)  # 100 + 200 on one slot, 200 on the other
    for fingerprint in ("fp1", "fp2", "fp3"):
        progress.finish(fingerprint, 100.0)
    assert progress.line("net 3", "FAILED") == "sweep: 4/4 jobs done (net 3 FAILED in 1:40)"


def test_the_time_left_forgets_a_load_that_has_passed():
    """Jobs slowed threefold by a test suite beside the sweep, then jobs at their estimate: the
    time left follows the latest, not the whole history (which would say 2x)."""
    nets = [plan.NetPlan(f"net {i}", f"fp{i}", "new run", None, 1000, 100.0, "calibrated") for i in range(10)]
    progress = plan.Progress(plan.Plan(nets, jobs=10, at_once=2, threads=1, startup=0.0))
    for i in range(4):
        progress.finish(f"fp{i}", 300.0)
    assert progress.seconds_left() == pytest.approx(3 * 300)  # 6 jobs on 2 slots at 3x
    for i in range(4, 8):
        progress.finish(f"fp{i}", 100.0)
    assert progress.seconds_left() == pytest.approx(100)  # the 2 last jobs side by side, as estimated


def test_the_time_left_counts_what_the_running_jobs_have_done():
    """Two jobs done at their estimates, the third 60 s into its 100: 40 s are left, not 100; a
    job past its estimate has nothing left, and one resumed counts from this launch."""
    nets = [plan.NetPlan(f"net {i}", f"fp{i}", "new run", None, 1000, 100.0, "calibrated") for i in range(4)]
    progress = plan.Progress(plan.Plan(nets, jobs=4, at_once=2, threads=1, startup=0.0))
    progress.finish("fp0", 100.0)
    progress.finish("fp1", 100.0)
    progress.running = {"fp2": progress.since + 200}
    assert progress.seconds_left(now=progress.since + 260) == pytest.approx(100)  # fp3 beside fp2's 40
    progress.running["fp3"] = progress.since + 230
    assert progress.seconds_left(now=progress.since + 260) == pytest.approx(70)  # fp3's rest
    assert progress.seconds_left(now=progress.since + 500) == 0  # both past their estimates
    progress.running = {"fp2": progress.since - 3600}  # resumed: its estimate is for what is left
    assert progress.seconds_left(now=progress.since + 30) == pytest.approx(100)  # fp2's 70 beside fp3's 100


def test_jobs_seen_ended_at_one_look_are_counted_before_the_time_left_is_said():
    """Two jobs seen ended at one look: the first one's line says no time left (the second, ended
    too, would count as still to run), the second's says the rest."""
    nets = [plan.NetPlan(f"net {i}", f"fp{i}", "new run", None, 1000, 100.0, "calibrated") for i in range(3)]
    progress = plan.Progress(plan.Plan(nets, jobs=3, at_once=2, threads=1, startup=0.0))
    progress.finish("fp0", 100.0)
    progress.finish("fp1", 100.0)
    assert progress.line("net 0", "FINISHED", "fp0") == "sweep: 1/3 jobs done (net 0 FINISHED in 1:40)"
    assert progress.line("net 1", "FINISHED", "fp1") == "sweep: 2/3 jobs done (net 1 FINISHED in 1:40); about 1:40 left"


def test_a_run_an_earlier_launch_stopped_counts_once_it_ends_in_this_one():
    """Relaunched, a sweep goes on in its parent run, whose children include the runs that the
    earlier launch's Ctrl-C left KILLED: they are this launch's to resume, not done."""
    nets = [plan.NetPlan(f"net {i}", f"fp{i}", "resume", None, 1000, 100.0, "calibrated") for i in range(2)]
    progress = plan.Progress(plan.Plan(nets, jobs=2, at_once=1, threads=2, startup=0.0))
    assert not progress.finish("fp0", 50.0, ended=progress.since - 60)
    assert progress.seconds_left() == 200
    assert progress.finish("fp0", 100.0, ended=progress.since + 60)
    assert progress.line("net 0", "FINISHED") == "sweep: 1/2 jobs done (net 0 FINISHED in 1:40); about 1:40 left"


@pytest.mark.parametrize(
    "study, nets",
    [
        (
            "p2_shortcuts",
            ["resnet-56", "resnet-56-scale0.5", "resnet-56-frozen0.5", "resnet-56-exgate-6", "resnet-56-shgate0",
             "resnet-56-C", "resnet-56-drop0.5"],
        ),
        ("p2_units", ["resnet-56", "resnet-56-bnadd", "resnet-56-reluadd", "resnet-56-relupre", "resnet-56-pre"]),
        ("p2_deep", ["resnet-164-bottleneck-B", "resnet-164-bottleneck-B-pre"]),
    ],
)  # fmt: skip
def test_the_plan_of_p2s_studies_names_every_case_at_every_seed(tmp_path, study, nets):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = harness_command(
        "harness.run",
        "-m",
        f"+experiment={study}",
        "plan=true",
        "schedule=smoke",
        f"tracking.uri={store}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = 3 * len(nets)
    assert f"Plan: {jobs} job(s), {jobs} distinct net(s)" in result.stdout
    planned = re.findall(r"^  (\S+) seed (\d) +new run", result.stdout, flags=re.M)
    assert sorted(planned) == sorted((net, str(seed)) for net in nets for seed in range(3))
    assert not (tmp_path / "mlflow.db").exists()  # a plan writes nothing


# Memory (harness.memory): fake needs and a fake machine, no large allocation.

GIB = memory.GIB


def test_the_jobs_that_fit_are_the_most_whose_largest_needs_fit_together():
    assert memory.jobs_that_fit([6 * GIB, 2 * GIB, 5 * GIB], 2, 12 * GIB) == 2  # 6 + 5
    assert memory.jobs_that_fit([6 * GIB, 2 * GIB, 5 * GIB], 2, 10 * GIB) == 1  # the two largest may meet
    assert memory.jobs_that_fit([6 * GIB], 2, 5 * GIB) == 0
    assert memory.jobs_that_fit([math.nan, 1 * GIB], 3, 4 * GIB) == 3  # an unknown need is not counted
    assert memory.jobs_that_fit([8 * GIB], 2, math.nan) == 2  # nor an unknown machine


def test_a_peak_sees_what_a_step_holds_and_frees():
    """A 64 MiB tensor made and freed inside: the peak rose by it, though the memory is back."""
    with memory.Peak(torch.device("cpu")) as peak:
        held = torch.ones(16 * 2**20)  # 64 MiB of float32
        del held
    assert peak.growth >= 60 * 2**20
    assert math.isfinite(memory.available(torch.device("cpu")))


def joblib_sweep(n_jobs: int):
    """Two nets of a joblib sweep, long enough to be calibrated (as the sweep holds them: each
    job's overrides and config, and the job resolved), and its config's launcher."""
    common = ("schedule=smoke", f"schedule.iterations={plan.CALIBRATED_FROM}", "device=cpu", "threads=1")
    composed = [((*common, f"depth={depth}"), compose_config(*common, f"depth={depth}")) for depth in (8, 14)]
    config = OmegaConf.create({"hydra": {"launcher": {"n_jobs": n_jobs}}})
    return composed, sweep.resolved(composed, config.hydra.launcher), config


def fake_machine(monkeypatch, free: float, needs: dict[int, float]) -> None:
    """`free` bytes available; each depth's calibration measures its need."""
    monkeypatch.setattr(memory, "available", lambda device: free)
    monkeypatch.setattr(plan, "calibrate", lambda job, device: (0.05, 0.001, needs[job.config.depth]))


def test_the_plan_shows_each_nets_memory_and_what_fits(monkeypatch):
    fake_machine(monkeypatch, 10 * GIB, {8: 3 * GIB, 14: 8 * GIB})
    _, sweep_jobs, config = joblib_sweep(2)
    jobs = [sweep_job.job for sweep_job in sweep_jobs]
    made = plan.make_plan(jobs, config.hydra.launcher, None, None, torch.device("cpu"), plan.calibrate)
    assert (made.asked, made.at_once) == (2, 1) and [net.memory for net in made.nets] == [3 * GIB, 8 * GIB]
    lines = plan.plan_lines(made, torch.device("cpu"))
    assert lines[0].endswith("on cpu here, 1 at a time, 1 thread(s) each.")
    assert re.search(r"resnet-14 seed 0 +new run +200 +\S+ +8\.0 GiB  calibrated", "\n".join(lines))
    assert lines[-1] == (
        "Memory: 2 jobs at once would need up to 11.0 GiB at their peaks (resnet-14 seed 0: 8.0 GiB each), more "
        "than the 10.0 GiB available here now (MemAvailable, or the device's free memory): the launch runs 1 at a "
        "time (the launcher's n_jobs lowered)."
    )
    fake_machine(monkeypatch, 12 * GIB, {8: 3 * GIB, 14: 8 * GIB})
    made = plan.make_plan(jobs, config.hydra.launcher, None, None, torch.device("cpu"), plan.calibrate)
    assert made.at_once == 2 and plan.plan_lines(made, torch.device("cpu"))[-1].startswith(
        "Memory: 2 job(s) at once need at most 11.0 GiB at their peaks; 12.0 GiB available"
    )


def test_the_plan_widens_its_net_column_for_long_names(monkeypatch):
    fake_machine(monkeypatch, 10 * GIB, {1001: GIB})
    cfg = compose_config("family=cifar_bottleneck", "depth=1001", "activation=pre", "seed=11", "schedule=smoke",
                         f"schedule.iterations={plan.CALIBRATED_FROM}", "device=cpu", "threads=1")  # fmt: skip
    lines = plan.plan_lines(
        plan.make_plan([resolved(cfg)], None, None, None, torch.device("cpu"), plan.calibrate), torch.device("cpu")
    )
    name = "resnet-1001-bottleneck-B-pre seed 11"
    assert lines[1].index("action") == lines[2].index("new run") == len(f"  {name} ")


def test_a_sweep_whose_jobs_do_not_fit_together_runs_them_one_at_a_time(monkeypatch, capsys):
    fake_machine(monkeypatch, 10 * GIB, {8: 3 * GIB, 14: 8 * GIB})
    composed, jobs, config = joblib_sweep(2)
    made, _ = sweep.planned_to_fit(config, composed, jobs, None, None)
    assert config.hydra.launcher.n_jobs == 1 and (made.asked, made.at_once) == (1, 1)
    assert "the launch runs 1 at a time (the launcher's n_jobs lowered)" in capsys.readouterr().out


def test_a_sweep_whose_largest_job_does_not_fit_alone_is_refused_with_the_numbers(monkeypatch, capsys):
    fake_machine(monkeypatch, 6 * GIB, {8: 3 * GIB, 14: 8 * GIB})
    composed, jobs, config = joblib_sweep(2)
    with pytest.raises(HarnessError) as refused:
        sweep.planned_to_fit(config, composed, jobs, None, None)
    assert refused.value.code == 2 and config.hydra.launcher.n_jobs == 2
    assert str(refused.value) == (
        "one job of resnet-14 seed 0 needs 8.0 GiB at its peak, more than the 6.0 GiB available here now "
        "(MemAvailable, or the device's free memory): the launch refuses to start. Free memory, or train a shallower "
        "net or a smaller batch (schedule.batch_size) on this machine."
    )
