import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
# The in-process tests run tiny models, which intra-op threads only slow down, badly so when
# another process is using the cores.
torch.set_num_threads(1)
# A tiny budget: 20 iterations of 32 images, curves every 5 and evaluations every 10
# iterations, evaluated on 500 held-out training images instead of the 10k test images.
TINY = ["schedule=smoke", "dataset.validation_size=500"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One Fashion-MNIST copy for the whole session (unzipped from Debian's package)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def harness_command(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS` as a user would, in `cwd`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


