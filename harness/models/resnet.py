"""Plain and residual nets of He et al. (arXiv 1512.03385, 1603.05027).

One `ResNet` class builds the families of P1 and P2: the CIFAR nets (3x3 stem, three stages of
16/32/64 filters: P1's of basic units, depth 6n+2; P2's of bottleneck units, 64/128/256 out,
depth 9n+2) and the ImageNet nets (7x7/2 stem, 3x3/2 max pool, four stages
of 64-512 filters). Every unit is one `Unit`: its parts in the order of one of P2's five
arrangements (Fig. 4), and a shortcut joined to it by one of P1's or P2's joins (Fig. 2) or one
of your own (a `Join`), or none (a plain net, exactly the residual net with the additions removed).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import (
    ACTIVATIONS,
    CIFAR_LAYOUTS,
    CIFAR_WIDTHS,
    IMAGENET_LAYOUTS,
    IMAGENET_WIDTHS,
    SHORTCUT_DEFAULTS,
    VALID_ACTIVATIONS,
    cifar_units_per_stage,
    resolve_family,
    resolve_shortcut,
    shortcut_row,
)

# P2 Fig. 4: the parts of a unit in order; "add" is where the shortcut joins the residual branch.
BASIC_UNITS = {
    "post": ("conv", "bn", "relu", "conv", "bn", "add", "relu"),  # (a) original
    "bn_after_add": ("conv", "bn", "relu", "conv", "add", "bn", "relu"),  # (b)
    "relu_before_add": ("conv", "bn", "relu", "conv", "bn", "relu", "add"),  # (c)
    "relu_only_pre": ("relu", "conv", "bn", "relu", "conv", "bn", "add"),  # (d)
    "pre": ("bn", "relu", "conv", "bn", "relu", "conv", "add"),  # (e) full pre-activation
}
# The same orders with a third weight layer: 1x1 reduce, 3x3, 1x1 expand.
BOTTLENECK_UNITS = {
    "post": ("conv", "bn", "relu", "conv", "bn", "relu", "conv", "bn", "add", "relu"),
    "bn_after_add": ("conv", "bn", "relu", "conv", "bn", "relu", "conv", "add", "bn", "relu"),
    "relu_before_add": ("conv", "bn", "relu", "conv", "bn", "relu", "conv", "bn", "relu", "add"),
    "relu_only_pre": ("relu", "conv", "bn", "relu", "conv", "bn", "relu", "conv", "bn", "add"),
    "pre": ("bn", "relu", "conv", "bn", "relu", "conv", "bn", "relu", "conv", "add"),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def basic_convs(in_planes: int, planes: int, stride: int) -> list[nn.Conv2d]:
    """Two 3x3 convs; the first strides."""
    return [conv3x3(in_planes, planes, stride), conv3x3(planes, planes)]


def bottleneck_convs(in_planes: int, planes: int, stride: int) -> list[nn.Conv2d]:
    """1x1 reduce, 3x3, 1x1 expand (x4). The 3x3 strides, as torchvision does ("ResNet v1.5");
    P1's Caffe models stride the first 1x1 conv instead, which skips three quarters of its input.
    The parameter count is the same, the features and the compute are not."""
    return [conv1x1(in_planes, planes), conv3x3(planes, planes, stride), conv1x1(planes, planes * 4)]


def reduce_strided_bottleneck_convs(in_planes: int, planes: int, stride: int) -> list[nn.Conv2d]:
    """The bottleneck with its first 1x1 strided: P2 is silent, and its authors' release of
    ResNet-164/1001 (KaimingHe/resnet-1k-layers, resnet-pre-act.lua) strides there, as P1's Caffe
    models do, so P2's CIFAR bottleneck nets follow it."""
    return [conv1x1(in_planes, planes, stride), conv3x3(planes, planes), conv1x1(planes, planes * 4)]


@dataclass(frozen=True)
class Design:
    """A unit's design: its weight layers and the order of its parts (BASIC_UNITS, ...)."""

    convs: Callable[[int, int, int], list[nn.Conv2d]]  # (in_planes, planes, stride) -> its convs in order
    expansion: int
    parts: tuple[str, ...]

    @property
    def pre_activated(self) -> bool:
        return self.parts[0] != "conv"


class ZeroPadShortcut(nn.Module):
    """Option A: identity, subsampled by the stride, with the extra channels set to zero."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.extra_channels = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class Join(nn.Module):
    """How a unit's shortcut joins its residual branch F (a row of harness.models.SHORTCUTS names
    its class): built from the unit's shape and the shortcut's parameters by key, and called with
    the shortcut, the branch and the unit's input as its weighted layers see it (pre-activated in
    a pre-activated unit). The base class takes the shape that most joins do not need."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()


class Add(Join):
    """P1: shortcut + F."""

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return branch + shortcut


