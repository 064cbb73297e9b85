"""What the harness knows about Hydra's launcher plugins: how many cores each job of a
launcher may use, and the one adapter that hydra-ray-launcher needs with Ray 2."""

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write


def cpus_per_job(launcher: DictConfig | None, cores: int) -> int:
    """The cores each job of a sweep may use, as its Hydra launcher schedules jobs."""
    if launcher is None:  # not launched by Hydra: alone on the machine
        return cores
    if "n_jobs" in launcher:  # joblib: n_jobs at once on this machine; -1 means one per core, -2 all but one...
        at_once = launcher.n_jobs if launcher.n_jobs > 0 else cores + 1 + launcher.n_jobs
        return cores // max(1, at_once)
    if "ray" in launcher:  # Ray runs as many tasks on a node as their num_cpus (default 1) allow
        return launcher.ray.remote.get("num_cpus") or 1
    if "cpus_per_task" in launcher:  # submitit: SLURM's allocation (1 CPU unless asked), or local processes
        return launcher.cpus_per_task or 1
    return cores  # the basic launcher runs one job at a time


class RayObjectStore(Callback):
    """hydra-ray-launcher 1.2 passes ray.init a 78 MB object store, which Ray 2 refuses when it
    joins a running cluster ("object_store_memory must not be provided"), the launcher's main
    use. Unless the user set a size, Ray chooses one. Hydra creates the launcher from the config
    after this callback has run."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        init = config.hydra.launcher.get("ray", {}).get("init")
        if init is not None and "object_store_memory" not in init:
            with read_write(config.hydra), open_dict(init):
                init.object_store_memory = None
