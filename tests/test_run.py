"""The command a user types: sweeps, tracking in MLflow, failures and bad input."""

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import TINY, harness_command
from harness.config import ConfigError, check_values, compose_config
from harness.data import load_data
from harness.models import build_model
from harness.tracking import MemoryTracker
from harness.train import learning_rate, train


def job_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("degradation")
    return client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'job'")


def test_card_sweep_tracks_four_children_under_one_parent(tmp_path, store, data_root):
    """The card's command, on a tiny budget: one parent run, four FINISHED children with the
    whole config as params, the readable names and tags, curves of the expected length, the
    artifacts, and the sweep's figures logged to the parent."""
    result = harness_command(
        "harness.run", "-m", "depth=20,56", "residual=true,false", *TINY,
        f"tracking.uri={store}", f"dataset.root={data_root}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 of 4 runs finished" in result.stdout

    client = MlflowClient(store)
    runs = job_runs(client)
    assert sorted(r.info.run_name for r in runs) == ["plain-20", "plain-56", "resnet-20", "resnet-56"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.tags["harness.role"] == "sweep" and parent.info.status == "FINISHED"

    for run in runs:
        assert run.info.status == "FINISHED"
        tags, params = run.data.tags, run.data.params
        assert tags["depth"] in ("20", "56") and tags["dataset"] == "fashion_mnist" and tags["device"] == "cpu"
        assert tags["shortcut"] == ("zero_pad" if tags["residual"] == "True" else "none")
        assert len(tags["git_commit"]) >= 7 and tags["torch_version"] == torch.__version__
        assert params["schedule.iterations"] == "20" and params["dataset.validation_size"] == "500"
        assert params["tracking.uri"] == store
        train_curve = client.get_metric_history(run.info.run_id, "train_error")
        test_curve = client.get_metric_history(run.info.run_id, "test_error")
        assert [m.step for m in train_curve] == [5, 10, 15, 20]
        assert [m.step for m in test_curve] == [10, 20]
        assert len(client.get_metric_history(run.info.run_id, "lr")) == 4
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "overrides.yaml", "summary.json", "model.pt"} <= artifacts

    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/report.md" in figures and "figures/error_vs_depth.png" in figures


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path, store, data_root):
    """A diverging job (lr 1e6) is FAILED with its reason; the other job FINISHED; exit 1 names it."""
    result = harness_command(
        "harness.run", "-m", "optimizer.lr=0.1,1e6", "schedule.log_every=1", *TINY,
        f"tracking.uri={store}", f"dataset.root={data_root}", "tracking.figures=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "1 of 2 runs finished" in result.stdout
    assert "1 run(s) failed: resnet-20" in result.stderr
    runs = {r.data.params["optimizer.lr"]: r for r in job_runs(MlflowClient(store))}
    assert runs["0.1"].info.status == "FINISHED"
    assert runs["1000000.0"].info.status == "FAILED"
    assert "diverged" in runs["1000000.0"].data.tags["harness.error"]
    assert int(runs["1000000.0"].data.tags["harness.diverged_at"]) >= 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["-m", "depth=20,57"], "depth=57 is not valid"),
        (["-m", "shortcut=zero_pad,foo"], "shortcut=foo is not valid"),
        (["residual=maybe"], "'maybe' is not a valid bool"),
        (["depht=20"], "Key 'depht' not in 'Config'"),
        (["dataset=imagenet"], "Could not find 'dataset/imagenet'"),
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
    for name in ("degradation", "paper_cifar10"):
        cfg = compose_config(f"+experiment={name}")
        check_values(cfg)
    paper = compose_config("+experiment=paper_cifar10")
    assert paper.dataset.name == "cifar10" and paper.schedule.iterations == 64000


def test_learning_rate_drops_tenfold_at_half_and_three_quarters():
    lrs = [learning_rate(step, 0.1, 64000, [0.5, 0.75]) for step in (0, 31999, 32000, 47999, 48000, 63999)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def tiny_training(data, seed: int, iterations: int = 6) -> MemoryTracker:
    cfg = compose_config("schedule=smoke", f"schedule.iterations={iterations}", "schedule.log_every=1", f"seed={seed}")
    torch.manual_seed(seed)
    model = build_model(20, in_channels=1).to(memory_format=torch.channels_last)
    tracker = MemoryTracker()
    train(cfg, model, data, tracker, torch.device("cpu"))
    return tracker


def test_same_seed_gives_identical_curves_and_other_seeds_differ(data_root):
    torch.use_deterministic_algorithms(True)
    data = load_data("fashion_mnist", data_root, False, 200, torch.device("cpu"))
    first, again, other = tiny_training(data, 1), tiny_training(data, 1), tiny_training(data, 2)
    assert dict(first.history) == dict(again.history)
    assert first.history["train_loss"] != other.history["train_loss"]


def test_warmup_holds_the_low_rate_until_training_error_falls_below_the_threshold(data_root):
    data = load_data("fashion_mnist", data_root, False, 200, torch.device("cpu"))
    cfg = compose_config("schedule=smoke", "schedule.iterations=4", "schedule.log_every=1", "schedule.warmup_lr=0.01",
                         "schedule.warmup_until_error=0.0", "schedule.lr_drops=[]")  # fmt: skip
    tracker = MemoryTracker()
    train(cfg, build_model(20, in_channels=1), data, tracker, torch.device("cpu"))
    assert [lr for _, lr in tracker.history["lr"]] == [0.01] * 4  # an error < 0 never comes
    cfg.schedule.warmup_until_error = 1.01
    tracker = MemoryTracker()
    train(cfg, build_model(20, in_channels=1), data, tracker, torch.device("cpu"))
    assert [lr for _, lr in tracker.history["lr"]] == [0.01, 0.1, 0.1, 0.1]


def test_config_resolves_to_plain_containers():
    cfg = compose_config()
    assert OmegaConf.to_container(cfg, resolve=True)["tracking"]["uri"].startswith("sqlite:///")
