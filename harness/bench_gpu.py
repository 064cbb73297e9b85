"""`python -m harness.bench --gpu`: the paper's recipe on one GPU, meant to fit in 8 minutes of
device time (a lent GPU comes for about 15 minutes, start-up included; not yet run on one).

On CIFAR-shaped data (3x32x32 uint8 images in device memory, random: no download; the loop
does not care what the pixels are) and P1's recipe (batch 128, SGD, augmentation on the
device), through the harness's own loop (`harness.train.train`, evaluations and probes off):
  1. iterations per second of ResNet-20, -56 and -110, one run alone, for the baseline
     (fp32, deterministic, eager) and each setting added one at a time, with peak GPU memory;
  2. the aggregate iterations per second of 1, 4 and 8 ResNet-20 runs at once, each its own
     process on the same device, as `hydra/launcher=joblib` runs them;
  3. from those, the estimated wall time of P1's Table 6 with 5 seeds (depths 20-110, plain and
     residual, 64k iterations each: 50 runs).
Every line is printed as it is measured, so that a device taken back early leaves what it had.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness import edge
from harness.config import compose_config
from harness.data.memory import random_data
from harness.device import deterministic_kernels
from harness.identity import resolve
from harness.models.resnet import build_for
from harness.train import train_job

WARMUP = 60  # iterations before timing: compilation, CUDA graphs' capture, cuDNN's choice
LOG_EVERY = 20
TABLE6_DEPTHS = (20, 32, 44, 56, 110)
TABLE6_SEEDS, PAPER_ITERATIONS = 5, 64000
# One change at a time on the way from the CPU path to the fastest: (name, overrides).
SETTINGS = [
    ("baseline: fp32, deterministic, eager", ["precision=fp32"]),
    ("+ bf16", ["precision=bf16"]),
    ("+ deterministic=false", ["precision=bf16", "deterministic=false"]),
    ("+ compile=true", ["precision=bf16", "deterministic=false", "compile=true"]),
    ("+ compile=reduce-overhead (CUDA graphs)", ["precision=bf16", "deterministic=false", "compile=reduce-overhead"]),
]
TARGETS = {56: 400, 110: 200}  # issue 21: iterations per second of one run


class Stop(Exception):
    pass


class RateTracker:
    """Times the loop between its logging points (each one reads the loss back, so the device
    has caught up): iterations per second from the first point past the warm-up on; stops the
    loop once `seconds` have been timed."""

    name = "bench"

    def __init__(self, seconds: float, barrier: Path | None = None, copies: int = 1):
        self.seconds = seconds
        self.barrier, self.copies = barrier, copies  # runs at once start timing together
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def log_metrics(self, metrics: dict, step: int) -> None:
        if "train_loss" not in metrics or step < WARMUP:
            return
        if self.first is None and self.barrier is not None:
            (self.barrier / str(os.getpid())).touch()
            while len(list(self.barrier.iterdir())) < self.copies:
                time.sleep(0.05)
        now = time.perf_counter()
        self.last = (step, now)
        if self.first is None:
            self.first = self.last
        elif now - self.first[1] >= self.seconds:
            raise Stop

    def rate(self) -> float:
        (step_a, time_a), (step_b, time_b) = self.first, self.last
        return (step_b - step_a) / (time_b - time_a)

    def __getattr__(self, name: str):  # log_table, checkpoint, restore, ...: nothing to keep
        return lambda *args, **kwargs: None


def measure(
    depth: int, overrides: list[str], seconds: float, device: torch.device, tracker: RateTracker | None = None
) -> tuple[float, float]:
    """(iterations per second, peak GPU memory in MiB) of one run of the paper's recipe."""
    cfg = compose_config(
        "+experiment=paper_cifar10", f"depth={depth}", "analysis=false", f"schedule.log_every={LOG_EVERY}",
        "schedule.eval_every=1000000", "schedule.checkpoint_every=0", "schedule.final_train_subset=1000", *overrides,
    )  # fmt: skip
    deterministic_kernels(cfg.deterministic)
    torch.manual_seed(0)
    job = resolve(cfg, edge.decide(cfg))
    model = build_for(job, 3, 10).to(device, memory_format=torch.channels_last)
    tracker = tracker or RateTracker(seconds)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        train_job(job, model, random_data("cifar10", 50000, device), tracker, device)
    except Stop:
        pass
    return tracker.rate(), torch.cuda.max_memory_allocated(device) / 2**20


