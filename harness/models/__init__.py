"""The catalogue of nets this harness builds, without torch: which depths exist in which family,
the shortcut options and activations, and the paper's names. `harness.models.resnet` builds
them; the config's checks, the run record and the report read them from here.
"""

SHORTCUTS = ("zero_pad", "projection", "full_projection")  # P1 options A, B, C
ACTIVATIONS = ("post", "pre")  # P1's original unit, P2's full pre-activation
VALID_ACTIVATIONS = "post (P1) or pre (P2's full pre-activation)"

IMAGENET_LAYOUTS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
CIFAR_WIDTHS = [16, 32, 64]
IMAGENET_WIDTHS = [64, 128, 256, 512]
FAMILIES = ("auto", "cifar", "imagenet")
VALID_DEPTHS = (
    "6n+2 for the CIFAR nets (20, 32, 44, 56, 110, 1202, any n >= 1) or 18, 34, 50, 101, 152 for the ImageNet nets"
)


def is_cifar_depth(depth: int) -> bool:
    return depth >= 8 and (depth - 2) % 6 == 0


def resolve_family(depth: int, family: str = "auto") -> str:
    """'cifar' or 'imagenet' for this depth. 50 and 152 are also 6n+2: `auto` takes them as the
    ImageNet bottleneck nets, `family=cifar` as CIFAR nets."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not valid; use one of {', '.join(FAMILIES)}.")
    if family in ("auto", "imagenet") and depth in IMAGENET_LAYOUTS:
        return "imagenet"
    if family in ("auto", "cifar") and is_cifar_depth(depth):
        return "cifar"
    wanted = {
        "auto": VALID_DEPTHS,
        "cifar": "6n+2 (20, 32, 44, 56, 110, 1202, ...)",
        "imagenet": "18, 34, 50, 101, 152",
    }
    family_text = "" if family == "auto" else f" for family={family}"
    raise ValueError(f"depth={depth} is not valid{family_text}; valid depths are {wanted[family]}.")


VALID_SHORTCUTS = (
    "auto (option A, or B for the bottleneck nets 50, 101, 152), zero_pad (option A; alias identity), "
    "projection (option B) or full_projection (option C)"
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
    """The option this net uses. `auto` is P1's choice: option A for the CIFAR nets and
    ResNet-18/34 (Table 3 reports 34 A), B for the bottleneck nets (section 3.3, 50/101/152)."""
    if shortcut != "auto":
        return canonical_shortcut(shortcut)
    if resolve_family(depth, family) == "imagenet" and IMAGENET_LAYOUTS[depth][0] == "bottleneck":
        return "projection"
    return "zero_pad"


SHORTCUT_LETTERS = {"zero_pad": "A", "projection": "B", "full_projection": "C"}


def model_name(
    depth: int | None, residual: bool, shortcut: str = "auto", activation: str = "post", family: str = "auto"
) -> str:
    """The paper's names: plain-56, resnet-56; options other than A and pre-activation are
    suffixed (resnet-56-B-pre, and resnet-50-B under `auto`, so a name never hides the option).
    A plain net has no shortcut to name. Without a depth, the variant's name: plain,
    resnet-B-pre; `auto` then has no meaning and is refused."""
    name = ("resnet" if residual else "plain") + ("" if depth is None else f"-{depth}")
    if residual:
        option = canonical_shortcut(shortcut) if depth is None else resolve_shortcut(shortcut, depth, family)
        name += "" if option == "zero_pad" else f"-{SHORTCUT_LETTERS[option]}"
    if activation == "pre":
        name += "-pre"
    return name
