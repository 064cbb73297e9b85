"""`python -m harness.run [-m] key=value ...`: train one net per config, one MLflow run each.

    python -m harness.run -m depth=20,56 residual=true,false
"""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch
from mlflow.exceptions import MlflowException
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness import OPENMP_WAIT, config
from harness.data import DataError, load_data
from harness.launchers import INTERRUPT_HOOKS, SchedulerStop, cpus_per_job, orphaned, placement_tags, watch_sweep
from harness.models import build_model, model_name, resolve_family, resolve_shortcut
from harness.lease import HEARTBEAT_TAG, Heartbeat, Lease, LeaseLost, claim, heartbeat_of
from harness.tracking.mlflow_store import (
    FAILURE_TAG,
    FINGERPRINT_TAG,
    RECIPE_TAG,
    ROLE_TAG,
    CheckpointError,
    CorruptCheckpoint,
    MlflowRun,
    StoreError,
    connect,
    find_run,
    flatten,
    sqlite_folder,
    supersede,
)
from harness.train import DivergedError, Result, train
from harness.tracking.ui import RUN_COLOUR_TAG, run_colour, source_tags

log = logging.getLogger(__name__)
# Failures of the machine, not of the run: disk, tracking store, data. A run stopped by one
# resumes from its checkpoint when launched again; any other failure trains it anew.
ENVIRONMENT_ERRORS = (OSError, CheckpointError, StoreError, DataError, MlflowException)
SMALLEST_IMAGENET_INPUT = 64  # pixels; below it the ImageNet stem leaves stage 4 almost nothing
REPO = Path(__file__).resolve().parents[1]

config.register()


