"""The run record (`harness.record`): what a run writes is what the readers parse, MLflow's
own tag names are MLflow's, and stores written by earlier versions are still read and matched."""

import gzip
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils import mlflow_tags

from harness import identity, precision, record, study
from harness.config import compose_config
from harness.device import device_name
from harness.job import Kind, run_job
from harness.tracking.runs import load_curves, load_runs

from helpers.commands import harness_command
from helpers.config import resolved
from helpers.sweeps import EXPECTED_STEPS, TINY

LEGACY_STORE = Path(__file__).parent / "data" / "store-3f14647.db.gz"
# The sweep that made it, with commit 3f14647 (the record before this module existed):
#   python -m harness.run -m residual=true,false schedule=smoke dataset.validation_size=500 \
#       tracking.log_model=false analysis=false tracking.figures=false
# (smoke's final pass was on 1000 training images then).
LEGACY_SWEEP = [
    "residual=true,false",
    "schedule=smoke",
    "schedule.final_train_subset=1000",
    "dataset.validation_size=500",
    "tracking.log_model=false",
    "analysis=false",
    "tracking.figures=false",
]
LEGACY_PARENT = "1365c71f25854789af3c65f67103760c"


def test_mlflows_own_tag_names_are_mlflows():
    assert record.PARENT == mlflow_tags.MLFLOW_PARENT_RUN_ID
    assert record.RUN_NAME == mlflow_tags.MLFLOW_RUN_NAME
    assert record.NOTE == mlflow_tags.MLFLOW_RUN_NOTE
    assert record.SOURCE_NAME == mlflow_tags.MLFLOW_SOURCE_NAME
    assert record.SOURCE_TYPE == mlflow_tags.MLFLOW_SOURCE_TYPE
    assert record.USER == mlflow_tags.MLFLOW_USER
    assert record.GIT_COMMIT == mlflow_tags.MLFLOW_GIT_COMMIT
    assert record.GIT_DIRTY == mlflow_tags.MLFLOW_GIT_DIRTY


