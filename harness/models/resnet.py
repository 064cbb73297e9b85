"""Plain and residual nets of He et al. (arXiv 1512.03385, 1603.05027).

One `ResNet` class builds both families of P1: the CIFAR nets (3x3 stem, three stages of
16/32/64 filters, depth 6n+2) and the ImageNet nets (7x7/2 stem, 3x3/2 max pool, four stages
of 64-512 filters). A block either adds its shortcut (residual) or does not (plain), so a
plain net is exactly the residual net with the additions removed.
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import (
    ACTIVATIONS,
    CIFAR_WIDTHS,
    IMAGENET_LAYOUTS,
    IMAGENET_WIDTHS,
    VALID_ACTIVATIONS,
    resolve_family,
    resolve_shortcut,
)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity, subsampled by the stride, with the extra channels set to zero."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.extra_channels = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def make_shortcut(
    option: str, in_planes: int, out_planes: int, stride: int, norm: nn.Module | None
) -> nn.Module | None:
    """The shortcut module of one block; None means the identity."""
    shape_changes = stride != 1 or in_planes != out_planes
    if option == "full_projection" or (option == "projection" and shape_changes):
        layers = [conv1x1(in_planes, out_planes, stride)]
        if norm is not None:
            layers.append(norm)
        return nn.Sequential(*layers)
    if shape_changes:
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return None


def preact_shortcut(shortcut: nn.Module | None, x: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
    """P2: a projection sees the pre-activated input; identity and zero-padding see x itself."""
    if shortcut is None:
        return x
    if isinstance(shortcut, ZeroPadShortcut):
        return shortcut(x)
    return shortcut(activated)


def pre_activation(bn: nn.BatchNorm2d | None, x: torch.Tensor) -> torch.Tensor:
    """A pre-activation unit's BN-ReLU; None for the network's first unit, whose input the stem
    has already activated (P2 section 4.1)."""
    if bn is None:
        return x
    return F.relu(bn(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs, BN after each, ReLU after the addition (P1, post-activation)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, residual: bool, shortcut: str):
        super().__init__()
        out_planes = planes * self.expansion
        self.residual = residual
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out_planes)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            make_shortcut(shortcut, in_planes, out_planes, stride, nn.BatchNorm2d(out_planes)) if residual else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.residual:
            out = out + identity
        return self.relu(out)


class PreActBasicBlock(nn.Module):
    """P2's full pre-activation: BN-ReLU-conv-BN-ReLU-conv, then the addition, nothing after.
    With `preactivate=False` (the network's first unit) there is no bn1: the stem's BN-ReLU
    activates the input before it splits into the two paths."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int, residual: bool, shortcut: str, preactivate: bool = True
    ):
        super().__init__()
        out_planes = planes * self.expansion
        self.residual = residual
        self.bn1 = nn.BatchNorm2d(in_planes) if preactivate else None
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_planes, out_planes, stride, norm=None) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = pre_activation(self.bn1, x)
        identity = preact_shortcut(self.shortcut, x, activated=out)

        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)

        if self.residual:
            out = out + identity
        return out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), BN after each, ReLU after the addition.

    A stage's first block strides on the 3x3 conv, as torchvision does ("ResNet v1.5"); P1's
    Caffe models stride the first 1x1 conv instead, which skips three quarters of its input.
    The parameter count is the same, the features and the compute are not."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, residual: bool, shortcut: str):
        super().__init__()
        out_planes = planes * self.expansion
        self.residual = residual
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            make_shortcut(shortcut, in_planes, out_planes, stride, nn.BatchNorm2d(out_planes)) if residual else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.residual:
            out = out + identity
        return self.relu(out)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck of P2: (BN-ReLU-conv) x3, then the addition; strides on the 3x3
    conv like `Bottleneck`. `preactivate=False` as in `PreActBasicBlock`."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int, residual: bool, shortcut: str, preactivate: bool = True
    ):
        super().__init__()
        out_planes = planes * self.expansion
        self.residual = residual
        self.bn1 = nn.BatchNorm2d(in_planes) if preactivate else None
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_planes, out_planes, stride, norm=None) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = pre_activation(self.bn1, x)
        identity = preact_shortcut(self.shortcut, x, activated=out)

        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        out = self.relu(out)
        out = self.conv3(out)

        if self.residual:
            out = out + identity
        return out


class ResNet(nn.Module):
    """A stem, stages of blocks (stride 2 at the start of every stage but the first), global
    average pooling and one linear layer. `blocks_per_stage` and `widths` are the depth as data."""

    def __init__(
        self,
        block: type[nn.Module],
        blocks_per_stage: list[int],
        widths: list[int],
        imagenet_stem: bool,
        residual: bool = True,
        shortcut: str = "zero_pad",
        pre_activation: bool = False,
        in_channels: int = 3,
        num_classes: int = 10,
    ):
        super().__init__()
        self.in_planes = widths[0]
        self.residual = residual
        self.shortcut_option = shortcut

        # Pre-activation nets keep the stem's BN-ReLU too: it is the first unit's pre-activation,
        # taken before the split so that both paths see it (P2 section 4.1, fb.resnet.torch).
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))

        first_unit = {"preactivate": False} if pre_activation else {}
        self.stages = nn.Sequential(
            self._make_stage(block, widths[0], blocks_per_stage[0], stride=1, **first_unit),
            *(
                self._make_stage(block, width, blocks, stride=2)
                for width, blocks in zip(widths[1:], blocks_per_stage[1:])
            ),
        )
        # P2: after the last pre-activation unit, one more BN-ReLU before pooling.
        self.final_activation = (
            nn.Sequential(nn.BatchNorm2d(self.in_planes), nn.ReLU(inplace=True)) if pre_activation else nn.Identity()
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_stage(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int, **first_block_options
    ) -> nn.Sequential:
        layers = [block(self.in_planes, planes, stride, self.residual, self.shortcut_option, **first_block_options)]
        self.in_planes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.in_planes, planes, 1, self.residual, self.shortcut_option))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        x = self.final_activation(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


BLOCKS = {
    ("basic", "post"): BasicBlock,
    ("basic", "pre"): PreActBasicBlock,
    ("bottleneck", "post"): Bottleneck,
    ("bottleneck", "pre"): PreActBottleneck,
}


def build_model(
    depth: int,
    residual: bool = True,
    shortcut: str = "auto",
    activation: str = "post",
    in_channels: int = 3,
    num_classes: int = 10,
    family: str = "auto",
) -> ResNet:
    """The plain (residual=False) or residual net of P1/P2 with this many weighted layers."""
    shortcut = resolve_shortcut(shortcut, depth, family)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not valid; use {VALID_ACTIVATIONS}.")
    pre = activation == "pre"
    make = partial(
        ResNet,
        residual=residual,
        shortcut=shortcut,
        pre_activation=pre,
        in_channels=in_channels,
        num_classes=num_classes,
    )
    if resolve_family(depth, family) == "cifar":
        n = (depth - 2) // 6
        return make(BLOCKS["basic", activation], [n, n, n], CIFAR_WIDTHS, imagenet_stem=False)
    kind, blocks_per_stage = IMAGENET_LAYOUTS[depth]
    return make(BLOCKS[kind, activation], blocks_per_stage, IMAGENET_WIDTHS, imagenet_stem=True)
