"""Published CIFAR-10 test errors (%) that a run of this harness can be set beside.

Copied from ../shared/reference/resnet-papers.md. Keyed by (dataset, model name as
`harness.models.model_name` writes it). Only nets this harness can build are listed. Each value
says what kind of number it is, so that a mean over our seeds meets a published mean, and a
best or median of N is labelled as such.
"""

import math
from typing import NamedTuple


class Published(NamedTuple):
    error: float
    statistic: str  # "mean of 5", "median of 5", "best of 5", "one number", "read off a figure"
    source: str


PUBLISHED_TEST_ERROR: dict[tuple[str, str], Published] = {
    ("cifar10", "resnet-20"): Published(8.75, "one number", "P1 Table 6"),
    ("cifar10", "resnet-32"): Published(7.51, "one number", "P1 Table 6"),
    ("cifar10", "resnet-44"): Published(7.17, "one number", "P1 Table 6"),
    ("cifar10", "resnet-56"): Published(6.97, "one number", "P1 Table 6"),
    # P1 Table 6 gives 6.43 as the best of 5 runs and 6.61 ± 0.16 as their mean: means meet means.
    ("cifar10", "resnet-110"): Published(6.61, "mean of 5 (± 0.16; best 6.43)", "P1 Table 6"),
    ("cifar10", "resnet-1202"): Published(7.93, "one number", "P1 Table 6"),
    ("cifar10", "plain-20"): Published(9.5, "read off a figure, approx.", "P1 Fig. 6"),
    ("cifar10", "plain-32"): Published(10.0, "read off a figure, approx.", "P1 Fig. 6"),
    ("cifar10", "plain-44"): Published(12.0, "read off a figure, approx.", "P1 Fig. 6"),
    ("cifar10", "plain-56"): Published(13.5, "read off a figure, approx.", "P1 Fig. 6"),
    ("cifar10", "resnet-110-pre"): Published(6.37, "one number", "P2 Table 2, full pre-activation"),
    ("cifar10", "resnet-110-C"): Published(12.22, "median of 5", "P2 Table 1, 1x1 conv on all shortcuts"),
}


def published_test_error(dataset: str, model: str) -> Published | None:
    return PUBLISHED_TEST_ERROR.get((dataset, model))


# P2 Tables 1 and 2: ResNet-110 (and Table 2's ResNet-164) on CIFAR-10, keyed by the variant's name
# (`model_name` without a depth): what a P2 study at another depth, data and budget sets its nets beside.
P2_TABLE1 = "P2 Table 1, ResNet-110, CIFAR-10"
P2_TABLE2 = "P2 Table 2, ResNet-110, CIFAR-10"
P2_TABLE2_164 = "P2 Table 2, ResNet-164, CIFAR-10"
FAIL = "fail (test error above 20%)"
P2_VARIANT_TEST_ERROR: dict[str, Published] = {
    "resnet": Published(6.61, "median of 5", "P2 Tables 1 and 2, ResNet-110, CIFAR-10, the original unit (a)"),
    "resnet-scale0.5": Published(math.nan, FAIL, P2_TABLE1),
    "resnet-frozen0.5": Published(12.35, "median of 5", P2_TABLE1),
    **{f"resnet-exgate{b}": Published(math.nan, FAIL, P2_TABLE1) for b in (0, -1, -2, -3, -4, -5)},
    "resnet-exgate-6": Published(8.70, "median of 5", P2_TABLE1),
    "resnet-exgate-7": Published(9.81, "median of 5", P2_TABLE1),
    "resnet-shgate0": Published(12.86, "median of 5", P2_TABLE1),
    "resnet-shgate-6": Published(6.91, "median of 5", P2_TABLE1),
    "resnet-C": Published(12.22, "median of 5", f"{P2_TABLE1}, 1x1 conv"),
    "resnet-drop0.5": Published(math.nan, FAIL, P2_TABLE1),
    "resnet-bnadd": Published(8.17, "one number", f"{P2_TABLE2}, (b)"),
    "resnet-reluadd": Published(7.84, "one number", f"{P2_TABLE2}, (c)"),
    "resnet-relupre": Published(6.71, "one number", f"{P2_TABLE2}, (d)"),
    "resnet-pre": Published(6.37, "one number", f"{P2_TABLE2}, (e)"),
    # Table 2's second row, the CIFAR bottleneck ResNet-164 (projection shortcuts where dimensions change).
    **{
        f"resnet-bottleneck-B{suffix}": Published(error, "one number", f"{P2_TABLE2_164}, ({letter})")
        for suffix, error, letter in (
            ("", 5.93, "a"),
            ("-bnadd", 6.50, "b"),
            ("-reluadd", 6.14, "c"),
            ("-relupre", 5.91, "d"),
            ("-pre", 5.46, "e"),
        )
    },
}


def p2_test_error(variant: str) -> Published | None:
    return P2_VARIANT_TEST_ERROR.get(variant)
