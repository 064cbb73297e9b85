"""The config schema: Hydra checks key names and types against these dataclasses when it
composes a config; `check_values` checks what types cannot say (valid depths, names, ranges).
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from harness.data import DATASETS, NORMALIZATIONS
from harness.models import ACTIVATIONS, SHORTCUTS, resolve_family, resolve_shortcut


class ConfigError(ValueError):
    """A config value that the schema's types allow but the harness cannot run."""


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"  # relative paths are taken from the directory the command was typed in
    download: bool = True
    augment: bool = True  # pad, random crop, horizontal flip (P1 on CIFAR)
    pad: int = 4
    validation_size: int | None = None  # hold out this many training images and evaluate on them
    resize: int | None = None  # resize every image to this many pixels square, on the device (the seed: 96)
    normalize: str = "per_pixel_mean"  # P1 subtracts the per-pixel mean; none: pixels in [0, 1] (the seed's ToTensor)


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4


@dataclass
class ScheduleConfig:
    iterations: int = MISSING
    batch_size: int = 128
    lr_drops: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of iterations; lr /= 10 at each
    warmup_lr: float | None = None  # P1's ResNet-110: this lr until the training error < warmup_until_error
    warmup_until_error: float = 0.8
    warmup_max_iterations: int | None = None  # warm-up ends here at the latest (and always at the first lr drop)
    warmup_min_depth: int = 0  # only nets at least this deep warm up (P1: ResNet-110 and 1202)
    log_every: int = 10  # iterations per point of the training curves (the mean over those iterations)
    eval_every: int = MISSING
    eval_subset: int | None = None  # images evaluated at intermediate points; the last point uses all
    checkpoint_every: int | None = None  # iterations between checkpoints (a multiple of log_every); None: none
    analysis_every: int = MISSING  # iterations between probes of layer responses and gradients
    final_train_subset: int | None = None  # training images the final training error is measured on; None: all


@dataclass
class TrackingConfig:
    uri: str = "${default_store:}"  # SQLite store in ./mlruns, as an absolute path
    experiment: str = "degradation"
    figures: bool = True  # draw the sweep's figures at the end of a multirun
    log_model: bool = True  # the final state_dict as an artifact
    checkpoint_dir: str | None = None  # None: beside a SQLite store, else ./checkpoints
    parent_run_id: str | None = None  # the sweep's parent run; the sweep sets it for each of its jobs


@dataclass
class ReportConfig:
    min_effect: float = 1.0  # points of error a claim's mean difference must reach to count as reproduced
    confidence: float = 0.95  # of the Student t interval around each claim's mean paired difference


@dataclass
class Config:
    depth: int = 20
    residual: bool = True
    shortcut: str = "auto"  # auto: A for basic-block nets, B for bottleneck nets (P1); zero_pad = A, projection = B, full_projection = C
    activation: str = "post"  # post (P1) or pre (P2)
    family: str = "auto"  # auto, cifar or imagenet: which net a depth of both families (50, 152) means
    seed: int = 0
    device: str = "auto"  # auto = cuda when present, else cpu
    threads: int | None = None  # torch threads per job; None: its share of `cores` (see harness.run.torch_threads)
    cores: int | None = None  # cores the jobs on one machine share; None: all this process may use
    rerun: bool = False  # train again configurations that already have a FINISHED run
    analysis: bool = True  # layer responses and gradient norms every schedule.analysis_every iterations
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


# Where and how a run is executed, tracked and reported, not what it trains.
PRESENTATION_KEYS = ("tracking", "report", "threads", "cores", "device", "rerun", "analysis",
                     "dataset.root", "dataset.download", "schedule.checkpoint_every")  # fmt: skip
# What tells the nets of one study apart; everything else that is trained is the study's recipe.
NET_KEYS = ("depth", "residual", "shortcut", "activation", "family", "seed")
WARMUP_KEYS = ("warmup_lr", "warmup_until_error", "warmup_max_iterations", "warmup_min_depth")


def _drop(tree: dict, keys) -> dict:
    for key in keys:
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return tree


def _recipe_rules(trained: dict, unused: dict[str, str]) -> None:
    """Keys that no net of the recipe uses leave it."""
    if trained["optimizer"]["name"] != "sgd":
        unused["optimizer.momentum"] = f"optimizer={trained['optimizer']['name']} has no momentum parameter"
        _drop(trained, ["optimizer.momentum"])
    if not trained["dataset"]["augment"]:
        unused["dataset.pad"] = "augmentation is off (dataset.augment=false)"
        _drop(trained, ["dataset.pad"])
    schedule = trained["schedule"]
    if schedule["warmup_lr"] is None:
        for key in WARMUP_KEYS[1:]:
            unused[f"schedule.{key}"] = "there is no warm-up (schedule.warmup_lr=null)"
        unused.pop("schedule.warmup_lr", None)
        _drop(trained, [f"schedule.{key}" for key in WARMUP_KEYS])


