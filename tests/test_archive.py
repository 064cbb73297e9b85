"""A sweep moved to another store (`python -m harness.archive`): its finished runs arrive as they
were, and the sweep's command launched against the new store skips them."""

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness import archive, record
from harness.tracking.runs import load_runs, write_members

from helpers import REPO
from helpers.known_runs import experiment_store, log_run, sweep_run
from helpers.stores import empty_store
from helpers.sweeps import sweep

NETS = ("depth=8", "residual=true,false")
# Where the two stores must differ: the run's own id, its sweep's, and what says where it came from.
STORE_TAGS = {record.PARENT, archive.ARCHIVED_FROM}


def held(client: MlflowClient) -> dict:
    """Every job run of the store, by net and seed: what a run is, apart from its ids."""
    experiment = client.get_experiment_by_name("degradation")
    runs = {}
    for run in client.search_runs([experiment.experiment_id], record.JOBS_FILTER):
        if record.SUPERSEDED_BY in run.data.tags:
            continue
        metrics = {
            key: [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics
        }
        tags = {k: v for k, v in run.data.tags.items() if k not in STORE_TAGS | set(archive.MACHINE_TAGS)}
        info = (run.info.status, run.info.start_time, run.info.end_time)
        runs[run.info.run_name, run.data.tags["seed"]] = (info, tags, run.data.params, metrics)
    return runs


@pytest.mark.integration
def test_a_sweep_moves_to_a_fresh_store_and_its_command_skips_what_it_finished(tmp_path, store, data_root):
    sweep(tmp_path, store, data_root, *NETS, "tracking.figures=false")
    source = MlflowClient(store)
    folder = tmp_path / "archive"
    assert archive.main(["export", str(folder), "--uri", store]) == 0
    assert sorted(path.name for path in folder.iterdir())[-1] == archive.SWEEP_FILE
    run_files = [json.loads(path.read_text())["run"] for path in folder.glob("*_seed0_*.json")]
    assert sorted(data["name"] for data in run_files) == ["plain-8", "resnet-8"]
    assert all(record.MODEL_FILE not in data["artifacts"] for data in run_files)
    assert all(record.probe_table(20) in data["artifacts"] for data in run_files)

    # The new store holds a killed run of plain-8 already: the imported finished one replaces it.
    target = empty_store(tmp_path / "moved" / "mlflow.db")
    client = MlflowClient(target)
    experiment_id = client.create_experiment("degradation")
    plain = next(data for data in run_files if data["name"] == "plain-8")
    stale = client.create_run(experiment_id, tags={record.ROLE: record.JOB, **{
        key: plain["tags"][key] for key in (record.FINGERPRINT, "seed")}}, run_name="plain-8")  # fmt: skip
    client.set_terminated(stale.info.run_id, "KILLED")
    assert archive.main(["import", str(folder), "--uri", target]) == 0
    assert held(client) == held(source)
    assert record.SUPERSEDED_BY in client.get_run(stale.info.run_id).data.tags
    (parent,) = client.search_runs([experiment_id], record.SWEEPS_FILTER)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment_id], record.children_filter(parent.info.run_id))
    assert len(children) == 2
    for child in children:  # the report's probe figures read the tables in the new store
        assert record.probe_table(20) in [
            artifact.path for artifact in client.list_artifacts(child.info.run_id, record.PROBE_FOLDER)
        ]
    assert archive.import_sweep(target, folder)[1:] == (0, 2)  # again: nothing new

    relaunched = sweep(tmp_path, target, data_root, *NETS, "tracking.figures=false")
    assert relaunched.stdout.count("skip ") == 2
    assert (
        "Sweep done: 2 runs: 2 trained, 0 reused from earlier sweeps, 0 not finished "
        f"(MLflow parent run {parent.info.run_id})" in relaunched.stdout
    )
    assert held(client) == held(source)  # nothing trained again


def test_a_folder_that_is_no_archive_is_named_with_what_would_be_one(tmp_path, store, capsys):
    (tmp_path / "runs").mkdir()
    assert archive.main(["import", str(tmp_path / "runs"), "--uri", store]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'runs'} holds no sweep.json" in error and "python -m harness.archive export" in error
    assert archive.main(["export", str(tmp_path / "out"), "--uri", store]) == 2
    assert "there is no sweep in" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    nowhere = tmp_path / "none" / "mlflow.db"
    assert archive.main(["export", str(tmp_path / "out"), "--uri", f"sqlite:///{nowhere}"]) == 2
    assert f"there is no store at {nowhere}" in capsys.readouterr().err
    assert not nowhere.parent.exists()


