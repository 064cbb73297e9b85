"""Why plain nets degrade (P1 §4.1-4.2): layer responses and gradient flow on a probe batch.

P1 Fig. 7 plots the standard deviation of every 3x3 layer's response, "the outputs of each
3x3 layer, after BN and before other nonlinearity (ReLU/addition)", and P1 §4.1 argues that
with BN neither forward responses nor backward gradients vanish in plain nets. `probe`
measures both on a fixed batch without touching the training run: BN running statistics are
restored and the gradients cleared, so curves are identical with the analysis on or off.
"""

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ResponseLayer:
    name: str  # a stable, sortable name: stem.conv, s1.b01.conv1, ...
    conv: nn.Conv2d
    norm: nn.BatchNorm2d  # the BN that normalises this conv's output


PROBE_IMAGES = 256  # the first images of the evaluation split, the same at every point


def layer_name(module_path: str, module: nn.Module) -> str:
    """stages.0.3.conv1 -> s1.b04.conv1; stem.0 -> stem.conv; stem.1 -> stem.bn."""
    parts = module_path.split(".")
    if parts[0] == "stages":
        return f"s{int(parts[1]) + 1}.b{int(parts[2]) + 1:02d}.{'.'.join(parts[3:])}"
    if parts[0] == "stem":
        return "stem.conv" if isinstance(module, nn.Conv2d) else "stem.bn"
    return module_path


def response_layers(model: nn.Module) -> list[ResponseLayer]:
    """Every 3x3 conv followed by a BN among its siblings, in the model's order. Pre-activation
    blocks pair only their first conv: the second one's output meets the addition unnormalised."""
    layers = []
    for path, module in model.named_modules():
        children = list(module.named_children())
        for (name, child), (_, following) in zip(children, children[1:]):
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and isinstance(following, nn.BatchNorm2d):
                layers.append(ResponseLayer(layer_name(f"{path}.{name}" if path else name, child), child, following))
    return layers


def gradient_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module with parameters of its own (convs, BNs, the classifier), in order."""
    return [
        (layer_name(path, module), module)
        for path, module in model.named_modules()
        if path and any(True for _ in module.parameters(recurse=False))
    ]


def probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    """One row per layer: `response_std` of each 3x3 layer (evaluation mode, as at test time)
    and `grad_norm`, the L2 norm of each parameterised layer's gradient of the probe batch's
    loss (training mode, as in training)."""
    responses = {}
    layers = response_layers(model)
    hooks = [
        layer.norm.register_forward_hook(lambda _, __, out, name=layer.name: responses.__setitem__(name, out.std().item()))
        for layer in layers
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()

    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    named = gradient_layers(model)
    norms = {
        name: torch.sqrt(sum((p.grad.float() ** 2).sum() for p in module.parameters(recurse=False) if p.grad is not None)).item()
        for name, module in named
    }
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    model.train(was_training)

    rows = [{"layer": layer.name, "kind": "response", "value": responses[layer.name]} for layer in layers]
    rows += [{"layer": name, "kind": "grad_norm", "value": norms[name]} for name, _ in named]
    table = pd.DataFrame(rows)
    table["index"] = table.groupby("kind").cumcount() + 1  # layer index, from the input
    return table[["kind", "index", "layer", "value"]]


def record(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tracker, step: int) -> pd.DataFrame:
    """Probe the model and log the table (one artifact per point keeps the MLflow UI usable at
    depth 110) and two summary metrics."""
    table = probe(model, images, labels)
    tracker.log_table(table, f"analysis/step-{step:07d}.csv")
    responses = table[table["kind"] == "response"]["value"]
    convs = table[(table["kind"] == "grad_norm") & table["layer"].str.contains("conv")]["value"]
    tracker.log_metrics({"response_std_mean": responses.mean(), "grad_norm_min_over_max": convs.min() / convs.max()}, step)
    return table
