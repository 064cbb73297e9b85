"""The catalogue of data sets, without torch: their names, classes and sizes, the input
normalisations, and whether a folder holds a complete copy. `harness.data.memory` loads them
into memory; `harness.data.sources` reads their original files.

P1's CIFAR recipe subtracts the per-pixel mean, pads 4 pixels, crops and flips; Fashion-MNIST
gets the same treatment (our documented analogue). The starting project fed Fashion-MNIST at 96x96 in
[0, 1] (`Resize(96)` + `ToTensor`): `resize` and `normalize="none"` give that.
"""

from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError


class DataError(HarnessError):
    """A data set that is missing, truncated or not in its documented format."""


@dataclass(frozen=True)
class DataSet:
    """A data set's size and its files on disk, in torchvision's layout under the data root
    (tests/test_data.py checks it against torchvision's own lists). Reading needs no
    torchvision, which costs a run over a second of start-up; downloading does."""

    classes: int
    train_images: int
    test_images: int
    channels: int
    image_size: int  # pixels square, as stored
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


DATASETS = {
    "fashion_mnist": DataSet(
        classes=10,
        train_images=60000,
        test_images=10000,
        channels=1,
        image_size=28,
        folder="FashionMNIST/raw",  # the four idx files, unzipped
        train_files=("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        test_files=("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ),
    "cifar10": DataSet(
        classes=10,
        train_images=50000,
        test_images=10000,
        channels=3,
        image_size=32,
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
    ),
    "cifar100": DataSet(
        classes=100,
        train_images=50000,
        test_images=10000,
        channels=3,
        image_size=32,
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
    ),
}
# per_pixel_mean: P1 subtracts the training images' per-pixel mean; none: pixels in [0, 1], as
# torchvision's ToTensor (the starting project's pipeline).
NORMALIZATIONS = ("per_pixel_mean", "none")
SMALLEST_RESIZE = 8  # pixels square; the CIFAR nets halve an image twice


def complete(name: str, root: Path) -> bool:
    """Whether `root` holds every file of the data set (then it may be read-only)."""
    data_set = DATASETS[name]
    return all((root / data_set.folder / file).exists() for file in data_set.files)
