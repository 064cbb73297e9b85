"""Layer responses and gradient norms (P1 Fig. 7 and §4.1) measured on a probe batch."""

import torch
import torch.nn.functional as F
from torch import nn

from harness.analysis import probe, response_layers
from harness.config import compose_config
from harness.data import load_data
from harness.models import build_model
from harness.tracking import MemoryTracker
from harness.train import train


def small_net(residual: bool = True, activation: str = "post") -> nn.Module:
    torch.manual_seed(0)
    model = build_model(8, residual, activation=activation, in_channels=1)  # one block per stage
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
    assert abs(norms["fc"] - torch.cat([reference.fc.weight.grad.flatten(), reference.fc.bias.grad]).norm().item()) < 1e-5
    assert list(table[table["kind"] == "grad_norm"]["index"]) == list(range(1, len(norms) + 1))


def test_plain_and_residual_nets_report_the_same_layers():
    for activation in ("post", "pre"):
        images, labels = batch()
        plain = probe(small_net(False, activation), images, labels)
        residual = probe(small_net(True, activation), images, labels)
        for kind in ("response", "grad_norm"):
            assert list(plain[plain["kind"] == kind]["layer"]) == list(residual[residual["kind"] == kind]["layer"])
    assert [layer.name for layer in response_layers(small_net(activation="pre"))] == ["s1.b01.conv1", "s2.b01.conv1", "s3.b01.conv1"]


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
        train(cfg, build_model(20, in_channels=1), data, tracker, torch.device("cpu"))
        histories.append(tracker)
    with_probes, without = histories
    assert sorted(with_probes.tables) == [f"analysis/step-{s:07d}.csv" for s in (5, 10, 15, 20)]
    assert without.tables == {}
    for key in ("train_loss", "train_error", "test_error"):
        assert with_probes.history[key] == without.history[key]
    assert [s for s, _ in with_probes.history["response_std_mean"]] == [5, 10, 15, 20]
