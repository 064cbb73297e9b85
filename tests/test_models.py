"""Behaviour of harness.models: the plain and residual nets of He et al. (P1, P2).

Facts checked here come from /work/shared/reference/resnet-papers.md. Everything is small and
runs on the CPU; the deep nets are only built and counted, never run.
"""

import io
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from harness.models import model_name, resolve_shortcut
from harness.models.resnet import DESIGNS, ResNet, Unit, ZeroPadShortcut, build_model

from helpers.nets import assert_same_logits, count_params, layers_in_execution_order, randomise_batchnorm

CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
SHORTCUT_OPTIONS = ("zero_pad", "projection", "full_projection")


# P1's units, their parts in the order they run: the basic unit (two 3x3 convs) and the bottleneck
# (1x1, 3x3, 1x1); and P2's full pre-activation unit (e), which begins with its BN-ReLU.
BASIC_ORDER = ("conv1", "bn1", "relu", "conv2", "bn2", "add", "relu")
BOTTLENECK_ORDER = ("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3", "add", "relu")
PRE_BASIC_ORDER = ("bn1", "relu", "conv1", "bn2", "relu", "conv2", "add")


def blocks(model: nn.Module) -> list[Unit]:
    return [block for stage in model.stages for block in stage]


def design_of(model: ResNet) -> tuple[str, str]:
    """The (kind, activation) key of the design `model` was built from."""
    return next(key for key, design in DESIGNS.items() if design is model.design)


def make_unit(
    kind: str, activation: str, in_planes: int, planes: int, stride: int, shortcut: str | None, first: bool = False
) -> Unit:
    """One unit as `ResNet._make_unit` builds it, on its own: `shortcut` None for a plain unit, `first`
    for the network's first unit, whose pre-activation (if any) the stem has taken."""
    design = DESIGNS[kind, activation]
    net = ResNet(design, [1], [in_planes], imagenet_stem=False, shortcut=shortcut)
    net.in_planes = in_planes
    skip = design.parts.index("conv") if first else 0
    return net._make_unit(planes, stride, skip)


def projection_shortcuts(model: nn.Module) -> list[nn.Module]:
    """Shortcut modules that hold a 1x1 convolution (options B and C)."""
    return [
        b.shortcut
        for b in blocks(model)
        if b.shortcut is not None
        and any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in b.shortcut.modules())
    ]


def post_main_path(block: Unit, x: torch.Tensor) -> torch.Tensor:
    """P1's residual function F(x): conv-BN-ReLU-conv-BN, without the final ReLU."""
    return block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))


def pre_activated(block: Unit, x: torch.Tensor) -> torch.Tensor:
    """A pre-activation block's BN-ReLU; the network's first block has none (no bn1 at all)."""
    return torch.relu(block.bn1(x)) if hasattr(block, "bn1") else x


def pre_main_path(block: Unit, x: torch.Tensor) -> torch.Tensor:
    """P2's full pre-activation residual function: BN-ReLU-conv-BN-ReLU-conv."""
    return block.conv2(torch.relu(block.bn2(block.conv1(pre_activated(block, x)))))


def bottleneck_main_path(block: Unit, x: torch.Tensor) -> torch.Tensor:
    """P1's bottleneck F(x): 1x1-BN-ReLU, 3x3-BN-ReLU, 1x1-BN, without the final ReLU."""
    out = torch.relu(block.bn1(block.conv1(x)))
    out = torch.relu(block.bn2(block.conv2(out)))
    return block.bn3(block.conv3(out))


def preact_bottleneck_main_path(block: Unit, x: torch.Tensor) -> torch.Tensor:
    """P2's pre-activation bottleneck F(x): (BN-ReLU-conv) x3."""
    out = block.conv1(pre_activated(block, x))
    out = block.conv2(torch.relu(block.bn2(out)))
    return block.conv3(torch.relu(block.bn3(out)))


def unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


