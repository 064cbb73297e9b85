"""What this machine decides for a job, decided once where a launch begins and passed in.

A job's threads (its launcher's share of the cores, no more than other work leaves free:
harness.cores) and what `precision=auto` is here (measured once per CPU, torch and threads:
harness.precision) depend on the machine and the moment. `harness.run` decides them for a job
alone, the sweep's Study for every job of a sweep, before any trains; everything after reads the
`Decided` it is given, so resolving a job (harness.identity) is a pure function of its config
and these values, and a job that a launcher starts in another process takes the threads its
sweep decided (its overrides) and reads the precision its sweep measured (the cache).
"""

from collections.abc import Mapping
from dataclasses import dataclass

from harness.cores import torch_threads
from harness.device import device_type
from harness.precision import Decision, auto_decision


@dataclass(frozen=True)
class Decided:
    threads: int
    precision: str  # fp32 or bf16
    measured: Decision | None = None  # what decided precision=auto here; None where the config names it


def decide(cfg, launcher: Mapping | None = None, threads: int | None = None) -> Decided:
    """The job's threads under this launcher (Hydra's own where not given), unless the launch
    decided them already (`threads`), and its precision at those threads."""
    threads = threads or torch_threads(cfg, launcher)
    if cfg.precision != "auto":
        return Decided(threads, cfg.precision)
    measured = auto_decision(device_type(cfg.device), threads)
    return Decided(threads, measured.precision, measured)
