"""The config schema: every key with its type, default, help and valid values, and the checks
beside the class they belong to. Hydra checks names and types when it composes a config;
`check_overrides` says what Hydra would refuse without naming a valid value, and
`check_values` what types cannot say (valid depths, names, ranges).

    python -m harness.config > docs/configuration.md   # the reference, generated from here
"""

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from harness.data import DATASETS, NORMALIZATIONS, SMALLEST_RESIZE, complete
from harness.errors import HarnessError
from harness.models import (
    ACTIVATIONS,
    SHORTCUTS,
    VALID_ACTIVATIONS,
    VALID_DEPTHS,
    VALID_FAMILIES,
    VALID_SHORTCUTS,
    resolve_family,
    shortcut_row,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
OPTIMIZERS = ("sgd", "adam")


class ConfigError(HarnessError):
    """A config value that the schema's types allow but the harness cannot run."""


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def option(default=MISSING, help: str = "", *, valid: str | None = None, factory=None):
    """A schema field with what the reference and the error messages say about it: `help`, and
    `valid`, the valid values in words where a type alone does not say them."""
    metadata = {"help": help, "valid": valid}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DatasetConfig:
    name: str = option(help="the data set (the config group `dataset=`)", valid=", ".join(DATASETS))
    root: str = option("data", "where the data set lives or is downloaded to; relative to the launch directory")
    download: bool = option(True, "download the data set through torchvision if it is not in `root`")
    augment: bool = option(True, "pad, random crop and horizontal flip (P1 on CIFAR)")
    pad: int = option(4, "pixels of zero padding before the random crop")
    validation_size: int | None = option(
        None, "hold out this many training images and evaluate on them; null: the test split"
    )
    resize: int | None = option(
        None, "resize every image to this many pixels square, on the device (the starting project: 96)"
    )
    normalize: str = option(
        "per_pixel_mean",
        "per_pixel_mean: P1 subtracts the per-pixel mean; none: pixels in [0, 1] (the starting project's ToTensor)",
        valid="per_pixel_mean (P1) or none (pixels in [0, 1], the starting project's ToTensor)",
    )

    def check(self) -> None:
        need(self.name in DATASETS, f"dataset={self.name} is not valid; use one of {', '.join(DATASETS)}.")
        need(self.pad >= 0, f"dataset.pad={self.pad} must be 0 or more pixels.")
        need(
            self.resize is None or self.resize >= SMALLEST_RESIZE,
            f"dataset.resize={self.resize} must be {SMALLEST_RESIZE} or more pixels, or null to keep the size.",
        )
        need(
            self.normalize in NORMALIZATIONS,
            f"dataset.normalize={self.normalize} is not valid; use {_valid('dataset.normalize')}.",
        )
        images = DATASETS[self.name].train_images
        need(
            self.validation_size is None or 0 < self.validation_size < images,
            f"dataset.validation_size={self.validation_size} must be null (evaluate on the test split) or a number of "
            f"training images to hold out between 1 and {images - 1} ({self.name} has {images}).",
        )

    def trainable_images(self) -> int:
        return DATASETS[self.name].train_images - (self.validation_size or 0)


@dataclass
class OptimizerConfig:
    name: str = option("sgd", "the optimizer (the config group `optimizer=`)", valid=" or ".join(OPTIMIZERS))
    lr: float = option(0.1, "the base learning rate")
    momentum: float = option(0.9, "SGD's momentum (SGD only)")
    weight_decay: float = option(1e-4, "L2 weight decay")

    def check(self) -> None:
        need(self.name in OPTIMIZERS, f"optimizer={self.name} is not valid; use {_valid('optimizer.name')}.")
        need(self.lr > 0, f"optimizer.lr={self.lr} must be positive.")


@dataclass
class ScheduleConfig:
    iterations: int = option(help="SGD steps of `batch_size` images")
    batch_size: int = option(128, "images per step")
    lr_drops: list[float] = option(
        help="fractions of the iterations at which lr is divided by 10", factory=lambda: [0.5, 0.75]
    )
    warmup_lr: float | None = option(
        None, "P1's ResNet-110 warm-up: this lr until the training error < warmup_until_error"
    )
    warmup_until_error: float = option(0.8, "the training error that ends the warm-up")
    warmup_max_iterations: int | None = option(
        None, "the warm-up ends here at the latest (and always at the first lr drop)"
    )
    warmup_min_depth: int = option(0, "only nets at least this deep warm up (P1: ResNet-110 and 1202)")
    log_every: int = option(10, "iterations per point of the training curves (the mean over those iterations)")
    eval_every: int = option(help="iterations between evaluations")
    eval_subset: int | None = option(None, "images evaluated at intermediate points; the last point uses all")
    checkpoint_every: int | None = option(None, "iterations between checkpoints (a multiple of log_every); null: none")
    analysis_every: int = option(help="iterations between probes of layer responses and gradients")
    final_train_subset: int | None = option(None, "training images the final training error is measured on; null: all")

    def check(self) -> None:
        for key in ("iterations", "log_every", "analysis_every", "eval_every"):
            value = getattr(self, key)
            need(value > 0, f"schedule.{key}={value} must be a positive number of iterations.")
        need(self.batch_size > 0, f"schedule.batch_size={self.batch_size} must be a positive number of images.")
        for key in ("eval_subset", "final_train_subset"):
            value = getattr(self, key)
            need(
                value is None or value > 0,
                f"schedule.{key}={value} must be a positive number of images, or null for all.",
            )
        need(
            all(0 < fraction < 1 for fraction in self.lr_drops),
            f"schedule.lr_drops={list(self.lr_drops)} must be fractions of the iterations between 0 and 1 "
            "(the paper's 32k and 48k of 64k are [0.5, 0.75]).",
        )
        every = self.checkpoint_every
        need(
            every is None or (every > 0 and every % self.log_every == 0),
            f"schedule.checkpoint_every={every} must be a positive multiple of "
            f"schedule.log_every={self.log_every}, or null for no checkpoints.",
        )
        need(
            self.warmup_lr is None or self.warmup_lr > 0,
            f"schedule.warmup_lr={self.warmup_lr} must be positive, or null for no warm-up.",
        )
        need(
            self.warmup_max_iterations is None or self.warmup_max_iterations > 0,
            f"schedule.warmup_max_iterations={self.warmup_max_iterations} must be a positive number of iterations, "
            "or null (the warm-up then ends at the first lr drop at the latest).",
        )


@dataclass
class TrackingConfig:
    uri: str = option("${default_store:}", "the MLflow store; default: SQLite in ./mlruns, as an absolute path")
    experiment: str = option("degradation", "the MLflow experiment")
    figures: bool = option(True, "draw the sweep's figures and report at the end of a multirun")
    log_model: bool = option(True, "keep the final state_dict as an artifact")
    checkpoint_dir: str | None = option(None, "null: beside a SQLite store, else ./checkpoints")
    parent_run_id: str | None = option(None, "the sweep's parent run; the sweep sets it for each of its jobs")
    outage_limit: float = option(600.0, "seconds a run trains on while the store cannot be reached, then stops")
    buffer_points: int = option(100_000, "metric points a run keeps while the store cannot be reached, then stops")

    def check(self) -> None:
        need(
            self.outage_limit > 0,
            f"tracking.outage_limit={self.outage_limit} must be a positive number of seconds (600: ten minutes).",
        )
        need(
            self.buffer_points > 0, f"tracking.buffer_points={self.buffer_points} must be a positive number of points."
        )


@dataclass
class ReportConfig:
    min_effect: float = option(1.0, "points of error a claim's mean difference must reach to count as reproduced")
    confidence: float = option(0.95, "of the Student t interval around each claim's mean paired difference")

    def check(self) -> None:
        need(0 < self.confidence < 1, f"report.confidence={self.confidence} must lie between 0 and 1 (0.95 for 95%).")
        need(self.min_effect >= 0, f"report.min_effect={self.min_effect} must be 0 or more points of error.")


@dataclass
class DesignConfig:
    looks: list[int] = option(
        help="seeds at each look of a study: its claims are judged there, and a growing study stops at the last",
        valid="increasing whole numbers, the first at least 3 (P2's archived studies have 3 seeds: look 1)",
        factory=lambda: [3, 5, 8, 12],
    )
    alpha: float = option(
        0.05, "the family-wise rate of false verdicts over all looks and claims", valid="0 < alpha < 0.5"
    )
    spending: str = option(
        "obrien_fleming", "how alpha is spent over the looks", valid="obrien_fleming (strict early) or pocock (even)"
    )
    family: list[str] = option(
        help="the claim rows one study tests together, Holm within them (P2-T1: its six shortcuts against identity)",
        valid="keys of the claims table (harness/stats.py: C1, C2, C3, P2-T1, ...); empty: every row its nets give",
        factory=list,
    )

    def check(self) -> None:
        from harness.sequential import SPENDING_RULES
        from harness.stats import CLAIM_ROWS

        looks = list(self.looks)
        need(
            bool(looks) and looks[0] >= 3 and all(a < b for a, b in zip(looks, looks[1:])),
            f"design.looks={looks} is not valid; use {_valid('design.looks')}, e.g. [3,5,8,12].",
        )
        need(0 < self.alpha < 0.5, f"design.alpha={self.alpha} is not valid; use {_valid('design.alpha')} (0.05).")
        need(
            self.spending in SPENDING_RULES,
            f"design.spending={self.spending} is not valid; use {_valid('design.spending')}.",
        )
        rows = [row.key for row in CLAIM_ROWS]
        unknown = [key for key in self.family if key not in rows]
        need(
            not unknown, f"design.family={list(self.family)} names {', '.join(unknown)}; use some of {', '.join(rows)}."
        )


@dataclass
class Config:
    depth: int = option(20, "weighted layers", valid=VALID_DEPTHS)
    residual: bool = option(
        True, "shortcuts or not", valid="true (ResNet) or false (the same net without shortcuts: plain)"
    )
    shortcut: str = option(
        "auto", "P1's shortcut option, P2's shortcut (its Table 1) or one of your own", valid=VALID_SHORTCUTS
    )
    shortcut_lambda: float = option(
        0.5, "P2's lambda: the shortcut's scale (shortcut=scaling, frozen_gating)", valid="0 < lambda <= 1"
    )
    gate_bias: float = option(
        -6.0, "P2's b_g: the gate's initial bias (shortcut=exclusive_gating, shortcut_only_gating)", valid="a number"
    )
    shortcut_dropout: float = option(0.5, "the dropout rate on the shortcut (shortcut=dropout)", valid="0 <= rate < 1")
    activation: str = option("post", "the residual unit: the order of its parts (P2 Fig. 4)", valid=VALID_ACTIVATIONS)
    family: str = option(
        "auto",
        "which net a depth means: 50 and 152 are ImageNet and CIFAR depths, 56, 110 and 164 depths of P1's and P2's "
        "CIFAR nets",
        valid=VALID_FAMILIES,
    )
    seed: int = option(0, "the initialisation, the data order and the augmentation")
    device: str = option("auto", "auto: cuda when present, else cpu", valid="auto, cpu or cuda[:N]")
    precision: str = option(
        "auto",
        "the arithmetic of convolutions and linear layers: bf16 autocast, or fp32 (harness/device.py)",
        valid="auto (bf16 where the device runs it fast, else fp32), fp32 or bf16",
    )
    compile: str = option(
        "false",
        "torch.compile the training step (evaluations and probes stay eager)",
        valid="false, true (torch's default mode) or a mode: " + ", ".join(COMPILE_MODES),
    )
    deterministic: bool = option(True, "deterministic kernels: bit-for-bit repeatable runs on one machine")
    threads: int | None = option(None, "torch threads per job; null: its share of `cores`")
    cores: int | None = option(None, "cores the jobs on one machine share; null: all this process may use")
    rerun: bool = option(False, "train again configurations that already have a FINISHED run")
    analysis: bool = option(True, "layer responses and gradient norms every schedule.analysis_every iterations")
    plan: bool = option(
        False, "print what the launch would train or reuse and how long it would take here; run nothing"
    )
    dataset: DatasetConfig = option(help="the data (config group `dataset=`)", factory=DatasetConfig)
    optimizer: OptimizerConfig = option(help="config group `optimizer=`", factory=OptimizerConfig)
    schedule: ScheduleConfig = option(help="the budget (config group `schedule=`)", factory=ScheduleConfig)
    tracking: TrackingConfig = option(help="config group `tracking=`", factory=TrackingConfig)
    report: ReportConfig = option(help="the verdicts", factory=ReportConfig)
    design: DesignConfig = option(help="a study's looks and error rate (docs/studies.md)", factory=DesignConfig)

    def check(self) -> None:
        try:
            resolve_family(self.depth, self.family)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        need(
            self.shortcut in (*SHORTCUTS, "identity", "auto") or "." in self.shortcut,
            f"shortcut={self.shortcut} is not valid; use {VALID_SHORTCUTS}.",
        )
        if "." in self.shortcut:  # one of your own: imported here, before any run is opened
            try:
                shortcut_row(self.shortcut)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        need(self.activation in ACTIVATIONS, f"activation={self.activation} is not valid; use {VALID_ACTIVATIONS}.")
        need(
            0 < self.shortcut_lambda <= 1,
            f"shortcut_lambda={self.shortcut_lambda} is not valid; use 0 < lambda <= 1 (lambda = 0 is the plain net: "
            "residual=false).",
        )
        need(
            0 <= self.shortcut_dropout < 1,
            f"shortcut_dropout={self.shortcut_dropout} is not valid; use a rate 0 <= rate < 1 (1 drops every shortcut: "
            "the plain net, residual=false).",
        )
        need(
            math.isfinite(self.gate_bias),
            f"gate_bias={self.gate_bias} is not valid; use a finite number (P2: 0 to -7).",
        )
        need(
            self.device in DEVICES or self.device.startswith("cuda:"),
            f"device={self.device} is not valid; use {_valid('device')}.",
        )
        need(self.precision in PRECISIONS, f"precision={self.precision} is not valid; use {_valid('precision')}.")
        need(
            self.compile.lower() in ("false", "true") or self.compile in COMPILE_MODES,
            f"compile={self.compile} is not valid; use {_valid('compile')}.",
        )
        need(
            self.threads is None or self.threads > 0,
            f"threads={self.threads} must be a positive number of torch threads, or null.",
        )
        need(
            self.cores is None or self.cores > 0,
            f"cores={self.cores} must be a positive number of cores, or null for all.",
        )
        for group in (self.dataset, self.optimizer, self.schedule, self.tracking, self.report, self.design):
            group.check()
        trainable = self.dataset.trainable_images()
        held_out = self.dataset.validation_size
        need(
            self.schedule.batch_size <= trainable,
            f"schedule.batch_size={self.schedule.batch_size} is larger than the {trainable} training images of "
            f"{self.dataset.name}"
            + (f" left after dataset.validation_size={held_out}" if held_out else "")
            + f"; use at most {trainable}.",
        )


def schema_field(key: str) -> dataclasses.Field | None:
    """The schema's field for a dotted key (`schedule.iterations`), None where there is none."""
    node, found = Config, None
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        found = {f.name: f for f in dataclasses.fields(node)}.get(part)
        if found is None:
            return None
        node = typing.get_type_hints(node)[part]
    return found


def _valid(key: str) -> str:
    return schema_field(key).metadata["valid"]


def _field_type(key: str):
    *parents, leaf = key.split(".")
    owner = Config
    for part in parents:
        owner = typing.get_type_hints(owner)[part]
    return typing.get_type_hints(owner)[leaf]


def unknown_keys(node: DictConfig, schema=Config, prefix: str = "") -> list[str]:
    """Keys that `+key=value` added and the schema does not have: Hydra accepts them, the harness not."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    found = []
    for key in node.keys():
        if key not in fields:
            found.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]) and OmegaConf.is_dict(node[key]):
            found += unknown_keys(node[key], hints[key], f"{prefix}{key}.")
    return found


def not_in_schema(arg: str, key: str) -> ConfigError:
    return ConfigError(
        f"{arg}: Key '{key}' not in 'Config', the schema in harness/config.py (its keys are listed in "
        "docs/configuration.md); remove it or fix its name."
    )


def check_values(cfg: DictConfig) -> None:
    """Raise ConfigError naming the bad value and the valid ones."""
    extra = unknown_keys(cfg)
    if extra:
        raise not_in_schema(f"+{extra[0]}", extra[0])
    OmegaConf.to_object(cfg).check()


def _parses_as(kind: type, value) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit())
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


TYPE_WORDS = {bool: ("bool", "true or false"), int: ("integer", "a whole number"), float: ("number", "a number")}


def check_overrides(args: list[str]) -> None:
    """What Hydra would refuse with a message that names no valid value, or accept although the
    schema has no such key (`+foo=1`): one line, before Hydra composes anything."""
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
        if (CONF_DIR / key).is_dir():  # a config group: dataset=..., +experiment=...
            check_group_override(arg, override)
            continue
        found = schema_field(key)
        if found is None:
            raise not_in_schema(arg, key)
        kind = _field_type(key)
        optional = type(None) in typing.get_args(kind)
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        if base not in TYPE_WORDS:
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        if typing.get_origin(kind) is list:  # design.looks=[3,5,8]: each element
            values = [element for value in values for element in (value if isinstance(value, list) else [value])]
        for value in values:
            if (value is None and optional) or _parses_as(base, value):
                continue
            what, words = TYPE_WORDS[base]
            valid = found.metadata["valid"] or words + (", or null" if optional else "")
            raise ConfigError(f"{key}={value} is not valid: '{value}' is not a valid {what}; use {valid}.")


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def group_defaults() -> dict[str, str | None]:
    """The config groups that conf/config.yaml's defaults list names, each with its option (None:
    no option, the group is there to be set as `group=option`)."""
    chosen = {}
    for entry in OmegaConf.load(CONF_DIR / "config.yaml").defaults:
        if OmegaConf.is_dict(entry):
            chosen.update(entry)
    return chosen


def check_group_override(arg: str, override) -> None:
    """`group=option`: each option one of the group's files, and `+` only where the defaults list
    does not name the group (Hydra says either with a traceback in a sweep)."""
    group = override.key_or_group
    options = group_options(group)
    values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
    for value in values:
        need(
            value is None or value in options,
            f"{group}={value} is not valid: conf/{group}/ has no {value}.yaml; use one of {', '.join(options)}.",
        )
    need(
        not (override.is_add() and group in group_defaults()),
        f"{arg}: conf/config.yaml's defaults list already has {group}; set it without the +: {arg.lstrip('+')}.",
    )


def check_data_root(cfg: DictConfig) -> None:
    """dataset.root holds the data set, or is a folder the harness can create and fill: said
    before any run is stored (ConfigError)."""
    root = launch_dir() / cfg.dataset.root
    name = cfg.dataset.name
    if complete(name, root):
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"dataset.root={cfg.dataset.root} cannot be used: {(error.strerror or str(error)).lower()} ({root}). "
            f"Give a folder that holds {name}, or one the harness may create and fill."
        ) from None
    need(
        os.access(root, os.W_OK),
        f"dataset.root={cfg.dataset.root} holds no complete copy of {name} and is not writable ({root}); "
        "put the data set there, or give a writable folder.",
    )


def check(cfg: DictConfig) -> None:
    """Everything a job checks before it stores anything: the values, then the data's folder."""
    check_values(cfg)
    check_data_root(cfg)


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