# Each (kind, activation) design: its residual function F and what follows the addition (P1: ReLU; P2: nothing).
MAIN_PATHS = {
    ("basic", "post"): (post_main_path, torch.relu),
    ("basic", "pre"): (pre_main_path, unchanged),
    ("bottleneck", "post"): (bottleneck_main_path, torch.relu),
    ("bottleneck", "pre"): (preact_bottleneck_main_path, unchanged),
}


# --- parameter counts --------------------------------------------------------------------------


@pytest.mark.parametrize("shortcut", ["zero_pad", "auto"])
@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_resnet_parameter_counts_match_paper(depth, shortcut):
    """ResNet-20 ... 1202 with option A (auto's choice for them) have exactly the counts of P1
    Table 6 (BN affine, biased fc)."""
    model = build_model(depth, residual=True, shortcut=shortcut, activation="post", in_channels=3, num_classes=10)
    assert count_params(model) == CIFAR_PARAMS[depth]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_nets_have_the_same_parameter_count_as_option_a_resnets(depth):
    """Plain nets are the residual nets minus the additions: same parameters under option A."""
    model = build_model(depth, residual=False, shortcut="zero_pad", activation="post", in_channels=3, num_classes=10)
    assert count_params(model) == CIFAR_PARAMS[depth]


@pytest.mark.parametrize(
    "depth, expected, reference",
    [
        (18, 11_689_512, torchvision.models.resnet18),
        (34, 21_797_672, torchvision.models.resnet34),
        (50, 25_557_032, torchvision.models.resnet50),
    ],
)
def test_imagenet_parameter_counts_match_torchvision(depth, expected, reference):
    """ImageNet nets with option B (projection + BN where shapes change) count like torchvision's."""
    model = build_model(depth, residual=True, shortcut="projection", in_channels=3, num_classes=1000)
    assert count_params(model) == count_params(reference()) == expected


@pytest.mark.parametrize(
    "depth, expected, projections",
    [(18, 11_515_688, 0), (34, 21_623_848, 0), (50, 25_557_032, 4)],
)
def test_imagenet_default_shortcut_is_p1s_choice(depth, expected, projections):
    """The default (auto) is P1's: option A for ResNet-18/34 (torchvision's count minus the three
    1x1 projections and their BNs, 173,824 parameters), option B for ResNet-50 (torchvision's count)."""
    model = build_model(depth, in_channels=3, num_classes=1000)
    assert count_params(model) == expected
    assert len(projection_shortcuts(model)) == projections


def test_depth_50_family_cifar_gives_a_cifar_net_and_auto_the_bottleneck_net():
    """50 is also 6n+2: family='cifar' builds 3 stages of 16/32/64 filters, auto the ImageNet bottleneck net."""
    cifar = build_model(50, family="cifar")
    assert len(cifar.stages) == 3
    assert [stage[-1].conv2.out_channels for stage in cifar.stages] == [16, 32, 64]
    assert [len(stage) for stage in cifar.stages] == [8, 8, 8]
    assert cifar.fc.in_features == 64

    auto = build_model(50)
    assert len(auto.stages) == 4
    assert [len(stage) for stage in auto.stages] == [3, 4, 6, 3]
    assert design_of(auto) == ("bottleneck", "post") and design_of(cifar) == ("basic", "post")
    assert all(b.order == BOTTLENECK_ORDER for b in blocks(auto))
    assert all(b.order == BASIC_ORDER and not hasattr(b, "conv3") for b in blocks(cifar))
    assert auto.fc.in_features == 2048


# --- forward shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, in_channels, size",
    [(20, 3, 32), (20, 1, 28), (18, 1, 28)],
    ids=["cifar20-rgb32", "cifar20-gray28", "imagenet18-gray28"],
)
@pytest.mark.parametrize("shortcut", SHORTCUT_OPTIONS)
@pytest.mark.parametrize("activation", ["post", "pre"])
@pytest.mark.parametrize("residual", [True, False], ids=["resnet", "plain"])
def test_forward_shapes(depth, in_channels, size, shortcut, activation, residual):
    """Every configuration maps a (2, C, H, W) batch to finite (2, num_classes) logits."""
    torch.manual_seed(0)
    model = build_model(
        depth, residual=residual, shortcut=shortcut, activation=activation, in_channels=in_channels, num_classes=7
    )
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_cifar_stages_work_on_32_16_8_maps_with_16_32_64_filters():
    """P1 section 4.2: the three CIFAR stages see 32x32, 16x16, 8x8 maps with 16, 32, 64 filters."""
    model = build_model(20).eval()
    shapes = []
    hooks = [stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for stage in model.stages]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]


