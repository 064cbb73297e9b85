"""Why plain nets degrade (P1 §4.1-4.2): layer responses and gradient flow on a probe batch.

P1 Fig. 7 plots the standard deviation of every 3x3 layer's response, "the outputs of each
3x3 layer, after BN and before other nonlinearity (ReLU/addition)", and P1 §4.1 argues that
with BN neither forward responses nor backward-propagated signals vanish in plain nets.
`probe` measures both on a fixed batch without touching the training run: BN running
statistics are restored and the gradients cleared, so curves are identical with the analysis
on or off. The backward signal is the gradient of the loss with respect to each residual
unit's output (the same positions in a plain net), as RMS per element: unlike weight-gradient
norms it does not mix layer sizes, nor scale with 1/||w|| as BN makes weight gradients do.
"""

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from harness import record


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
    """Every 3x3 conv directly followed by a BN, in the model's order: in a unit, the order of its
    parts (P2's units), elsewhere its children's. Full pre-activation units pair only their first
    conv, and BN after addition (b) only its first: the second conv's output meets the addition
    unnormalised."""
    layers = []
    for path, module in model.named_modules():
        order = getattr(module, "order", None) or [name for name, _ in module.named_children()]
        for name, following in zip(order, order[1:]):
            child, norm = getattr(module, name, None), getattr(module, following, None)
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and isinstance(norm, nn.BatchNorm2d):
                layers.append(ResponseLayer(layer_name(f"{path}.{name}" if path else name, child), child, norm))
    return layers


def gradient_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module with parameters of its own (convs, BNs, the classifier), in order."""
    return [
        (layer_name(path, module), module)
        for path, module in model.named_modules()
        if path and any(True for _ in module.parameters(recurse=False))
    ]


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every residual unit (block) of the net, from the input, named like the layers in it."""
    return [(f"s{i + 1}.b{j + 1:02d}", block) for i, stage in enumerate(model.stages) for j, block in enumerate(stage)]


def l2(tensors) -> float:
    return torch.sqrt(sum((t.detach().float() ** 2).sum() for t in tensors)).item()


def probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    """Rows of four kinds, each numbered from the input: `response`, the std of each 3x3
    layer's response (evaluation mode, as at test time); and in training mode, as in training,
    for the probe batch's loss: `output_grad`, the RMS per element of its gradient with respect
    to each unit's output (listed from the last unit to the first, as backpropagation goes);
    `grad_norm` and `weight_norm`, the L2 norms of each parameterised layer's gradient and
    weights (their ratio is the layer's relative update size)."""
    responses = {}
    layers = response_layers(model)
    hooks = [
        layer.norm.register_forward_hook(
            lambda _, __, out, name=layer.name: responses.__setitem__(name, out.std().item())
        )
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
    output_grads = {}

    def keep_output_grad(name: str, output: torch.Tensor) -> None:
        output.register_hook(lambda grad: output_grads.__setitem__(name, grad.float().pow(2).mean().sqrt().item()))

    unit_list = units(model)
    hooks = [
        unit.register_forward_hook(lambda _, __, out, name=name: keep_output_grad(name, out))
        for name, unit in unit_list
    ]
    try:
        F.cross_entropy(model(images), labels).backward()
    finally:
        for hook in hooks:
            hook.remove()
    named = gradient_layers(model)
    norms = {name: l2(p.grad for p in module.parameters(recurse=False) if p.grad is not None) for name, module in named}
    weights = {name: l2(module.parameters(recurse=False)) for name, module in named}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    model.train(was_training)

    rows = [("response", i, layer.name, responses[layer.name]) for i, layer in enumerate(layers, 1)]
    rows += [("output_grad", i, name, output_grads[name]) for i, (name, _) in reversed(list(enumerate(unit_list, 1)))]
    rows += [("grad_norm", i, name, norms[name]) for i, (name, _) in enumerate(named, 1)]
    rows += [("weight_norm", i, name, weights[name]) for i, (name, _) in enumerate(named, 1)]
    return pd.DataFrame(rows, columns=["kind", "index", "layer", "value"])


def first_over_last(table: pd.DataFrame) -> float:
    """How much the backward signal grows (> 1) or shrinks (< 1) on its way from the last unit's
    output to the first's: RMS of the output gradient at the first unit over the last."""
    grads = table[table["kind"] == "output_grad"].sort_values("index")["value"]
    return grads.iloc[0] / grads.iloc[-1]


def log_probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tracker, step: int) -> pd.DataFrame:
    """Probe the model and log the table (one artifact per point keeps the MLflow UI usable at
    depth 110) and two summary metrics."""
    table = probe(model, images, labels)
    tracker.log_table(table, record.probe_table(step))
    responses = table[table["kind"] == "response"]["value"]
    tracker.log_metrics({record.RESPONSE_STD_MEAN: responses.mean(), record.SIGNAL_RATIO: first_over_last(table)}, step)
    return table
