"""Behaviour of harness.data: reading CIFAR-10/100 and Fashion-MNIST from their original files,
the validation hold-out, normalisation, resizing, augmentation and the batch sampler; and the
starting project's experiment config.

CIFAR is faked with tiny folders in CIFAR's own python format; Fashion-MNIST is the real data
from Debian's dataset-fashion-mnist package (skipped where that is not installed).
"""

import gzip
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms
from torchvision.datasets import FashionMNIST

import harness.data.sources as sources
from harness.config import check_values, compose_config
from harness.data import NORMALIZATIONS, DataError
from harness.data.memory import BatchSampler, augment, load_data
from harness.models.resnet import build_model
from harness.tracking import MemoryTracker
from harness.train import train_job

from helpers.config import resolved

CPU = torch.device("cpu")
PER_BATCH = 8  # images per CIFAR batch file
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {  # unzipped name -> size in bytes of the original idx file
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}


# --- fake CIFAR folders in the python format ---------------------------------------------------


def write_pickle(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def make_cifar10(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """ROOT/cifar-10-batches-py with five training batches and a test batch of 8 random images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
        write_pickle(folder / name, {"data": data, "labels": labels, "batch_label": f"fake {name}"})
        batches[name] = (data, labels)
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return batches


def make_cifar100(root: Path, seed: int = 1) -> dict[str, tuple[np.ndarray, list[int], list[int]]]:
    """ROOT/cifar-100-python with a 40-image `train` and an 8-image `test` file. Fine labels are
    in 20..99 and coarse labels fine // 5, so the two never agree."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    files = {}
    for name, n in [("train", 5 * PER_BATCH), ("test", PER_BATCH)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(20, 100, size=n)]
        coarse = [v // 5 for v in fine]
        write_pickle(
            folder / name,
            {"data": data, "fine_labels": fine, "coarse_labels": coarse, "batch_label": name, "filenames": []},
        )
        files[name] = (data, fine, coarse)
    write_pickle(
        folder / "meta",
        {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]},
    )
    return files


@pytest.fixture
def cifar10(tmp_path):
    return tmp_path, make_cifar10(tmp_path)


def test_cifar10_loads_shapes_labels_and_pixels(cifar10):
    """CIFAR-10's batches become (40,3,32,32)/(8,3,32,32) uint8 in file order, channel-major rows."""
    root, batches = cifar10
    data = load_data("cifar10", root, download=False, validation_size=None, device=CPU)

    assert data.train_images.shape == (40, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.eval_images.shape == (8, 3, 32, 32) and data.eval_images.dtype == torch.uint8
    assert data.eval_split == "test"
    assert data.num_classes == 10 and data.in_channels == 3

    train_rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert data.train_labels.tolist() == train_labels
    assert data.eval_labels.tolist() == batches["test_batch"][1]

    first = batches["data_batch_1"][0]
    assert torch.equal(data.train_images[0, 0], torch.from_numpy(first[0, :1024].reshape(32, 32)))  # red
    assert torch.equal(data.train_images[0, 1], torch.from_numpy(first[0, 1024:2048].reshape(32, 32)))  # green
    assert data.train_images[17, 2, 5, 9].item() == train_rows[17, 2048 + 5 * 32 + 9]  # blue, third batch
    assert torch.equal(data.train_images, torch.from_numpy(train_rows.reshape(40, 3, 32, 32)))
    assert torch.equal(data.eval_images, torch.from_numpy(batches["test_batch"][0].reshape(8, 3, 32, 32)))


def test_cifar100_loads_fine_labels(tmp_path):
    """CIFAR-100's `train`/`test` files load with the fine labels and 100 classes."""
    files = make_cifar100(tmp_path)
    data = load_data("cifar100", tmp_path, download=False, validation_size=None, device=CPU)

    assert data.train_images.shape == (40, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.eval_images.shape == (8, 3, 32, 32) and data.eval_images.dtype == torch.uint8
    assert data.num_classes == 100
    assert data.train_labels.tolist() == files["train"][1]
    assert data.eval_labels.tolist() == files["test"][1]
    assert data.train_labels.tolist() != files["train"][2]  # not the coarse labels
    train_rows = files["train"][0]
    assert torch.equal(data.train_images[0, 0], torch.from_numpy(train_rows[0, :1024].reshape(32, 32)))
    assert torch.equal(data.train_images, torch.from_numpy(train_rows.reshape(40, 3, 32, 32)))


def test_validation_holds_out_the_last_training_images(cifar10):
    """validation_size=8 evaluates on the last 8 training images instead of the test batch."""
    root, batches = cifar10
    data = load_data("cifar10", root, download=False, validation_size=8, device=CPU)
    last_rows, last_labels = batches["data_batch_5"]

    assert data.eval_split == "validation"
    assert data.train_images.shape == (32, 3, 32, 32)
    assert torch.equal(data.eval_images, torch.from_numpy(last_rows.reshape(8, 3, 32, 32)))
    assert data.eval_labels.tolist() == last_labels
    assert torch.equal(data.train_images[-1], torch.from_numpy(batches["data_batch_4"][0][-1].reshape(3, 32, 32)))


@pytest.mark.parametrize("size", [40, 41, -1])
def test_validation_size_out_of_range_raises(cifar10, size):
    """A validation split that leaves no training image (or is negative) is refused."""
    root, _ = cifar10
    with pytest.raises(DataError, match="validation_size"):
        load_data("cifar10", root, download=False, validation_size=size, device=CPU)


@pytest.mark.parametrize("validation_size", [None, 8])
def test_normalise_centres_each_pixel_of_the_training_images(cifar10, validation_size):
    """Data.mean is the per-pixel mean of the (remaining) training images: normalising them gives ~0 per pixel."""
    root, _ = cifar10
    data = load_data("cifar10", root, download=False, validation_size=validation_size, device=CPU)
    assert data.mean.shape == (3, 32, 32)
    normalised = data.normalise(data.train_images)
    assert normalised.dtype == torch.float32
    assert normalised.mean(dim=0).abs().max().item() < 1e-5
    assert data.normalise(data.eval_images).mean(dim=0).abs().max().item() > 0.1  # other images are not centred


def test_normalise_subtracts_the_mean_only(cifar10):
    """P1 subtracts the per-pixel mean and divides by nothing: pixels keep their [0, 1] scale."""
    root, _ = cifar10
    data = load_data("cifar10", root, download=False, validation_size=None, device=CPU)
    assert not hasattr(data, "std")
    for images in (data.train_images, data.eval_images):
        torch.testing.assert_close(data.normalise(images), images.float() / 255 - data.mean, rtol=0, atol=1e-7)


def test_normalize_none_gives_pixels_in_0_1(cifar10):
    """normalize="none" is torchvision's ToTensor, the starting project's pipeline: the uint8 pixels divided by 255."""
    root, _ = cifar10
    data = load_data("cifar10", root, download=False, validation_size=None, device=CPU, normalize="none")
    for images in (data.train_images, data.eval_images):
        assert torch.equal(data.normalise(images), images.float() / 255)


def test_unknown_normalize_raises(cifar10):
    """An unknown normalisation fails, listing the known ones."""
    root, _ = cifar10
    assert NORMALIZATIONS == ("per_pixel_mean", "none")
    with pytest.raises(DataError, match="per_pixel_mean, none"):
        load_data("cifar10", root, download=False, validation_size=None, device=CPU, normalize="std")


def test_resize_keeps_the_training_images_centred(cifar10):
    """Resizing is linear: normalised and resized, the training images still have mean ~0 per pixel."""
    root, _ = cifar10
    data = load_data("cifar10", root, download=False, validation_size=None, device=CPU, resize=48)
    assert data.image_size == 48 and data.mean.shape == (3, 32, 32)  # the stored size
    normalised = data.normalise(data.train_images)
    assert normalised.shape == (40, 3, 48, 48)
    assert normalised.mean(dim=0).abs().max().item() < 1e-5


def test_every_batch_the_model_sees_is_resized(cifar10):
    """Training (augmented), evaluation and probe batches all reach the model at dataset.resize;
    without it, at the stored size."""
    root, _ = cifar10
    for resize, size in [(40, 40), (None, 32)]:
        data = load_data("cifar10", root, download=False, validation_size=None, device=CPU, resize=resize)
        assert data.image_size == size
        cfg = compose_config(
            "dataset=cifar10",
            "dataset.augment=true",
            "schedule=smoke",
            "schedule.iterations=10",
            "schedule.batch_size=16",
            "schedule.final_train_subset=16",
            "analysis=true",
        )
        model = build_model(8)
        shapes = set()
        model.register_forward_pre_hook(lambda _, inputs: shapes.add(tuple(inputs[0].shape)))
        train_job(resolved(cfg), model, data, MemoryTracker(), CPU)
        # 16-image training batches, the 8-image test split and probe batch, the final 16 training images
        assert shapes == {(16, 3, size, size), (8, 3, size, size)}


def test_truncated_cifar_batch_names_the_file(cifar10):
    """A batch whose rows are not 3072 bytes long fails with a DataError naming that file."""
    root, _ = cifar10
    path = root / "cifar-10-batches-py" / "data_batch_3"
    write_pickle(
        path, {"data": np.zeros((PER_BATCH, 3000), dtype=np.uint8), "labels": [0] * PER_BATCH, "batch_label": "bad"}
    )
    with pytest.raises(DataError, match="truncated") as error:
        load_data("cifar10", root, download=False, validation_size=None, device=CPU)
    assert str(path) in str(error.value)


def test_garbage_cifar_batch_names_the_file(cifar10):
    """A batch that is not a pickle at all fails with a DataError naming that file."""
    root, _ = cifar10
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"not a pickle")
    with pytest.raises(DataError) as error:
        load_data("cifar10", root, download=False, validation_size=None, device=CPU)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_cifar_without_download_raises(tmp_path, name):
    """No data set and download=False: a DataError that points at dataset.download."""
    with pytest.raises(DataError, match="dataset.download"):
        load_data(name, tmp_path, download=False, validation_size=None, device=CPU)


def test_missing_cifar_file_without_download_raises(cifar10):
    """One missing batch file counts as a missing data set."""
    root, _ = cifar10
    (root / "cifar-10-batches-py" / "data_batch_2").unlink()
    with pytest.raises(DataError, match="dataset.download"):
        load_data("cifar10", root, download=False, validation_size=None, device=CPU)


def test_unknown_dataset_raises(tmp_path):
    """An unknown data set name fails, listing the known ones."""
    with pytest.raises(DataError, match="fashion_mnist.*cifar10.*cifar100"):
        load_data("svhn", tmp_path, download=False, validation_size=None, device=CPU)


# --- Fashion-MNIST from Debian's package -------------------------------------------------------

needs_fashion_mnist = pytest.mark.skipif(
    not all((FASHION_MNIST / f"{name}.gz").exists() for name in FASHION_FILES),
    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST} missing)",
)


@pytest.fixture(scope="module")
def fashion_mnist(tmp_path_factory):
    """Fashion-MNIST loaded once into a fresh root (copied from Debian's package)."""
    root = tmp_path_factory.mktemp("fashion")
    return root, load_data("fashion_mnist", root, download=False, validation_size=None, device=CPU)


@needs_fashion_mnist
def test_fashion_mnist_loads_from_debian_package(fashion_mnist):
    """60k/10k uint8 28x28 grayscale images, 10 balanced classes, and the four idx files unzipped."""
    root, data = fashion_mnist
    assert data.train_images.shape == (60000, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.eval_images.shape == (10000, 1, 28, 28) and data.eval_images.dtype == torch.uint8
    assert data.num_classes == 10 and data.in_channels == 1 and data.eval_split == "test"
    assert data.train_labels.shape == (60000,) and data.eval_labels.shape == (10000,)
    assert torch.bincount(data.train_labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(data.eval_labels, minlength=10).tolist() == [1000] * 10

    raw = root / "FashionMNIST" / "raw"
    assert {p.name: p.stat().st_size for p in raw.iterdir()} == FASHION_FILES


@needs_fashion_mnist
def test_fashion_mnist_pixels_and_labels_match_the_idx_files(fashion_mnist):
    """The first image and the first labels are the bytes of Debian's gzipped idx files."""
    _, data = fashion_mnist
    with gzip.open(FASHION_MNIST / "train-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read(16 + 2 * 784)[16:], dtype=np.uint8).reshape(2, 28, 28)
    with gzip.open(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(8 + 100)[8:], dtype=np.uint8)
    assert torch.equal(data.train_images[:2, 0], torch.from_numpy(first.copy()))
    assert data.eval_labels[:100].tolist() == labels.tolist()


@needs_fashion_mnist
@pytest.mark.parametrize("size", [96, 20])
def test_resize_matches_the_starting_projects_torchvision_pipeline(fashion_mnist, size):
    """normalize="none" with resize=96 gives the starting project's Resize(96) + ToTensor on PIL images, within
    one grey level: PIL resamples 8-bit images in fixed point and rounds to uint8, so it may differ
    from the exact float result by up to 1/255 (measured: at most 1/255, on average 0.17/255).
    Downsampling (20) matches too, which needs antialias (without it: up to 89/255)."""
    root, _ = fashion_mnist
    data = load_data(
        "fashion_mnist", root, download=False, validation_size=None, device=CPU, resize=size, normalize="none"
    )
    seed = FashionMNIST(
        root, train=False, transform=transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    )
    expected = torch.stack([seed[i][0] for i in range(100)])
    difference = (data.normalise(data.eval_images[:100]) - expected).abs()
    assert difference.shape == (100, 1, size, size)
    assert difference.max().item() <= 1 / 255 + 1e-6
    assert difference.mean().item() < 0.25 / 255


@needs_fashion_mnist
def test_the_idx_reader_gives_torchvisions_arrays(fashion_mnist):
    """The harness reads the idx files itself (torchvision costs a run over a second to import):
    the same images and labels as torchvision's FashionMNIST, with its dtypes."""
    root, data = fashion_mnist
    for train_split, images, labels in [
        (True, data.train_images, data.train_labels),
        (False, data.eval_images, data.eval_labels),
    ]:
        reference = FashionMNIST(root, train=train_split)
        assert torch.equal(images[:, 0], reference.data) and images.dtype == reference.data.dtype
        assert torch.equal(labels, reference.targets) and labels.dtype == reference.targets.dtype


def test_the_catalogue_names_torchvisions_files():
    """Where the harness looks for each data set is where torchvision puts it."""
    import torchvision.datasets as tv

    from harness.data import DATASETS

    fashion = DATASETS["fashion_mnist"]
    assert fashion.folder == "FashionMNIST/raw"
    assert set(fashion.files) == {Path(url).stem for url, _ in FashionMNIST.resources}
    for name, source in [("cifar10", tv.CIFAR10), ("cifar100", tv.CIFAR100)]:
        assert DATASETS[name].folder == source.base_folder
        assert DATASETS[name].train_files == tuple(file for file, _ in source.train_list)
        assert DATASETS[name].test_files == tuple(file for file, _ in source.test_list)


@needs_fashion_mnist
def test_loading_fashion_mnist_imports_no_torchvision(fashion_mnist):
    root, _ = fashion_mnist
    code = (
        "import sys; from harness.data.memory import load_data; import torch; "
        f"load_data('fashion_mnist', {str(root)!r}, False, None, torch.device('cpu')); "
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def copy_raw(source_root: Path, target_root: Path) -> Path:
    raw = target_root / "FashionMNIST" / "raw"
    shutil.copytree(source_root / "FashionMNIST" / "raw", raw)
    return raw


@needs_fashion_mnist
def test_truncated_idx_file_raises(fashion_mnist, tmp_path):
    """An idx file cut to half its size fails with a DataError naming it and saying 'truncated'."""
    raw = copy_raw(fashion_mnist[0], tmp_path)
    path = raw / "train-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.truncate(FASHION_FILES[path.name] // 2)
    with pytest.raises(DataError, match="truncated") as error:
        load_data("fashion_mnist", tmp_path, download=False, validation_size=None, device=CPU)
    assert str(path) in str(error.value)


@needs_fashion_mnist
def test_idx_file_with_wrong_magic_raises(fashion_mnist, tmp_path):
    """A labels file with an images magic number fails with a DataError naming it."""
    raw = copy_raw(fashion_mnist[0], tmp_path)
    path = raw / "t10k-labels-idx1-ubyte"
    with open(path, "r+b") as f:
        f.write((2051).to_bytes(4, "big"))
    with pytest.raises(DataError, match="magic number 2049") as error:
        load_data("fashion_mnist", tmp_path, download=False, validation_size=None, device=CPU)
    assert str(path) in str(error.value)


def test_missing_fashion_mnist_without_download_raises(tmp_path, monkeypatch):
    """Without the Debian package and with download=False: a DataError pointing at dataset.download."""
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    with pytest.raises(DataError, match="dataset.download"):
        load_data("fashion_mnist", tmp_path, download=False, validation_size=None, device=CPU)
    assert not (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


# --- augmentation -----------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_without_padding_only_flips():
    """pad=0: each output is its image or the image flipped left-right, and both occur."""
    images = torch.randn(64, 3, 8, 8)
    out = augment(images, pad=0, generator=generator(0))
    assert out.shape == images.shape
    same = torch.tensor([torch.equal(o, x) for o, x in zip(out, images)])
    flipped = torch.tensor([torch.equal(o, x.flip(-1)) for o, x in zip(out, images)])
    assert (same | flipped).all()
    assert same.any() and flipped.any()


def test_augment_pads_with_zeros_and_crops_at_most_pad_pixels_away():
    """pad=4 on an all-ones batch: shape kept, pixels only 0 (padding) or 1, at least a 28x28 block of ones."""
    images = torch.ones(32, 3, 32, 32)
    out = augment(images, pad=4, generator=generator(0))
    assert out.shape == images.shape
    assert ((out == 0) | (out == 1)).all()
    ones_per_image = out[:, 0].sum(dim=(1, 2))
    assert (ones_per_image >= 28 * 28).all()
    assert (ones_per_image < 32 * 32).any()  # some crops were shifted into the padding
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # one crop for all channels


def test_augment_output_is_a_shifted_and_possibly_flipped_crop():
    """Each output equals some 32x32 window of the zero-padded image, flipped or not."""
    images = torch.randn(8, 3, 32, 32)
    out = augment(images, pad=4, generator=generator(1))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for o, p in zip(out, padded):
        windows = [p[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(o, w) or torch.equal(o, w.flip(-1)) for w in windows)


def test_augment_is_reproducible_by_seed():
    """The same generator seed gives identical batches, a different seed a different one."""
    images = torch.randn(16, 3, 32, 32)
    a = augment(images, pad=4, generator=generator(7))
    b = augment(images, pad=4, generator=generator(7))
    c = augment(images, pad=4, generator=generator(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- batch sampler ------------------------------------------------------------------------------


def test_batch_sampler_epoch_is_a_disjoint_cover_without_the_remainder():
    """One epoch: num_examples // batch_size disjoint batches over all but the remainder's indices."""
    sampler = BatchSampler(103, 10, generator(0))
    assert sampler.batches_per_epoch == 10
    epoch = [sampler.next() for _ in range(10)]
    assert all(b.shape == (10,) and b.dtype == torch.int64 for b in epoch)
    indices = torch.cat(epoch)
    assert len(set(indices.tolist())) == 100
    assert indices.min() >= 0 and indices.max() < 103


def test_batch_sampler_reshuffles_every_epoch():
    """The next epoch is a new permutation, again a disjoint cover."""
    sampler = BatchSampler(100, 10, generator(0))
    first = torch.cat([sampler.next() for _ in range(10)])
    second = torch.cat([sampler.next() for _ in range(10)])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(100))
    assert not torch.equal(first, second)


def test_batch_sampler_is_reproducible_by_seed():
    """Equal seeds give equal batches."""
    a, b = BatchSampler(50, 5, generator(3)), BatchSampler(50, 5, generator(3))
    for _ in range(15):
        assert torch.equal(a.next(), b.next())


def test_batch_sampler_refuses_batches_larger_than_the_data():
    """batch_size > num_examples is a DataError; batch_size == num_examples is one batch per epoch."""
    with pytest.raises(DataError, match="batch_size=11"):
        BatchSampler(10, 11, generator(0))
    sampler = BatchSampler(10, 10, generator(0))
    assert sorted(sampler.next().tolist()) == list(range(10))


# --- the starting project's experiment ----------------------------------------------------------------------


def test_the_starting_projects_experiment_composes_to_its_recipe():
    """+experiment=seed_resnet18_fmnist: ResNet-18 with option B, Fashion-MNIST at 96x96 in [0, 1],
    unaugmented, Adam lr 1e-3, batch 256, 5 epochs of 234 iterations, the whole test set every epoch."""
    cfg = compose_config("+experiment=seed_resnet18_fmnist")
    check_values(cfg)
    assert (cfg.depth, cfg.residual, cfg.shortcut, cfg.activation) == (18, True, "projection", "post")
    assert cfg.dataset.name == "fashion_mnist" and cfg.dataset.resize == 96 and cfg.dataset.normalize == "none"
    assert not cfg.dataset.augment and cfg.dataset.validation_size is None
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 0
    schedule = cfg.schedule
    epoch = 60000 // 256
    assert schedule.batch_size == 256 and schedule.iterations == 5 * epoch == 1170
    assert list(schedule.lr_drops) == [] and schedule.warmup_lr is None
    assert schedule.eval_every == epoch and schedule.eval_subset is None
    assert schedule.checkpoint_every == epoch and epoch % schedule.log_every == 0
    assert cfg.tracking.experiment == "seed_resnet18_fmnist"
