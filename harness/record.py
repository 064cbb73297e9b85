"""The run record: every tag, param, metric and artifact that a run of this harness carries in
the tracking store, and the one place that builds them (writers) and parses them (readers).

Two kinds of runs: a training run (role `job`, one per net) and a sweep's parent run (role
`sweep`). The training loop, the probes, the sweep, the lease and the UI write through the
names here; `harness.tracking.runs` and the sweep read through `parse_job` and `member_row`.
No MLflow import: MLflow's own tag names are spelled out below (tests compare them with
`mlflow.utils.mlflow_tags`).
"""

import functools
import getpass
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from harness import identity
from harness.models import PARAMETER_KEYS, model_name, resolve_shortcut, shortcut_parameters
from harness.palette import SWEEP_COLOUR, run_colour
from harness.sequential import Design

REPO = Path(__file__).resolve().parents[1]

# MLflow's own tags, which its UI shows.
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # a run's description
RUN_COLOUR = "mlflow.runColor"  # a hex colour: the run's lines and legend entry in every chart
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
USER = "mlflow.user"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_DIRTY = "mlflow.source.git.dirty"

# Tags of both kinds of runs.
ROLE = "harness.role"  # "job" on a training run, "sweep" on a sweep's parent run
JOB, SWEEP = "job", "sweep"

# Tags of a training run: the net as it was built (for filtering and grouping in the UI) ...
NET_TAGS = ("model", "family", "depth", "residual", "shortcut", *PARAMETER_KEYS, "activation", "dataset", "seed",
            "precision")  # fmt: skip
# ... where and how it ran ...
MACHINE_TAGS = ("git_commit", "torch_version", "device", "device_name", "threads", "openmp_wait",
                "slurm_job_id", "ray_node_id")  # fmt: skip
# ... and the harness's own bookkeeping.
FINGERPRINT = "harness.fingerprint"  # harness.identity.fingerprint: one net
RECIPE = "harness.recipe"  # harness.identity.recipe: what the nets of one study share
HEARTBEAT = "harness.heartbeat"  # the lease (harness.lease), JSON
CHECKPOINT = "harness.checkpoint"  # the path of its last checkpoint
ERROR = "harness.error"  # "Type: message" of what stopped it
# "environment" (disk, store, data: resumable), "run" (a bug: trained anew) or "diverged" (a result: the
# same seed diverges again, so a relaunch keeps it, as P2 keeps its "fail")
FAILURE = "harness.failure"
ENVIRONMENT, RUN, DIVERGED = "environment", "run", "diverged"
SUPERSEDED_BY = "harness.superseded_by"  # a retried net's new run: this one left its sweep
DIVERGED_AT = "harness.diverged_at"  # the iteration whose loss was not finite
SMALL_INPUT = "harness.small_input"  # pixels, where an ImageNet-style net sees a small image

# Tags of a sweep's parent run.
SWEEP_DIR = "harness.sweep_dir"
STUDY = "harness.study"  # harness.identity.study: all the sweep's nets
JOBS = "harness.jobs"
OVERRIDES = "harness.overrides"
DESIGN = "harness.design"  # the study's design (harness.sequential.Design), JSON, from its first look
MEMBERS = "harness.members"  # after the sweep: runs in its report, of them trained and reused
TRAINED = "harness.trained"
REUSED = "harness.reused"

# Experiments: the UI's settings, and the claims of harness.lease (deleted experiments).
EXPERIMENT_KIND = "mlflow.experimentKind"
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."  # one experiment tag per saved view
CLAIM_PREFIX = "harness-claim"  # the name of a claim experiment starts so
CLAIMED_BY = "harness.claimed_by"