def test_the_committed_archives_import_whole_into_one_store(tmp_path, store):
    """docs/results/* (the runs behind docs/results.md: the budget curve in fp32 on an AVX2 host and
    in bf16 on an AVX512-BF16 one, C3 at 4000 iterations with 5 seeds, P2's shortcuts and units
    studies) stay readable by this harness and land in one store as one sweep each: the precisions
    make the curves two studies, so a relaunch goes on in the one its machine resolves; a run that
    an earlier folder brought (a net two studies share, in one experiment) is not imported twice."""
    client = MlflowClient(store)
    parents, archived, imported_runs, seen = set(), {}, 0, set()
    folders = sorted(path.parent for path in (REPO / "docs" / "results").glob(f"*/{archive.SWEEP_FILE}"))
    for folder in folders:
        experiment = json.loads((folder / archive.SWEEP_FILE).read_text())["experiment"]
        files = [json.loads(path.read_text())["run"] for path in folder.glob("*_seed*_*.json")]
        nets = {(experiment, data["tags"][record.FINGERPRINT]) for data in files}
        reused = len(nets & seen)
        parent, imported, there = archive.import_sweep(store, folder)
        assert (imported, there) == (len(files) - reused, reused) and imported >= 4, folder
        seen |= nets
        parents.add(parent)
        archived |= {
            data["run_id"]: data["metrics"].get(record.FINAL_TRAIN_ERROR, [[0, 0, None]])[0][2] for data in files
        }
        imported_runs += imported
    assert {folder.name for folder in folders} >= {"budget_curve", "budget_curve_bf16", "c3_4000_5seeds", "p2_units"}
    assert len(parents) == len(folders)
    runs = load_runs(client, [experiment.experiment_id for experiment in client.search_experiments()])
    assert len(runs) == imported_runs
    failed = runs[runs["status"] != "FINISHED"]
    assert set(failed["status"]) <= {"FAILED"} and failed["diverged_at"].notna().all()  # results: diverged
    for run in runs.itertuples():  # each as it was archived (the same net may be in two experiments)
        original = archived[client.get_run(run.run_id).data.tags[archive.ARCHIVED_FROM]]
        assert (
            run.final_train_error == pytest.approx(100 * original) if original is not None else run.status == "FAILED"
        )


def test_a_run_that_diverged_is_archived_as_the_result_it_is(tmp_path):
    """P2's dropout shortcut diverges: its run goes into the archive with the finished ones, comes
    back FAILED with its divergence, and a second import does not add it again."""
    client, experiment_id = experiment_store(tmp_path)
    parent = sweep_run(client, experiment_id)
    log_run(client, experiment_id, 56, True, parent=parent)
    log_run(client, experiment_id, 56, True, parent=parent, net=("shortcut=dropout",), diverged_at=500)
    client.set_terminated(parent)
    assert archive.export_sweep(client, parent, tmp_path / "archive") == (2, 0)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert archive.import_sweep(other, tmp_path / "archive")[1:] == (2, 0)
    assert archive.import_sweep(other, tmp_path / "archive")[1:] == (0, 2)
    runs = load_runs(MlflowClient(other), [MlflowClient(other).get_experiment_by_name("degradation").experiment_id])
    dropout = runs[runs["model"] == "resnet-56-drop0.5"].iloc[0]
    assert dropout["status"] == "FAILED" and dropout["diverged_at"] == 500


def test_the_finished_runs_of_a_look_under_way_are_archived_too(tmp_path):
    """A growing study writes its members after each look; a session that ends in the middle of
    a look archives that look's finished runs as well (they are the sweep's own children), so
    that a relaunch on another machine skips them."""
    client, experiment_id = experiment_store(tmp_path)
    parent = sweep_run(client, experiment_id)
    judged = log_run(client, experiment_id, 56, True, parent=parent)
    members = pd.DataFrame(
        [record.member_row(client.get_run(judged), parent, "depth=56")], columns=record.MEMBER_COLUMNS
    )
    write_members(client, parent, members, tmp_path / "sweep")
    log_run(client, experiment_id, 56, True, seed=1, parent=parent)  # the next look's, finished
    log_run(client, experiment_id, 56, True, seed=2, parent=parent, status="RUNNING")  # still training
    assert archive.export_sweep(client, parent, tmp_path / "archive") == (2, 1)
    assert sorted(path.name.split("_")[1] for path in (tmp_path / "archive").glob("resnet-56_*")) == ["seed0", "seed1"]