class Scale(Join):
    """P2 Fig. 2b, constant scaling: lambda x + F."""

    frozen = False

    def __init__(self, in_planes: int, out_planes: int, stride: int, shortcut_lambda: float):
        super().__init__(in_planes, out_planes, stride)
        self.shortcut_scale = shortcut_lambda
        self.branch_scale = 1 - shortcut_lambda if self.frozen else 1.0

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.branch_scale * branch + self.shortcut_scale * shortcut


class FrozenGate(Scale):
    """P2 Fig. 2b with F scaled by 1 - lambda too: a gate frozen at g = 1 - lambda, P2's frozen gating."""

    frozen = True


class Gate(Join):
    """P2 Fig. 2d, shortcut-only gating: (1 - g) x + F, g = sigmoid(W_g x + b_g), a 1x1 conv of the
    unit's input with one gate per output channel (strided where the unit strides). P2 leaves
    open BN after the gate (none here) and W_g's init (He, as every conv here)."""

    exclusive = False

    def __init__(self, in_planes: int, out_planes: int, stride: int, gate_bias: float):
        super().__init__(in_planes, out_planes, stride)
        self.gate = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=True)
        nn.init.constant_(self.gate.bias, gate_bias)

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(x))
        if self.exclusive:
            branch = g * branch
        return branch + (1 - g) * shortcut


class ExclusiveGate(Gate):
    """P2 Fig. 2c, exclusive gating: (1 - g) x + g F."""

    exclusive = True


