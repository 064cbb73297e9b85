"""The catalogue of nets this harness builds, without torch: which depths exist in which family,
the shortcuts and residual units of P1 and P2, and the paper's names. `harness.models.resnet`
builds them; the config's checks, the run record and the report read them from here.
"""

# P1's options for the shortcut, A, B, C: how it matches dimensions (C projects on every unit,
# P2's "1x1 conv shortcut", Fig. 2e).
SHORTCUTS_P1 = ("zero_pad", "projection", "full_projection")
# P2's Table 1 (Fig. 2b-d, f): what a unit does to its shortcut before the addition. On the two units
# where dimensions change, these shortcuts zero-pad (option A) and then do the same (P2 is silent).
SHORTCUTS_P2 = ("scaling", "frozen_gating", "exclusive_gating", "shortcut_only_gating", "dropout")
SHORTCUTS = SHORTCUTS_P1 + SHORTCUTS_P2
# The keys each P2 shortcut reads: lambda, b_g, the dropout rate.
SHORTCUT_PARAMETERS = {
    "scaling": ("shortcut_lambda",),
    "frozen_gating": ("shortcut_lambda",),
    "exclusive_gating": ("gate_bias",),
    "shortcut_only_gating": ("gate_bias",),
    "dropout": ("shortcut_dropout",),
}
PARAMETER_KEYS = ("shortcut_lambda", "gate_bias", "shortcut_dropout")

# P2's Fig. 4: five orders of the same parts in a unit; `post` and `pre` are (a) and (e).
ACTIVATIONS = ("post", "bn_after_add", "relu_before_add", "relu_only_pre", "pre")
UNIT_LETTERS = dict(zip(ACTIVATIONS, "abcde"))
# Units that begin with their activation: the net's first unit takes it from the stem, and the
# net ends with one more BN-ReLU before pooling (P2 section 4.1, said of (e); (d) is built alike).
PRE_ACTIVATED = ("relu_only_pre", "pre")
VALID_ACTIVATIONS = (
    "post ((a) P1's original unit), bn_after_add ((b) BN after addition), relu_before_add ((c) ReLU before "
    "addition), relu_only_pre ((d) ReLU-only pre-activation) or pre ((e) P2's full pre-activation)"
)

IMAGENET_LAYOUTS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
# The CIFAR nets: three stages of n units each, so depth = 3n x (weighted layers per unit) + 2.
# P1's (`cifar`) have basic units, 6n+2; P2's ResNet-164 and ResNet-1001 (`cifar_bottleneck`, P2
# Appendix) have bottleneck units, 9n+2. 56, 110 and 164 are both, so only `family` can tell.
CIFAR_LAYOUTS = {"cifar": ("basic", 6), "cifar_bottleneck": ("cifar_bottleneck", 9)}
CIFAR_WIDTHS = [16, 32, 64]
IMAGENET_WIDTHS = [64, 128, 256, 512]
FAMILIES = ("auto", "cifar", "cifar_bottleneck", "imagenet")
FAMILY_DEPTHS = {
    "cifar": "6n+2 (20, 32, 44, 56, 110, 1202, any n >= 1)",
    "cifar_bottleneck": "9n+2 (P2's 164 and 1001, any n >= 1)",
    "imagenet": "18, 34, 50, 101, 152",
}
VALID_DEPTHS = (
    f"{FAMILY_DEPTHS['cifar']} for the CIFAR nets, {FAMILY_DEPTHS['imagenet']} for the ImageNet nets, or, with "
    f"family=cifar_bottleneck, {FAMILY_DEPTHS['cifar_bottleneck']} for P2's CIFAR bottleneck nets"
)
VALID_FAMILIES = (
    "auto (the ImageNet net where the depth has one, else P1's CIFAR net), cifar (P1's CIFAR nets, basic units), "
    "cifar_bottleneck (P2's CIFAR nets of bottleneck units: ResNet-164, ResNet-1001) or imagenet"
)


def cifar_units_per_stage(depth: int, family: str = "cifar") -> int | None:
    """n, the units of each stage of this CIFAR family's net of this depth; None where it has none."""
    n, rest = divmod(depth - 2, CIFAR_LAYOUTS[family][1])
    return n if n >= 1 and rest == 0 else None


