"""The catalogue of data sets, without torch: their names, classes and sizes, the input
normalisations, and whether a folder holds a complete copy. `harness.data.memory` loads them
into memory; `harness.data.sources` reads their original files.

P1's CIFAR recipe subtracts the per-pixel mean, pads 4 pixels, crops and flips; Fashion-MNIST
gets the same treatment (our documented analogue). The seed fed Fashion-MNIST at 96x96 in
[0, 1] (`Resize(96)` + `ToTensor`): `resize` and `normalize="none"` give that.
"""

from dataclasses import dataclass
from pathlib import Path


class DataError(RuntimeError):
    """A data set that is missing, truncated or not in its documented format."""


@dataclass(frozen=True)
class DataSet:
    classes: int
    train_images: int


DATASETS = {
    "fashion_mnist": DataSet(classes=10, train_images=60000),
    "cifar10": DataSet(classes=10, train_images=50000),
    "cifar100": DataSet(classes=100, train_images=50000),
}
# per_pixel_mean: P1 subtracts the training images' per-pixel mean; none: pixels in [0, 1], as
# torchvision's ToTensor (the seed's pipeline).
NORMALIZATIONS = ("per_pixel_mean", "none")
SMALLEST_RESIZE = 8  # pixels square; the CIFAR nets halve an image twice


def complete(name: str, root: Path) -> bool:
    """Whether `root` holds every file of the data set (then it may be read-only)."""
    from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST

    if name == "fashion_mnist":
        raw = root / "FashionMNIST" / "raw"
        return all((raw / Path(url).stem).exists() for url, _ in FashionMNIST.resources)
    source = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    return all((root / source.base_folder / file).exists() for file, _ in source.train_list + source.test_list)
