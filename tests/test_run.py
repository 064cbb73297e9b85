"""The command a user types: sweeps, tracking in MLflow, failures and bad input."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from harness import record
from harness.config import ConfigError, check_values, compose_config
from harness.data.memory import load_data
from harness.device import deterministic_kernels, device_name
from harness.errors import Ended
from harness.models.resnet import build_model
from harness.tracking import MemoryTracker
from harness.train import get_lr, train_job

from helpers import REPO
from helpers.commands import harness_command, wait_for
from helpers.config import resolved
from helpers.stores import empty_store
from helpers.sweeps import TINY, job_runs


@pytest.mark.integration
def test_card_sweep_tracks_four_children_under_one_parent(tmp_path, store, data_root):
    """The card's command at depths 8 and 14 (its sweep at a third of the layers), on a tiny
    budget: one parent run, four FINISHED children with the whole config as params, the readable
    names and tags, curves of the expected length, the artifacts, and the sweep's figures logged
    to the parent; `harness.plot` draws them again. (Launched again, a sweep skips what finished:
    tests/test_sweep.py.)"""
    sweep = ["-m", "depth=8,14", "residual=true,false", *TINY, f"tracking.uri={store}", f"dataset.root={data_root}"]
    result = harness_command("harness.run", *sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep done: 4 runs: 4 trained, 0 reused from earlier sweeps, 0 not finished" in result.stdout

    client = MlflowClient(store)
    runs = job_runs(client)
    assert sorted(r.info.run_name for r in runs) == ["plain-14", "plain-8", "resnet-14", "resnet-8"]
    parents = {r.data.tags[record.PARENT] for r in runs}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.tags[record.ROLE] == "sweep" and parent.info.status == "FINISHED"

    for run in runs:
        assert run.info.status == "FINISHED"
        tags, params = run.data.tags, run.data.params
        assert tags["depth"] in ("8", "14") and tags["dataset"] == "fashion_mnist" and tags["device"] == "cpu"
        assert tags["shortcut"] == ("zero_pad" if tags["residual"] == "True" else "none")
        assert len(tags["git_commit"]) >= 7 and tags["torch_version"] == torch.__version__
        assert tags["device_name"] == device_name(torch.device("cpu"))  # the CPU, as a GPU's name is told
        assert params["schedule.iterations"] == "20" and params["dataset.validation_size"] == "500"
        assert params["tracking.uri"] == store
        assert tags[record.RECIPE] and tags["family"] == "cifar"
        train_curve = client.get_metric_history(run.info.run_id, "train_error")
        val_curve = client.get_metric_history(
            run.info.run_id, "val_error"
        )  # TINY holds out 500 images: a validation split
        assert [m.step for m in train_curve] == [5, 10, 15, 20]
        assert [m.step for m in val_curve] == [10, 20]
        assert "test_error" not in run.data.metrics and "test_loss" not in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "final_train_error")] == [20]
        assert len(client.get_metric_history(run.info.run_id, "lr")) == 4
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "overrides.yaml", "summary.json", "model.pt", "analysis"} <= artifacts
        probes = [a.path for a in client.list_artifacts(run.info.run_id, "analysis")]
        assert probes == ["analysis/step-0000010.csv", "analysis/step-0000020.csv"]
        for key in ("response_std_mean", "output_grad_first_over_last"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [10, 20]
    assert len({run.data.tags[record.RECIPE] for run in runs}) == 1  # one study, one recipe

    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {
        "figures/report.md",
        "figures/error_vs_depth.png",
        "figures/fig1_plain_shallow_vs_deep.png",
        "figures/fig7_layer_responses.png",
        "figures/backward_signal.png",
    } <= figures
    assert "members.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    # Then the plotting command on the same store, as a user would after the sweep.
    result = harness_command("harness.plot", "--uri", store, "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "error_vs_depth",
        "fig1_plain_shallow_vs_deep",
        "fig6_cifar_curves",
        "fig7_layer_responses",
        "backward_signal",
    ):
        assert matplotlib.image.imread(tmp_path / "report" / f"{name}.png").shape[1] >= 500
        assert (tmp_path / "report" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "4 finished runs" in report and "| plain-14 | 1 |" in report and "validation error" in report


@pytest.mark.integration
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path, store, data_root):
    """A diverging job (lr 1e6) is FAILED with its reason; the other job FINISHED; exit 1 names it."""
    result = harness_command(
        "harness.run",
        "-m",
        "optimizer.lr=0.1,1e6",
        "schedule.log_every=1",
        *TINY,
        f"tracking.uri={store}",
        f"dataset.root={data_root}",
        "tracking.figures=false",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Sweep done: 2 runs: 2 trained, 0 reused from earlier sweeps, 1 not finished" in result.stdout
    runs = {r.data.params["optimizer.lr"]: r for r in job_runs(MlflowClient(store))}
    failed = runs["1000000.0"].info.run_id
    assert f"1 run(s) did not finish: resnet-20 (run {failed}, " in result.stderr
    assert re.search(
        r"optimizer\.lr=(1e6|1000000\.0) ", result.stderr.split("did not finish:", 1)[1]
    )  # the job's overrides
    assert runs["0.1"].info.status == "FINISHED"
    assert runs["1000000.0"].info.status == "FAILED"
    assert "diverged" in runs["1000000.0"].data.tags[record.ERROR]
    assert int(runs["1000000.0"].data.tags[record.DIVERGED_AT]) >= 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["-m", "depth=20,57"], "depth=57 is not valid"),
        (["-m", "shortcut=zero_pad,foo"], "shortcut=foo is not valid"),
        (["residual=maybe"], "'maybe' is not a valid bool"),
        (["depht=20"], "Key 'depht' not in 'Config'"),
        (["dataset=imagenet"], "dataset=imagenet is not valid: conf/dataset/ has no imagenet.yaml"),
        (["-m", "p2_shortcut=identity,skipinit"], "p2_shortcut=skipinit is not valid"),
        (["-m", "shortcut=zero_pad,my_joins.REZERO"], "shortcut=my_joins.REZERO cannot be imported"),
        (["schedule.iterations=0"], "schedule.iterations=0 must be a positive"),
        (["tracking.uri=http://127.0.0.1:9"], "tracking.uri=http://127.0.0.1:9 cannot be used"),
    ],
)
def test_bad_input_fails_before_any_run_with_a_clear_message(tmp_path, store, overrides, message):
    env_overrides = [] if any(o.startswith("tracking.uri") for o in overrides) else [f"tracking.uri={store}"]
    result = harness_command("harness.run", *overrides, *env_overrides, "tracking.experiment=bad", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if env_overrides and (tmp_path / "mlruns" / "mlflow.db").exists():
        experiment = MlflowClient(store).get_experiment_by_name("bad")
        assert experiment is None or not MlflowClient(store).search_runs([experiment.experiment_id])


@pytest.mark.parametrize(
    "override, message",
    [
        ("depth=0", "depth=0 is not valid"),
        ("family=cifar", None),  # depth 20 is a CIFAR depth
        ("activation=mid", "activation=mid is not valid"),
        ("schedule.batch_size=-1", "schedule.batch_size=-1 must be a positive"),
        ("schedule.lr_drops=[0.5,1.5]", "must be fractions of the iterations"),
        ("optimizer.lr=0", "optimizer.lr=0.0 must be positive"),
        ("precision=fp8", "precision=fp8 is not valid; use auto .*, fp32 or bf16"),
        ("shortcut=identity", None),  # P1's name for option A
    ],
)
def test_value_checks(override, message):
    cfg = compose_config(override)
    if message is None:
        check_values(cfg)
    else:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            check_values(cfg)


def test_experiments_compose():
    """Every study in experiments/ composes under the schema and passes the value checks."""
    names = sorted(path.stem for path in (REPO / "experiments").glob("*.yaml"))
    assert {"degradation", "paper_cifar10"} <= set(names)
    for name in names:
        cfg = compose_config(f"+experiment={name}")
        check_values(cfg)
    paper = compose_config("+experiment=paper_cifar10")
    assert paper.dataset.name == "cifar10" and paper.schedule.iterations == 64000


def test_learning_rate_drops_tenfold_at_half_and_three_quarters():
    cfg = compose_config("schedule.iterations=64000", "schedule.lr_drops=[0.5,0.75]")
    schedule = resolved(cfg).config.schedule
    lrs = [get_lr(step, schedule, 0.1, warming_up=False) for step in (0, 31999, 32000, 47999, 48000, 63999)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def tiny_training(data, seed: int, iterations: int = 6) -> MemoryTracker:
    cfg = compose_config("schedule=smoke", f"schedule.iterations={iterations}", "schedule.log_every=1", f"seed={seed}")
    torch.manual_seed(seed)
    model = build_model(20, in_channels=1).to(memory_format=torch.channels_last)
    tracker = MemoryTracker()
    train_job(resolved(cfg), model, data, tracker, torch.device("cpu"))
    return tracker


def test_same_seed_gives_identical_curves_and_other_seeds_differ(data_root):
    torch.use_deterministic_algorithms(True)
    data = load_data("fashion_mnist", data_root, False, 200, torch.device("cpu"))
    first, again, other = tiny_training(data, 1), tiny_training(data, 1), tiny_training(data, 2)
    assert first.curves() == again.curves()
    assert first.history["train_loss"] != other.history["train_loss"]


def test_warmup_holds_the_low_rate_until_training_error_falls_below_the_threshold(data_root):
    data = load_data("fashion_mnist", data_root, False, 200, torch.device("cpu"))
    cfg = compose_config(
        "schedule=smoke",
        "schedule.iterations=4",
        "schedule.log_every=1",
        "schedule.warmup_lr=0.01",
        "schedule.warmup_until_error=0.0",
        "schedule.lr_drops=[]",
    )
    tracker = MemoryTracker()
    train_job(resolved(cfg), build_model(20, in_channels=1), data, tracker, torch.device("cpu"))
    assert [lr for _, lr in tracker.history["lr"]] == [0.01] * 4  # an error < 0 never comes
    cfg.schedule.warmup_until_error = 1.01
    tracker = MemoryTracker()
    train_job(resolved(cfg), build_model(20, in_channels=1), data, tracker, torch.device("cpu"))
    assert [lr for _, lr in tracker.history["lr"]] == [0.01, 0.1, 0.1, 0.1]


def test_config_resolves_to_plain_containers():
    cfg = compose_config()
    assert OmegaConf.to_container(cfg, resolve=True)["tracking"]["uri"].startswith("sqlite:///")


ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    "device, settings",
    [
        ("cpu", ["precision=fp32"]),
        ("cpu", ["precision=bf16"]),
        pytest.param("cuda", ["precision=bf16", "compile=true"], marks=ON_CUDA),  # the fast settings
    ],
)
def test_a_resumed_run_continues_bit_for_bit(data_root, device, settings):
    """Stop after the checkpoint at iteration 10 (later steps lost, as in a kill), train again
    with the same tracker: the curves equal those of an uninterrupted run, at either precision,
    and on CUDA with deterministic kernels (the default) also with the step compiled."""
    deterministic_kernels(True)  # as harness.job sets them
    device = torch.device(device)
    data = load_data("fashion_mnist", data_root, False, 200, device)
    cfg = compose_config(
        "schedule=smoke", "schedule.checkpoint_every=10", "schedule.log_every=5", "dataset.augment=true",
        "schedule.batch_size=8", "schedule.eval_subset=64", "schedule.final_train_subset=64",  # bf16 is slow on AVX2
        *settings,
    )  # fmt: skip
    whole = MemoryTracker()
    torch.manual_seed(0)
    train_job(resolved(cfg), build_model(8, in_channels=1).to(device), data, whole, device)

    class Killed(Exception):
        pass

    class DiesAtStep15(MemoryTracker):
        def log_metrics(self, metrics, step):
            if step == 15:
                raise Killed
            super().log_metrics(metrics, step)

    stopped = DiesAtStep15()
    torch.manual_seed(0)
    with pytest.raises(Killed):
        train_job(resolved(cfg), build_model(8, in_channels=1).to(device), data, stopped, device)
    stopped.__class__ = MemoryTracker  # the relaunched process no longer dies
    torch.manual_seed(123)  # a resumed run must not depend on the fresh model's initialisation
    train_job(resolved(cfg), build_model(8, in_channels=1).to(device), data, stopped, device)
    assert stopped.curves() == whole.curves()


def start_and_wait_for_checkpoint(command: list[str], cwd: Path) -> subprocess.Popen:
    job = subprocess.Popen([sys.executable, "-m", *command], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: list((cwd / "mlruns" / "checkpoints").glob("*/last.pt")), 300, "checkpoint", job=job)
    assert job.poll() is None, "the run ended before its first checkpoint"
    return job


LONG_RUN_ITERATIONS = 100  # the first checkpoint at 20: a kill or Ctrl-C after it comes mid-run
LONG_RUN = [
    "harness.run",
    "schedule=smoke",
    "depth=8",
    f"schedule.iterations={LONG_RUN_ITERATIONS}",
    "schedule.checkpoint_every=20",
    "schedule.eval_every=50",
    "schedule.analysis_every=50",  # the probes resume too, at two points instead of ten
    "dataset.validation_size=500",
    "tracking.log_model=false",
]


@pytest.mark.integration
def test_ctrl_c_marks_the_run_killed_and_keeps_its_checkpoint(tmp_path, data_root):
    store = empty_store(tmp_path / "mlruns" / "mlflow.db")
    job = start_and_wait_for_checkpoint([*LONG_RUN, f"dataset.root={data_root}", f"tracking.uri={store}"], tmp_path)
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=120) != 0
    (run,) = job_runs(MlflowClient(store))
    assert run.info.status == "KILLED" and "KeyboardInterrupt" in run.data.tags[record.ERROR]
    assert Path(run.data.tags[record.CHECKPOINT]).exists()
    assert not list(Path(run.data.tags[record.CHECKPOINT]).parent.glob("*.partial"))


@pytest.mark.integration
def test_a_killed_run_resumes_in_the_same_mlflow_run(tmp_path, data_root):
    """SIGKILL after the first checkpoint, then the same command: one MLflow run whose curves
    equal an uninterrupted run's, step for step and value for value."""
    command = [*LONG_RUN, f"dataset.root={data_root}"]
    store = empty_store(tmp_path / "mlruns" / "mlflow.db")
    job = start_and_wait_for_checkpoint([*command, f"tracking.uri={store}"], tmp_path)
    job.kill()
    job.wait()
    client = MlflowClient(store)
    (killed,) = job_runs(client)
    assert killed.info.status == "RUNNING"  # nobody could close it

    resumed = harness_command(*command, f"tracking.uri={store}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume resnet-8: MLflow run {killed.info.run_id}" in resumed.stdout
    (run,) = job_runs(client)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"

    reference_store = empty_store(tmp_path / "reference" / "mlflow.db")
    assert harness_command(*command, f"tracking.uri={reference_store}", cwd=tmp_path).returncode == 0
    (reference,) = job_runs(MlflowClient(reference_store))
    for key in ("train_loss", "train_error", "lr", "val_error", "val_loss", "final_train_error", "response_std_mean"):
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        want = [(m.step, m.value) for m in MlflowClient(reference_store).get_metric_history(reference.info.run_id, key)]
        assert want and sorted(got) == want, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_error")] == list(
        range(5, LONG_RUN_ITERATIONS + 1, 5)
    )


@pytest.mark.slow
@pytest.mark.integration
def test_the_default_budget_shows_both_effects(tmp_path):
    """The card's command on the default budget and data (8 to 25 minutes on 2 cores, by host): plain-56
    trains at least 5 points worse than plain-20, ResNet-56 at least 5 points better than plain-56."""
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = harness_command(
        "harness.run", "-m", "depth=20,56", "residual=true,false", f"tracking.uri={store}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = {run.info.run_name: 100 * run.data.metrics["final_train_error"] for run in job_runs(MlflowClient(store))}
    assert final["plain-56"] - final["plain-20"] >= 5, final
    assert final["plain-56"] - final["resnet-56"] >= 5, final


def test_an_error_in_the_sweep_callback_stops_the_command():
    """Hydra turns a callback's exception into a warning and goes on: a sweep would run without
    its parent run, or end without its figures, and exit 0."""
    from harness.sweep import Study

    with pytest.raises(Ended) as stopped:
        Study().on_multirun_end(config=OmegaConf.create({"tracking": {"figures": True}}))
    assert stopped.value.code == 1