# Metrics of a training run, indexed by iterations completed. Errors are fractions.
TRAIN_LOSS, TRAIN_ERROR, LR = "train_loss", "train_error", "lr"  # the mean over each logging window
WARMUP_ENDED_AT = "warmup_ended_at"
FINAL_TRAIN_LOSS, FINAL_TRAIN_ERROR = "final_train_loss", "final_train_error"  # the final model, training images
# The wall time of the loop (evaluations and probes included) per iteration this launch trained:
# what `harness.plan` estimates a study's time from.
SECONDS_PER_ITERATION = "seconds_per_iteration"
# Peak memory, in MiB: the process's resident set (for a sweep's jobs in one process, the peak of
# all so far), and on CUDA the tensors' peak on the device during this run.
PEAK_RSS_MB, PEAK_GPU_MB = "peak_rss_mb", "peak_gpu_mb"
MACHINE_METRICS = (SECONDS_PER_ITERATION, PEAK_RSS_MB, PEAK_GPU_MB)  # the only ones that differ between repeats
RESPONSE_STD_MEAN = "response_std_mean"  # probes (harness.analysis)
SIGNAL_RATIO = "output_grad_first_over_last"
EVAL_PREFIX = {"test": "test", "validation": "val"}  # held-out training images are never `test_*`


def eval_metric(split: str, kind: str = "error") -> str:
    """test_error, val_loss, ...: the evaluation split's metric of one kind (error or loss)."""
    return f"{EVAL_PREFIX[split]}_{kind}"


# Artifacts.
CONFIG_FILE = "config.yaml"  # the resolved config
OVERRIDES_FILE = "overrides.yaml"  # the job's overrides
SUMMARY_FILE = "summary.json"  # harness.train.Result
MODEL_FILE = "model.pt"  # the final state_dict
PROBE_FOLDER = "analysis"  # one probe table per probe
MEMBERS_TABLE = "members.csv"  # on a sweep's parent run: every run its report covers
FIGURES_FOLDER = "figures"  # on a sweep's parent run: the report and its figures


def probe_table(step: int) -> str:
    """The artifact path of the probe table taken after `step` iterations."""
    return f"{PROBE_FOLDER}/step-{step:07d}.csv"


def probe_step(path: str) -> int:
    return int(PurePosixPath(path).stem.removeprefix("step-"))


# Filters for MlflowClient.search_runs.
JOBS_FILTER = f"tags.`{ROLE}` = '{JOB}'"
SWEEPS_FILTER = f"tags.`{ROLE}` = '{SWEEP}'"


def fingerprint_filter(fingerprint: str) -> str:
    return f"tags.`{FINGERPRINT}` = '{fingerprint}'"


def study_filter(study: str) -> str:
    return f"{SWEEPS_FILTER} AND tags.`{STUDY}` = '{study}'"


def children_filter(parent_run_id: str) -> str:
    return f"tags.`{PARENT}` = '{parent_run_id}'"


# Writers.


@dataclass
class Machine:
    """Where and how a run is executed: what its tags and params record beside the net."""

    device: str = "cpu"  # as the param `device`; the GPU's or CPU's name in `device_name`
    threads: int = 1
    torch_version: str = "unknown"
    device_name: str | None = None
    openmp_wait: str = ""  # how torch's threads wait for work (harness/__init__.py)
    placement: dict = field(default_factory=dict)  # the SLURM job or Ray node that ran it


