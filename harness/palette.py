"""One colour per depth, the same in every figure and in the MLflow UI: a leaf that both
`harness.figures` and `harness.tracking.ui` read."""

from matplotlib import colormaps
from matplotlib.colors import to_hex, to_rgb

DEPTH_COLOURS = {
    20: "tab:blue", 32: "tab:orange", 44: "tab:green", 56: "tab:red", 110: "tab:purple", 1202: "tab:brown",
    18: "tab:cyan", 34: "tab:olive", 50: "tab:pink", 101: "tab:gray", 152: "black",
}  # fmt: skip
OTHER_COLOURS = colormaps["tab20"].colors
SWEEP_COLOUR = "#dddddd"  # a sweep's parent has no curves: a light neutral grey, lighter than any depth's tint
PLAIN_TINT = 0.5  # a plain net's colour: its depth's colour half-way to white
VARIANT_SHADE = 0.35  # projection shortcuts or pre-activation: the depth's colour 35% towards black


def depth_colour(depth: int) -> tuple | str:
    return DEPTH_COLOURS.get(depth, OTHER_COLOURS[depth % len(OTHER_COLOURS)])


def _mix(colour, towards: str, amount: float) -> str:
    return to_hex([(1 - amount) * a + amount * b for a, b in zip(to_rgb(colour), to_rgb(towards))])


def run_colour(
    depth: int, residual: bool, shortcut: str = "zero_pad", activation: str = "post", default_shortcut: str = "zero_pad"
) -> str:
    """The UI colour of a net: its depth's colour, as the figures draw a residual net; a plain net
    gets a lighter tint of it (the UI has one line style, so lightness stands for plain vs
    residual), a residual net with other than its depth's default shortcut or with
    another unit than (a) a darker shade (black itself, 152, towards grey)."""
    base = to_hex(depth_colour(depth))
    if not residual:
        return _mix(base, "white", PLAIN_TINT)
    if shortcut != default_shortcut or activation != "post":
        return _mix(base, "black", VARIANT_SHADE) if base != "#000000" else _mix(base, "white", VARIANT_SHADE / 2)
    return base
