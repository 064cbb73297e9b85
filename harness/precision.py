"""What `precision=auto` means on this machine: bf16 only where it measures clearly faster.

A CPU's flags do not tell. bf16 ran 1.3-1.9x fp32 on an AMD EPYC with AVX512-BF16, and 0.84-0.91x
on an Intel Xeon that lists `avx512_bf16` but has no AMX (docs/performance.md, "Precision"). So
the first `auto` on a machine (as `harness.device.device_name` names it) times a few training steps
of ResNet-20 at fp32 and at bf16, alternated in one process, and keeps the decision with both
timings in a small cache file. Every later resolution on that machine reads it: a relaunch, each
job of a sweep and the planner resolve `auto` alike, and a study never changes precision halfway.
To measure again, delete the machine's entry (or the file): `python -m harness.precision --again`.

On CUDA `auto` is the well-known answer, not a measurement: bf16 where torch says the GPU runs it
(Ampere and later, whose tensor cores run bf16 at twice TF32's rate and eight times plain fp32's).
"""

import argparse
import datetime
import functools
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from harness.device import device_name, device_type

# bf16 must save at least a tenth of a step. Alternated timings on a quiet 2-core machine differ by
# about 5% from one measurement to the next, and below a tenth bf16's coarser rounding and runs
# that do not pair with fp32 runs of the same nets buy too little.
BF16_MIN_SPEEDUP = 1.10
WARMUP_STEPS = 2  # per precision: oneDNN picks and caches its kernels on a shape's first steps
ROUNDS = 3  # of STEPS_A_ROUND steps at each precision in turn, so a change of load hits both
STEPS_A_ROUND = 2
# Other work on the machine while measuring: above this many busy cores the timings say so.
BUSY_CORES = 0.5


@dataclass(frozen=True)
class Decision:
    machine: str
    precision: str  # fp32 or bf16
    fp32_ms: float | None  # a ResNet-20 training step at each precision; None where not measured (CUDA)
    bf16_ms: float | None
    busy_cores: float = 0.0  # cores busy with other processes while it was measured
    measured: str = ""  # when (UTC)

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


def cache_file() -> Path:
    """precision.json in $HARNESS_CACHE_DIR, by default the user's cache folder (~/.cache/harness)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness"
    return Path(os.environ.get("HARNESS_CACHE_DIR") or default) / "precision.json"


def busy_cores() -> tuple[float, float]:
    """(all cores' busy seconds, this process's CPU seconds) so far: their differences over an
    interval tell how much other processes worked in it."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.process_time()


def others_busy(before: tuple[float, float], seconds: float) -> float:
    """Cores that other processes kept busy since `before`, on average over `seconds`."""
    after = busy_cores()
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / seconds if seconds > 0 else 0.0


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


def measure_step_ms(kind: str) -> tuple[float, float, float]:
    """(fp32 ms, bf16 ms, other processes' busy cores) of a ResNet-20 training step (forward,
    backward, SGD step; batch 64 of Fashion-MNIST's shape, channels_last) on a device of this
    type with the current threads: the median of alternated rounds, after warm-up."""
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
    before, start = busy_cores(), time.perf_counter()
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
def auto_decision(kind: str, measure=measure_step_ms) -> Decision:
    """The decision for a device of this type here: the cache file's for this machine, else
    measured now, kept and said once."""
    import torch

    machine = device_name(torch.device(kind))
    if kind == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return Decision(machine, "bf16" if supported else "fp32", None, None)
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):  # two launches at once measure once, and not beside each other
            if machine in (kept := read_cache()):
                return Decision(**kept[machine])
            decision = choose(machine, *measure(kind))
            write_cache(kept | {machine: asdict(decision)})
    except OSError as error:  # a read-only home, say: this process decides alone, and says so
        decision = choose(machine, *measure(kind))
        print(
            f"{decision.line()} (measured, but not kept: {path}: {error}; set HARNESS_CACHE_DIR to a writable "
            "folder, or every launch measures again and a study may change precision halfway)"
        )
        return decision
    print(f"{decision.line()} (measured once for this machine, kept in {path})")
    return decision


def resolve_precision(precision: str, device: str) -> str:
    """fp32 or bf16: `precision` with auto resolved for the `device` value."""
    if precision != "auto":
        return precision
    return auto_decision(device_type(device)).precision


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--again", action="store_true", help="forget this machine's decision and measure again")
    args = parser.parse_args()
    kind = device_type(args.device)
    if args.again:
        import torch

        forget(device_name(torch.device(kind)))
    decision = auto_decision(kind)
    print(
        f"{decision.line()}; kept in {cache_file()} since {decision.measured}" if decision.measured else decision.line()
    )


if __name__ == "__main__":
    main()
