"""`python -m harness.run [-m] key=value ...`: train one net per config, one MLflow run each.

    python -m harness.run -m depth=20,56 residual=true,false
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness import config
from harness.data import DataError, load_data
from harness.launchers import cpus_per_job
from harness.models import build_model, model_name, resolve_family
from harness.tracking.mlflow_store import (
    FINGERPRINT_TAG,
    RECIPE_TAG,
    ROLE_TAG,
    MlflowRun,
    StoreError,
    connect,
    find_run,
    flatten,
    sqlite_folder,
    supersede,
)
from harness.train import DivergedError, Result, train

log = logging.getLogger(__name__)
SMALLEST_IMAGENET_INPUT = 64  # pixels; below it the ImageNet stem leaves stage 4 almost nothing
REPO = Path(__file__).resolve().parents[1]

config.register()


def fail(message: str, code: int = 2) -> None:
    """A user error: one paragraph on stderr and a non-zero exit, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise config.ConfigError(f"device={name} was asked for, but torch sees no CUDA device here; use device=auto or cpu.")
    return torch.device(name)


def torch_threads(cfg: DictConfig) -> int:
    """`threads` if set, else the job's share of the cores: jobs at once x threads <= cores."""
    if cfg.threads:
        return cfg.threads
    cores = cfg.cores or len(os.sched_getaffinity(0))
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else None
    return max(1, min(cores, cpus_per_job(launcher, cores)))


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_tags(cfg: DictConfig, device: torch.device) -> dict:
    """What the MLflow UI should let a user filter and group by: the net as it was built."""
    trained, _ = config.effective_config(cfg)
    return {
        ROLE_TAG: "job",
        "model": model_name(cfg.depth, cfg.residual, trained["shortcut"], cfg.activation),
        "family": trained["family"],
        "depth": cfg.depth,
        "residual": cfg.residual,
        "shortcut": trained["shortcut"],
        "activation": cfg.activation,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        RECIPE_TAG: config.recipe(cfg),
    }


def train_and_log(cfg: DictConfig, run: MlflowRun, device: torch.device, resumed: bool) -> Result:
    if not resumed:  # a resumed run has its params already, and MLflow never changes a param
        resolved = OmegaConf.to_container(cfg, resolve=True)
        trained, _ = config.effective_config(cfg)
        run.log_params(flatten({**trained, "device": device.type, "threads": torch.get_num_threads()}))
        run.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        run.log_text(OmegaConf.to_yaml(overrides), "overrides.yaml")

    root = config.launch_dir() / cfg.dataset.root
    data = load_data(cfg.dataset.name, root, cfg.dataset.download, cfg.dataset.validation_size, device,
                     resize=cfg.dataset.resize, normalize=cfg.dataset.normalize)  # fmt: skip
    family = resolve_family(cfg.depth, cfg.family)
    if family == "imagenet" and data.image_size < SMALLEST_IMAGENET_INPUT:
        # The 7x7/2 stem and max pool shrink a 28-pixel image to 7, and stage 4 convolves 1x1 maps.
        log.warning("%s: an ImageNet-style net on %dx%d inputs (under %d pixels): its last stage sees 1x1 maps; "
                    "dataset.resize=96 gives the seed's setting", run.name, data.image_size, data.image_size,
                    SMALLEST_IMAGENET_INPUT)  # fmt: skip
        run.set_tags({"harness.small_input": data.image_size})
    model = build_model(
        cfg.depth, cfg.residual, cfg.shortcut, cfg.activation, data.in_channels, data.num_classes, cfg.family
    ).to(device, memory_format=torch.channels_last)
    result = train(cfg, model, data, run, device)

    run.log_json({"run": run.name, **vars(result)}, "summary.json")
    if cfg.tracking.log_model:
        run.log_torch_state(model.state_dict(), "model.pt")
    return result


def checkpoint_dir(cfg: DictConfig) -> Path | None:
    """Checkpoints go beside a SQLite store, else into ./checkpoints, unless configured."""
    if not cfg.schedule.checkpoint_every:
        return None
    if cfg.tracking.checkpoint_dir:
        return config.launch_dir() / cfg.tracking.checkpoint_dir
    store_folder = sqlite_folder(cfg.tracking.uri)
    return store_folder / "checkpoints" if store_folder else config.launch_dir() / "checkpoints"


def open_run(cfg: DictConfig, client, experiment_id: str, device: torch.device, parent: str | None) -> tuple[MlflowRun | None, bool]:
    """(run, resumed): the run that trains this config. None when the config already has a
    FINISHED run (unless rerun=true); the same run again when it stopped after a checkpoint; a
    new run otherwise, which replaces an earlier failed one in its sweep."""
    name = run_tags(cfg, device)["model"]
    config_fingerprint = config.fingerprint(cfg)
    previous = None if cfg.rerun else find_run(client, experiment_id, config_fingerprint)
    folder = checkpoint_dir(cfg)
    if previous is not None and previous.info.status == "FINISHED":
        print(f"skip {name}: already FINISHED as MLflow run {previous.info.run_id} (rerun=true trains it again)")
        return None, False
    if previous is not None and previous.info.status in ("RUNNING", "KILLED"):
        stopped = MlflowRun(client, previous.info.run_id, name, folder)
        if stopped.has_checkpoint():
            print(f"resume {name}: MLflow run {previous.info.run_id} from its last checkpoint")
            stopped.reopen()
            return stopped, True
    tags = {**run_tags(cfg, device), FINGERPRINT_TAG: config_fingerprint}
    run = MlflowRun.start(client, experiment_id, name, tags, parent_run_id=parent, checkpoint_dir=folder)
    if previous is not None:
        supersede(client, previous, run.run_id)
    return run, False


def run_job(cfg: DictConfig) -> float | None:
    """Check the config, then train and track one net; returns its final test error. Inside a
    sweep a failed run is recorded and None returned, so that the other jobs go on; alone, the
    error ends the command."""
    try:
        config.check_values(cfg)
        device = pick_device(cfg.device)
        client, experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment)
    except (config.ConfigError, StoreError) as error:
        fail(str(error))

    # Bit-for-bit repeatable runs on the CPU need deterministic kernels as well as seeds.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(torch_threads(cfg))

    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if HydraConfig.initialized() and not in_sweep:  # a sweep's callback says these once for all its jobs
        for note in config.unused_notes(cfg, list(HydraConfig.get().overrides.task)):
            print(note)
    run, resumed = open_run(cfg, client, experiment_id, device, cfg.tracking.parent_run_id)
    if run is None:
        return None
    log.info("%s: MLflow run %s in %s", run.name, run.run_id, cfg.tracking.uri)
    try:
        result = train_and_log(cfg, run, device, resumed)
    except KeyboardInterrupt as error:
        run.finish("KILLED", error)
        raise
    except Exception as error:
        if isinstance(error, DivergedError):
            run.set_tags({"harness.diverged_at": error.step})
        run.finish("FAILED", error)
        if in_sweep:
            log.error("%s failed: %s: %s", run.name, type(error).__name__, error)
            return None
        if isinstance(error, (DataError, DivergedError)):
            fail(f"{run.name}: {error}", code=1)
        raise
    run.finish("FINISHED")
    log.info("%s: final training error %.2f%%, %s error %.2f%% in %.0f s", run.name, 100 * result.final_train_error,
             result.eval_split, 100 * result.eval_error, result.seconds)  # fmt: skip
    return result.eval_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    main()
