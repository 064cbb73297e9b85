"""P2's design space in harness.models: the five unit arrangements of its Fig. 4 and the shortcuts
of its Table 1 (Fig. 2), each against a hand-written reference of what P2 says it computes, on the
same weights; and its CIFAR bottleneck nets, ResNet-164 and ResNet-1001 (its Appendix, Tables 2-4),
against its authors' release. Facts: /work/shared/reference/p2-design-space.md."""

import hashlib

import numpy
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from harness.config import check_values, compose_config
from harness.data.memory import load_data
from harness.models import (
    ACTIVATIONS,
    P2_SHORTCUTS,
    PARAMETER_KEYS,
    PRE_ACTIVATED,
    SHORTCUTS,
    VALID_SHORTCUTS,
    model_name,
    resolve_family,
)
from harness.models.resnet import BASIC_UNITS, BOTTLENECK_UNITS, Gate, ShortcutDropout, Unit, build_for, build_model
from harness.tracking import MemoryTracker
from harness.train import DivergedError, train_job

from helpers import REPO
from helpers.config import resolved
from helpers.nets import assert_same_logits, count_params, randomise_batchnorm

CPU = torch.device("cpu")

relu = torch.relu


def unit_reference(unit: Unit, x: torch.Tensor, activation: str, shortcut: torch.Tensor | float) -> torch.Tensor:
    """P2 Fig. 4, written out for a basic unit (w = conv) whose shortcut is `shortcut` (x, or 0
    for a plain net)."""
    c1, c2 = unit.conv1, unit.conv2
    if activation == "post":  # (a) x -> w -> BN -> ReLU -> w -> BN -> (+x) -> ReLU
        return relu(unit.bn2(c2(relu(unit.bn1(c1(x))))) + shortcut)
    if activation == "bn_after_add":  # (b) x -> w -> BN -> ReLU -> w -> (+x) -> BN -> ReLU
        return relu(unit.bn2(c2(relu(unit.bn1(c1(x)))) + shortcut))
    if activation == "relu_before_add":  # (c) x -> w -> BN -> ReLU -> w -> BN -> ReLU -> (+x)
        return relu(unit.bn2(c2(relu(unit.bn1(c1(x)))))) + shortcut
    if activation == "relu_only_pre":  # (d) x -> ReLU -> w -> BN -> ReLU -> w -> BN -> (+x)
        return unit.bn2(c2(relu(unit.bn1(c1(relu(x)))))) + shortcut
    # (e) x -> BN -> ReLU -> w -> BN -> ReLU -> w -> (+x)
    return c2(relu(unit.bn2(c1(relu(unit.bn1(x)))))) + shortcut


def identity_unit(model: nn.Module) -> Unit:
    """A unit of the first stage past its first: same shape in and out, an identity shortcut."""
    return model.stages[0][1]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_unit_computes_its_arrangement_in_p2s_order(activation):
    model = randomise_batchnorm(build_model(20, activation=activation))
    unit = identity_unit(model)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), unit_reference(unit, x, activation, x), rtol=0, atol=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_a_units_plain_twin_is_its_arrangement_without_the_addition(activation):
    residual = randomise_batchnorm(build_model(20, activation=activation))
    plain = build_model(20, residual=False, activation=activation)
    plain.load_state_dict(residual.state_dict())
    plain.eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        unit = identity_unit(plain)
        torch.testing.assert_close(unit(x), unit_reference(unit, x, activation, 0.0), rtol=0, atol=0)


def test_the_bottleneck_orders_are_the_basic_orders_with_a_third_weight_layer():
    for activation in ACTIVATIONS:
        basic, bottleneck = BASIC_UNITS[activation], BOTTLENECK_UNITS[activation]
        assert bottleneck.count("conv") == 3 and basic.count("conv") == 2
        assert bottleneck.count("bn") == 3 and bottleneck.count("relu") == 3
        # what happens around the addition is the same
        tail = basic[basic.index("conv", basic.index("conv") + 1) + 1 :]
        assert bottleneck[-len(tail) :] == tail
        assert (basic[0] != "conv") == (bottleneck[0] != "conv") == (activation in PRE_ACTIVATED)