@functools.cache
def source_commit() -> str:
    """The harness's git commit: a hash, "HASH-dirty" or "unknown"; asked once per process."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or $USER
        return "unknown"


def source_tags(commit: str) -> dict[str, str]:
    """MLflow's own tags, shown as "Source", "Created by" and the commit in the UI."""
    tags = {SOURCE_NAME: "harness.run", SOURCE_TYPE: "LOCAL", USER: user()}
    if commit != "unknown":
        tags[GIT_COMMIT] = commit.removesuffix("-dirty")
        tags[GIT_DIRTY] = str(commit.endswith("-dirty")).lower()
    return tags


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params are flat."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def job_tags(job: identity.Job, machine: Machine, commit: str) -> dict[str, str]:
    """A training run's tags, as it is opened."""
    cfg = job.config
    family, shortcut = cfg.family, cfg.shortcut
    default_shortcut = resolve_shortcut("auto", cfg.depth, family)
    tags = {
        ROLE: JOB,
        "model": job.name,
        "family": family,
        "depth": cfg.depth,
        "residual": cfg.residual,
        "shortcut": shortcut,
        **job.parameters,
        "activation": cfg.activation,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "precision": cfg.precision,
        **(job.decided.measured.tags() if job.decided.measured else {}),
        "git_commit": commit,
        "torch_version": machine.torch_version,
        "device": machine.device,
        **({"device_name": machine.device_name} if machine.device_name else {}),
        "threads": machine.threads,
        "openmp_wait": machine.openmp_wait,
        **machine.placement,
        RECIPE: job.recipe,
        RUN_COLOUR: run_colour(cfg.depth, cfg.residual, shortcut, cfg.activation, default_shortcut),
        **source_tags(commit),
        FINGERPRINT: job.fingerprint,
    }
    return {key: str(value) for key, value in tags.items()}


def job_params(job: identity.Job, machine: Machine) -> dict[str, Any]:
    """A training run's params: the effective config, flat, with the device and thread count."""
    return flatten({**job.trained, "device": machine.device, "threads": machine.threads})


def sweep_tags(study: str, sweep_dir: str, jobs: int, overrides: str, commit: str) -> dict[str, str]:
    """A sweep's parent run, as it is opened: neutral in the charts, and a description until
    `harness.tracking.ui.describe_sweep` replaces it."""
    note = f"A sweep of {jobs} jobs. When it ends, this description holds its final errors and where its report is."
    return {
        ROLE: SWEEP,
        SWEEP_DIR: sweep_dir,
        STUDY: study,
        JOBS: str(jobs),
        OVERRIDES: overrides,
        RUN_COLOUR: SWEEP_COLOUR,
        NOTE: note,
        **source_tags(commit),
    }


def design_of(parent) -> Design:
    """The design a study's parent run recorded at its first look (the default where it has none:
    a sweep of an earlier harness)."""
    recorded = parent.data.tags.get(DESIGN)
    return Design.of(json.loads(recorded)) if recorded else Design()


def sweep_result_tags(members: int, trained: int) -> dict[str, str]:
    return {MEMBERS: str(members), TRAINED: str(trained), REUSED: str(members - trained)}


# Readers.

RUN_COLUMNS = [
    "run_id", "name", "status", "parent_id", "recipe", "dataset", "family", "depth", "residual", "shortcut",
    *PARAMETER_KEYS, "activation", "seed", "variant", "model", "iterations", "batch_size", "optimizer", "lr", "augment",
    "resize",
    "warmup", "precision", "eval_split", "train_error", "early_train_error", "final_train_error", "eval_error",
    "response_std_mean", "diverged_at",
]  # fmt: skip
MEMBER_COLUMNS = ["run_id", "name", "seed", "status", "role", "overrides"]
# The two curves of a run's figures, the test or validation curve as `eval_error`.
CURVE_METRICS = {TRAIN_ERROR: "train_error", eval_metric("test"): "eval_error", eval_metric("validation"): "eval_error"}


# A run's early training error (P2 Fig. 1: the original unit's "falls very slowly at the beginning"):
# its running training error over the logging windows that end in the second tenth of the run,
# iterations 101 to 200 of the cpu_short budget's 1000 (after P1's warm-up, at most 100 there).
EARLY_END = 5  # the early stretch ends at a fifth of the run's iterations, and begins half way to it


def early_stretch(iterations: int) -> tuple[int, int]:
    """(first, last) iteration of a run's early stretch, whose windows' training error it averages."""
    end = iterations // EARLY_END
    return end // 2 + 1, end


def early_train_error(history, iterations: int) -> float:
    """The mean running training error, in %, of the windows (`train_error` points) that end in
    the run's early stretch; NaN where it logged none there."""
    first, last = early_stretch(iterations)
    values = [point.value for point in history if first <= point.step <= last]
    return 100 * sum(values) / len(values) if values else float("nan")


