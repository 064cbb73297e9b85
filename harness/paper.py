"""Published test errors (%) that a run of this harness can be set beside.

Copied from ../shared/reference/resnet-papers.md. Keyed by (dataset, model name as
`harness.models.model_name` writes it). Only nets this harness can build are listed.
"""

PUBLISHED_TEST_ERROR: dict[tuple[str, str], tuple[float, str]] = {
    ("cifar10", "resnet-20"): (8.75, "P1 Table 6"),
    ("cifar10", "resnet-32"): (7.51, "P1 Table 6"),
    ("cifar10", "resnet-44"): (7.17, "P1 Table 6"),
    ("cifar10", "resnet-56"): (6.97, "P1 Table 6"),
    ("cifar10", "resnet-110"): (6.43, "P1 Table 6, best of 5 (mean 6.61)"),
    ("cifar10", "resnet-1202"): (7.93, "P1 Table 6"),
    ("cifar10", "plain-20"): (9.5, "P1 Fig. 6, read off the figure (approx.)"),
    ("cifar10", "plain-32"): (10.0, "P1 Fig. 6, read off the figure (approx.)"),
    ("cifar10", "plain-44"): (12.0, "P1 Fig. 6, read off the figure (approx.)"),
    ("cifar10", "plain-56"): (13.5, "P1 Fig. 6, read off the figure (approx.)"),
    ("cifar10", "resnet-110-pre"): (6.37, "P2 Table 2, full pre-activation"),
    ("cifar10", "resnet-110-C"): (12.22, "P2 Table 1, 1x1 conv on all shortcuts"),
}


def published_test_error(dataset: str, model: str) -> tuple[float, str] | None:
    return PUBLISHED_TEST_ERROR.get((dataset, model))