@pytest.mark.parametrize("activation", PRE_ACTIVATED)
def test_a_pre_activated_net_takes_its_first_activation_from_the_stem_and_ends_with_bn_relu(activation):
    model = build_model(20, activation=activation)
    first = model.stages[0][0]
    assert first.order[0] == "conv1" and model.stages[0][1].order[0] != "conv1"
    assert isinstance(model.final_activation[0], nn.BatchNorm2d)
    assert isinstance(model.final_activation[1], nn.ReLU)


@pytest.mark.parametrize("activation", ["bn_after_add", "relu_before_add"])
def test_post_activated_arrangements_keep_p1s_stem_and_end(activation):
    model = build_model(20, activation=activation)
    assert isinstance(model.final_activation, nn.Identity) and model.stages[0][0].order[0] == "conv1"


def test_bn_after_addition_normalises_the_sum_with_as_many_channels():
    unit = build_model(20, activation="bn_after_add").stages[1][0]  # the unit where 16 becomes 32
    assert unit.order == ("conv1", "bn1", "relu", "conv2", "add", "bn2", "relu")
    assert unit.bn2.num_features == 32


# --- shortcuts (P2 Table 1) ---------------------------------------------------------------


def shortcut_unit(shortcut: str, **parameters) -> tuple[nn.Module, Unit]:
    model = randomise_batchnorm(build_model(20, shortcut=shortcut, **parameters))
    return model, identity_unit(model)


def branch(unit: Unit, x: torch.Tensor) -> torch.Tensor:
    """P1's F(x) of an original (post) unit: conv-BN-ReLU-conv-BN."""
    return unit.bn2(unit.conv2(relu(unit.bn1(unit.conv1(x)))))


@pytest.mark.parametrize("shortcut_lambda", [0.5, 0.9, 1.0])
def test_constant_scaling_is_lambda_x_plus_f(shortcut_lambda):
    _, unit = shortcut_unit("scaling", shortcut_lambda=shortcut_lambda)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), relu(branch(unit, x) + shortcut_lambda * x))


def test_frozen_gating_is_lambda_x_plus_one_minus_lambda_f():
    _, unit = shortcut_unit("frozen_gating", shortcut_lambda=0.3)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), relu(0.7 * branch(unit, x) + 0.3 * x))


@pytest.mark.parametrize("gate_bias", [0.0, -6.0])
def test_exclusive_gating_is_one_minus_g_x_plus_g_f_with_the_bias_as_initialised(gate_bias):
    _, unit = shortcut_unit("exclusive_gating", gate_bias=gate_bias)
    assert isinstance(unit.join, Gate) and torch.all(unit.join.gate.bias == gate_bias)
    assert unit.join.gate.kernel_size == (1, 1) and unit.join.gate.out_channels == 16
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        g = torch.sigmoid(nn.functional.conv2d(x, unit.join.gate.weight) + gate_bias)
        torch.testing.assert_close(unit(x), relu(g * branch(unit, x) + (1 - g) * x))


def test_shortcut_only_gating_is_one_minus_g_x_plus_f():
    _, unit = shortcut_unit("shortcut_only_gating", gate_bias=0.0)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        g = torch.sigmoid(unit.join.gate(x))
        torch.testing.assert_close(unit(x), relu(branch(unit, x) + (1 - g) * x))
        assert g.mean().item() == pytest.approx(0.5, abs=0.1)  # b_g = 0: E[1 - g] starts at 0.5


