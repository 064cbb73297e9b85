"""Read each data set's original files into uint8 tensors (N, C, H, W) and int64 labels.
torchvision only downloads them: importing it costs a run over a second of start-up."""

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from harness.data import DATASETS, DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_MAGIC = {"images": 2051, "labels": 2049}


Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # train x, y, test x, y


def read_idx(path: Path, kind: str) -> torch.Tensor:
    """An idx file's array (uint8 images N x H x W, or labels N as int64); a truncated or
    foreign file fails with what to do about it."""
    data = path.read_bytes()
    ndim = 3 if kind == "images" else 1
    header = 4 * (ndim + 1)
    if len(data) < header or int.from_bytes(data[:4], "big") != IDX_MAGIC[kind]:
        raise DataError(
            f"{path} is not an idx {kind} file (magic number {IDX_MAGIC[kind]} expected). "
            "Delete it and let the harness copy or download Fashion-MNIST again."
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: {len(data)} bytes, but its header {dims} needs {expected}. "
            "Delete it and let the harness copy or download Fashion-MNIST again."
        )
    array = torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*dims)
    return array if kind == "images" else array.long()


def load_fashion_mnist(root: Path, download: bool) -> Arrays:
    """From ROOT/FashionMNIST/raw (torchvision's layout), filled from Debian's
    dataset-fashion-mnist package when it is installed, else downloaded by torchvision."""
    data_set = DATASETS["fashion_mnist"]
    raw = root / data_set.folder
    names = data_set.files
    missing = [name for name in names if not (raw / name).exists()]
    if missing and all((DEBIAN_FASHION_MNIST / f"{name}.gz").exists() for name in missing):
        raw.mkdir(parents=True, exist_ok=True)
        for name in missing:
            with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    elif missing and download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(root, download=True)
        except Exception as error:  # torchvision raises URLError, RuntimeError, ... when offline
            raise DataError(
                f"Fashion-MNIST is not under {raw} nor {DEBIAN_FASHION_MNIST}, and downloading it failed ({error}). "
                "Install Debian's package (sudo apt-get install dataset-fashion-mnist) or put the four idx "
                f"files in {raw}."
            ) from error
    elif missing:
        raise DataError(
            f"Fashion-MNIST is missing: {', '.join(missing)} not in {raw} nor {DEBIAN_FASHION_MNIST}, "
            "and dataset.download=false. Install Debian's package (sudo apt-get install dataset-fashion-mnist), "
            "or set dataset.download=true on a machine with a network."
        )
    train_x, train_y, test_x, test_y = (
        read_idx(raw / name, "images" if "images" in name else "labels") for name in names
    )
    return train_x.unsqueeze(1), train_y, test_x.unsqueeze(1), test_y


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch of CIFAR's python format: 'data' (N x 3072, uint8, channel-major)
    and 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    except Exception as error:
        raise DataError(
            f"{path} is not a CIFAR batch in the python format ({error!r}); delete it and download again."
        ) from error
    if data.ndim != 2 or data.shape != (len(labels), 3 * 32 * 32):
        raise DataError(
            f"{path} is truncated or corrupt: data of shape {data.shape} for {len(labels)} labels, "
            f"expected ({len(labels)}, 3072)."
        )
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)).clone(), torch.tensor(labels, dtype=torch.int64)


def load_cifar(root: Path, download: bool, name: str) -> Arrays:
    """From ROOT/cifar-10-batches-py or ROOT/cifar-100-python, downloaded by torchvision if absent."""
    data_set = DATASETS[name]
    folder = root / data_set.folder
    title = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name]  # torchvision's class, as the user meets it
    if not all((folder / file).exists() for file in data_set.files):
        if not download:
            raise DataError(
                f"{title} is not in {folder} and dataset.download=false. Set dataset.download=true "
                f"on a machine with a network, or unpack the python version of the data set into {root}."
            )
        import torchvision.datasets

        try:
            getattr(torchvision.datasets, title)(root, download=True)
        except Exception as error:
            raise DataError(
                f"{title} is not in {folder} and downloading it failed ({error}). Unpack the python "
                f"version of the data set into {root} on this machine, or run once where there is a network."
            ) from error
    splits = []
    for files in (data_set.train_files, data_set.test_files):
        batches = [read_cifar_batch(folder / file) for file in files]
        splits += [torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])]
    return tuple(splits)


SOURCES = {
    "fashion_mnist": lambda root, download: load_fashion_mnist(root, download),
    "cifar10": lambda root, download: load_cifar(root, download, "cifar10"),
    "cifar100": lambda root, download: load_cifar(root, download, "cifar100"),
}