def fail(message: str, code: int = 2) -> None:
    """A user error: one paragraph on stderr and a non-zero exit, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def data_complete(name: str, root: Path) -> bool:
    """Whether `root` holds every file of the data set (then it may be read-only)."""
    from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST

    if name == "fashion_mnist":
        raw = root / "FashionMNIST" / "raw"
        return all((raw / Path(url).stem).exists() for url, _ in FashionMNIST.resources)
    source = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    return all((root / source.base_folder / file).exists() for file, _ in source.train_list + source.test_list)


def check_data_root(cfg: DictConfig) -> None:
    """dataset.root holds the data set, or is a folder the harness can create and fill: said
    before any run is stored (ConfigError)."""
    root = config.launch_dir() / cfg.dataset.root
    name = cfg.dataset.name
    if data_complete(name, root):
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise config.ConfigError(
            f"dataset.root={cfg.dataset.root} cannot be used: {(error.strerror or str(error)).lower()} ({root}). Give a "
            f"folder that holds {name}, or one the harness may create and fill."
        ) from None
    if not os.access(root, os.W_OK):
        raise config.ConfigError(
            f"dataset.root={cfg.dataset.root} holds no complete copy of {name} and is not writable ({root}); "
            f"put the data set there, or give a writable folder."
        )


TYPE_HINTS = {
    "depth": "6n+2 for the CIFAR nets (20, 32, 44, 56, 110, 1202), or 18, 34, 50, 101, 152 for the ImageNet nets",
    "residual": "true (ResNet) or false (the same net without shortcuts: plain)",
}


def schema_type(key: str):
    """The type the schema gives a dotted key, None where the schema has no such key."""
    import dataclasses
    import typing

    node = config.Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        node = hints[part]
    return node


def check_overrides(args: list[str]) -> None:
    """What Hydra would refuse with a message that names no valid value, or accept although the
    schema has no such key (`+foo=1`): one line, before Hydra composes anything."""
    import typing

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception:
            continue  # Hydra says what is wrong with its syntax
        key = override.key_or_group
        if override.package is not None or key.startswith("hydra") or override.is_delete():
            continue
        if (config.CONF_DIR / key).is_dir():  # a config group: dataset=..., +experiment=...
            continue
        kind = schema_type(key)
        if kind is None:
            raise config.ConfigError(f"{arg}: Key '{key}' not in 'Config', the schema in harness/config.py (its keys "
                                     "are listed in README.md); remove it or fix its name.")
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        optional = type(None) in typing.get_args(kind)
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        for value in values:
            if value is None and optional:
                continue
            if base is bool:
                ok = isinstance(value, bool)
                what = "bool"
            elif base is int:
                ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit())
                what = "integer"
            elif base is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if isinstance(value, str):
                    try:
                        float(value)
                        ok = True
                    except ValueError:
                        ok = False
                what = "number"
            else:
                continue
            if not ok:
                valid = TYPE_HINTS.get(key) or {"bool": "true or false", "integer": "a whole number",
                                                "number": "a number"}[what] + (", or null" if optional else "")  # fmt: skip
                raise config.ConfigError(f"{key}={value} is not valid: '{value}' is not a valid {what}; use {valid}.")


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
    commit = git_commit()
    default_shortcut = resolve_shortcut("auto", cfg.depth, trained["family"])
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
        "git_commit": commit,
        "torch_version": torch.__version__,
        "device": device.type,  # as the param `device`; the GPU's name in `device_name`
        **({"device_name": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        "threads": torch.get_num_threads(),
        "openmp_wait": OPENMP_WAIT,  # how those threads wait for work (harness/__init__.py)
        **placement_tags(),  # the SLURM job or Ray node that ran it
        RECIPE_TAG: config.recipe(cfg),
        RUN_COLOUR_TAG: run_colour(cfg.depth, cfg.residual, trained["shortcut"], cfg.activation, default_shortcut),
        **source_tags(commit),
    }


def job_data(cfg: DictConfig, device: torch.device):
    return load_data(cfg.dataset.name, config.launch_dir() / cfg.dataset.root, cfg.dataset.download,
                     cfg.dataset.validation_size, device, resize=cfg.dataset.resize, normalize=cfg.dataset.normalize)  # fmt: skip


def train_and_log(cfg: DictConfig, run: MlflowRun, device: torch.device, resumed: bool, data=None) -> Result:
    if not resumed:  # a resumed run has its params already, and MLflow never changes a param
        resolved = OmegaConf.to_container(cfg, resolve=True)
        trained, _ = config.effective_config(cfg)
        run.log_params(flatten({**trained, "device": device.type, "threads": torch.get_num_threads()}))
        run.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        run.log_text(OmegaConf.to_yaml(overrides), "overrides.yaml")

    if data is None:
        data = job_data(cfg, device)
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


RESUMABLE = ("RUNNING", "KILLED")  # and FAILED runs whose failure was the environment's
CLAIM_ATTEMPTS = 5


def running_elsewhere(name: str, run, beat: Heartbeat | None) -> None:
    age = f"heartbeat {beat.age():.0f} s ago" if beat else "no heartbeat yet"
    print(f"running elsewhere: {name} (MLflow run {run.info.run_id}, {age}); not touched")


def open_run(cfg: DictConfig, client, experiment_id: str, device: torch.device, parent: str | None,
             prepare=None) -> tuple[MlflowRun | None, bool]:  # fmt: skip
    """(run, resumed): the run that trains this config, with this process's lease on it. None when
    the config already has a FINISHED run (unless rerun=true) or another live launch trains it;
    the same run again when it stopped (killed, or failed for an environmental reason) after a
    checkpoint; a new run otherwise, which replaces an earlier failed one in its sweep.
    `prepare()` runs once it is clear that this launch trains, before anything is written.

    Two launches that decide at the same moment both claim what they saw (harness.lease.claim):
    one wins; the other looks again and finds the winner's live run."""
    name = run_tags(cfg, device)["model"]
    config_fingerprint = config.fingerprint(cfg)
    folder = checkpoint_dir(cfg)
    for attempt in range(CLAIM_ATTEMPTS):
        if attempt:
            time.sleep(0.5 * attempt)  # the winner of a claim creates or reopens its run meanwhile
        latest = find_run(client, experiment_id, config_fingerprint)
        beat = heartbeat_of(latest) if latest is not None else None
        if latest is not None and latest.info.status == "RUNNING" and beat is not None and beat.alive():
            running_elsewhere(name, latest, beat)
            return None, False
        previous = None if cfg.rerun else latest
        if previous is not None and previous.info.status == "FINISHED":
            print(f"skip {name}: already FINISHED as MLflow run {previous.info.run_id} (rerun=true trains it again)")
            return None, False
        if prepare is not None:
            prepare()
            prepare = None
        resumable = previous is not None and (
            previous.info.status in RESUMABLE or previous.data.tags.get(FAILURE_TAG) == "environment"
        )
        stopped = MlflowRun(client, previous.info.run_id, name, folder) if resumable else None
        if stopped is not None and stopped.has_checkpoint():
            generation = (beat.generation if beat else 0) + 1
            if not claim(client, f"{previous.info.run_id} generation {generation}"):
                continue
            stopped.lease = Lease.take(client, stopped.run_id, generation).start()
            try:
                state = stopped.read_checkpoint()
            except CorruptCheckpoint as error:
                aside = stopped.set_checkpoint_aside()
                print(f"corrupt checkpoint: {error}; {name} (MLflow run {stopped.run_id}) cannot resume from it. "
                      f"Set it aside as {aside}; training restarts from iteration 0 in a new run.")  # fmt: skip
                stopped.lease.release()
            else:
                print(f"resume {name}: MLflow run {previous.info.run_id} from its last checkpoint (iteration {state['iteration']})")
                stopped.reopen()
                stopped.set_tags(placement_tags())  # the SLURM job or Ray node that trains it now
                return stopped, True
        # The same net may be trained in another experiment of the same store: claims are per experiment.
        if not claim(client, f"{config_fingerprint} in {experiment_id} after {latest.info.run_id if latest else 'none'}"):
            continue
        heartbeat = Heartbeat.now(1)
        tags = {**run_tags(cfg, device), FINGERPRINT_TAG: config_fingerprint, HEARTBEAT_TAG: heartbeat.encode()}
        run = MlflowRun.start(client, experiment_id, name, tags, parent_run_id=parent, checkpoint_dir=folder)
        run.lease = Lease(client, run.run_id, heartbeat).start()
        if previous is not None:
            supersede(client, previous, run.run_id)
        return run, False
    print(f"running elsewhere: {name}: other launches claimed it {CLAIM_ATTEMPTS} times at the same moment; not touched")
    return None, False


