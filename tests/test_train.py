"""The training loop in process (`harness.train`): P1's warm-up and where it ends, the final
model's training error, and the names of the evaluation metrics."""

import pytest
import torch
import torch.nn.functional as F

from harness.config import compose_config
from harness.data.memory import load_data
from harness.models.resnet import build_model
from harness.tracking import MemoryTracker
from harness.train import get_lr, train_job, warmup_end

from helpers.config import resolved

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(data_root):
    """Fashion-MNIST with the last 300 training images held out as a validation split."""
    return load_data("fashion_mnist", data_root, False, 300, CPU)


def run(data, *overrides: str, depth: int = 8):
    """Train a depth-8 net (one block per stage) on the smoke budget: 20 iterations of 32 images."""
    cfg = compose_config("schedule=smoke", f"depth={depth}", "analysis=false", *overrides)
    torch.manual_seed(0)
    model = build_model(depth, in_channels=1)
    tracker = MemoryTracker()
    job = resolved(cfg)
    result = train_job(job, model, data, tracker, CPU)
    return job.config.schedule, model, tracker, result


def lrs(tracker) -> dict[int, float]:
    return dict(tracker.history["lr"])


def test_a_net_that_never_learns_leaves_warmup_at_the_cap(data):
    # lr 1e-9 cannot lower the error below 80%; the cap (10) comes before the first lr drop (15).
    schedule, _, tracker, _ = run(
        data,
        "schedule.warmup_lr=1e-9",
        "schedule.warmup_max_iterations=10",
        "schedule.log_every=5",
        "schedule.lr_drops=[0.75]",
    )
    assert warmup_end(schedule) == 10
    assert all(error >= 0.8 for step, error in tracker.history["train_error"] if step <= 10)
    assert lrs(tracker) == {5: 1e-9, 10: 1e-9, 15: 0.1, 20: pytest.approx(0.01)}
    assert tracker.history["warmup_ended_at"] == [(10, 10)]


def test_the_lr_of_every_iteration_during_and_after_the_cap(data):
    _, _, tracker, _ = run(
        data,
        "schedule.warmup_lr=1e-9",
        "schedule.warmup_max_iterations=10",
        "schedule.log_every=1",
        "schedule.lr_drops=[0.75]",
    )
    # The lr logged at iteration i is the one step i - 1 trained with.
    assert [lr for _, lr in tracker.history["lr"]] == [1e-9] * 10 + [0.1] * 5 + [pytest.approx(0.01)] * 5
    assert tracker.history["warmup_ended_at"] == [(10, 10)]


def test_warmup_never_outlasts_the_first_lr_drop(data):
    schedule, _, tracker, _ = run(
        data,
        "schedule.warmup_lr=1e-9",
        "schedule.warmup_max_iterations=null",
        "schedule.log_every=5",
        "schedule.lr_drops=[0.25]",
    )
    assert warmup_end(schedule) == 5
    assert lrs(tracker) == {5: 1e-9, 10: pytest.approx(0.01), 15: pytest.approx(0.01), 20: pytest.approx(0.01)}
    assert tracker.history["warmup_ended_at"] == [(5, 5)]


def test_warmup_ends_early_once_the_error_is_below_the_threshold(data):
    _, _, tracker, _ = run(
        data,
        "schedule.warmup_lr=1e-9",
        "schedule.warmup_max_iterations=null",
        "schedule.log_every=5",
        "schedule.warmup_until_error=1.01",
    )
    assert lrs(tracker)[5] == 1e-9 and lrs(tracker)[10] == 0.1
    assert tracker.history["warmup_ended_at"] == [(5, 5)]


def test_a_net_below_the_minimum_depth_never_warms_up(data):
    schedule, _, tracker, _ = run(
        data, "schedule.warmup_lr=1e-9", "schedule.warmup_min_depth=20", "schedule.log_every=5"
    )
    assert schedule.warmup_lr is None and warmup_end(schedule) == 0  # its job was resolved without one
    assert lrs(tracker)[5] == 0.1
    assert "warmup_ended_at" not in tracker.history
    deep = resolved(
        compose_config("schedule=smoke", "depth=20", "schedule.warmup_lr=1e-9", "schedule.warmup_min_depth=20")
    )
    assert deep.config.schedule.warmup_lr == 1e-9 and warmup_end(deep.config.schedule) > 0


