"""Layer responses and gradient norms (P1 Fig. 7 and §4.1) measured on a probe batch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.analysis import first_over_last, probe, response_layers
from harness.config import compose_config
from harness.data.memory import load_data
from harness.models.resnet import build_model
from harness.tracking import MemoryTracker
from harness.train import train_job

from helpers.config import resolved


def small_net(residual: bool = True, activation: str = "post", depth: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(depth, residual, activation=activation, in_channels=1)  # depth 8: one block per stage
    with torch.no_grad():  # running statistics that make eval-mode BN differ from the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)


def test_response_std_is_the_std_of_each_bn_output_before_the_relu():
    model = small_net()
    images, labels = batch()
    table = probe(model, images, labels)
    responses = table[table["kind"] == "response"].set_index("layer")["value"]

    model.eval()
    with torch.no_grad():
        expected = {}
        x = model.stem[1](model.stem[0](images))
        expected["stem.conv"] = x.std().item()
        x = torch.relu(x)
        for s, stage in enumerate(model.stages, start=1):
            block = stage[0]
            out = block.bn1(block.conv1(x))
            expected[f"s{s}.b01.conv1"] = out.std().item()
            out = block.bn2(block.conv2(torch.relu(out)))
            expected[f"s{s}.b01.conv2"] = out.std().item()
            x = torch.relu(out + (x if block.shortcut is None else block.shortcut(x)))
    assert list(responses.index) == list(expected)  # the model's order, from the input
    for name, value in expected.items():
        assert abs(responses[name] - value) < 1e-5, name


def test_gradient_norms_are_those_of_the_probe_batch_loss():
    model = small_net()
    images, labels = batch()
    table = probe(model, images, labels)
    norms = table[table["kind"] == "grad_norm"].set_index("layer")["value"]

    reference = small_net()
    reference.train()
    F.cross_entropy(reference(images), labels).backward()
    assert abs(norms["s2.b01.conv1"] - reference.stages[1][0].conv1.weight.grad.norm().item()) < 1e-5
    bn = reference.stages[0][0].bn1
    assert abs(norms["s1.b01.bn1"] - torch.cat([bn.weight.grad, bn.bias.grad]).norm().item()) < 1e-5
    assert (
        abs(norms["fc"] - torch.cat([reference.fc.weight.grad.flatten(), reference.fc.bias.grad]).norm().item()) < 1e-5
    )
    assert list(table[table["kind"] == "grad_norm"]["index"]) == list(range(1, len(norms) + 1))


def test_plain_and_residual_nets_report_the_same_layers():
    for activation in ("post", "pre"):
        images, labels = batch()
        plain = probe(small_net(False, activation), images, labels)
        residual = probe(small_net(True, activation), images, labels)
        for kind in ("response", "grad_norm"):
            assert list(plain[plain["kind"] == kind]["layer"]) == list(residual[residual["kind"] == kind]["layer"])
    # Pre-activation nets keep the stem's conv-BN-ReLU; in their blocks only the first conv meets a BN.
    assert [layer.name for layer in response_layers(small_net(activation="pre"))] == [
        "stem.conv",
        "s1.b01.conv1",
        "s2.b01.conv1",
        "s3.b01.conv1",
    ]
    pre = probe(small_net(activation="pre"), *batch())
    pre_layers = list(pre[pre["kind"] == "grad_norm"]["layer"])
    assert "s1.b01.bn1" not in pre_layers and "s2.b01.bn1" in pre_layers  # the first unit has no pre-activation BN


def manual_forward(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, the output of every unit from the input), written out without hooks."""
    x = model.stem(images)
    outputs = []
    for stage in model.stages:
        for block in stage:
            x = block(x)
            outputs.append(x)
    x = torch.flatten(model.avgpool(model.final_activation(x)), 1)
    return model.fc(x), outputs