def _percent(metrics: dict, key: str) -> float:
    return 100 * metrics[key] if key in metrics else float("nan")


def _warmup(params: dict) -> str:
    """P1's warm-up rule as the run's params state it, in words."""
    lr = params.get("schedule.warmup_lr")
    if lr in (None, "None"):
        return "none"
    rule = f"lr {lr} until {100 * float(params['schedule.warmup_until_error']):.0f}% error"
    if params.get("schedule.warmup_max_iterations") not in (None, "None"):
        rule += f", at most {params['schedule.warmup_max_iterations']} iterations"
    if params.get("schedule.warmup_min_depth", "0") != "0":
        rule += f", depth ≥ {params['schedule.warmup_min_depth']}"
    return rule


def eval_split_of(metrics: dict) -> str:
    return "validation" if eval_metric("validation") in metrics else "test"


def parse_job(run) -> dict:
    """A training run (an MLflow `Run`) as one row of RUN_COLUMNS; errors in percent."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    residual = tags["residual"] == "True"
    shortcut = tags["shortcut"] if residual else "none"
    activation = tags["activation"]
    depth = int(tags["depth"])
    parameters = shortcut_parameters(tags)
    family = tags.get("family", "cifar")
    eval_split = eval_split_of(metrics)
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "parent_id": tags.get(PARENT),
        "recipe": tags[RECIPE] if RECIPE in tags else identity.recipe_of_params(params),
        "dataset": tags["dataset"],
        "family": family,
        "depth": depth,
        "residual": residual,
        "shortcut": shortcut,
        "activation": activation,
        "seed": int(tags["seed"]),
        "variant": model_name(None, residual, shortcut if residual else "zero_pad", activation, family, **parameters),
        "model": model_name(depth, residual, shortcut if residual else "zero_pad", activation, family, **parameters),
        **{key: parameters.get(key, float("nan")) for key in PARAMETER_KEYS},
        "iterations": int(params.get("schedule.iterations", 0)),
        "batch_size": int(params.get("schedule.batch_size", 0)),
        "optimizer": params.get("optimizer.name", "?"),
        "lr": float(params.get("optimizer.lr", "nan")),
        "augment": params.get("dataset.augment") == "True",
        "resize": params.get("dataset.resize", "None"),
        "warmup": _warmup(params),
        "precision": params.get("precision", "fp32"),  # runs of earlier versions trained in fp32
        "eval_split": eval_split,
        # search_runs holds each metric's last value: the final running training error, the final
        # model's training error, and the final error on the whole evaluation split.
        "train_error": _percent(metrics, TRAIN_ERROR),
        "final_train_error": _percent(metrics, FINAL_TRAIN_ERROR),
        "eval_error": _percent(metrics, eval_metric(eval_split)),
        "response_std_mean": metrics.get(RESPONSE_STD_MEAN, float("nan")),
        "diverged_at": float(tags.get(DIVERGED_AT, "nan")),
    }


def member_row(run, parent_run_id: str, overrides: str) -> dict:
    """A sweep's member: the run that holds one of its nets, trained by this sweep or reused."""
    role = "trained" if run.data.tags.get(PARENT) == parent_run_id else "reused"
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "seed": run.data.tags.get("seed"),
        "status": run.info.status,
        "role": role,
        "overrides": overrides,
    }


def is_result(run) -> bool:
    """A run whose net has its outcome: FINISHED, or diverged (the same seed diverges again)."""
    return run.info.status == "FINISHED" or run.data.tags.get(FAILURE) == DIVERGED


def is_current(run) -> bool:
    """Not superseded: the run still holds its net in its sweep."""
    return SUPERSEDED_BY not in run.data.tags


def order_key(run, name: str) -> tuple:
    """Plain before residual, then by depth: the order of the nets in a sweep's description."""
    return run.data.tags.get("residual") == "True", int(run.data.tags.get("depth", 0)), name
