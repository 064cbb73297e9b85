"""What `precision=auto` means on this machine: bf16 only where it measures clearly faster.

A CPU's flags do not tell. bf16 ran 1.3-1.9x fp32 on an AMD EPYC with AVX512-BF16, and 0.84-0.91x
on an Intel Xeon that lists `avx512_bf16` but has no AMX (docs/performance.md, "Precision"). So
the first `auto` on a machine times a few training steps of ResNet-20 at fp32 and at bf16,
alternated in one process, with the threads the job will take (`harness.cores`), and keeps the
decision with both timings in a small cache file, keyed by what the ratio depends on: the CPU as
`harness.device.device_name` names it, torch's version and the threads. Every later resolution
there reads it: a relaunch, each job of a sweep and the planner resolve `auto` alike, and a study
never changes precision halfway. Beside other work the ratio says little (bf16 measured 0.21x
fp32 beside a busy process on a host where it runs 1.55x quiet): such a decision is provisional,
and the first launch that finds the machine quiet measures again. To measure again, delete the
machine's entry (or the file): `python -m harness.precision --again`.

On CUDA `auto` is the well-known answer, not a measurement: bf16 where torch says the GPU runs it
(Ampere and later, whose tensor cores run bf16 at twice TF32's rate and eight times plain fp32's).
"""

import argparse
import datetime
import functools
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from harness.cores import (
    BUSY_CORES,
    cache_dir,
    cpu_seconds,
    others_busy,
    sample_load,
    started_by_a_sweep,
    torch_threads,
)
from harness.device import cpu_model, device_name, device_type

# bf16 must save at least a tenth of a step. Alternated timings on a quiet 2-core machine differ by
# about 5% from one measurement to the next, and below a tenth bf16's coarser rounding and runs
# that do not pair with fp32 runs of the same nets buy too little.
BF16_MIN_SPEEDUP = 1.10
WARMUP_STEPS = 2  # per precision: oneDNN picks and caches its kernels on a shape's first steps
ROUNDS = 3  # of STEPS_A_ROUND steps at each precision in turn, so a change of load hits both
STEPS_A_ROUND = 2


@dataclass(frozen=True)
class Decision:
    machine: str  # what the timings depend on: the CPU or GPU, torch's version, the threads (`decision_key`)
    precision: str  # fp32 or bf16
    fp32_ms: float | None  # a ResNet-20 training step at each precision; None where not measured (CUDA)
    bf16_ms: float | None
    busy_cores: float = 0.0  # cores busy with other processes while it was measured
    measured: str = ""  # when (UTC)

    @property
    def provisional(self) -> bool:
        """Measured beside other work: what launches read while the machine stays busy, until a
        quiet one measures again."""
        return self.busy_cores > BUSY_CORES

    @property
    def speedup(self) -> float | None:
        return self.fp32_ms / self.bf16_ms if self.fp32_ms and self.bf16_ms else None

    def line(self) -> str:
        """How the decision reads: "bf16 0.87x fp32 here (...): auto = fp32"."""
        if self.speedup is None:
            return f"precision=auto is {self.precision} on {self.machine} (CUDA: bf16 where the GPU supports it)"
        load = (
            f"; measured beside other work ({self.busy_cores:.1f} cores busy)" if self.busy_cores > BUSY_CORES else ""
        )
        return (
            f"bf16 {self.speedup:.2f}x fp32 here ({self.fp32_ms:.0f} ms against {self.bf16_ms:.0f} ms "
            f"a ResNet-20 step, bf16 needs {BF16_MIN_SPEEDUP:.2f}x{load}): precision=auto is {self.precision}"
        )

    def tags(self) -> dict[str, str]:
        """What a run records of why `auto` was what it was."""
        tags = {"precision_auto": self.line()}
        if self.speedup is not None:
            tags |= {"precision_fp32_ms": f"{self.fp32_ms:.1f}", "precision_bf16_ms": f"{self.bf16_ms:.1f}"}
        return tags


def choose(machine: str, fp32_ms: float, bf16_ms: float, busy_cores: float = 0.0) -> Decision:
    precision = "bf16" if fp32_ms / bf16_ms >= BF16_MIN_SPEEDUP else "fp32"
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return Decision(machine, precision, fp32_ms, bf16_ms, busy_cores, when)


