"""Behaviour of harness.models: the plain and residual nets of He et al. (P1, P2).

Facts checked here come from /work/shared/reference/resnet-papers.md. Everything is small and
runs on the CPU; the deep nets are only built and counted, never run.
"""

import io
import math

import pytest
import torch
import torchvision
from torch import nn

from harness.models import build_model, model_name
from harness.models.resnet import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    ZeroPadShortcut,
)


CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
SHORTCUT_OPTIONS = ("zero_pad", "projection", "full_projection")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def blocks(model: nn.Module) -> list[nn.Module]:
    return [block for stage in model.stages for block in stage]


def projection_shortcuts(model: nn.Module) -> list[nn.Module]:
    """Shortcut modules that hold a 1x1 convolution (options B and C)."""
    return [
        b.shortcut
        for b in blocks(model)
        if b.shortcut is not None and any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in b.shortcut.modules())
    ]


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, then switch to eval
    mode, so that a BN cannot pass for the identity in a hand-computed forward."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()


def post_main_path(block: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    """P1's residual function F(x): conv-BN-ReLU-conv-BN, without the final ReLU."""
    return block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))


def pre_main_path(block: PreActBasicBlock, x: torch.Tensor) -> torch.Tensor:
    """P2's full pre-activation residual function: BN-ReLU-conv-BN-ReLU-conv."""
    return block.conv2(torch.relu(block.bn2(block.conv1(torch.relu(block.bn1(x))))))


# --- parameter counts --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_resnet_parameter_counts_match_paper(depth):
    """ResNet-20 ... 1202 with option A have exactly the counts of P1 Table 6 (BN affine, biased fc)."""
    model = build_model(depth, residual=True, shortcut="zero_pad", activation="post", in_channels=3, num_classes=10)
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
    assert all(isinstance(b, Bottleneck) for b in blocks(auto))
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
    model = build_model(depth, residual=residual, shortcut=shortcut, activation=activation, in_channels=in_channels, num_classes=7)
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
    assert block.shortcut is None
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(post_main_path(block, x)), atol=1e-5)


def test_bottleneck_block_output_is_main_path_plus_shortcut():
    """ImageNet bottleneck (1x1, 3x3, 1x1 x4): relu(F(x) + shortcut(x)), stride on the 3x3 conv."""
    model = randomise_batchnorm(build_model(50, shortcut="projection"))
    block = model.stages[1][0]
    assert isinstance(block, Bottleneck) and block.conv2.stride == (2, 2)
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        main = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        main = block.bn3(block.conv3(torch.relu(main)))
        out = block(x)
        assert out.shape == (2, 512, 4, 4)
        assert torch.allclose(out, torch.relu(main + block.shortcut(x)), atol=1e-5)


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
        assert all(b.shortcut is None for b in blocks(model))
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
    assert isinstance(block, PreActBasicBlock) and block.shortcut is None
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = block(x)
        assert torch.allclose(out, pre_main_path(block, x) + x, atol=1e-5)
        assert (out < 0).any()  # nothing clips the sum


def test_preact_projection_sees_the_activated_input():
    """P2: a projection shortcut is pre-activated too, i.e. applied to relu(bn1(x))."""
    model = randomise_batchnorm(build_model(20, activation="pre", shortcut="projection"))
    block = model.stages[1][0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = pre_main_path(block, x) + block.shortcut(torch.relu(block.bn1(x)))
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


def test_preact_cifar_stem_has_no_batchnorm_and_model_ends_with_bn_relu():
    """P2: the CIFAR stem is the bare conv (the first unit activates it); after the last unit one
    more BN-ReLU comes before pooling. Post-activation nets have neither difference."""
    pre = randomise_batchnorm(build_model(20, activation="pre"))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in pre.stem.modules())
    assert [type(m) for m in pre.final_activation] == [nn.BatchNorm2d, nn.ReLU]
    assert pre.final_activation[0].num_features == 64

    post = build_model(20, activation="post")
    assert any(isinstance(m, nn.BatchNorm2d) for m in post.stem.modules())
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
    with pytest.raises(ValueError, match="shortcut='foo'.*zero_pad.*projection.*full_projection"):
        build_model(20, shortcut="foo")
    with pytest.raises(ValueError, match="activation='mid'.*post.*pre"):
        build_model(20, activation="mid")


@pytest.mark.parametrize(
    "args, name",
    [
        ((56, False), "plain-56"),
        ((56, True), "resnet-56"),
        ((56, True, "identity"), "resnet-56"),
        ((56, True, "projection", "pre"), "resnet-56-B-pre"),
        ((20, True, "full_projection"), "resnet-20-C"),
        ((20, False, "projection", "pre"), "plain-20-pre"),
    ],
)
def test_model_name(args, name):
    """Names follow the papers: plain-56, resnet-56, with -B/-C and -pre suffixes."""
    assert model_name(*args) == name


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
