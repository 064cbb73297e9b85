"""How much memory a job needs, and how many of a launch's jobs fit in this machine at once.

A job's need is its process's peak resident set on CPU (the interpreter and torch, the data set,
the net and its optimizer, and a training step's activations, held for the backward pass: most
of it for a deep net), or on CUDA the tensors' peak on the device. The planner measures it over
the few training steps of its calibration (`Peak`), or takes it from the store's finished runs of
the net (their `peak_rss_mb`); a launch starts together only as many jobs as fit in the memory
available now (/proc/meminfo's MemAvailable, or the device's free memory): `jobs_that_fit`.
"""

import ctypes
import gc
import math
import resource
from pathlib import Path

GIB = 2**30
STATUS = Path("/proc/self/status")


def gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB" if math.isfinite(size) else "unknown"


def available(device) -> float:
    """Bytes a new job may take now: MemAvailable (what the kernel can give without swapping),
    or on CUDA the device's free memory; NaN where neither says."""
    if device.type == "cuda":
        import torch

        return float(torch.cuda.mem_get_info(device)[0])
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return float(fields["MemAvailable"].split()[0]) * 1024  # kB
    except (OSError, KeyError, ValueError):
        return math.nan


def _status(field: str) -> float:
    """A size from /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return float(line.split()[1]) * 1024  # kB
    raise OSError(f"{STATUS} has no {field}")


def _reset_cpu_peak() -> float:
    """The process's resident set now, with the kernel's peak (VmHWM) reset to it, after the
    allocator has given back what is freed: glibc keeps freed blocks, which a step would reuse
    and so hide its growth. Where the peak cannot be reset (not Linux), ru_maxrss is the
    process's peak since it started: never less than the step's, but perhaps more."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux 4.0+: VmHWM := VmRSS
        return _status("VmRSS")
    except OSError:
        return 0.0


def _cpu_peak() -> float:
    try:
        return _status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux reports KiB


class Peak:
    """The peak memory of what runs inside it: `peak` the process's resident set (CPU) or the
    tensors on the device (CUDA), and `growth` its rise over the start. A job's need is `peak`:
    the process that measures holds what a job holds besides (torch, a net, an optimizer)."""

    def __init__(self, device):
        self.device = device
        self.start = self.peak = math.nan

    @property
    def growth(self) -> float:
        return self.peak - self.start

    def __enter__(self) -> "Peak":
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = float(torch.cuda.memory_allocated(self.device))
        else:
            self.start = _reset_cpu_peak()
        return self

    def __exit__(self, *exception) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            self.peak = float(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = _cpu_peak()


def jobs_that_fit(needs: list[float], at_once: int, free: float) -> int:
    """How many of these jobs may run at once, at most `at_once`: the most whose largest needs,
    together, fit in `free` bytes (jobs run in any order, so the largest may meet); 0 where even
    the largest alone does not fit. Needs that are unknown (NaN) are not counted."""
    known = sorted((need for need in needs if math.isfinite(need)), reverse=True)
    if not known or not math.isfinite(free):
        return at_once
    return next((k for k in range(at_once, 0, -1) if sum(known[:k]) <= free), 0)