def decision_key(kind: str, threads: int) -> str:
    """The cache's key: the device as `device_name` names it (a CPU with its family, model and
    stepping too), torch's version and the threads, each of which changes the ratio (a home folder
    that nodes of several kinds share holds one entry each)."""
    import torch

    model = f" {cpu_model()}" if kind == "cpu" else ""
    return f"{device_name(torch.device(kind))}{model}, torch {torch.__version__}, {threads} thread(s)"


def cache_file() -> Path:
    """precision.json in the harness's cache folder."""
    return cache_dir() / "precision.json"


def step_seconds(model, optimizer, images, labels, precision: str) -> float:
    """The wall time of one training step: forward and loss under the precision, backward, SGD step."""
    import torch
    import torch.nn.functional as F

    from harness.device import autocast

    start = time.perf_counter()
    with autocast(images.device, precision):
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    return time.perf_counter() - start


def measure_step_ms(kind: str, threads: int) -> tuple[float, float, float]:
    """(fp32 ms, bf16 ms, other processes' busy cores) of a ResNet-20 training step (forward,
    backward, SGD step; batch 64 of Fashion-MNIST's shape, channels_last) on a device of this
    type with the job's threads: the median of alternated rounds, after warm-up."""
    import torch

    before_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _alternated_medians(kind)
    finally:
        torch.set_num_threads(before_threads)


def _alternated_medians(kind: str) -> tuple[float, float, float]:
    import torch

    from harness.models.resnet import build_model

    device = torch.device(kind)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(64, 1, 28, 28, generator=generator).to(device, memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (64,), generator=generator).to(device)
    model = build_model(20, in_channels=1).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(precision: str) -> float:
        return step_seconds(model, optimizer, images, labels, precision)

    for precision in ("fp32", "bf16"):
        for _ in range(WARMUP_STEPS):
            step(precision)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    before, start = cpu_seconds(), time.perf_counter()
    for _ in range(ROUNDS):
        for precision in times:
            times[precision] += [step(precision) for _ in range(STEPS_A_ROUND)]
    busy = others_busy(before, time.perf_counter() - start)
    return 1000 * statistics.median(times["fp32"]), 1000 * statistics.median(times["bf16"]), busy


def read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def write_cache(kept: dict) -> None:
    temporary = cache_file().with_suffix(".tmp")
    temporary.write_text(json.dumps(kept, indent=1))
    temporary.replace(cache_file())


def forget(machine: str) -> None:
    with FileLock(f"{cache_file()}.lock"):
        kept = read_cache()
        if kept.pop(machine, None) is not None:
            write_cache(kept)


@functools.cache
def auto_decision(kind: str, threads: int, measure=measure_step_ms, load=sample_load) -> Decision:
    """The decision for a device of this type and this many threads here: the cache file's, else
    measured now, kept and said once. One measured beside other work is kept as provisional: read
    while the machine is busy still (the jobs of the launch that measured it, beside each other),
    measured again by the first launch that finds the machine quiet, never by a sweep's job, which
    reads what its launch decided."""
    import torch

    if kind == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return Decision(device_name(torch.device(kind)), "bf16" if supported else "fp32", None, None)
    machine, path = decision_key(kind, threads), cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):  # two launches at once measure once, and not beside each other
            kept = read_cache()
            if machine in kept:
                decision = Decision(**kept[machine])
                if not decision.provisional or started_by_a_sweep() or load() > BUSY_CORES:
                    return decision
            decision = choose(machine, *measure(kind, threads))
            write_cache(kept | {machine: asdict(decision)})
    except OSError as error:  # a read-only home, say: this process decides alone, and says so
        decision = choose(machine, *measure(kind, threads))
        print(
            f"{decision.line()} (measured, but not kept: {path}: {error}; set HARNESS_CACHE_DIR to a writable "
            "folder, or every launch measures again and a study may change precision halfway)"
        )
        return decision
    kept_as = (
        "kept as provisional while the machine is busy: the next quiet launch measures again"
        if decision.provisional
        else "measured once for this machine"
    )
    print(f"{decision.line()} ({kept_as}, kept in {path})")
    return decision


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--again", action="store_true", help="forget this machine's decision and measure again")
    parser.add_argument("--threads", type=int, help="a job's threads (default: a lone job's here now)")
    args = parser.parse_args()
    kind = device_type(args.device)
    threads = args.threads or torch_threads({"threads": None, "cores": None})
    if args.again:
        forget(decision_key(kind, threads))
    decision = auto_decision(kind, threads)
    print(
        f"{decision.line()}; kept in {cache_file()} since {decision.measured}" if decision.measured else decision.line()
    )


if __name__ == "__main__":
    main()