class ShortcutDropout(Join):
    """P2 Fig. 2f: dropout on the shortcut, which "statistically imposes a scale of lambda with an
    expectation of 0.5" (rate 0.5): in training each element is kept or zeroed, unscaled; in
    evaluation the shortcut is scaled by its expectation, 1 - rate, with no randomness."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, shortcut_dropout: float):
        super().__init__(in_planes, out_planes, stride)
        self.rate = shortcut_dropout

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            keep = torch.rand_like(shortcut) >= self.rate
            return branch + shortcut * keep
        return branch + (1 - self.rate) * shortcut


def make_shortcut_path(
    option: str, in_planes: int, out_planes: int, stride: int, norm: nn.Module | None
) -> nn.Module | None:
    """The shortcut's path of one unit, by P1's option (a shortcut's `path`): None is the identity."""
    shape_changes = stride != 1 or in_planes != out_planes
    if option == "full_projection" or (option == "projection" and shape_changes):
        layers = [conv1x1(in_planes, out_planes, stride)]
        if norm is not None:
            layers.append(norm)
        return nn.Sequential(*layers)
    if shape_changes:
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return None


def run(layers: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class Unit(nn.Module):
    """One unit: its parts in `parts` order, BNs and convs numbered as they come (conv1, bn1, ...:
    the names of torchvision's blocks, which old checkpoints carry). `skip` leaves out parts at the
    start (the net's first pre-activated unit, whose input the stem has activated). At "add" the
    shortcut joins, unless there is no join (a plain net). Weighted shortcut layers (projections,
    gates) of a pre-activated unit see the activated input (P2, fb.resnet.torch), all else x.

    The order is read once, here, into three runs of layers: the pre-activation (the parts before
    conv1), the rest of the branch up to the join, and what follows the join. They are tuples, so
    that the layers stay registered under their own names alone."""

    def __init__(
        self,
        convs: list[nn.Conv2d],
        parts: tuple[str, ...],
        norm_layer,
        shortcut: nn.Module | None = None,
        join: nn.Module | None = None,
        skip: int = 0,
    ):
        super().__init__()
        names, channels = [], convs[0].in_channels
        for part in parts:
            count = sum(name.startswith(part) for name in names) + 1
            if part == "conv":
                conv = convs[count - 1]
                channels = conv.out_channels
                names.append(f"conv{count}")
            elif part == "bn":
                names.append(f"bn{count}")
            else:
                names.append(part)
                continue
            if len(names) > skip:
                setattr(self, names[-1], conv if part == "conv" else norm_layer(channels))
        self.order = tuple(names[skip:])
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut
        self.join = join
        self.shortcut_sees_activated = isinstance(shortcut, nn.Sequential)  # a projection, not option A

        first_conv, add = self.order.index("conv1"), self.order.index("add")
        self.pre_activation = self._layers(self.order[:first_conv])
        if self.order[0] == "relu":  # unit (d): its first ReLU must leave x as it is, x is the shortcut's
            self.pre_activation = (nn.ReLU(),)
        self.before_join = self._layers(self.order[first_conv:add])
        self.after_join = self._layers(self.order[add + 1 :])

    def _layers(self, names: tuple[str, ...]) -> tuple[nn.Module, ...]:
        return tuple(self.relu if name == "relu" else getattr(self, name) for name in names)

    def _shortcut_path(self, x: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return x
        return self.shortcut(activated if self.shortcut_sees_activated else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = run(self.pre_activation, x)
        out = run(self.before_join, activated)
        if self.join is not None:
            out = self.join(self._shortcut_path(x, activated), out, activated)
        return run(self.after_join, out)


class ResNet(nn.Module):
    """A stem, stages of units (stride 2 at the start of every stage but the first), global
    average pooling and one linear layer. `blocks_per_stage` and `widths` are the depth as data;
    `shortcut` is None for a plain net."""

    def __init__(
        self,
        design: Design,
        blocks_per_stage: list[int],
        widths: list[int],
        imagenet_stem: bool,
        shortcut: str | None = "zero_pad",
        parameters: dict[str, float] | None = None,
        in_channels: int = 3,
        num_classes: int = 10,
        norm_layer=nn.BatchNorm2d,
    ):
        super().__init__()
        self.in_planes = widths[0]
        self.design = design
        self.shortcut_option = shortcut
        self.shortcut_parameters = SHORTCUT_DEFAULTS | (parameters or {})
        self.shortcut_row = None if shortcut is None else shortcut_row(shortcut)
        self.norm_layer = norm_layer

        # Pre-activated nets keep the stem's BN-ReLU too: it is the first unit's pre-activation,
        # taken before the split so that both paths see it (P2 section 4.1, fb.resnet.torch).
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
                norm_layer(widths[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), norm_layer(widths[0]), nn.ReLU(inplace=True))

        first_skip = design.parts.index("conv") if design.pre_activated else 0
        self.stages = nn.Sequential(
            self._make_stage(widths[0], blocks_per_stage[0], stride=1, first_skip=first_skip),
            *(self._make_stage(width, blocks, stride=2) for width, blocks in zip(widths[1:], blocks_per_stage[1:])),
        )
        # P2: after the last pre-activated unit, one more BN-ReLU before pooling.
        self.final_activation = (
            nn.Sequential(norm_layer(self.in_planes), nn.ReLU(inplace=True)) if design.pre_activated else nn.Identity()
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_unit(self, planes: int, stride: int, skip: int = 0) -> Unit:
        in_planes, out_planes = self.in_planes, planes * self.design.expansion
        self.in_planes = out_planes
        convs = self.design.convs(in_planes, planes, stride)
        if self.shortcut_option is None:
            return Unit(convs, self.design.parts, self.norm_layer, skip=skip)
        # A projection of a pre-activated unit is normalised by the next unit's pre-activation.
        norm = None if self.design.pre_activated else self.norm_layer(out_planes)
        row = self.shortcut_row
        path = make_shortcut_path(row.path, in_planes, out_planes, stride, norm)
        parameters = {key: self.shortcut_parameters[key] for key in row.parameters}
        join = row.join_class()(in_planes, out_planes, stride, **parameters)
        return Unit(convs, self.design.parts, self.norm_layer, path, join, skip)

    def _make_stage(self, planes: int, blocks: int, stride: int, first_skip: int = 0) -> nn.Sequential:
        units = [self._make_unit(planes, stride, first_skip)]
        units += [self._make_unit(planes, 1) for _ in range(1, blocks)]
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        x = self.final_activation(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


DESIGNS = {
    **{("basic", unit): Design(basic_convs, 1, parts) for unit, parts in BASIC_UNITS.items()},
    **{("bottleneck", unit): Design(bottleneck_convs, 4, parts) for unit, parts in BOTTLENECK_UNITS.items()},
    **{
        ("cifar_bottleneck", unit): Design(reduce_strided_bottleneck_convs, 4, parts)
        for unit, parts in BOTTLENECK_UNITS.items()
    },
}


def build_model(
    depth: int,
    residual: bool = True,
    shortcut: str = "auto",
    activation: str = "post",
    in_channels: int = 3,
    num_classes: int = 10,
    family: str = "auto",
    **parameters: float,
) -> ResNet:
    """The plain (residual=False) or residual net of P1/P2 with this many weighted layers.
    `parameters`: P2's shortcut_lambda, gate_bias and shortcut_dropout, where the shortcut uses them."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not valid; use {VALID_ACTIVATIONS}.")
    shortcut = resolve_shortcut(shortcut, depth, family) if residual else None
    options = {"shortcut": shortcut, "parameters": parameters}
    options |= {"in_channels": in_channels, "num_classes": num_classes}
    family = resolve_family(depth, family)
    if family == "imagenet":
        kind, blocks_per_stage = IMAGENET_LAYOUTS[depth]
        return ResNet(DESIGNS[kind, activation], blocks_per_stage, IMAGENET_WIDTHS, imagenet_stem=True, **options)
    kind, blocks_per_stage = CIFAR_LAYOUTS[family][0], [cifar_units_per_stage(depth, family)] * 3
    return ResNet(DESIGNS[kind, activation], blocks_per_stage, CIFAR_WIDTHS, imagenet_stem=False, **options)


def build_for(job, in_channels: int, num_classes: int) -> ResNet:
    """The net a job (a harness.identity.Job, which builds on this package) trains."""
    cfg = job.config
    return build_model(
        cfg.depth, cfg.residual, cfg.shortcut, cfg.activation, in_channels, num_classes, cfg.family, **job.parameters
    )
