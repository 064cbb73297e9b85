"""What a config trains, as the store knows it: the effective config (`auto` values resolved,
keys this net does not use removed), its fingerprint (one net: a relaunch finds its run by it,
and a net two sweeps share is trained once), its recipe (what a study holds fixed across its
nets: a report never pools runs of different recipes) and a sweep's study (all its nets).
"""

import copy
import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from harness.models import (
    PARAMETER_KEYS,
    model_name,
    resolve_family,
    resolve_shortcut,
    shortcut_parameters,
    shortcut_row,
)

if TYPE_CHECKING:
    from harness.config import Config
    from harness.edge import Decided

# Where and how a run is executed, tracked and reported, not what it trains.
PRESENTATION_KEYS = ("tracking", "report", "design", "threads", "cores", "device", "rerun", "analysis", "plan",
                     "compile", "deterministic",
                     "dataset.root", "dataset.download", "schedule.checkpoint_every")  # fmt: skip
# What tells the nets of one study apart; everything else that is trained is the study's recipe.
NET_KEYS = ("depth", "residual", "shortcut", "activation", "family", "seed", *PARAMETER_KEYS)
WARMUP_KEYS = ("warmup_lr", "warmup_until_error", "warmup_max_iterations", "warmup_min_depth")


def _drop(tree: dict, keys) -> dict:
    for key in keys:
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return tree


def _recipe_rules(trained: dict, unused: dict[str, str], precision: str | None) -> None:
    """The precision the launch decided (`precision=auto` measured at its edge: harness.edge); keys
    that no net of the recipe uses leave it."""
    trained["precision"] = precision or trained["precision"]
    if trained["precision"] == "auto":
        raise ValueError("precision=auto reached a job's identity undecided: harness.edge.decide decides it")
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
        shortcut = trained["shortcut"] = resolve_shortcut(trained["shortcut"], trained["depth"], trained["family"])
        for key in set(PARAMETER_KEYS) - set(shortcut_row(shortcut).parameters):
            unused[key] = f"shortcut={shortcut} does not use it"
    else:
        for key in ("shortcut", *PARAMETER_KEYS):
            unused[key] = "a plain net (residual=false) has no shortcuts"
        if trained["shortcut"] == "auto":
            unused.pop("shortcut")
        trained["shortcut"] = "none"
    _drop(trained, [key for key in PARAMETER_KEYS if key in unused])
    schedule = trained["schedule"]
    if "warmup_lr" in schedule and trained["depth"] < schedule["warmup_min_depth"]:
        depth, minimum = trained["depth"], schedule["warmup_min_depth"]
        for key in WARMUP_KEYS:
            unused[f"schedule.{key}"] = f"depth {depth} is below schedule.warmup_min_depth={minimum}"
        _drop(trained, [f"schedule.{key}" for key in WARMUP_KEYS])


def effective_config(cfg: DictConfig, precision: str | None = None) -> tuple[dict, dict[str, str]]:
    """(what this config trains, {key: why it has no effect}): the resolved config with `auto`
    values resolved (precision: as the launch decided it, where the config says auto) and the
    keys this net does not use removed (a plain net's shortcut, Adam's momentum, ...). Two configs
    that train the same net are equal here."""
    trained, unused = OmegaConf.to_container(cfg, resolve=True), {}
    _recipe_rules(trained, unused, precision)
    _net_rules(trained, unused)
    return trained, unused


def _hash(tree: dict) -> str:
    if tree.get("precision") == "fp32":  # what every version before the key trained: their hashes stand
        tree = {key: value for key, value in tree.items() if key != "precision"}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(cfg: DictConfig, precision: str | None = None) -> str:
    """One net, as a short hash of what it trains."""
    return fingerprint_of(effective_config(cfg, precision)[0])


def fingerprint_of(trained: dict) -> str:
    """The fingerprint of an effective config (left as it is)."""
    return _hash(_drop(copy.deepcopy(trained), PRESENTATION_KEYS))


@dataclasses.dataclass(frozen=True)
class Job:
    """A job resolved once, at its start: what it trains, typed, and what the store knows it by.
    `config` is the truth every part downstream reads (train, record, plan, the model);
    `requested` is only what was asked, `auto` and all."""

    config: "Config"  # typed, resolved: family, shortcut, precision, threads decided; no warm-up where the net has none
    requested: DictConfig  # as composed, before resolution (the run's config.yaml)
    decided: "Decided"  # what the launch decided for it on this machine: its threads, its precision
    trained: dict  # the effective config, as the store records it: `auto` values resolved, unused keys removed
    unused: dict[str, str]  # key -> why it has no effect here
    fingerprint: str
    recipe: str
    name: str  # the paper's name of the net: the run's name

    @property
    def parameters(self) -> dict[str, float]:
        return shortcut_parameters(self.trained)


def resolve(cfg: DictConfig, decided: "Decided") -> Job:
    """The job of a checked config, with what the launch decided for it (harness.edge.decide)."""
    trained, unused = effective_config(cfg, decided.precision)
    asked = OmegaConf.to_object(cfg)  # the schema's dataclasses
    config = dataclasses.replace(
        asked,
        family=trained["family"],
        shortcut=trained["shortcut"],
        precision=trained["precision"],
        threads=decided.threads,
        # The warm-up rule is _net_rules': a net it leaves without one has none.
        schedule=dataclasses.replace(asked.schedule, warmup_lr=trained["schedule"].get("warmup_lr")),
    )
    parameters = shortcut_parameters(trained)
    return Job(
        config=config,
        requested=cfg,
        decided=decided,
        trained=trained,
        unused=unused,
        fingerprint=fingerprint_of(trained),
        recipe=recipe(cfg, decided.precision),
        name=model_name(config.depth, config.residual, config.shortcut, config.activation, config.family, **parameters),
    )


def recipe_of(tree: dict) -> str:
    """The recipe of a config tree (resolved, recipe rules applied): everything but the net and
    how it is run, as a short hash."""
    return _hash(_drop(tree, PRESENTATION_KEYS + NET_KEYS))


def recipe(cfg: DictConfig, precision: str | None = None) -> str:
    trained = OmegaConf.to_container(cfg, resolve=True)
    _recipe_rules(trained, {}, precision)
    return recipe_of(trained)


def recipe_of_params(params: dict[str, str]) -> str:
    """The recipe of a run of an older harness, which did not tag its recipe, from its params (the
    flattened effective config): the same keys dropped, its own hash space (values are strings)."""
    tree: dict = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return "old-" + recipe_of(tree)


def study(fingerprints: list[str]) -> str:
    """A sweep's nets, as a short hash: the same study launched again goes on in its parent run."""
    return hashlib.sha256(" ".join(sorted(fingerprints)).encode()).hexdigest()[:16]


def unused_notes(job: Job, overridden: list[str]) -> list[str]:
    """A note for every key the user set (in `overridden`, Hydra's override strings) that this
    job does not use."""
    keys = {override.split("=", 1)[0].lstrip("+~") for override in overridden}
    return [f"note: {key} has no effect here: {why}." for key, why in job.unused.items() if key in keys]