def worker(barrier: Path, copies: int, depth: int, seconds: float, overrides: list[str]) -> None:
    """One of several runs at once: times its loop once all are warm, and prints its rate."""
    rate, memory = measure(depth, overrides, seconds, torch.device("cuda"), RateTracker(seconds, barrier, copies))
    print(f"{rate:.2f} {memory:.0f}", flush=True)


def at_once(copies: int, depth: int, overrides: list[str], seconds: float) -> list[float]:
    """The rates of `copies` runs at once, each a process with its share of the cores."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // copies))}
    with tempfile.TemporaryDirectory() as barrier:
        command = [sys.executable, "-m", "harness.bench", "--gpu-worker", barrier, str(copies), str(depth),
                   str(seconds), *overrides]  # fmt: skip
        processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
        return [float(process.communicate()[0].split()[0]) for process in processes]


def main(seconds: float = 8.0) -> None:
    if not torch.cuda.is_available():
        print("harness.bench --gpu: no CUDA device here; it measures on a GPU only (docs/performance.md, 'On a GPU').")
        return
    device = torch.device("cuda")
    start = time.perf_counter()
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; P1's recipe (batch 128), CIFAR-shaped data"
    )
    print(f"{'depth':>5}  {'setting':42} {'it/s':>8} {'x base':>7} {'peak MiB':>9}", flush=True)
    rates: dict[int, float] = {}
    best = SETTINGS[-1][1]
    for depth in (56, 20, 110):
        settings = SETTINGS if depth == 56 else [SETTINGS[0], SETTINGS[-1]]
        base = None
        for name, overrides in settings:
            rate, memory = measure(depth, overrides, seconds, device)
            base = base or rate
            rates[depth] = rate
            target = f"  (target >= {TARGETS[depth]})" if depth in TARGETS and overrides == best else ""
            print(f"{depth:5d}  {name:42} {rate:8.1f} {rate / base:7.2f} {memory:9.0f}{target}", flush=True)
    print(f"ResNet-20 runs at once, each its own process, {' '.join(best)}:")
    aggregate = {}
    for copies in (1, 4, 8):
        each = at_once(copies, 20, best, seconds)
        aggregate[copies] = sum(each)
        print(
            f"  {copies} at once: {aggregate[copies]:8.1f} it/s in all ({min(each):.1f}-{max(each):.1f} each), "
            f"{aggregate[copies] / aggregate[1]:.2f}x one run (target for 8: >= 4x)",
            flush=True,
        )

    # Table 6: 5 seeds of plain and residual nets at every depth; depths between 20 and 56 at
    # the rate a straight line through theirs gives (time per iteration grows with depth).
    def seconds_per_iteration(depth: int) -> float:
        if depth in rates:
            return 1 / rates[depth]
        fraction = (depth - 20) / (56 - 20)
        return (1 - fraction) / rates[20] + fraction / rates[56]

    runs = sum(2 * TABLE6_SEEDS * PAPER_ITERATIONS * seconds_per_iteration(depth) for depth in TABLE6_DEPTHS)
    gain = aggregate[8] / aggregate[1]
    print(
        f"P1 Table 6 with {TABLE6_SEEDS} seeds ({2 * TABLE6_SEEDS * len(TABLE6_DEPTHS)} runs of {PAPER_ITERATIONS} "
        f"iterations): {runs / 3600:.1f} h one run at a time; about {runs / gain / 3600:.1f} h 8 at a time, "
        f"if deeper nets gain from sharing as ResNet-20 does (target < 2 h). "
        f"Measured in {time.perf_counter() - start:.0f} s."
    )