def test_final_train_error_is_the_final_models_error_on_the_first_training_images(data):
    _, model, tracker, result = run(data, "schedule.final_train_subset=250")
    assert model.training  # evaluation leaves the model as training left it
    model.eval()
    with torch.no_grad():
        logits = model(data.normalise(data.train_images[:250]))
    labels = data.train_labels[:250]
    error = (logits.argmax(dim=1) != labels).sum().item() / 250
    loss = F.cross_entropy(logits, labels).item()
    assert tracker.history["final_train_error"] == [(20, pytest.approx(error, abs=1e-9))]
    assert tracker.history["final_train_loss"] == [(20, pytest.approx(loss, rel=1e-5))]
    assert result.final_train_error == pytest.approx(error, abs=1e-9)
    assert result.final_train_loss == pytest.approx(loss, rel=1e-5)


def test_a_validation_split_gives_val_metrics_and_no_test_metrics(data, data_root):
    _, _, tracker, result = run(data)
    assert [step for step, _ in tracker.history["val_error"]] == [10, 20]
    assert [step for step, _ in tracker.history["val_loss"]] == [10, 20]
    assert "test_error" not in tracker.history and "test_loss" not in tracker.history
    assert result.eval_split == "validation"
    assert result.eval_error == tracker.history["val_error"][-1][1]

    test_data = load_data("fashion_mnist", data_root, False, None, CPU)
    _, _, tracker, result = run(test_data)
    assert [step for step, _ in tracker.history["test_error"]] == [10, 20]
    assert "val_error" not in tracker.history
    assert result.eval_split == "test"
    assert (result.iterations, result.train_error) == (20, tracker.history["train_error"][-1][1])


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_is_the_arithmetic_of_the_convolutions_and_the_weights_stay_fp32(data_root, precision, dtype):
    data = load_data("fashion_mnist", data_root, False, 200, torch.device("cpu"))
    cfg = compose_config("schedule=smoke", "schedule.iterations=2", "analysis=false", f"precision={precision}")
    model = build_model(8, in_channels=1)
    outputs = set()
    model.stem[0].register_forward_hook(lambda module, inputs, output: outputs.add(output.dtype))
    result = train_job(resolved(cfg), model, data, MemoryTracker(), torch.device("cpu"))
    assert outputs == {dtype}  # in training and in the evaluations
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {b.dtype for name, b in model.named_buffers() if "running" in name} == {torch.float32}
    assert isinstance(result.final_train_loss, float)


def test_every_run_logs_its_peak_memory(data):
    _, _, tracker, _ = run(data)
    [(step, megabytes)] = tracker.history["peak_rss_mb"]
    assert step == 20 and 100 < megabytes < 64 * 1024


@pytest.mark.integration
def test_a_compiled_training_step_trains_as_the_eager_one(data):
    """compile=true compiles the training step (on the CPU too, through a C++ compiler): the same
    first losses as the eager step, within float reordering."""
    _, _, eager, _ = run(data, "schedule.iterations=4", "schedule.log_every=1")
    _, _, compiled, _ = run(data, "schedule.iterations=4", "schedule.log_every=1", "compile=true")
    for (step, loss), (step_c, loss_c) in zip(eager.history["train_loss"], compiled.history["train_loss"], strict=True):
        assert step == step_c and loss_c == pytest.approx(loss, rel=1e-3)


def test_the_learning_rate_is_a_pure_function_of_the_iteration_and_the_warm_up_seen():
    schedule = resolved(compose_config("schedule=cpu_short")).config.schedule  # 1000 iterations, drops at 500, 750
    assert warmup_end(schedule) == 100

    def lr(step: int, warming_up: bool) -> float:
        return get_lr(step, schedule, 0.1, warming_up)

    assert lr(0, warming_up=True) == lr(99, warming_up=True) == 0.01  # the warm-up rate
    assert lr(99, warming_up=False) == 0.1  # the error fell below the threshold: the base rate
    assert lr(100, warming_up=True) == 0.1  # the warm-up's latest end
    assert lr(499, warming_up=False) == 0.1
    assert lr(500, warming_up=False) == pytest.approx(0.01) and lr(750, False) == pytest.approx(0.001)