def compose_config(*overrides: str) -> DictConfig:
    """The job config that `python -m harness.run OVERRIDES` would see, for code outside the
    Hydra app (tests, benchmarks, notebooks)."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _type_name(kind) -> str:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is list:
        return f"list[{args[0].__name__}]"
    name = (args[0] if args else kind).__name__
    return name + (" or null" if type(None) in typing.get_args(kind) else "")


def _yaml(value) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(list(value)) if OmegaConf.is_list(value) else str(value)


def _rows(schema, defaults: DictConfig, prefix: str = "") -> list[str]:
    rows = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        key = f"{prefix}{f.name}"
        default = OmegaConf.select(defaults, key, throw_on_missing=False)
        shown = "(the launch directory's mlruns/mlflow.db)" if key == "tracking.uri" else f"`{_yaml(default)}`"
        valid = f" Valid: {f.metadata['valid']}." if f.metadata["valid"] else ""
        rows.append(f"| `{key}` | {_type_name(hints[f.name])} | {shown} | {f.metadata['help']}.{valid} |")
    return rows


def reference() -> str:
    """docs/configuration.md: every key of the schema, its type, the default a plain launch gets
    (conf/config.yaml and its groups) and what it does."""
    defaults = compose_config()
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    options = {group: group_options(group) for group in groups}  # conf/experiment is a link to experiments/
    chosen = group_defaults()
    # Hydra overrides only what the defaults list holds: a group it leaves out is added with +, so
    # the rule is said from the list, and stays true when a group gains or loses its default.
    unset = [group for group in groups if group not in chosen]
    example = next(f"{g}={o}" for g in groups if g in chosen for o in options[g] if o != chosen[g])
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema in `harness/config.py` by `python -m harness.config > docs/configuration.md`;",
        "a test fails when this page is stale. Back to the [README](../README.md).",
        "",
        "Set a key on the command line as `key=value` (`schedule.iterations=2000`) and sweep it with",
        "`-m key=a,b`. A config group with a default (`null`: none until one is given) takes another option",
        f"as `group=option` (`{example}`); a group without one ({', '.join(f'`{g}`' for g in unset)}) needs",
        f"`+group=option` (`+{unset[0]}=NAME`), except in a study whose defaults list already adds it.",
        "",
        "## Config groups",
        "",
        "| group | options | default |",
        "|---|---|---|",
    ]
    for group in groups:
        default = _yaml(chosen[group]) if group in chosen else "none"
        lines.append(f"| `{group}` | {', '.join(f'`{o}`' for o in options[group])} | {default} |")
    hints = typing.get_type_hints(Config)
    sections = [("Top level", Config, "")] + [
        (f"`{f.name}`: {f.metadata['help']}", hints[f.name], f"{f.name}.")
        for f in dataclasses.fields(Config)
        if dataclasses.is_dataclass(hints[f.name])
    ]
    for title, schema, prefix in sections:
        lines += ["", f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += _rows(schema, defaults, prefix)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
