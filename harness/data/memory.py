"""Whole data sets in memory as uint8 tensors on the training device, augmented batch-wise.

P1's CIFAR recipe: subtract the per-pixel mean, pad 4 pixels, take a random crop of the
original size and flip horizontally with probability 1/2; test on the original image only.
Everything runs on tensors with one seeded generator per run: no per-image PIL work and no
worker processes in the hot loop.
"""

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock

from harness.data import DATASETS, NORMALIZATIONS, SMALLEST_RESIZE, DataError
from harness.data.sources import SOURCES


@dataclass
class Data:
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor
    eval_images: torch.Tensor  # the test split, or the held-out validation split
    eval_labels: torch.Tensor
    eval_split: str  # "test" or "validation"
    mean: torch.Tensor  # subtracted from every image in [0, 1]: the training images' per-pixel mean (C, H, W), or 0
    num_classes: int
    resize: int | None = None  # pixels square the model sees; None: the stored size

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.resize or self.train_images.shape[-1]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 batch as the model's float input. Resizing is linear, so it commutes with
        subtracting the mean: the mean stays at the stored size and is taken off first."""
        images = images.float() / 255 - self.mean
        if self.resize is None:
            return images
        # PIL's bilinear filter, which torchvision's Resize applies to PIL images, is what
        # antialias=True computes, upsampling and downsampling alike.
        return F.interpolate(images, size=(self.resize, self.resize), mode="bilinear", antialias=True)


def random_data(name: str, count: int, device: torch.device, resize: int | None = None) -> Data:
    """`count` random images and labels of a catalogued data set's shape, as both splits: what a
    timing needs (the planner's calibration, the GPU benchmark) without reading the data set."""
    data_set = DATASETS[name]
    generator = torch.Generator().manual_seed(0)
    shape = (data_set.channels, data_set.image_size, data_set.image_size)
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, data_set.classes, (count,), generator=generator).to(device)
    mean = torch.zeros(shape, device=device)
    return Data(images, labels, images, labels, "test", mean, data_set.classes, resize)


def data_lock(root: Path, name: str) -> FileLock:
    """A lock beside the data, or, where the root is read-only (a shared copy that already holds
    the data), one in the temporary folder keyed by the root's path."""
    beside = root / f".{name}.lock"
    try:
        beside.touch(exist_ok=True)
        return FileLock(beside)
    except OSError:
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
        return FileLock(Path(tempfile.gettempdir()) / f"harness-data-{name}-{key}.lock")


def load_data(
    name: str,
    root: str | Path,
    download: bool,
    validation_size: int | None,
    device: torch.device,
    resize: int | None = None,
    normalize: str = "per_pixel_mean",
) -> Data:
    """The named data set on `device`; with `validation_size`, the last that many training
    images are held out and evaluated instead of the test split (P1 tuned on 45k/5k). The
    images stay uint8 at their stored size; `Data.normalise` applies `normalize` and `resize`
    batch by batch."""
    if name not in SOURCES:
        raise DataError(f"dataset={name!r} is not known; valid data sets are {', '.join(SOURCES)}.")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"normalize={normalize!r} is not known; use one of {', '.join(NORMALIZATIONS)}.")
    if resize is not None and resize < SMALLEST_RESIZE:
        raise DataError(f"resize={resize} must be {SMALLEST_RESIZE} or more pixels, or None to keep the stored size.")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # Parallel jobs sharing a root would otherwise unzip or download into the same files at once.
    with data_lock(root, name):
        train_x, train_y, test_x, test_y = SOURCES[name](root, download)
    eval_split = "test"
    if validation_size:
        if not 0 < validation_size < len(train_x):
            raise DataError(f"validation_size={validation_size} must lie between 1 and {len(train_x) - 1}.")
        train_x, test_x = train_x[:-validation_size], train_x[-validation_size:]
        train_y, test_y = train_y[:-validation_size], train_y[-validation_size:]
        eval_split = "validation"
    if normalize == "per_pixel_mean":
        mean = (train_x.float() / 255).mean(dim=0)
    else:
        mean = torch.zeros(train_x.shape[1:])
    return Data(
        train_images=train_x.to(device),
        train_labels=train_y.to(device),
        eval_images=test_x.to(device),
        eval_labels=test_y.to(device),
        eval_split=eval_split,
        mean=mean.to(device),
        num_classes=DATASETS[name].classes,
        resize=resize,
    )


def augment(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad`, crop back to the original size at a random offset per image and flip
    half of the images horizontally. `images` is a normalised float batch (N, C, H, W), so the
    zero padding is the mean image, as in P1."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    rows = (top + torch.arange(h, device=device))[:, None, :, None]
    cols = (left + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channels = torch.arange(c, device=device)[None, :, None, None]
    crops = padded[batch, channels, rows, cols]
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


class BatchSampler:
    """Endless minibatches of training indices: a fresh permutation every epoch, the last
    incomplete batch of an epoch dropped so that every step sees `batch_size` images."""

    def __init__(self, num_examples: int, batch_size: int, generator: torch.Generator):
        if batch_size > num_examples:
            raise DataError(f"batch_size={batch_size} is larger than the {num_examples} training images.")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.generator = generator
        self.batches_per_epoch = num_examples // batch_size
        self.position = self.batches_per_epoch  # start a new epoch on the first call
        self.order = torch.empty(0, dtype=torch.int64)

    def next(self) -> torch.Tensor:
        if self.position == self.batches_per_epoch:
            self.order = torch.randperm(self.num_examples, generator=self.generator, device=self.generator.device)
            self.position = 0
        start = self.position * self.batch_size
        self.position += 1
        return self.order[start : start + self.batch_size]

    def state_dict(self) -> dict:
        """The data order: this epoch's permutation, the position in it, the generator's state."""
        return {"order": self.order, "position": self.position, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.order = state["order"].to(self.generator.device)
        self.position = state["position"]
        self.generator.set_state(state["generator"])
