"""Sweeps as a user launches them (`python -m harness.run -m ...`): a sweep's members are the
runs it trained and those it reused from earlier sweeps, and a net that several jobs ask for
is trained once. Depth 8 (one block per stage) on the TINY budget keeps each sweep short."""

import re
import tempfile

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness import record

from helpers.commands import harness_command
from helpers.sweeps import STEADY, TINY, job_runs, sweep

pytestmark = pytest.mark.integration


def parent_of(result) -> str:
    (parent,) = re.findall(r"Sweep done: .*\(MLflow parent run (\w+)\)", result.stdout)
    return parent


def artifact_text(client: MlflowClient, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        with open(client.download_artifacts(run_id, path, folder)) as file:
            return file.read()


def members(client: MlflowClient, parent: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        return pd.read_csv(client.download_artifacts(parent, "members.csv", folder))


def rows(report: str, model: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith(f"| {model} |")]


def test_a_sweep_reuses_the_finished_runs_of_an_earlier_sweep(tmp_path, store, data_root):
    first = sweep(tmp_path, store, data_root, "depth=8,14", "residual=true,false", "tracking.figures=false")
    assert "Sweep done: 4 runs: 4 trained, 0 reused from earlier sweeps, 0 not finished" in first.stdout
    client = MlflowClient(store)
    earlier = {(r.info.run_name, r.data.tags["seed"]): r.info.run_id for r in job_runs(client)}
    assert len(earlier) == 4

    # Seed 0 of the depth-8 nets is FINISHED already; seed 1 is new.
    second = sweep(tmp_path, store, data_root, "depth=8", "residual=true,false", "seed=0,1")
    assert "Sweep done: 4 runs: 2 trained, 2 reused from earlier sweeps, 0 not finished" in second.stdout
    assert second.stdout.count("skip ") == 2
    # Where it stands: the estimate at the start (none for the first sweep's 20-iteration runs,
    # measured for the second: the first ran these nets here), a line per job that ends, and the
    # wall time against the estimate.
    assert (
        "Estimate: 4 net(s) to train; no time estimate: runs under 200 iterations are not calibrated." in first.stdout
    )
    assert "Estimate: 2 net(s) to train, 2 reused; about " in second.stdout
    assert "(measured; plan=true details it)" in second.stdout
    assert "sweep: 4/4 jobs done (" in first.stdout and "sweep: 2/2 jobs done (" in second.stdout
    assert re.search(
        r"Wall time: \d+:\d\d from the command's start \(estimated at its start: \d+:\d\d\)", second.stdout
    )
    # 1 seed: every claim open, the next step the design's first look at 3 seeds, its command and time.
    assert "Verdicts (looks at 3, 5, 8, 12 seeds" in first.stdout and "C1 plain-14 vs plain-8: " in first.stdout
    assert "What to run next:" in first.stdout
    assert re.search(r"The design's next look, 1 of 4, is at 3 seeds for the claims still open \(C1 .*\): "
                     r"`python -m harness.run -m .*seed=0,1,2`, about \d+:\d\d here", first.stdout)  # fmt: skip
    parent = parent_of(second)
    assert parent != parent_of(first)
    runs = job_runs(client)
    assert len(runs) == 6  # the reused nets were not trained again
    new = {
        (r.info.run_name, r.data.tags["seed"]): r.info.run_id for r in runs if r.data.tags.get(record.PARENT) == parent
    }
    assert set(new) == {("plain-8", "1"), ("resnet-8", "1")}

    table = members(client, parent)
    assert set(table["run_id"]) == {earlier["plain-8", "0"], earlier["resnet-8", "0"], *new.values()}
    roles = dict(zip(table["run_id"], table["role"]))
    assert {roles[earlier["plain-8", "0"]], roles[earlier["resnet-8", "0"]]} == {"reused"}
    assert {roles[run_id] for run_id in new.values()} == {"trained"}
    tags = client.get_run(parent).data.tags
    assert (tags[record.MEMBERS], tags[record.TRAINED], tags[record.REUSED]) == ("4", "2", "2")

    report = artifact_text(client, parent, "figures/report.md")
    assert "4 finished runs" in report
    assert [row.split("|")[2].strip() for row in rows(report, "plain-8") + rows(report, "resnet-8")] == [
        "2",
        "2",
    ]  # seeds 0 and 1
    assert not re.search(r"(plain|resnet)-14\b", report)  # the earlier sweep's other nets are not this sweep's


def test_a_plain_net_is_trained_once_whatever_shortcut_the_sweep_names(tmp_path, store, data_root):
    result = sweep(
        tmp_path, store, data_root, "depth=8", "residual=true,false", "shortcut=zero_pad,projection,full_projection"
    )
    assert "Sweep done: 4 runs: 4 trained, 0 reused from earlier sweeps, 0 not finished" in result.stdout
    assert result.stdout.count("a plain net (residual=false) has no shortcuts") == 1, (
        result.stdout
    )  # once for the sweep
    assert "6 jobs train 4 distinct nets" in result.stdout
    client = MlflowClient(store)
    runs = job_runs(client)
    assert sorted(r.info.run_name for r in runs) == ["plain-8", "resnet-8", "resnet-8-B", "resnet-8-C"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(members(client, parent_of(result))) == 4

    report = artifact_text(client, parent_of(result), "figures/report.md")
    assert len(rows(report, "plain-8")) == 1
    assert [row.split("|")[2].strip() for row in rows(report, "plain-8")] == ["1"]
    assert {"resnet-8", "resnet-8-B", "resnet-8-C"} <= {
        line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| resnet")
    }
    assert "Residual variants" in report


def test_a_study_grows_itself_look_by_look_and_a_relaunch_trains_nothing_again(tmp_path, store, data_root):
    """hydra/sweeper=sequential with looks at 3 and 4 seeds: the first look trains seeds 0 to 2 of
    both nets, the second seed 3 of the nets its open claims compare, each look is judged and said,
    the members are the runs of both looks, the design is on the parent run; the same command again
    judges the looks from the store and trains nothing (issue 44)."""
    design = ("hydra/sweeper=sequential", "depth=8", "residual=true,false", "design.looks=[3,4]")
    first = sweep(tmp_path, store, data_root, *design)
    assert "Look 1 of 2: seeds 0 to 2 of 2 net(s), 6 job(s)" in first.stdout and "Estimate:" not in first.stdout
    assert "Look 1 of 2 (3 seeds):" in first.stdout and "the next look is at 4 seeds" in first.stdout
    assert first.stdout.index("sweep: 6/6 jobs done") < first.stdout.index("Look 1 of 2 (3 seeds):")
    assert "Look 2 of 2: seeds 3 to 3 of 2 net(s), 2 job(s)" in first.stdout
    assert "Look 2 of 2 (4 seeds):" in first.stdout and ": inconclusive (final, look 2 of 2, 4 seeds" in first.stdout
    assert "Sweep done: 8 runs: 8 trained" in first.stdout and "Verdicts (looks at 3, 4 seeds" in first.stdout
    client = MlflowClient(store)
    parent = client.get_run(parent_of(first))
    assert record.design_of(parent).looks == (3, 4)
    assert sorted(members(client, parent.info.run_id)["seed"]) == [0, 0, 1, 1, 2, 2, 3, 3]
    again = sweep(tmp_path, store, data_root, *design)
    assert parent_of(again) == parent.info.run_id and again.stdout.count("skip ") == 8
    assert len(job_runs(client)) == 8 and "Look 2 of 2 (4 seeds):" in again.stdout
    assert re.search(r"Wall time: \d+:\d\d from the command's start \(estimated look by look: \d+:\d\d\)", again.stdout)
    refused = harness_command(
        "harness.run", "-m", *design[:-1], "design.looks=[3,5]", *TINY, *STEADY, f"tracking.uri={store}",
        f"dataset.root={data_root}", cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2 and "declared its design at its first look" in refused.stderr