def resolve_family(depth: int, family: str = "auto") -> str:
    """'cifar', 'cifar_bottleneck' or 'imagenet' for this depth. 50 and 152 are also 6n+2: `auto`
    takes them as the ImageNet bottleneck nets, `family=cifar` as CIFAR nets. `auto` never picks
    P2's bottleneck nets: their depths are P1's too (56, 110, 164), so they are asked for by name."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not valid; use {VALID_FAMILIES}.")
    if family in ("auto", "imagenet") and depth in IMAGENET_LAYOUTS:
        return "imagenet"
    cifar = "cifar" if family == "auto" else family
    if cifar in CIFAR_LAYOUTS and cifar_units_per_stage(depth, cifar) is not None:
        return cifar
    if family == "auto":
        raise ValueError(f"depth={depth} is not valid; valid depths are {VALID_DEPTHS}.")
    others = "; ".join(f"family={other} takes {depths}" for other, depths in FAMILY_DEPTHS.items() if other != family)
    raise ValueError(
        f"depth={depth} is not valid for family={family}, whose depths are {FAMILY_DEPTHS[family]}; {others}."
    )


VALID_SHORTCUTS = (
    "auto (option A, or B for the bottleneck nets: 50, 101, 152 and family=cifar_bottleneck), zero_pad (option A; "
    "alias identity), projection (option B), full_projection (option C, P2's 1x1 conv shortcut), or P2's scaling "
    "(lambda x), frozen_gating (lambda x + (1-lambda) F), exclusive_gating, shortcut_only_gating or dropout"
)


def canonical_shortcut(shortcut: str) -> str:
    """P1 calls option A 'identity shortcuts', so `identity` names `zero_pad`. `auto` depends on
    the net, so only `resolve_shortcut` takes it."""
    if shortcut == "auto":
        raise ValueError(
            "shortcut='auto' depends on the net; resolve it with resolve_shortcut(shortcut, depth, family)."
        )
    shortcut = "zero_pad" if shortcut == "identity" else shortcut
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut={shortcut!r} is not valid; use {VALID_SHORTCUTS}.")
    return shortcut


def resolve_shortcut(shortcut: str, depth: int, family: str = "auto") -> str:
    """The option this net uses. `auto` is the papers' choice: option A for P1's CIFAR nets and
    ResNet-18/34 (P1 Table 3 reports 34 A), B for the bottleneck nets (P1 section 3.3, 50/101/152;
    P2 Appendix, ResNet-164/1001: "projection shortcuts ... when increasing dimensions")."""
    if shortcut != "auto":
        return canonical_shortcut(shortcut)
    family = resolve_family(depth, family)
    if family == "cifar_bottleneck" or (family == "imagenet" and IMAGENET_LAYOUTS[depth][0] == "bottleneck"):
        return "projection"
    return "zero_pad"


# How a name tells the shortcut: P1's option by its letter, P2's by a word and its parameter.
SHORTCUT_SUFFIXES = {
    "zero_pad": "",
    "projection": "-B",
    "full_projection": "-C",
    "scaling": "-scale{shortcut_lambda:g}",
    "frozen_gating": "-frozen{shortcut_lambda:g}",
    "exclusive_gating": "-exgate{gate_bias:g}",
    "shortcut_only_gating": "-shgate{gate_bias:g}",
    "dropout": "-drop{shortcut_dropout:g}",
}
# P2's bottleneck ResNet-164 is named apart from a basic-unit net of P1's family of the same depth.
FAMILY_SUFFIXES = {"cifar_bottleneck": "-bottleneck"}
UNIT_SUFFIXES = {"post": "", "bn_after_add": "-bnadd", "relu_before_add": "-reluadd", "relu_only_pre": "-relupre",
                 "pre": "-pre"}  # fmt: skip
SHORTCUT_DEFAULTS = {"shortcut_lambda": 0.5, "gate_bias": -6.0, "shortcut_dropout": 0.5}  # P2's Table 1


def shortcut_parameters(values: dict) -> dict[str, float]:
    """P2's shortcut parameters that a net uses (its effective config, or its run's tags)."""
    return {key: float(values[key]) for key in PARAMETER_KEYS if key in values}


def model_name(
    depth: int | None,
    residual: bool,
    shortcut: str = "auto",
    activation: str = "post",
    family: str = "auto",
    **parameters: float,
) -> str:
    """The paper's names: plain-56, resnet-56; a shortcut other than A and a unit other than (a)
    are suffixed (resnet-56-B-pre, resnet-56-exgate-6, resnet-56-scale0.5-bnadd, and resnet-50-B
    under `auto`, so a name never hides the option). A plain net has no shortcut to name. P2's
    CIFAR bottleneck nets say their family: resnet-164-bottleneck-B-pre.
    Without a depth, the variant's name: plain, resnet-B-pre; `auto` then has no meaning and is
    refused. `parameters` are P2's shortcut_lambda, gate_bias and shortcut_dropout (else P2's)."""
    name = ("resnet" if residual else "plain") + ("" if depth is None else f"-{depth}")
    name += FAMILY_SUFFIXES.get(family, "")
    if residual:
        option = canonical_shortcut(shortcut) if depth is None else resolve_shortcut(shortcut, depth, family)
        name += SHORTCUT_SUFFIXES[option].format(**(SHORTCUT_DEFAULTS | parameters))
    return name + UNIT_SUFFIXES[activation]