def run_job(cfg: DictConfig) -> float | None:
    """Check the config, then train and track one net; returns its final test error. Inside a
    sweep a failed run is recorded and None returned, so that the other jobs go on; alone, the
    error ends the command."""
    try:
        config.check_values(cfg)
        check_data_root(cfg)
        device = pick_device(cfg.device)
        client, experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment)
    except (config.ConfigError, StoreError) as error:
        fail(str(error))
    watch_sweep()  # a job that a sweep's launcher started ends when the sweep's process is gone

    # Bit-for-bit repeatable runs on the CPU need deterministic kernels as well as seeds.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(torch_threads(cfg))

    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if HydraConfig.initialized() and not in_sweep:  # a sweep's callback says these once for all its jobs
        for note in config.unused_notes(cfg, list(HydraConfig.get().overrides.task)):
            print(note)
    loaded = {}

    def prepare() -> None:  # the data, loaded before anything of this run is stored
        try:
            loaded["data"] = job_data(cfg, device)
        except OSError as error:
            raise DataError(f"dataset.root={cfg.dataset.root}: {error}") from error

    try:
        run, resumed = open_run(cfg, client, experiment_id, device, cfg.tracking.parent_run_id, prepare)
    except (DataError, MlflowException, OSError) as error:
        message = str(error) if isinstance(error, DataError) else (
            f"the tracking store at tracking.uri={cfg.tracking.uri} failed while the run was opened: "
            f"{type(error).__name__}: {str(error)[:300]}")  # fmt: skip
        if in_sweep:  # the sweep's summary names the job
            log.error("%s", message)
            return None
        fail(message, code=1)
    if run is None:
        return None
    log.info("%s: MLflow run %s in %s", run.name, run.run_id, cfg.tracking.uri)
    try:
        result = train_and_log(cfg, run, device, resumed, loaded.get("data"))
    except KeyboardInterrupt as error:
        try:
            run.finish("KILLED", error)
        except LeaseLost:
            pass
        if orphaned():  # the sweep that started this job is gone: so is the job
            os._exit(1)
        if in_sweep:  # the sweep says what it stopped
            raise
        at = f" at iteration {run.saved_iteration}" if run.saved_iteration else ""
        print(f"stopped {run.name}: MLflow run {run.run_id} marked KILLED; the same command resumes it from its last "
              f"checkpoint{at}." if run.has_checkpoint() else f"stopped {run.name}: MLflow run {run.run_id} marked "
              "KILLED before its first checkpoint; the same command trains it again.", file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    except SchedulerStop as error:  # SLURM's time limit is near: stopped like Ctrl-C, not failed
        try:
            run.finish("KILLED", error)
        except LeaseLost:
            pass
        then = "resumes it from its last checkpoint" if run.has_checkpoint() else "trains it again"
        log.error("%s (MLflow run %s) stopped by SLURM and marked KILLED (%s); the same command %s", run.name,
                  run.run_id, error, then)  # fmt: skip
        return None
    except LeaseLost as error:
        print(f"{run.name}: {error}", file=sys.stderr)
        return None
    except Exception as error:
        environmental = isinstance(error, ENVIRONMENT_ERRORS)
        resumable = environmental and run.has_checkpoint()
        tags = {FAILURE_TAG: "environment" if environmental else "run"}
        if isinstance(error, DivergedError):
            tags["harness.diverged_at"] = error.step
        message = f"{run.name} (MLflow run {run.run_id}) failed: {error}"
        if resumable:
            message += "; the same command resumes it from its last checkpoint"
        try:
            run.check_lease()
            run.set_tags(tags)
            run.finish("FAILED", error, resumable=resumable)
        except LeaseLost as lost:
            message = f"{run.name}: {lost}"
        except Exception as store_error:  # the store itself is what failed
            message += f" (and the store could not record it: {type(store_error).__name__}: {str(store_error)[:200]})"
        if in_sweep:
            log.error("%s", message)
            return None
        if environmental or isinstance(error, DivergedError):
            fail(message, code=1)
        raise
    run.finish("FINISHED")
    log.info("%s: final training error %.2f%%, %s error %.2f%% in %.0f s", run.name, 100 * result.final_train_error,
             result.eval_split, 100 * result.eval_error, result.seconds)  # fmt: skip
    return result.eval_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def cli() -> None:
    """Bad overrides and Ctrl-C end the command with one line each, never a traceback."""
    try:
        check_overrides(sys.argv[1:])
    except config.ConfigError as error:
        fail(str(error))
    try:
        main()
    except KeyboardInterrupt:
        for hook in INTERRUPT_HOOKS:
            hook()
        if not INTERRUPT_HOOKS:
            print("stopped (Ctrl-C) before any run was opened", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