def test_a_tiny_run_reads_back_through_the_reader_as_it_was_configured(tmp_path, store, data_root):
    cfg = compose_config(
        *TINY,
        "depth=8",
        "residual=false",
        "seed=3",
        "precision=auto",
        f"tracking.uri={store}",
        f"dataset.root={data_root}",
        "tracking.log_model=false",
    )
    job = resolved(cfg)
    assert run_job(job).kind is Kind.FINISHED
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("degradation").experiment_id
    (row,) = load_runs(client, [experiment_id]).to_dict("records")
    assert (row["model"], row["depth"], row["residual"], row["shortcut"], row["seed"]) == (
        "plain-8",
        8,
        False,
        "none",
        3,
    )
    assert (row["iterations"], row["batch_size"], row["eval_split"], row["status"]) == (
        20,
        32,
        "validation",
        "FINISHED",
    )
    assert row["recipe"] == job.recipe
    run = client.get_run(row["run_id"])
    assert run.data.tags[record.FINGERPRINT] == job.fingerprint
    assert run.data.tags[record.ROLE] == record.JOB and run.info.run_name == job.name
    assert int(run.data.tags["threads"]) == job.decided.threads
    precision = job.decided.precision  # what precision=auto is here, at the run's threads
    assert run.data.tags["precision"] == run.data.params["precision"] == row["precision"] == precision
    assert set(run.data.metrics) == set(EXPECTED_STEPS)  # every metric the loop and the probes write
    assert 100 * run.data.metrics[record.FINAL_TRAIN_ERROR] == pytest.approx(row["final_train_error"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {record.CONFIG_FILE, record.OVERRIDES_FILE, record.SUMMARY_FILE, record.PROBE_FOLDER} <= artifacts
    probes = [a.path for a in client.list_artifacts(run.info.run_id, record.PROBE_FOLDER)]
    assert [record.probe_step(path) for path in probes] == [10, 20] and probes[0] == record.probe_table(10)
    curves = load_curves(client, load_runs(client, [experiment_id]))
    assert set(curves["metric"]) == {"train_error", "eval_error"}
    assert sorted(curves[curves["metric"] == "eval_error"]["step"]) == EXPECTED_STEPS["val_error"]


def legacy_store(folder: Path) -> str:
    """A copy of the store that commit 3f14647 wrote, its artifacts pointed into `folder`."""
    database = folder / "mlruns" / "mlflow.db"
    database.parent.mkdir(parents=True)
    with gzip.open(LEGACY_STORE) as packed, open(database, "wb") as unpacked:
        shutil.copyfileobj(packed, unpacked)
    artifacts = (folder / "mlruns" / "artifacts").as_uri()
    with sqlite3.connect(database) as db:
        db.execute("UPDATE experiments SET artifact_location = ?", (f"{artifacts}",))
        db.execute("UPDATE runs SET artifact_uri = ? || '/' || run_uuid || '/artifacts'", (artifacts,))
    return f"sqlite:///{database}"


def test_runs_of_an_earlier_version_parse_and_keep_their_identity(tmp_path):
    """The record of commit 3f14647: the reader parses it, and today's fingerprints and recipes
    of the same configs are the ones it stored, so a relaunch finds its runs."""
    client = MlflowClient(legacy_store(tmp_path))
    runs = load_runs(client, [client.get_experiment_by_name("degradation").experiment_id]).set_index("model")
    assert sorted(runs.index) == ["plain-20", "resnet-20"] and set(runs["status"]) == {"FINISHED"}
    for residual in (True, False):
        cfg = compose_config(f"residual={residual}", *LEGACY_SWEEP[1:], "precision=fp32")
        job = resolved(cfg)
        stored = client.get_run(runs.loc[job.name, "run_id"]).data.tags
        assert stored[record.FINGERPRINT] == job.fingerprint
        assert stored[record.RECIPE] == job.recipe == runs.loc[job.name, "recipe"]
    (parent,) = client.search_runs([client.get_experiment_by_name("degradation").experiment_id], record.SWEEPS_FILTER)
    fingerprints = [
        identity.fingerprint(compose_config(f"residual={r}", *LEGACY_SWEEP[1:], "precision=fp32"))
        for r in (True, False)
    ]
    assert parent.data.tags[record.STUDY] == identity.study(fingerprints)


def test_an_older_run_without_a_recipe_tag_gets_one_from_its_params():
    class Run:  # the parts of an MLflow run that the reader reads
        class info:
            run_id, run_name, status = "r1", "resnet-20", "FINISHED"

        class data:
            tags = {
                "residual": "True",
                "shortcut": "zero_pad",
                "activation": "post",
                "depth": "20",
                "dataset": "cifar10",
                "seed": "0",
            }
            params = {"schedule.iterations": "64000", "depth": "20", "seed": "0", "threads": "2"}
            metrics = {}

    other = type(
        "Other", (Run,), {"data": type("data", (), {**vars(Run.data), "params": {**Run.data.params, "seed": "1"}})}
    )
    row = record.parse_job(Run)
    assert row["recipe"].startswith("old-")
    assert record.parse_job(other)["recipe"] == row["recipe"]  # the net's own keys leave the recipe


@pytest.fixture
def bf16_machine(tmp_path, monkeypatch):
    """This machine, as one where precision=auto measured bf16 at 1.67x fp32 (for the commands
    the test starts, and for this process from the moment the test calls it)."""

    def become():
        cache = tmp_path / "cache"
        cache.mkdir()
        bf16_here = precision.choose(device_name(torch.device("cpu")), 250.0, 150.0)
        (cache / "precision.json").write_text(json.dumps({bf16_here.machine: precision.asdict(bf16_here)}))
        monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
        precision.auto_decision.cache_clear()

    yield become
    precision.auto_decision.cache_clear()  # the next test reads the suite's own decision again


@pytest.mark.integration
def test_a_store_of_an_earlier_version_is_matched_on_relaunch(tmp_path, data_root, bf16_machine):
    """The same sweep launched against commit 3f14647's store at fp32 (what it trained) trains
    nothing and goes on in its parent run; on a machine where precision=auto measured bf16, the
    sweep notes that those fp32 runs are not reused (launched: the slow test below)."""
    store = legacy_store(tmp_path)
    sweep = ["harness.run", "-m", *LEGACY_SWEEP, f"tracking.uri={store}", f"dataset.root={data_root}"]
    result = harness_command(*sweep, "precision=fp32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("skip ") == 2
    assert f"goes on in MLflow parent run {LEGACY_PARENT}" in result.stderr + result.stdout
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("degradation").experiment_id
    assert len(client.search_runs([experiment_id], record.JOBS_FILTER)) == 2
    bf16_machine()
    nets = [compose_config(*LEGACY_SWEEP[1:], f"residual={residual}") for residual in (True, False)]
    (note,) = study.other_precision_notes(client, experiment_id, [resolved(cfg) for cfg in nets])
    assert note.startswith("note: precision=auto is bf16 on this machine; 2 net(s) of this sweep have fp32 runs")


@pytest.mark.slow  # trains 2 nets in bf16, which AVX2-only hosts emulate at a tenth of fp32's speed
@pytest.mark.integration
def test_a_bf16_machine_trains_anew_what_an_earlier_version_trained_in_fp32(tmp_path, data_root, bf16_machine):
    """Launched on a machine where precision=auto measured bf16, the sweep of 3f14647's store
    says once that its fp32 runs are not reused, and trains both nets in bf16."""
    store = legacy_store(tmp_path)
    bf16_machine()
    sweep = ["harness.run", "-m", *LEGACY_SWEEP, f"tracking.uri={store}", f"dataset.root={data_root}"]
    result = harness_command(*sweep, "precision=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    note = "note: precision=auto is bf16 on this machine; 2 net(s) of this sweep have fp32 runs in the store"
    assert result.stdout.count(note) == 1 and "skip " not in result.stdout
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("degradation").experiment_id
    bf16 = client.search_runs([experiment_id], f"{record.JOBS_FILTER} AND tags.precision = 'bf16'")
    assert len(bf16) == 2 and all(run.data.tags["precision_bf16_ms"] == "150.0" for run in bf16)