def _net_rules(trained: dict, unused: dict[str, str]) -> None:
    """The automatic values resolved, and the keys this particular net does not use removed."""
    trained["family"] = resolve_family(trained["depth"], trained["family"])
    if trained["residual"]:
        trained["shortcut"] = resolve_shortcut(trained["shortcut"], trained["depth"], trained["family"])
    else:
        if trained["shortcut"] != "auto":
            unused["shortcut"] = "a plain net (residual=false) has no shortcuts"
        trained["shortcut"] = "none"
    schedule = trained["schedule"]
    if "warmup_lr" in schedule and trained["depth"] < schedule["warmup_min_depth"]:
        for key in WARMUP_KEYS:
            unused[f"schedule.{key}"] = f"depth {trained['depth']} is below schedule.warmup_min_depth={schedule['warmup_min_depth']}"
        _drop(trained, [f"schedule.{key}" for key in WARMUP_KEYS])


def effective_config(cfg: DictConfig) -> tuple[dict, dict[str, str]]:
    """(what this config trains, {key: why it has no effect}): the resolved config with `auto`
    values resolved and the keys this net does not use removed (a plain net's shortcut, Adam's
    momentum, ...). Two configs that train the same net are equal here."""
    trained, unused = OmegaConf.to_container(cfg, resolve=True), {}
    _recipe_rules(trained, unused)
    _net_rules(trained, unused)
    return trained, unused


def _hash(tree: dict) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(cfg: DictConfig) -> str:
    """What a config trains, as a short hash: relaunching a study finds its runs by it, and a
    net that two sweeps share is trained once."""
    return _hash(_drop(effective_config(cfg)[0], PRESENTATION_KEYS))


def recipe(cfg: DictConfig) -> str:
    """What a study holds fixed across its nets (data, budget, optimizer, warm-up rule, ...), as a
    short hash: a report never pools runs of different recipes."""
    trained = OmegaConf.to_container(cfg, resolve=True)
    _recipe_rules(trained, {})
    return _hash(_drop(trained, PRESENTATION_KEYS + NET_KEYS))


def unused_notes(cfg: DictConfig, overridden: list[str]) -> list[str]:
    """A note for every key the user set (in `overridden`, Hydra's override strings) that this
    config does not use."""
    keys = {override.split("=", 1)[0].lstrip("+~") for override in overridden}
    _, unused = effective_config(cfg)
    return [f"note: {key} has no effect here: {why}." for key, why in unused.items() if key in keys]


def launch_dir() -> Path:
    """The directory the command was typed in. Relative paths in a config are taken from there,
    also in jobs that a launcher runs elsewhere (Ray workers start in Ray's own directory)."""
    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def default_store() -> str:
    """MLflow's SQLite store inside ./mlruns of the launch directory, as an absolute path."""
    return f"sqlite:///{launch_dir() / 'mlruns' / 'mlflow.db'}"