# --- option A and the residual addition --------------------------------------------------------


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros():
    """Option A: the first 16 channels are x[:, :, ::2, ::2], the 16 new ones exact zeros."""
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))


def test_zero_pad_shortcut_has_no_parameters():
    """Option A is parameter-free."""
    assert count_params(ZeroPadShortcut(16, 32, 2)) == 0


def test_identity_block_adds_its_input():
    """Where shapes match, the shortcut is None (identity) and the block gives relu(F(x) + x)."""
    model = randomise_batchnorm(build_model(20, residual=True))
    block = model.stages[0][1]
    assert block.shortcut is None
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = torch.relu(post_main_path(block, x) + x)
        assert torch.allclose(block(x), expected, atol=1e-5)
        # The sum really matters: without it the output would differ.
        assert not torch.allclose(block(x), torch.relu(post_main_path(block, x)), atol=1e-3)


@pytest.mark.parametrize("shortcut", SHORTCUT_OPTIONS)
def test_residual_block_output_is_main_path_plus_shortcut(shortcut):
    """At a stage change (16 -> 32, stride 2) a residual block gives relu(F(x) + shortcut(x))."""
    model = randomise_batchnorm(build_model(20, residual=True, shortcut=shortcut))
    block = model.stages[1][0]
    assert block.shortcut is not None
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = torch.relu(post_main_path(block, x) + block.shortcut(x))
        assert torch.allclose(block(x), expected, atol=1e-5)


@pytest.mark.parametrize("stage, index", [(0, 1), (1, 0)], ids=["same-shape", "stage-change"])
def test_plain_block_output_is_its_main_path_alone(stage, index):
    """A plain block has no shortcut and gives relu(F(x)): nothing is added."""
    model = randomise_batchnorm(build_model(20, residual=False))
    block = model.stages[stage][index]
    assert block.shortcut is None and block.join is None
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(post_main_path(block, x)), atol=1e-5)


def test_bottleneck_block_output_is_main_path_plus_shortcut():
    """ImageNet bottleneck (1x1, 3x3, 1x1 x4): relu(F(x) + shortcut(x)), stride on the 3x3 conv."""
    model = randomise_batchnorm(build_model(50, shortcut="projection"))
    block = model.stages[1][0]
    assert block.order == BOTTLENECK_ORDER and block.conv2.stride == (2, 2)
    assert block.conv1.kernel_size == block.conv3.kernel_size == (1, 1) and block.conv2.kernel_size == (3, 3)
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        out = block(x)
        assert out.shape == (2, 512, 4, 4)
        assert torch.allclose(out, torch.relu(bottleneck_main_path(block, x) + block.shortcut(x)), atol=1e-5)


# (kind, activation, the network's first unit): P1's units and P2's (e), the first without its BN-ReLU.
UNIT_CASES = [
    ("basic", "post", False),
    ("basic", "pre", False),
    ("basic", "pre", True),
    ("bottleneck", "post", False),
    ("bottleneck", "pre", False),
    ("bottleneck", "pre", True),
]


