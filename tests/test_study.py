"""A sweep's study as plain functions of an MLflow client (harness.study), without Hydra: its
parent run, its members, the jobs that never opened a run, and how it ends."""

import json

import pytest

from harness import record, study
from harness.config import ConfigError, compose_config
from harness.sequential import Design
from harness.tracking.mlflow_store import MlflowRun, connect

from helpers.config import resolved
from helpers.stores import empty_store

OVERRIDES = [
    ("depth=8", "residual=true"),
    ("depth=8", "residual=false"),
    ("depth=8", "residual=true", "shortcut=zero_pad"),
]


@pytest.fixture
def opened(tmp_path):
    """A sweep of three jobs (two of them one net) whose parent run is open and whose first net
    trained; the plain net never opened a run."""
    client, experiment_id = connect(empty_store(tmp_path / "mlflow.db"), "degradation")
    jobs = [study.SweepJob(overrides, resolved(compose_config(*overrides))) for overrides in OVERRIDES]
    parent = study.open_parent_run(client, experiment_id, jobs, str(tmp_path), "depth=8 residual=true,false", False)
    job = jobs[0].job
    run = MlflowRun.start(client, experiment_id, job.name, record.job_tags(job, record.Machine(), "unknown"), parent)
    run.log_metrics({record.FINAL_TRAIN_ERROR: 0.1, record.eval_metric("test"): 0.12}, 20)
    run.sync()
    client.set_terminated(run.run_id, "FINISHED")
    return study.Sweep(client, experiment_id, parent, jobs), run.run_id


def test_jobs_that_train_one_net_are_one_member(opened):
    sweep, run_id = opened
    assert [number for number, _ in study.distinct(sweep.jobs)] == [0, 1]
    members = study.members(sweep)
    assert list(members["run_id"]) == [run_id] and list(members["role"]) == ["trained"]
    assert members["overrides"].iloc[0] == "depth=8 residual=true"


def test_a_job_without_a_run_is_not_started_and_a_vanished_slurm_job_is_named(opened):
    sweep, _ = opened
    (row,) = study.not_started(sweep)
    assert (row["name"], row["status"], row["overrides"]) == ("plain-8", "NOT STARTED", "depth=8 residual=false")
    sweep.vanished[1] = "17_1"
    assert study.not_started(sweep)[0]["status"] == "NOT STARTED (its SLURM job 17_1 vanished)"


def test_the_same_study_goes_on_in_its_parent_run_unless_rerun(opened, tmp_path):
    sweep, _ = opened
    again = study.open_parent_run(sweep.client, sweep.experiment_id, sweep.jobs, str(tmp_path), "same", False)
    assert again == sweep.parent_run_id
    other = study.open_parent_run(sweep.client, sweep.experiment_id, sweep.jobs, str(tmp_path), "same", True)
    assert other != sweep.parent_run_id


def test_a_sweep_with_a_job_that_never_started_ends_failed_and_names_it(opened, tmp_path):
    sweep, run_id = opened
    report = compose_config().report
    ending = study.conclude(sweep, tmp_path, "sqlite:///x", report, lambda n: ("cmd", 1.0), False, "Wall time: 0:01.")
    assert ending.lines[0] == (
        "Sweep done: 1 runs: 1 trained, 0 reused from earlier sweeps, 1 not finished "
        f"(MLflow parent run {sweep.parent_run_id})."
    )
    assert ending.lines[1] == "Wall time: 0:01."
    assert ending.failure.startswith("1 run(s) did not finish: plain-8 (run none, depth=8 residual=false): NOT STARTED")
    parent = sweep.client.get_run(sweep.parent_run_id)
    assert parent.info.status == "FAILED"
    assert (parent.data.tags[record.MEMBERS], parent.data.tags[record.TRAINED]) == ("1", "1")
    assert (tmp_path / record.MEMBERS_TABLE).exists()


def test_a_study_keeps_the_design_of_its_first_look_and_refuses_another(opened):
    """Recorded on the parent run when it opens; the same study launched with another design is
    refused before anything changes, with the keys that go on and how to start anew (issue 44)."""
    sweep, _ = opened
    parent = sweep.client.get_run(sweep.parent_run_id)
    assert record.design_of(parent) == Design() and json.loads(parent.data.tags[record.DESIGN])["looks"] == [
        3,
        5,
        8,
        12,
    ]
    sweep.client.set_terminated(sweep.parent_run_id, "KILLED")
    other = Design(looks=(3, 6, 10))
    with pytest.raises(ConfigError) as refused:
        study.open_parent_run(sweep.client, sweep.experiment_id, sweep.jobs, "folder", "same", False, other)
    said = str(refused.value)
    assert "looks at 3, 5, 8, 12 seeds" in said and "looks at 3, 6, 10 seeds" in said
    assert "design.looks=[3,5,8,12] design.alpha=0.05 design.spending=obrien_fleming design.family=[]" in said
    assert "tracking.experiment=NAME" in said
    assert sweep.client.get_run(sweep.parent_run_id).info.status == "KILLED"  # untouched
    again = study.open_parent_run(sweep.client, sweep.experiment_id, sweep.jobs, "folder", "same", False, Design())
    assert again == sweep.parent_run_id