def register() -> None:
    ConfigStore.instance().store(name="schema", node=Config)
    if not OmegaConf.has_resolver("default_store"):
        OmegaConf.register_new_resolver("default_store", default_store)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(*overrides: str) -> DictConfig:
    """The job config that `python -m harness.run OVERRIDES` would see, for code outside the
    Hydra app (tests, benchmarks, notebooks)."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def check_values(cfg: DictConfig) -> None:
    """Raise ConfigError naming the bad value and the valid ones."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    # `+key=value` adds keys that the schema does not have; Hydra accepts them, the harness not.
    def unknown(node: DictConfig, schema: DictConfig, prefix: str = "") -> list[str]:
        found = []
        known = set(schema.keys())
        for key in node.keys():
            if key not in known:
                found.append(f"{prefix}{key}")
            elif isinstance(schema._get_node(key), DictConfig) and isinstance(node._get_node(key), DictConfig):
                found += unknown(node._get_node(key), schema._get_node(key), f"{prefix}{key}.")
        return found

    extra = unknown(cfg, OmegaConf.structured(Config))
    need(not extra, f"+{extra[0] if extra else ''}: Key '{extra[0] if extra else ''}' not in 'Config', the schema in "
                    "harness/config.py (its keys are listed in README.md); remove it or fix its name.")  # fmt: skip
    try:
        resolve_family(cfg.depth, cfg.family)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    need(
        cfg.shortcut in SHORTCUTS + ("identity", "auto"),
        f"shortcut={cfg.shortcut} is not valid; use auto (A for basic-block nets, B for bottleneck nets, as P1), "
        "zero_pad (option A, alias identity), projection (option B) or full_projection (option C).",
    )
    need(cfg.activation in ACTIVATIONS, f"activation={cfg.activation} is not valid; use post (P1) or pre (P2).")
    need(cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"), f"device={cfg.device} is not valid; use auto, cpu or cuda[:N].")
    need(cfg.threads is None or cfg.threads > 0, f"threads={cfg.threads} must be a positive number of torch threads, or null.")
    need(cfg.cores is None or cfg.cores > 0, f"cores={cfg.cores} must be a positive number of cores, or null for all.")
    need(cfg.dataset.name in DATASETS, f"dataset={cfg.dataset.name} is not valid; use one of {', '.join(DATASETS)}.")
    need(cfg.dataset.pad >= 0, f"dataset.pad={cfg.dataset.pad} must be 0 or more pixels.")
    need(cfg.dataset.resize is None or cfg.dataset.resize >= 8, f"dataset.resize={cfg.dataset.resize} must be 8 or more pixels, or null to keep the size.")
    need(
        cfg.dataset.normalize in NORMALIZATIONS,
        f"dataset.normalize={cfg.dataset.normalize} is not valid; use per_pixel_mean (P1) or none (pixels in [0, 1], the seed's ToTensor).",
    )
    need(cfg.optimizer.name in ("sgd", "adam"), f"optimizer={cfg.optimizer.name} is not valid; use sgd or adam.")
    need(cfg.optimizer.lr > 0, f"optimizer.lr={cfg.optimizer.lr} must be positive.")
    schedule = cfg.schedule
    need(schedule.iterations > 0, f"schedule.iterations={schedule.iterations} must be a positive number of iterations.")
    need(schedule.batch_size > 0, f"schedule.batch_size={schedule.batch_size} must be a positive number of images.")
    need(schedule.log_every > 0, f"schedule.log_every={schedule.log_every} must be a positive number of iterations.")
    need(schedule.analysis_every > 0, f"schedule.analysis_every={schedule.analysis_every} must be a positive number of iterations.")
    need(schedule.eval_every > 0, f"schedule.eval_every={schedule.eval_every} must be a positive number of iterations.")
    need(
        schedule.eval_subset is None or schedule.eval_subset > 0,
        f"schedule.eval_subset={schedule.eval_subset} must be a positive number of images, or null for all.",
    )
    need(
        all(0 < fraction < 1 for fraction in schedule.lr_drops),
        f"schedule.lr_drops={list(schedule.lr_drops)} must be fractions of the iterations between 0 and 1 "
        "(the paper's 32k and 48k of 64k are [0.5, 0.75]).",
    )
    need(
        schedule.checkpoint_every is None or (schedule.checkpoint_every > 0 and schedule.checkpoint_every % schedule.log_every == 0),
        f"schedule.checkpoint_every={schedule.checkpoint_every} must be a positive multiple of "
        f"schedule.log_every={schedule.log_every}, or null for no checkpoints.",
    )
    need(
        schedule.warmup_lr is None or schedule.warmup_lr > 0,
        f"schedule.warmup_lr={schedule.warmup_lr} must be positive, or null for no warm-up.",
    )
    need(
        schedule.warmup_max_iterations is None or schedule.warmup_max_iterations > 0,
        f"schedule.warmup_max_iterations={schedule.warmup_max_iterations} must be a positive number of iterations, "
        "or null (the warm-up then ends at the first lr drop at the latest).",
    )
    need(
        schedule.final_train_subset is None or schedule.final_train_subset > 0,
        f"schedule.final_train_subset={schedule.final_train_subset} must be a positive number of images, or null for all.",
    )
    need(0 < cfg.report.confidence < 1, f"report.confidence={cfg.report.confidence} must lie between 0 and 1 (0.95 for 95%).")
    need(cfg.report.min_effect >= 0, f"report.min_effect={cfg.report.min_effect} must be 0 or more points of error.")
    training_images = {"fashion_mnist": 60000, "cifar10": 50000, "cifar100": 50000}[cfg.dataset.name]
    held_out = cfg.dataset.validation_size
    need(
        held_out is None or 0 < held_out < training_images,
        f"dataset.validation_size={held_out} must be null (evaluate on the test split) or a number of training "
        f"images to hold out between 1 and {training_images - 1} ({cfg.dataset.name} has {training_images}).",
    )
    trainable = training_images - (held_out or 0)
    need(
        schedule.batch_size <= trainable,
        f"schedule.batch_size={schedule.batch_size} is larger than the {trainable} training images of "
        f"{cfg.dataset.name}" + (f" left after dataset.validation_size={held_out}" if held_out else "")
        + f"; use at most {trainable}.",
    )
