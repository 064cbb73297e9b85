"""The device a job trains on, its name, and the arithmetic it uses there. `device=auto` is CUDA
where torch sees it, else the CPU; what `precision=auto` means on it is measured
(`harness.precision`).

bf16 is `torch.autocast`: convolutions and linear layers (forward and backward) run in bf16;
the weights, the optimizer's state, the loss and BatchNorm's statistics stay fp32.
Torch is imported only where CUDA must be asked about.
"""

import contextlib
import functools
import os
from pathlib import Path

from harness.config import ConfigError

# Where oneDNN has bf16 arithmetic units: AMX-BF16 tiles or AVX-512 bf16 dot products. Part of a
# CPU's name (two "AMD EPYC" hosts differ by them), not a promise of speed: harness.precision measures.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (model name, flags, ...); none where it is missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, as Linux lists them."""
    return frozenset(cpu_info().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's family, model and stepping numbers: what tells apart two CPUs that a VM names
    alike ("AMD EPYC") and whose flags agree, where the model name does not."""
    info = cpu_info()
    numbers = [f"{key.split()[-1]} {info[key]}" for key in ("cpu family", "model", "stepping") if key in info]
    return " ".join(numbers) or "unknown model"


def device_name(device) -> str:
    """What a step's speed depends on beyond the device's type: the GPU's name, or the CPU's model
    with the vector instructions torch uses on it and its bf16 units (two hosts that Linux calls
    "AMD EPYC", one AVX2 and one AVX512 with bf16 units, differ twofold in fp32 and more in bf16)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    units = ", bf16 units" if cpu_flags() & set(CPU_BF16_FLAGS) else ""
    return f"{cpu_info().get('model name', 'unknown CPU')} ({torch.backends.cpu.get_cpu_capability()}{units})"


def device_type(name: str) -> str:
    """'cuda' or 'cpu' for a `device` value (auto: cuda where torch sees it)."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for, but torch sees no CUDA device here; use device=auto or cpu.")
    return torch.device(name)


def autocast(device, precision: str):
    """The context the forward pass and the loss run in: torch's autocast for bf16, else none."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16)


def deterministic_kernels(on: bool) -> None:
    """Bit-for-bit repeatable runs on one machine need deterministic kernels as well as seeds:
    cuBLAS with a fixed workspace, torch's deterministic algorithms, and no cuDNN autotuner (it
    picks kernels by timing them). Set before the first CUDA call for cuBLAS to see it."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.benchmark = not on