@pytest.mark.parametrize("residual", [True, False], ids=["resnet", "plain"])
@pytest.mark.parametrize("activation", ["post", "pre"])
@pytest.mark.parametrize("depth", [8, 14])
def test_output_grad_is_the_rms_of_the_loss_gradient_at_each_units_output(depth, residual, activation):
    images, labels = batch()
    table = probe(small_net(residual, activation, depth), images, labels)
    rows = table[table["kind"] == "output_grad"]

    reference = small_net(residual, activation, depth)
    reference.train()  # as probe computes gradients: training mode, batch statistics
    logits, outputs = manual_forward(reference, images)
    grads = torch.autograd.grad(F.cross_entropy(logits, labels), outputs)
    expected = [g.pow(2).mean().sqrt().item() for g in grads]

    units = len(outputs)
    assert units == 3 * (depth - 2) // 6
    # Listed as backpropagation goes, from the last unit to the first; index = unit number from the input.
    assert list(rows["index"]) == list(range(units, 0, -1))
    per_stage = (depth - 2) // 6
    names = [f"s{s}.b{b:02d}" for s in (1, 2, 3) for b in range(1, per_stage + 1)]
    assert list(rows["layer"]) == names[::-1]
    got = rows.set_index("index")["value"]
    for index, value in enumerate(expected, 1):
        assert got[index] == pytest.approx(value, rel=1e-6), (index, got[index], value)
    assert first_over_last(table) == pytest.approx(expected[0] / expected[-1], rel=1e-6)


def test_grad_and_weight_norms_equal_direct_norms():
    images, labels = batch()
    model = small_net()
    table = probe(model, images, labels)
    reference = small_net()
    reference.train()
    F.cross_entropy(reference(images), labels).backward()

    def norm(tensors) -> float:
        return torch.cat([t.detach().flatten() for t in tensors]).norm().item()

    block = reference.stages[2][0]
    modules = {
        "stem.conv": reference.stem[0],
        "stem.bn": reference.stem[1],
        "s1.b01.conv1": reference.stages[0][0].conv1,
        "s2.b01.bn2": reference.stages[1][0].bn2,
        "s3.b01.conv2": block.conv2,
        "fc": reference.fc,
    }
    grads = table[table["kind"] == "grad_norm"].set_index("layer")["value"]
    weights = table[table["kind"] == "weight_norm"].set_index("layer")["value"]
    assert list(grads.index) == list(weights.index)
    with_params = [m for m in reference.modules() if any(True for _ in m.parameters(recurse=False))]
    assert len(grads) == len(with_params)  # every module with parameters of its own, once
    for name, module in modules.items():
        assert grads[name] == pytest.approx(norm(p.grad for p in module.parameters()), rel=1e-5), name
        assert weights[name] == pytest.approx(norm(module.parameters()), rel=1e-6), name
    assert list(table[table["kind"] == "weight_norm"]["index"]) == list(range(1, len(weights) + 1))


def test_probing_leaves_the_model_as_it_was():
    model = small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe(model, *batch())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_analysis_does_not_change_the_training_curves(data_root):
    torch.use_deterministic_algorithms(True)
    data = load_data("fashion_mnist", data_root, False, 300, torch.device("cpu"))
    histories = []
    for analysis in (True, False):
        cfg = compose_config("schedule=smoke", "schedule.analysis_every=5", f"analysis={analysis}")
        torch.manual_seed(0)
        tracker = MemoryTracker()
        train_job(resolved(cfg), build_model(8, in_channels=1), data, tracker, torch.device("cpu"))
        histories.append(tracker)
    with_probes, without = histories
    assert sorted(with_probes.tables) == [f"analysis/step-{s:07d}.csv" for s in (5, 10, 15, 20)]
    assert without.tables == {}
    for key in ("train_loss", "train_error", "val_error", "final_train_error"):
        assert with_probes.history[key] and with_probes.history[key] == without.history[key], key
    assert "test_error" not in with_probes.history  # 300 held-out images: a validation split
    for key in ("response_std_mean", "output_grad_first_over_last"):
        assert [s for s, _ in with_probes.history[key]] == [5, 10, 15, 20]
        assert key not in without.history
    last = with_probes.tables["analysis/step-0000020.csv"]
    assert set(last["kind"]) == {"response", "output_grad", "grad_norm", "weight_norm"}
    assert with_probes.history["output_grad_first_over_last"][-1][1] == pytest.approx(first_over_last(last))
