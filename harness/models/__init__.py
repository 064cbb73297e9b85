"""The catalogue of nets this harness builds, without torch: which depths exist in which family,
the shortcuts and residual units of P1 and P2, and the paper's names. `harness.models.resnet`
builds them; the config's checks, the run record and the report read them from here.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

# P1's options for the shortcut, A, B, C: how it matches dimensions (C projects on every unit,
# P2's "1x1 conv shortcut", Fig. 2e). They are the paths every shortcut takes to its join.
SHORTCUTS_P1 = ("zero_pad", "projection", "full_projection")
# The parameters of P2's shortcuts, config keys, at P2's Table 1 values: lambda, b_g, the dropout rate.
SHORTCUT_DEFAULTS = {"shortcut_lambda": 0.5, "gate_bias": -6.0, "shortcut_dropout": 0.5}
PARAMETER_KEYS = tuple(SHORTCUT_DEFAULTS)


@dataclass(frozen=True)
class Shortcut:
    """A shortcut, one row of `SHORTCUTS`: how it is named, its path and its join. Every table of
    shortcuts (the valid values, the names, the keys a net uses, the report's studies) follows
    from the rows, and a shortcut of your own is one such row in your own module, named on the
    command line by its dotted path (docs/studies.md, "A variant of your own").

    The join is built once per unit as join(in_planes, out_planes, stride, **parameters), with
    the config's value of each key in `parameters`, and called as join(shortcut, branch, x),
    x the unit's input as its weighted layers see it (harness.models.resnet.Join)."""

    suffix: str  # what the net's name adds: "-B", "-scale{shortcut_lambda:g}" (a parameter by its key)
    join: str | Callable  # the join's class, or its dotted path (the rows here: torch is not imported)
    valid: str = ""  # how the valid values of `shortcut` describe it
    parameters: tuple[str, ...] = ()  # the keys of PARAMETER_KEYS its join takes
    path: str = "zero_pad"  # one of SHORTCUTS_P1: what the shortcut carries to the join
    in_p2: bool = False  # one of P2's Table 1 (Fig. 2), identity included
    words: str = ""  # P2's words for it in a figure's legend (a parameter by its key); P1's options have none

    def __post_init__(self):
        unknown = [key for key in self.parameters if key not in PARAMETER_KEYS]
        if unknown or self.path not in SHORTCUTS_P1:
            raise ValueError(
                f"Shortcut(suffix={self.suffix!r}): parameters={self.parameters} and path={self.path!r} must be "
                f"config keys of {', '.join(PARAMETER_KEYS)} and one of {', '.join(SHORTCUTS_P1)}."
            )

    def join_class(self) -> Callable:
        return _imported(self.join) if isinstance(self.join, str) else self.join


def _imported(dotted: str):
    """The object a dotted path (module.NAME) names, as Hydra's `_target_`."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


_JOINS = "harness.models.resnet"
# P1's options and P2's Table 1, in P2's order: original (identity), constant scaling, frozen,
# exclusive and shortcut-only gating (Fig. 2b-d), 1x1 conv (option C, Fig. 2e), dropout (Fig. 2f).
# On the two units where dimensions change, P2's shortcuts zero-pad (option A) and then do the
# same (P2 is silent).
SHORTCUTS: dict[str, Shortcut] = {
    "zero_pad": Shortcut("", f"{_JOINS}.Add", "zero_pad (option A; alias identity)", in_p2=True),
    "projection": Shortcut("-B", f"{_JOINS}.Add", "projection (option B)", path="projection"),
    "scaling": Shortcut(
        "-scale{shortcut_lambda:g}",
        f"{_JOINS}.Scale",
        "scaling (lambda x + F)",
        ("shortcut_lambda",),
        in_p2=True,
        words="constant scaling, λ = {shortcut_lambda:g}",
    ),
    "frozen_gating": Shortcut(
        "-frozen{shortcut_lambda:g}",
        f"{_JOINS}.FrozenGate",
        "frozen_gating (lambda x + (1-lambda) F)",
        ("shortcut_lambda",),
        in_p2=True,
        words="frozen gating, λ = {shortcut_lambda:g}",
    ),
    "exclusive_gating": Shortcut(
        "-exgate{gate_bias:g}",
        f"{_JOINS}.ExclusiveGate",
        "exclusive_gating ((1-g) x + g F)",
        ("gate_bias",),
        in_p2=True,
        words="exclusive gating, b_g = {gate_bias:g}",
    ),
    "shortcut_only_gating": Shortcut(
        "-shgate{gate_bias:g}",
        f"{_JOINS}.Gate",
        "shortcut_only_gating ((1-g) x + F)",
        ("gate_bias",),
        in_p2=True,
        words="shortcut-only gating, b_g = {gate_bias:g}",
    ),
    "full_projection": Shortcut(
        "-C",
        f"{_JOINS}.Add",
        "full_projection (option C, P2's 1x1 conv shortcut)",
        path="full_projection",
        in_p2=True,
        words="1x1 conv shortcut",
    ),
    "dropout": Shortcut(
        "-drop{shortcut_dropout:g}",
        f"{_JOINS}.ShortcutDropout",
        "dropout (dropout on the shortcut)",
        ("shortcut_dropout",),
        in_p2=True,
        words="dropout shortcut, {shortcut_dropout:g}",
    ),
}
P2_SHORTCUTS = tuple(name for name, row in SHORTCUTS.items() if row.in_p2)

# P2's Fig. 4: five orders of the same parts in a unit; `post` and `pre` are (a) and (e).
ACTIVATIONS = ("post", "bn_after_add", "relu_before_add", "relu_only_pre", "pre")
UNIT_LETTERS = dict(zip(ACTIVATIONS, "abcde"))
# Units that begin with their activation: the net's first unit takes it from the stem, and the
# net ends with one more BN-ReLU before pooling (P2 section 4.1, said of (e); (d) is built alike).
PRE_ACTIVATED = ("relu_only_pre", "pre")
UNIT_WORDS = {
    "post": "(a) original",
    "bn_after_add": "(b) BN after addition",
    "relu_before_add": "(c) ReLU before addition",
    "relu_only_pre": "(d) ReLU-only pre-activation",
    "pre": "(e) full pre-activation",
}
VALID_ACTIVATIONS = ", ".join(f"{name} ({words})" for name, words in UNIT_WORDS.items())


def variant_words(shortcut: str, activation: str, **parameters: float) -> str:
    """A residual net's variant in P2's words, as figures' legends say it: "exclusive gating, b_g = -6",
    "(b) BN after addition", "dropout shortcut, 0.5; (e) full pre-activation". The unit (a) goes
    unsaid beside a shortcut of P2's, and P1's options (A, B) are the name's to say."""
    words = shortcut_row(shortcut).words.format(**(SHORTCUT_DEFAULTS | parameters))
    if not words:
        return UNIT_WORDS[activation]
    return words if activation == "post" else f"{words}; {UNIT_WORDS[activation]}"


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
    "auto (option A, or B for the bottleneck nets: 50, 101, 152 and family=cifar_bottleneck), "
    + ", ".join(row.valid for row in SHORTCUTS.values())
    + ", or one of your own: the dotted path of its Shortcut (my_joins.REZERO; docs/studies.md)"
)