def test_a_gate_where_dimensions_change_strides_and_widens_like_the_unit():
    model = build_model(20, shortcut="exclusive_gating")
    unit = model.stages[1][0]
    assert unit.join.gate.stride == (2, 2) and (unit.join.gate.in_channels, unit.join.gate.out_channels) == (16, 32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_dropout_on_the_shortcut_keeps_or_zeroes_it_in_training_and_scales_it_in_evaluation():
    model, unit = shortcut_unit("dropout", shortcut_dropout=0.5)
    assert isinstance(unit.join, ShortcutDropout)
    x = torch.randn(4, 16, 8, 8).abs() + 1  # no element is zero by chance
    with torch.no_grad():
        f = branch(unit, x)
        torch.testing.assert_close(unit(x), relu(f + 0.5 * x))  # evaluation: the expectation, no randomness
        model.eval()
        first, second = model(torch.randn(2, 3, 32, 32).mul(0).add(1)), model(torch.ones(2, 3, 32, 32))
        assert torch.equal(first, second)  # deterministic in evaluation
        join = unit.join.train()
        dropped = join(x, torch.zeros_like(x), x)
        kept = dropped != 0
        assert torch.equal(dropped[kept], x[kept])  # unscaled: a kept element is x itself
        assert 0.4 < kept.float().mean().item() < 0.6


def test_gating_adds_its_1x1_convs_and_scaling_and_dropout_add_nothing():
    identity = count_params(build_model(56))
    for shortcut in ("scaling", "frozen_gating", "dropout"):
        assert count_params(build_model(56, shortcut=shortcut)) == identity
    # one 1x1 conv with a bias per unit: C x C + C, with C = 16, 32, 64 and 16 -> 32, 32 -> 64 at the changes
    shapes = [(16, 16)] * 9 + [(16, 32)] + [(32, 32)] * 8 + [(32, 64)] + [(64, 64)] * 8
    gates = sum(c_in * c_out + c_out for c_in, c_out in shapes)
    for shortcut in ("exclusive_gating", "shortcut_only_gating"):
        assert count_params(build_model(56, shortcut=shortcut)) == identity + gates


# --- the registry: every shortcut is one row of harness.models.SHORTCUTS, or one of your own ---

OWN_SHORTCUT = "helpers.joins.REZERO"  # a join outside harness/, as docs/studies.md shows it
EVERY_SHORTCUT = [*SHORTCUTS, OWN_SHORTCUT]


@pytest.mark.parametrize("shortcut", EVERY_SHORTCUT)
def test_every_shortcut_builds_is_named_and_trains_two_steps(shortcut):
    torch.manual_seed(0)
    model = build_model(8, shortcut=shortcut, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # every parameter learns
    assert model_name(8, True, shortcut).startswith("resnet-8")


def test_every_shortcut_has_a_name_of_its_own_and_its_words_in_the_valid_values():
    names = [model_name(8, True, shortcut) for shortcut in EVERY_SHORTCUT]
    assert len(set(names)) == len(names) and names[-1] == "resnet-8-rezero"
    assert all(SHORTCUTS[shortcut].valid.startswith(shortcut) for shortcut in SHORTCUTS)
    assert all(SHORTCUTS[shortcut].valid in VALID_SHORTCUTS for shortcut in SHORTCUTS)


def test_each_case_of_p2s_table_1_is_a_config_of_its_shortcut_and_its_parameters():
    """conf/p2_shortcut/: one file for each of P2's shortcuts, setting only the keys it uses."""
    cases = [OmegaConf.load(path) for path in (REPO / "conf" / "p2_shortcut").glob("*.yaml")]
    assert sorted(case.shortcut for case in cases) == sorted(P2_SHORTCUTS)
    for case in cases:
        assert set(case) - {"shortcut"} == set(SHORTCUTS[case.shortcut].parameters) <= set(PARAMETER_KEYS)


@pytest.mark.parametrize("shortcut", EVERY_SHORTCUT)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_shortcut_and_unit_trains_a_step(shortcut, activation):
    torch.manual_seed(0)
    model = build_model(8, shortcut=shortcut, activation=activation, in_channels=1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "args, parameters, name",
    [
        ((56, True, "scaling"), {"shortcut_lambda": 0.5}, "resnet-56-scale0.5"),
        ((56, True, "frozen_gating"), {"shortcut_lambda": 0.5}, "resnet-56-frozen0.5"),
        ((56, True, "exclusive_gating"), {"gate_bias": -6.0}, "resnet-56-exgate-6"),
        ((56, True, "shortcut_only_gating"), {"gate_bias": 0.0}, "resnet-56-shgate0"),
        ((56, True, "dropout"), {"shortcut_dropout": 0.5}, "resnet-56-drop0.5"),
        ((56, True, "full_projection"), {}, "resnet-56-C"),
        ((56, True, "zero_pad", "bn_after_add"), {}, "resnet-56-bnadd"),
        ((56, True, "zero_pad", "relu_before_add"), {}, "resnet-56-reluadd"),
        ((56, True, "zero_pad", "relu_only_pre"), {}, "resnet-56-relupre"),
        ((56, False, "zero_pad", "bn_after_add"), {"gate_bias": -6.0}, "plain-56-bnadd"),
        ((None, True, "scaling", "pre"), {"shortcut_lambda": 0.9}, "resnet-scale0.9-pre"),
        ((164, True, "auto", "pre", "cifar_bottleneck"), {}, "resnet-164-bottleneck-B-pre"),
        ((164, True, "auto", "pre", "cifar"), {}, "resnet-164-pre"),
        ((1001, True, "zero_pad", "post", "cifar_bottleneck"), {}, "resnet-1001-bottleneck"),
        ((164, False, "auto", "post", "cifar_bottleneck"), {}, "plain-164-bottleneck"),
        (
            (None, True, "dropout", "pre", "cifar_bottleneck"),
            {"shortcut_dropout": 0.5},
            "resnet-bottleneck-drop0.5-pre",
        ),
    ],
)
def test_names_say_the_unit_and_the_shortcut_with_its_parameter(args, parameters, name):
    assert model_name(*args, **parameters) == name


# The nets of the version before units became data (commit 840d41a), as it built them: parameter
# count and a hash of its state-dict keys and shapes, in order. Old checkpoints resume by these keys.
EARLIER_NETS = {
    (20, True, "zero_pad", "post"): (269_722, "1ea867a0533327c0"),
    (20, True, "projection", "pre"): (272_282, "de1547dd66cf7ed9"),
    (20, False, "zero_pad", "pre"): (269_722, "ebcb63a9c41805c8"),
    (20, True, "full_projection", "post"): (283_962, "490366423a70a28d"),
    (50, True, "auto", "post"): (23_528_522, "32f4ed8b0aacae34"),
    (50, True, "auto", "pre"): (23_520_842, "1d6dd78737f5792d"),
    (18, True, "auto", "pre"): (11_007_818, "0345c13770de81ba"),
}


@pytest.mark.parametrize("net", sorted(EARLIER_NETS))
def test_every_net_of_earlier_versions_has_the_same_parameters_and_state_dict_keys(net):
    depth, residual, shortcut, activation = net
    model = build_model(depth, residual, shortcut, activation, in_channels=3, num_classes=10)
    keys = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    assert (count_params(model), hashlib.sha256(repr(keys).encode()).hexdigest()[:16]) == EARLIER_NETS[net]


# --- the unit's forward, built once ---------------------------------------------------------


def walk_parts(unit: Unit, x: torch.Tensor) -> torch.Tensor:
    """A unit's parts run one by one in `unit.order`, as Unit.forward did before its order was
    built into runs of layers (commit e115bc8): the reference it must equal bit for bit."""
    out = activated = x
    for name in unit.order:
        if name == "add":
            if unit.join is not None:
                seen = activated if isinstance(unit.shortcut, nn.Sequential) else x
                path = seen if unit.shortcut is None else unit.shortcut(seen)
                out = unit.join(path, out, activated)
        elif name == "relu":
            out = torch.relu(out)
        else:
            if name == "conv1":
                activated = out
            out = getattr(unit, name)(out)
    return out


# Small nets of basic and bottleneck units, and the ImageNet stem.
NETS_OF_EACH_DESIGN = [(8, "cifar"), (11, "cifar_bottleneck"), (18, "imagenet")]


@pytest.mark.parametrize("depth, family", NETS_OF_EACH_DESIGN)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_unit_and_shortcut_computes_its_parts_in_order_bit_for_bit(depth, family, activation):
    """Every unit of a net of each design, with every shortcut and none: the built forward equals
    its parts walked in order, exactly, in evaluation and, with the same random draws (shortcut
    dropout), in training."""
    for shortcut in (*SHORTCUTS, None):
        options = {"residual": shortcut is not None, "shortcut": shortcut or "zero_pad", "activation": activation}
        model = randomise_batchnorm(build_model(depth, family=family, **options))
        x = model.stem(torch.randn(2, 3, 32, 32))
        with torch.no_grad():
            for unit in (unit for stage in model.stages for unit in stage):
                assert torch.equal(unit(x), walk_parts(unit, x)), (shortcut, unit.order)
                unit.train()
                torch.manual_seed(0)
                trained = unit(x)
                torch.manual_seed(0)
                assert torch.equal(trained, walk_parts(unit, x)), (shortcut, unit.order)
                x = unit.eval()(x)


# --- P2's CIFAR bottleneck nets: ResNet-164 and ResNet-1001 ---------------------------------


class ReleasedBottleneck(nn.Module):
    """One unit of resnet-pre-act.lua (KaimingHe/resnet-1k-layers, P2's authors' release of
    ResNet-164/1001), transcribed: BN-ReLU, 1x1 (strided), BN-ReLU, 3x3, BN-ReLU, 1x1 (x4). A unit
    that increases dimensions takes its BN-ReLU before the split and projects the activated input
    with a 1x1 conv without BN; the others add x."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        planes = out_planes // 4
        self.bn_in = nn.BatchNorm2d(in_planes)
        self.conv_a = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        self.bn_a = nn.BatchNorm2d(planes)
        self.conv_b = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(planes)
        self.conv_c = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.projection = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False) if in_planes != out_planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn_in(x))
        f = self.conv_c(F.relu(self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(a)))))))
        return f + (x if self.projection is None else self.projection(a))


class ReleasedCifarNet(nn.Module):
    """resnet-pre-act.lua's net of depth 9n+2: one 3x3 conv, 3 stages of n units out 64/128/256,
    BN-ReLU, average pooling, a linear layer."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        units, in_planes = [], 16
        for stage, out_planes in enumerate((64, 128, 256)):
            for i in range(n):
                units.append(ReleasedBottleneck(in_planes, out_planes, 2 if stage > 0 and i == 0 else 1))
                in_planes = out_planes
        self.units = nn.Sequential(*units)
        self.bn_out = nn.BatchNorm2d(256)
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_out(self.units(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def conv_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    "depth, parameters, convs, p2s_millions", [(164, 1_703_258, 1_676_464, 1.7), (1001, 10_327_706, 10_175_920, 10.2)]
)
def test_resnet_164_and_1001_count_as_p2s_release_builds_them_and_its_tables_state(
    depth, parameters, convs, p2s_millions
):
    """ResNet-164 and ResNet-1001 (pre-activation, `auto`: projections where dimensions increase)
    have exactly the parameters of the release's nets; P2's 1.7M and 10.2M (Table 4) are the conv
    weights, rounded (with BN and the fc layer, 1001 holds 10.33M)."""
    ours = build_model(depth, activation="pre", family="cifar_bottleneck")
    assert count_params(ours) == count_params(ReleasedCifarNet((depth - 2) // 9)) == parameters
    assert conv_weights(ours) == convs and round(convs / 1e6, 1) == p2s_millions


def test_a_pre_activated_bottleneck_net_computes_what_p2s_release_computes():
    """Our ResNet-20 of the bottleneck family (n = 2), its weights and BN statistics copied layer by
    layer in execution order into the transcribed release, gives the same logits: the projections
    see the pre-activated input, the 1x1 strides, the first unit's activation is the stem's."""
    torch.manual_seed(0)
    ours = randomise_batchnorm(build_model(20, activation="pre", family="cifar_bottleneck"))
    release = ReleasedCifarNet(2).eval()
    x = torch.randn(2, 3, 32, 32)
    assert_same_logits(ours, release, x)


def test_resnet_164_is_three_stages_of_18_bottleneck_units_with_projections_where_dimensions_increase():
    model = build_model(164, activation="pre", family="cifar_bottleneck")
    units = [unit for stage in model.stages for unit in stage]
    assert [len(stage) for stage in model.stages] == [18, 18, 18] and model.fc.in_features == 256
    first = [stage[0] for stage in model.stages]
    assert [(u.conv1.in_channels, u.conv2.out_channels, u.conv3.out_channels) for u in first] == [
        (16, 16, 64),
        (64, 32, 128),
        (128, 64, 256),
    ]
    assert [u.conv1.stride for u in first] == [(1, 1), (2, 2), (2, 2)]
    assert [u for u in units if u.shortcut is not None] == first
    assert all([type(layer) for layer in u.shortcut] == [nn.Conv2d] for u in first)  # no BN: the next unit's
    branch_layers = sum(isinstance(m, nn.Conv2d) for u in units for m in u.modules()) - len(first)
    assert 1 + branch_layers + 1 == 164  # the stem's conv, the units' weighted layers, the fc layer


@pytest.mark.parametrize("depth", [56, 110, 164])
def test_a_depth_of_both_cifar_families_is_p1s_net_unless_p2s_bottleneck_family_is_named(depth):
    assert resolve_family(depth) == resolve_family(depth, "cifar") == "cifar"
    assert resolve_family(depth, "cifar_bottleneck") == "cifar_bottleneck"
    basic, bottleneck = build_model(depth), build_model(depth, family="cifar_bottleneck")
    assert [len(stage) for stage in basic.stages] == [(depth - 2) // 6] * 3 and not hasattr(basic.stages[0][0], "conv3")
    assert [len(stage) for stage in bottleneck.stages] == [(depth - 2) // 9] * 3
    assert bottleneck.stages[0][0].conv3.out_channels == 64


@pytest.mark.parametrize(
    "depth, family, message",
    [
        (165, "cifar_bottleneck", r"depth=165 is not valid for family=cifar_bottleneck, whose depths are 9n\+2 .*164 "
         r"and 1001.*family=cifar takes 6n\+2"),
        (1001, "auto", r"depth=1001 is not valid; .*with family=cifar_bottleneck, 9n\+2"),
        (1001, "cifar", r"depth=1001 is not valid for family=cifar, whose depths are 6n\+2.*cifar_bottleneck takes 9n"),
        (164, "bottleneck", r"family='bottleneck' is not valid; use auto .*cifar .*cifar_bottleneck .*imagenet"),
    ],
)  # fmt: skip
def test_a_depth_the_family_cannot_have_names_its_valid_depths(depth, family, message):
    with pytest.raises(ValueError, match=message):
        build_model(depth, family=family)


@pytest.mark.parametrize("shortcut", [*SHORTCUTS, None])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_shortcut_and_unit_builds_a_bottleneck_net_that_trains_a_step(activation, shortcut):
    torch.manual_seed(0)
    options = {"residual": shortcut is not None, "shortcut": shortcut or "zero_pad", "activation": activation}
    model = build_model(11, family="cifar_bottleneck", in_channels=1, **options)
    loss = F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_resnet_1001_of_every_unit_runs_forward_and_backward_on_two_images(activation):
    torch.manual_seed(0)
    model = build_model(1001, activation=activation, family="cifar_bottleneck", in_channels=1)
    loss = F.cross_entropy(model(torch.randn(2, 1, 16, 16)), torch.tensor([0, 1]))  # 16x16: a third of the time
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.fixture(scope="module")
def data(data_root):
    """Fashion-MNIST with 8 training images held out: the last evaluation runs on all of them."""
    return load_data("fashion_mnist", data_root, False, 8, CPU)


TWO_STEPS = ["schedule=smoke", "family=cifar_bottleneck", "analysis=false", "precision=fp32", "schedule.iterations=2",
             "schedule.batch_size=2", "schedule.log_every=1", "schedule.checkpoint_every=1", "schedule.eval_every=2",
             "schedule.eval_subset=2", "schedule.final_train_subset=2"]  # fmt: skip


class Killed(Exception):
    pass


class DiesAtStep2(MemoryTracker):
    """A run killed after its checkpoint at step 1."""

    def log_metrics(self, metrics, step):
        if step == 2:
            raise Killed
        super().log_metrics(metrics, step)


def trains_and_resumes(data, *overrides: str) -> MemoryTracker:
    """Two steps of the net at batch 2, and the same run killed after step 1's checkpoint and
    resumed: the curves must be equal (NaN as NaN). The uninterrupted run's tracker."""
    job = resolved(compose_config(*TWO_STEPS, *overrides))
    whole = MemoryTracker()
    torch.manual_seed(0)
    train_job(job, build_for(job, 1, 10), data, whole, CPU)
    stopped = DiesAtStep2()
    torch.manual_seed(0)
    with pytest.raises(Killed):
        train_job(job, build_for(job, 1, 10), data, stopped, CPU)
    stopped.__class__ = MemoryTracker
    torch.manual_seed(123)  # the resumed run must not depend on the fresh model's initialisation
    train_job(job, build_for(job, 1, 10), data, stopped, CPU)
    numpy.testing.assert_equal(stopped.curves(), whole.curves())
    return whole


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_resnet_164_of_every_unit_trains_two_steps_and_resumes_bit_for_bit(data, activation):
    whole = trains_and_resumes(data, "depth=164", f"activation={activation}")
    assert [step for step, _ in whole.history["train_loss"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in whole.history["train_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a != "bn_after_add"])
def test_resnet_1001_trains_two_steps_and_resumes_bit_for_bit(data, activation):
    """At P2's warm-up lr, 0.01. The original unit's net evaluates to NaN after two steps: BN's
    running statistics, two steps from their start, do not hold its responses down through 333
    additions."""
    whole = trains_and_resumes(data, "depth=1001", f"activation={activation}", "optimizer.lr=0.01")
    assert [step for step, _ in whole.history["train_loss"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in whole.history["train_loss"])


@pytest.mark.slow
def test_resnet_1001_with_bn_after_the_addition_diverges_in_its_second_step(data):
    """Unit (b), which P2 ran at 110 and 164 layers only: through 333 BNs after additions its
    gradient at initialisation is about 1e12 (1e4 with unit (e)), so its first step, even at P2's
    warm-up lr, leaves weights that give NaN, and the harness stops the run as diverged."""
    job = resolved(compose_config(*TWO_STEPS, "depth=1001", "activation=bn_after_add", "optimizer.lr=0.01"))
    torch.manual_seed(0)
    with pytest.raises(DivergedError, match="diverged at iteration 2"):
        train_job(job, build_for(job, 1, 10), data, MemoryTracker(), CPU)


def test_a_join_of_your_own_is_checked_named_fingerprinted_and_trained_by_the_harness(data):
    """The dotted path of a Shortcut outside harness/ is the shortcut's value everywhere: the
    config's check imports it, the effective config and so the fingerprint hold it, and the net
    trains and resumes bit for bit (its alpha is in the checkpoint)."""
    cfg = compose_config(*TWO_STEPS, "depth=11", f"shortcut={OWN_SHORTCUT}")
    check_values(cfg)
    job = resolved(cfg)
    assert job.trained["shortcut"] == OWN_SHORTCUT and job.name == "resnet-11-bottleneck-rezero"
    assert set(job.unused) >= set(PARAMETER_KEYS)  # it reads none of P2's parameters
    assert job.fingerprint != resolved(compose_config(*TWO_STEPS, "depth=11", "shortcut=zero_pad")).fingerprint
    whole = trains_and_resumes(data, "depth=11", f"shortcut={OWN_SHORTCUT}")
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in whole.history["train_loss"])
