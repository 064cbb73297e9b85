"""On a shared CPU (issue 14): torch's OpenMP threads spin briefly before they sleep, set before
torch loads, recorded on every run, and without any effect on the numbers."""

import os
import subprocess
import sys

import pytest

from harness import OPENMP_SPIN_COUNT, OPENMP_WAIT_VARIABLES

from helpers import REPO


def python(code: str, **env: str) -> str:
    clean = {key: value for key, value in os.environ.items() if key not in OPENMP_WAIT_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.parametrize(
    "first_import, env, expected",
    [
        ("import harness", {}, f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}"),
        ("import harness", {"GOMP_SPINCOUNT": "300000"}, "GOMP_SPINCOUNT=300000"),  # the user's own wins
        ("import harness", {"OMP_WAIT_POLICY": "PASSIVE"}, "OMP_WAIT_POLICY=PASSIVE"),  # ... and is not overridden
        ("import torch, harness", {}, "unknown: torch was loaded before the harness"),
    ],
)
def test_the_openmp_wait_is_set_before_torch_loads_and_said_as_it_is(first_import, env, expected):
    assert python(f"{first_import}; print(harness.OPENMP_WAIT)", **env) == expected


def test_the_harness_spin_changes_no_number():
    """Two threads training the same net with the harness's own spin (set by `import harness`)
    and with libgomp's default: the same parameters, bit for bit."""
    code = """
import harness  # first: it sets the spin before torch loads libgomp
import hashlib, torch, torch.nn.functional as F
from harness.models.resnet import build_model
torch.set_num_threads(2)
torch.manual_seed(0)
model = build_model(8, in_channels=1).to(memory_format=torch.channels_last)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for _ in range(3):
    images, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
print(harness.OPENMP_WAIT)
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""
    harness_wait, harness_sum = python(code).splitlines()
    libgomp_wait, libgomp_sum = python(code, GOMP_SPINCOUNT="300000").splitlines()
    assert (harness_wait, libgomp_wait) == (f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}", "GOMP_SPINCOUNT=300000")
    assert harness_sum == libgomp_sum


@pytest.mark.slow
def test_bench_contention_measures_alone_and_beside_one_and_three_copies():
    result = subprocess.run(
        [sys.executable, "-m", "harness.bench", "--contention", "--steps", "3", "--compare", "GOMP_SPINCOUNT=300000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    rows = {line.split("  ")[0].strip(): line.split()[-8:] for line in lines if line.startswith("GOMP_SPINCOUNT=")}
    assert set(rows) == {f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT} (harness)", "GOMP_SPINCOUNT=300000"}
    assert rows[f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT} (harness)"][2] == "1.000"  # the first setting against itself
    for alone, _range, _versus_first, _interval, beside_one, ratio_one, beside_three, ratio_three in rows.values():
        assert float(beside_one) / float(alone) == pytest.approx(float(ratio_one.rstrip("x")), rel=0.01)
        assert float(beside_three) / float(alone) == pytest.approx(float(ratio_three.rstrip("x")), rel=0.01)
    assert "fair share" in lines[-1] and "2x" in lines[-1] and "4x" in lines[-1]