def shortcut_row(shortcut: str) -> Shortcut:
    """The row of a shortcut: P1's or P2's by its name, one of your own by the dotted path of its
    Shortcut, imported here (from the launch directory, or PYTHONPATH)."""
    if shortcut in SHORTCUTS:
        return SHORTCUTS[shortcut]
    if "." not in shortcut:
        raise ValueError(f"shortcut={shortcut!r} is not valid; use {VALID_SHORTCUTS}.")
    try:
        row = _imported(shortcut)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"shortcut={shortcut} cannot be imported ({error}); a shortcut of your own is the dotted path of a "
            "harness.models.Shortcut in a module the launch directory or PYTHONPATH holds, else use one of "
            f"{', '.join(SHORTCUTS)} (docs/studies.md, 'A variant of your own')."
        ) from None
    if not isinstance(row, Shortcut):
        raise ValueError(
            f"shortcut={shortcut} is a {type(row).__name__}, not a harness.models.Shortcut; name the row that "
            "describes your join (docs/studies.md, 'A variant of your own')."
        )
    return row


def canonical_shortcut(shortcut: str) -> str:
    """P1 calls option A 'identity shortcuts', so `identity` names `zero_pad`. `auto` depends on
    the net, so only `resolve_shortcut` takes it."""
    if shortcut == "auto":
        raise ValueError(
            "shortcut='auto' depends on the net; resolve it with resolve_shortcut(shortcut, depth, family)."
        )
    shortcut = "zero_pad" if shortcut == "identity" else shortcut
    shortcut_row(shortcut)
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


# P2's bottleneck ResNet-164 is named apart from a basic-unit net of P1's family of the same depth.
FAMILY_SUFFIXES = {"cifar_bottleneck": "-bottleneck"}
UNIT_SUFFIXES = {"post": "", "bn_after_add": "-bnadd", "relu_before_add": "-reluadd", "relu_only_pre": "-relupre",
                 "pre": "-pre"}  # fmt: skip


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
        name += shortcut_row(option).suffix.format(**(SHORTCUT_DEFAULTS | parameters))
    return name + UNIT_SUFFIXES[activation]