@pytest.mark.parametrize("stride", [1, 2], ids=["same-shape", "stage-change"])
@pytest.mark.parametrize(
    "kind, activation, first", UNIT_CASES, ids=[f"{k}-{a}" + ("-first" if f else "") for k, a, f in UNIT_CASES]
)
def test_every_unit_differs_from_its_plain_twin_only_by_the_addition(kind, activation, first, stride):
    """Each unit design, residual and plain with the same weights (option A): the residual one
    gives finish(F(x) + shortcut(x)), the plain one finish(F(x)), with the output shape of its stage."""
    planes = 8
    out_planes = planes * DESIGNS[kind, activation].expansion
    in_planes = out_planes if stride == 1 else out_planes // 2
    torch.manual_seed(0)
    residual = randomise_batchnorm(make_unit(kind, activation, in_planes, planes, stride, "zero_pad", first))
    plain = make_unit(kind, activation, in_planes, planes, stride, None, first)
    assert count_params(residual) == count_params(plain)
    plain.load_state_dict(residual.state_dict())
    plain.eval()
    assert residual.join is not None and plain.join is None and plain.shortcut is None
    assert hasattr(plain, "bn1") != first and (plain.order[0] == "conv1") == (first or activation == "post")
    main_path, finish = MAIN_PATHS[kind, activation]
    x = torch.randn(2, in_planes, 8, 8)
    shortcut = x if stride == 1 else ZeroPadShortcut(in_planes, out_planes, stride)(x)
    with torch.no_grad():
        main = main_path(plain, x)
        assert residual(x).shape == plain(x).shape == (2, out_planes, 8 // stride, 8 // stride)
        assert torch.allclose(residual(x), finish(main + shortcut), atol=1e-5)
        assert torch.allclose(plain(x), finish(main), atol=1e-5)
        assert not torch.allclose(residual(x), plain(x), atol=1e-3)


# --- shortcut options A, B, C ------------------------------------------------------------------


def test_option_b_projects_only_at_the_two_stage_changes():
    """Option B: 1x1 conv + BN projections at the two stage changes of a CIFAR net, identity elsewhere."""
    model = build_model(20, shortcut="projection")
    projections = projection_shortcuts(model)
    assert len(projections) == 2
    assert [b.shortcut is not None for b in blocks(model)] == [False] * 3 + [True, False, False] * 2
    for p in projections:
        conv = p[0]
        assert conv.stride == (2, 2)
        assert any(isinstance(m, nn.BatchNorm2d) for m in p)


def test_option_c_projects_on_every_block():
    """Option C: all 9 blocks of ResNet-20 have a 1x1 conv projection."""
    model = build_model(20, shortcut="full_projection")
    assert len(projection_shortcuts(model)) == 9 == len(blocks(model))


def test_option_a_has_no_1x1_convolutions():
    """Option A: no 1x1 conv anywhere, the two stage changes zero-pad instead."""
    model = build_model(20, shortcut="zero_pad")
    assert not [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert sum(isinstance(m, ZeroPadShortcut) for m in model.modules()) == 2


def test_identity_shortcut_is_an_alias_of_zero_pad():
    """shortcut='identity' (P1's name for option A) builds the very same net as zero_pad."""
    torch.manual_seed(0)
    identity = build_model(20, shortcut="identity")
    torch.manual_seed(0)
    zero_pad = build_model(20, shortcut="zero_pad")
    assert str(identity) == str(zero_pad)
    assert identity.shortcut_option == "zero_pad"
    for (k1, v1), (k2, v2) in zip(identity.state_dict().items(), zero_pad.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize("activation", ["post", "pre"])
def test_plain_nets_ignore_the_shortcut_option(activation):
    """Plain nets have no shortcut modules at all, whatever the shortcut option says."""
    built = {}
    for shortcut in SHORTCUT_OPTIONS:
        torch.manual_seed(0)
        model = build_model(20, residual=False, shortcut=shortcut, activation=activation)
        assert all(b.shortcut is None and b.join is None for b in blocks(model))
        assert not any(isinstance(m, ZeroPadShortcut) for m in model.modules())
        built[shortcut] = model
    reference = built["zero_pad"]
    for model in built.values():
        assert str(model) == str(reference)
        assert count_params(model) == count_params(reference)


def test_option_b_and_c_add_parameters_to_residual_nets():
    """Projections cost parameters: A < B < C for ResNet-20."""
    a, b, c = (count_params(build_model(20, shortcut=s)) for s in SHORTCUT_OPTIONS)
    assert a < b < c


# --- pre-activation (P2) -----------------------------------------------------------------------


def test_preact_identity_block_is_bn_relu_conv_twice_plus_x():
    """P2 full pre-activation: out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + x, no ReLU after the sum."""
    model = randomise_batchnorm(build_model(20, activation="pre"))
    block = model.stages[0][1]
    assert block.order == PRE_BASIC_ORDER and block.shortcut is None
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = block(x)
        assert torch.allclose(out, pre_main_path(block, x) + x, atol=1e-5)
        assert (out < 0).any()  # nothing clips the sum


@pytest.mark.parametrize("kind, in_planes", [("basic", 16), ("bottleneck", 64)])
def test_preact_projection_sees_the_activated_input(kind, in_planes):
    """P2: a projection shortcut is pre-activated too, i.e. applied to relu(bn1(x))."""
    torch.manual_seed(0)
    block = randomise_batchnorm(make_unit(kind, "pre", in_planes, 32, 2, "projection"))
    assert isinstance(block.shortcut, nn.Sequential) and block.order[0] == "bn1"
    main_path, _ = MAIN_PATHS[kind, "pre"]
    x = torch.randn(2, in_planes, 8, 8)
    with torch.no_grad():
        expected = main_path(block, x) + block.shortcut(torch.relu(block.bn1(x)))
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_preact_zero_pad_shortcut_sees_x_itself():
    """Option A in a pre-activation net pads x itself, not its activation."""
    model = randomise_batchnorm(build_model(20, activation="pre", shortcut="zero_pad"))
    block = model.stages[1][0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = pre_main_path(block, x) + ZeroPadShortcut(16, 32, 2)(x)
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_preact_plain_block_is_its_main_path():
    """A plain pre-activation block is BN-ReLU-conv-BN-ReLU-conv with nothing added."""
    model = randomise_batchnorm(build_model(20, residual=False, activation="pre"))
    block = model.stages[0][1]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), pre_main_path(block, x), atol=1e-5)


def test_preact_model_ends_with_bn_relu():
    """P2: after the last unit one more BN-ReLU comes before pooling; not in post-activation nets."""
    pre = randomise_batchnorm(build_model(20, activation="pre"))
    assert [type(m) for m in pre.final_activation] == [nn.BatchNorm2d, nn.ReLU]
    assert pre.final_activation[0].num_features == 64

    post = build_model(20, activation="post")
    assert isinstance(post.final_activation, nn.Identity)

    captured = {}
    hooks = [
        pre.stages.register_forward_hook(lambda m, i, o: captured.__setitem__("stages", o.clone())),
        pre.avgpool.register_forward_hook(lambda m, i, o: captured.__setitem__("pooled_input", i[0].clone())),
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = pre(x)
        bn = pre.final_activation[0]
        expected_pool_input = torch.relu(bn(captured["stages"]))
        assert torch.allclose(captured["pooled_input"], expected_pool_input, atol=1e-5)
        manual = pre.fc(torch.relu(bn(pre.stages(pre.stem(x)))).mean(dim=(2, 3)))
        assert torch.allclose(logits, manual, atol=1e-5)
    for h in hooks:
        h.remove()


STEMS = {
    20: [nn.Conv2d, nn.BatchNorm2d, nn.ReLU],
    18: [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d],
    50: [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d],
}


@pytest.mark.parametrize("residual", [True, False], ids=["resnet", "plain"])
@pytest.mark.parametrize("depth", sorted(STEMS), ids=lambda d: f"depth{d}")
def test_preact_first_unit_takes_the_stem_activation(depth, residual):
    """P2 section 4.1: the first activation comes right after conv1, before the split. The stem
    ends in BN-ReLU (then the max pool for ImageNet nets), the first unit has no bn1 of its own,
    every other unit has one, and both paths of the first unit take the stem's output."""
    model = randomise_batchnorm(build_model(depth, residual=residual, activation="pre"))
    assert [type(m) for m in model.stem] == STEMS[depth]
    first, *others = blocks(model)
    assert not hasattr(first, "bn1") and first.order[0] == "conv1"
    assert all(isinstance(b.bn1, nn.BatchNorm2d) and b.order[0] == "bn1" for b in others)

    main_path, _ = MAIN_PATHS[design_of(model)]
    with torch.no_grad():
        x = model.stem(torch.randn(2, 3, 32, 32))
        assert isinstance(layers_in_execution_order(first, x)[0], nn.Conv2d)  # no BN before the first conv
        shortcut = first.shortcut(x) if first.shortcut is not None else x
        expected = main_path(first, x) + shortcut if residual else main_path(first, x)
        assert torch.allclose(first(x), expected, atol=1e-5)


class ReferencePreActUnit(nn.Module):
    """One unit of preresnet.lua's CIFAR net, written from P2 and the fb.resnet.torch layout:
    BN-ReLU inside the branch (none in the network's first unit, whose input the stem activated),
    a projection on the pre-activated input, zero-padding or identity on the raw input."""

    def __init__(self, in_planes: int, planes: int, stride: int, first: bool, projection: bool, residual: bool):
        super().__init__()
        self.stride = stride
        self.extra = planes - in_planes
        self.residual = residual
        self.bn_in = None if first else nn.BatchNorm2d(in_planes)
        self.proj = (
            nn.Conv2d(in_planes, planes, 1, stride, bias=False) if residual and projection and self.extra else None
        )
        self.conv_a = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn_mid = nn.BatchNorm2d(planes)
        self.conv_b = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x if self.bn_in is None else F.relu(self.bn_in(x))
        f = self.conv_b(F.relu(self.bn_mid(self.conv_a(a))))
        # The shortcut after the branch, as harness's units run it (at their "add"), so that the
        # layers of the two nets pair up in execution order; the order does not change the result.
        if self.proj is not None:
            s = self.proj(a)
        else:
            s = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))
        return f + s if self.residual else f


class ReferencePreActCifarNet(nn.Module):
    """preresnet.lua's CIFAR net: conv-BN-ReLU, 3n units at 16/32/64 filters, BN-ReLU, pool, fc."""

    def __init__(self, n: int, projection: bool, residual: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        units, in_planes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                units.append(ReferencePreActUnit(in_planes, planes, stride, not units, projection, residual))
                in_planes = planes
        self.units = nn.ModuleList(units)
        self.bn_out = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        for unit in self.units:
            x = unit(x)
        x = F.relu(self.bn_out(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "residual, shortcut", [(True, "zero_pad"), (True, "projection"), (False, "zero_pad")], ids=["A", "B", "plain"]
)
def test_preact_resnet20_matches_an_independent_preresnet_lua(residual, shortcut):
    """Our pre-activation ResNet-20, its weights and BN statistics copied layer by layer (in
    execution order) into a re-implementation of fb.resnet.torch's preresnet.lua, gives the same
    logits: the stem's BN-ReLU feeds both paths of the first unit."""
    torch.manual_seed(0)
    ours = randomise_batchnorm(build_model(20, residual=residual, shortcut=shortcut, activation="pre"))
    reference = ReferencePreActCifarNet(3, projection=shortcut == "projection", residual=residual).eval()
    x = torch.randn(4, 3, 32, 32)
    assert_same_logits(ours, reference, x)


# --- errors and names --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [57, 0])
def test_invalid_depth_names_valid_depths(depth):
    """A depth that is neither 6n+2 nor an ImageNet depth fails with the valid depths in the message."""
    with pytest.raises(ValueError, match=f"depth={depth}") as error:
        build_model(depth)
    message = str(error.value)
    assert "6n+2" in message and "20, 32, 44, 56, 110" in message and "18, 34, 50, 101, 152" in message


def test_invalid_shortcut_and_activation_raise():
    """Unknown shortcut and activation names fail, naming the valid choices."""
    with pytest.raises(ValueError, match="shortcut='foo'.*auto.*zero_pad.*identity.*projection.*full_projection"):
        build_model(20, shortcut="foo")
    with pytest.raises(ValueError, match="shortcut='foo'.*auto.*zero_pad.*identity.*projection.*full_projection"):
        resolve_shortcut("foo", 50)
    with pytest.raises(
        ValueError, match="activation='middle'.*post.*bn_after_add.*relu_before_add.*relu_only_pre.*pre"
    ):
        build_model(20, activation="middle")


@pytest.mark.parametrize(
    "args, name",
    [
        ((56, False), "plain-56"),
        ((56, True), "resnet-56"),
        ((56, True, "identity"), "resnet-56"),
        ((56, True, "projection", "pre"), "resnet-56-B-pre"),
        ((20, True, "full_projection"), "resnet-20-C"),
        ((20, False, "projection", "pre"), "plain-20-pre"),
        ((18, True), "resnet-18"),
        ((50, True), "resnet-50-B"),
        ((50, True, "auto", "pre"), "resnet-50-B-pre"),
        ((50, True, "auto", "post", "cifar"), "resnet-50"),
        ((50, True, "zero_pad"), "resnet-50"),
        ((None, True, "projection", "pre"), "resnet-B-pre"),
        ((None, True, "identity"), "resnet"),
        ((None, False), "plain"),
        ((None, False, "auto", "pre"), "plain-pre"),
    ],
)
def test_model_name(args, name):
    """Names follow the papers: plain-56, resnet-56, with -B/-C and -pre suffixes; `auto` is named
    by the option it resolves to, so option B always shows."""
    assert model_name(*args) == name


def test_model_name_refuses_auto_without_a_depth():
    """A variant name (no depth) cannot resolve `auto` for a residual net."""
    with pytest.raises(ValueError, match="auto"):
        model_name(None, True, "auto")


@pytest.mark.parametrize(
    "shortcut, depth, family, expected",
    [
        ("auto", 20, "auto", "zero_pad"),
        ("auto", 110, "auto", "zero_pad"),
        ("auto", 18, "auto", "zero_pad"),
        ("auto", 34, "auto", "zero_pad"),
        ("auto", 50, "auto", "projection"),
        ("auto", 101, "auto", "projection"),
        ("auto", 152, "auto", "projection"),
        ("auto", 50, "cifar", "zero_pad"),
        ("auto", 152, "cifar", "zero_pad"),
        ("identity", 50, "auto", "zero_pad"),
        ("zero_pad", 50, "auto", "zero_pad"),
        ("projection", 20, "auto", "projection"),
        ("full_projection", 18, "auto", "full_projection"),
    ],
)
def test_resolve_shortcut(shortcut, depth, family, expected):
    """auto: option B for the bottleneck nets (50/101/152), A otherwise (P1); others as given."""
    assert resolve_shortcut(shortcut, depth, family) == expected


def test_build_model_resolves_auto():
    """build_model's default shortcut is auto, stored resolved on the model."""
    assert build_model(20).shortcut_option == "zero_pad"
    assert build_model(50).shortcut_option == "projection"
    assert build_model(50, family="cifar").shortcut_option == "zero_pad"


@pytest.mark.parametrize("activation", ["post", "pre"])
@pytest.mark.parametrize("shortcut", SHORTCUT_OPTIONS)
@pytest.mark.parametrize("residual", [True, False], ids=["resnet", "plain"])
def test_backward_reaches_every_parameter(residual, shortcut, activation):
    """A training step's backward runs (no in-place ReLU breaks autograd) and every parameter gets a gradient."""
    torch.manual_seed(0)
    model = build_model(20, residual=residual, shortcut=shortcut, activation=activation)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- initialisation and pickling ---------------------------------------------------------------


def test_he_initialisation():
    """Convs start with std ~ sqrt(2 / fan_out) (He init, fan_out mode); BN with weight 1, bias 0."""
    torch.manual_seed(0)
    model = build_model(20, shortcut="full_projection")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        expected = math.sqrt(2 / fan_out)
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.2), conv
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


@pytest.mark.parametrize("activation", ["post", "pre"])
@pytest.mark.parametrize("shortcut", SHORTCUT_OPTIONS)
def test_whole_model_pickles(activation, shortcut):
    """torch.save of a whole model works (no lambdas or local classes inside) and round-trips."""
    model = build_model(20, shortcut=shortcut, activation=activation).eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_whole_model_saves_to_a_file(tmp_path):
    """torch.save(model, path) works for a plain net too."""
    model = build_model(20, residual=False)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert count_params(loaded) == CIFAR_PARAMS[20]
