"""How many torch threads a job takes here: its launcher's share of the cores (how many jobs each
of Hydra's launchers runs at once), and no more cores than other work leaves free.

On these 2-core machines a job gains little from its second thread and loses much when the
cores are oversubscribed: two default jobs of 2 threads each took 1.6x (fp32) and 8.1x (bf16)
their time alone, where one thread each took 1.06-1.08x (docs/performance.md, "Threads"). So
unless `threads` or `cores` says otherwise, a launch looks at the load once, as it starts, and
its jobs take the cores that are free, at least one. Once: 1 and 2 threads do not give the same
numbers (a reduction split in two adds in another order), so a run keeps the threads it started
with and records them (the tag `threads`).
"""

import functools
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig

log = logging.getLogger(__name__)

# The process of the sweep that started this job: HOST:BOOT:PID:START. Launchers that start jobs
# on this machine (joblib's loky workers, submitit_local's processes) pass the environment on.
SWEEP_PROCESS_ENV = "HARNESS_SWEEP_PROCESS"
# Other processes' work, in cores, above which a core counts as taken (and a timing as measured
# beside other work): a shell, a tracking server or an editor stay below it.
BUSY_CORES = 0.5
LOAD_SAMPLE_SECONDS = 0.25
# How long a launch's claim on the cores counts: from its look at the load until its jobs train,
# after which the load itself shows them. Two launches at one moment would each see the other idle.
CLAIM_SECONDS = 60.0


def cache_dir() -> Path:
    """$HARNESS_CACHE_DIR, by default the user's cache folder (~/.cache/harness)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness"
    return Path(os.environ.get("HARNESS_CACHE_DIR") or default)


def cpu_seconds() -> tuple[float, float]:
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
    after = cpu_seconds()
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / seconds if seconds > 0 else 0.0


def sample_load(seconds: float = LOAD_SAMPLE_SECONDS) -> float:
    """Cores that other processes keep busy now, over a short look."""
    before = cpu_seconds()
    time.sleep(seconds)
    return others_busy(before, seconds)


@functools.cache
def load_at_launch() -> float:
    """The cores busy with other work, seen once by this process, the first time it asked: every
    job it starts and the planner read the same look, so that a launch decides its threads once.
    Busy are the cores the load shows and those that other launches on this machine claimed in the
    last CLAIM_SECONDS (`claims.json` in the cache folder, under a lock): launches begun together
    take turns, not both cores each."""
    path = cache_dir() / "claims.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):
            now, mine = time.time(), os.getpid()
            claims = [claim for claim in _read_claims(path) if _counts(claim, now, mine)]
            busy = max(sample_load(), sum(claim["cores"] for claim in claims))
            cores = len(os.sched_getaffinity(0))
            claims.append({"pid": mine, "cores": free_cores(cores, busy), "time": now})
            path.write_text(json.dumps(claims))
            return busy
    except OSError:  # a cache folder that cannot be written: the load alone
        return sample_load()


def _read_claims(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def _counts(claim: dict, now: float, mine: int) -> bool:
    """A claim of another live process of this launch's kind, young enough that its jobs may not
    train yet; never that of the sweep that started this job (its jobs' shares are its claim)."""
    sweep = os.environ.get(SWEEP_PROCESS_ENV, "").split(":")[2:3]
    return (
        now - claim["time"] < CLAIM_SECONDS
        and claim["pid"] != mine
        and [str(claim["pid"])] != sweep
        and Path(f"/proc/{claim['pid']}").exists()
    )


def started_by_a_sweep() -> bool:
    """A job that a sweep's launcher started in another process: the launch's decisions were made
    at its edge, in the sweep's process, and this job reads them."""
    value = os.environ.get(SWEEP_PROCESS_ENV, "")
    return bool(value) and value.split(":")[2:3] != [str(os.getpid())]


def free_cores(cores: int, busy: float) -> int:
    """The cores that `busy` cores of other work leave free (rounded: 0.4 busy cores take none, 0.6
    one), at least one."""
    return max(1, cores - int(busy + 0.5))


def jobs_at_once(launcher: Mapping | None, cores: int) -> int | None:
    """How many jobs of a sweep run at once: 1 for the basic launcher, joblib's n_jobs on this
    machine; None where a cluster (Ray, SLURM) schedules them."""
    if launcher is None or "n_jobs" not in launcher and not {"ray", "cpus_per_task"} & set(launcher):
        return 1
    if "n_jobs" in launcher:  # -1 means one per core, -2 all but one...
        return max(1, launcher.n_jobs if launcher.n_jobs > 0 else cores + 1 + launcher.n_jobs)
    return None


def cpus_per_job(launcher: Mapping | None, cores: int) -> int:
    """The cores each job of a sweep may use, as its Hydra launcher schedules jobs."""
    if launcher is None:  # not launched by Hydra: alone on the machine
        return cores
    if "n_jobs" in launcher:  # joblib: n_jobs at once on this machine
        return cores // jobs_at_once(launcher, cores)
    if "ray" in launcher:  # Ray runs as many tasks on a node as their num_cpus (default 1) allow
        return launcher.ray.remote.get("num_cpus") or 1
    if "cpus_per_task" in launcher:  # submitit: SLURM's allocation (1 CPU unless asked), or local processes
        return launcher.cpus_per_task or 1
    return cores  # the basic launcher runs one job at a time


def torch_threads(cfg: Mapping, launcher: Mapping | None = None, load=load_at_launch) -> int:
    """`threads` if set; else the job's share of the cores (jobs at once x threads <= cores) and,
    where `cores` is not set either, no more than the cores other work leaves free. The launcher
    is this job's (Hydra's), unless given."""
    if cfg["threads"]:
        return cfg["threads"]
    cores = cfg["cores"] or len(os.sched_getaffinity(0))
    if launcher is None and HydraConfig.initialized():
        launcher = HydraConfig.get().launcher
    share = max(1, min(cores, cpus_per_job(launcher, cores)))
    if cfg["cores"]:
        return share
    return min(share, free_cores(cores, load()))


def why_fewer(cfg: Mapping, threads: int, launcher: Mapping | None = None) -> str | None:
    """What a job says when the load left it fewer threads than its share, or none."""
    share = torch_threads(cfg, launcher, load=lambda: 0.0)
    if threads >= share:
        return None
    busy, cores = load_at_launch(), len(os.sched_getaffinity(0))
    shared = "; no core was free, so it shares one" if busy > cores - BUSY_CORES else ""
    return (
        f"threads={threads}, not its share of {share}: other work kept {busy:.1f} of {cores} cores busy as the launch "
        f"began{shared} (threads=N or cores=N sets them)"
    )
