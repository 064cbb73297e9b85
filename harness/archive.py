"""`python -m harness.archive`: a sweep's finished runs as files, and back into a store.

    python -m harness.archive export results/budget_curve     # the latest sweep in ./mlruns
    python -m harness.archive export results/x --parent RUN_ID --uri http://127.0.0.1:5000
    python -m harness.archive import results/budget_curve     # into ./mlruns, or --uri

A study outlives its store: a checkout without mlruns/, a machine given back, the GPU box that
trained the runs. The export writes the sweep's parent run and every finished run it covers (and
every run that diverged: a result, as P2's "fail"; and those a growing study's look under way has
finished) as
one JSON file each: name, status, times, tags, params, every metric's whole history and the
text artifacts (config, summary, probe tables). The import writes them into a store as they
were, under new run ids, so that launching the sweep's command against that store skips them
(their nets are FINISHED there), goes on in the imported parent run and trains the rest, and the
report and the planner read them as their own. Left out: unfinished runs (their checkpoints
stay with the store they are in), each run's final weights (model.pt: binary, megabytes a run)
and the parent's figures, which the sweep's end or `python -m harness.plot` draws again.
"""

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from harness import record
from harness.config import default_store
from harness.errors import HarnessError
from harness.tracking.mlflow_store import StoreError, connect, find_run, missing_sqlite_file, supersede
from harness.tracking.runs import latest_sweep, sweep_members
from harness.tracking.writer import BATCH_POINTS

FORMAT = 1
SWEEP_FILE = "sweep.json"
LEFT_OUT = (record.MODEL_FILE, record.FIGURES_FOLDER)
# The machine's, not the run's: a lease and a checkpoint path mean nothing in another store.
MACHINE_TAGS = (record.HEARTBEAT, record.CHECKPOINT, record.RUN_NAME)  # the name travels as the run's own
ARCHIVED_FROM = "harness.archived_from"  # on an imported run: its run id in the store it was exported from


class ArchiveError(HarnessError):
    """A folder that is not an archive of this format, or a sweep that is not there."""


def run_data(client: MlflowClient, run) -> dict:
    """Everything of one run that another store needs to hold it as it was."""
    run_id = run.info.run_id
    return {
        "run_id": run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "tags": dict(sorted((key, value) for key, value in run.data.tags.items() if key not in MACHINE_TAGS)),
        "params": dict(sorted(run.data.params.items())),
        "metrics": {
            key: sorted([m.step, m.timestamp, m.value] for m in client.get_metric_history(run_id, key))
            for key in sorted(run.data.metrics)
        },
        "artifacts": text_artifacts(client, run_id),
    }


def text_artifacts(client: MlflowClient, run_id: str) -> dict[str, str]:
    files = {}
    with tempfile.TemporaryDirectory() as folder:

        def walk(path: str | None) -> None:
            for artifact in client.list_artifacts(run_id, path):
                if artifact.path in LEFT_OUT:
                    continue
                if artifact.is_dir:
                    walk(artifact.path)
                else:
                    files[artifact.path] = Path(client.download_artifacts(run_id, artifact.path, folder)).read_text()

        walk(None)
    return dict(sorted(files.items()))


def file_name(data: dict) -> str:
    """plain-56_seed2_1a2b3c4d.json: the net, its seed, and the run id that tells apart its budgets."""
    return f"{data['name']}_seed{data['tags'].get('seed', 'none')}_{data['run_id'][:8]}.json"


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps({"format": FORMAT, **data}, indent=1) + "\n")


def export_sweep(client: MlflowClient, parent_run_id: str, folder: Path) -> tuple[int, int]:
    """The sweep and its finished (or diverged) runs into `folder` (one file each; a run exported
    before is written again, identically). Returns (runs exported, runs left out as unfinished)."""
    try:
        parent = client.get_run(parent_run_id)
    except Exception as error:
        raise ArchiveError(f"there is no run {parent_run_id} in {client.tracking_uri} ({type(error).__name__})")
    if parent.data.tags.get(record.ROLE) != record.SWEEP:
        raise ArchiveError(f"run {parent_run_id} ({parent.info.run_name}) is not a sweep's parent run")
    # Its members (as of its last look) and its own children: a look under way has trained some.
    children = client.search_runs([parent.info.experiment_id], record.children_filter(parent_run_id), max_results=50000)
    run_ids = dict.fromkeys([*sweep_members(client, parent_run_id), *(run.info.run_id for run in children)])
    members = [client.get_run(run_id) for run_id in run_ids]
    done = [run for run in members if record.is_result(run)]
    folder.mkdir(parents=True, exist_ok=True)
    experiment = client.get_experiment(parent.info.experiment_id).name
    write(folder / SWEEP_FILE, {"experiment": experiment, "run": run_data(client, parent)})
    for run in done:
        data = run_data(client, run)
        write(folder / file_name(data), {"run": data})
    return len(done), len(members) - len(done)


def read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ArchiveError(f"{path} cannot be read as an archive file ({type(error).__name__}: {error})")
    if data.get("format") != FORMAT or "run" not in data:
        raise ArchiveError(
            f"{path} is not a file of this harness's archive format {FORMAT} (format: {data.get('format')!r})"
        )
    return data


def read_archive(folder: Path) -> tuple[dict, list[dict]]:
    """(the sweep's file, its runs' files) of an archive folder."""
    if not (folder / SWEEP_FILE).is_file():
        raise ArchiveError(
            f"{folder} holds no {SWEEP_FILE}: it is not a folder written by python -m harness.archive export"
        )
    runs = [read(path) for path in sorted(folder.glob("*.json")) if path.name != SWEEP_FILE]
    return read(folder / SWEEP_FILE), runs


def create(client: MlflowClient, experiment_id: str, data: dict, tags: dict[str, str]) -> str:
    """A run as `data` holds it, with `tags`: a new id, the original times, status and history."""
    run_id = client.create_run(
        experiment_id, start_time=data["start_time"], tags=tags, run_name=data["name"]
    ).info.run_id
    params = [Param(key, value) for key, value in data["params"].items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a request
        client.log_batch(run_id, params=params[start : start + 100])
    points = [
        Metric(key, value, timestamp, step)
        for key, history in data["metrics"].items()
        for step, timestamp, value in history
    ]
    for start in range(0, len(points), BATCH_POINTS):
        client.log_batch(run_id, metrics=points[start : start + BATCH_POINTS])
    status = "KILLED" if data["status"] == "RUNNING" else data["status"]  # nothing trains it in this store
    client.set_terminated(run_id, status, end_time=data["end_time"])
    return run_id


def import_sweep(uri: str, folder: Path) -> tuple[str, int, int]:
    """The archive's sweep and runs into the store at `uri`; runs whose nets are FINISHED (or
    diverged) there already are not imported again. Returns (the sweep's parent run id there, runs imported,
    runs already there)."""
    sweep, runs = read_archive(folder)
    client, experiment_id = connect(uri, sweep["experiment"])
    original = sweep["run"]
    earlier = client.search_runs(
        [experiment_id],
        record.study_filter(original["tags"][record.STUDY]),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if earlier:  # the same study, launched or imported before: its runs go on there
        parent_id = earlier[0].info.run_id
    else:
        parent_id = create(client, experiment_id, original, {**original["tags"], ARCHIVED_FROM: original["run_id"]})
    new_ids, imported = {}, 0
    for data in (entry["run"] for entry in runs):
        held = find_run(client, experiment_id, data["tags"].get(record.FINGERPRINT, ""))
        if held is not None and record.is_result(held):
            new_ids[data["run_id"]] = held.info.run_id
            continue
        tags = {key: value for key, value in data["tags"].items() if key != record.PARENT}
        if data["tags"].get(record.PARENT) == original["run_id"]:  # a run the sweep trained (not one it reused)
            tags[record.PARENT] = parent_id
        run_id = create(client, experiment_id, data, {**tags, ARCHIVED_FROM: data["run_id"]})
        for path, text in data["artifacts"].items():  # config, summary, probe tables: the report reads them
            client.log_text(run_id, text, path)
        new_ids[data["run_id"]] = run_id
        imported += 1
        if held is not None:  # an unfinished run of the same net, there before: this one takes its place
            supersede(client, held, run_id)
    if not earlier:
        for path, text in original["artifacts"].items():
            if path == record.MEMBERS_TABLE:  # the members under their ids in this store
                table = pd.read_csv(io.StringIO(text))
                table = table[table["run_id"].isin(new_ids)].assign(run_id=lambda t: t["run_id"].map(new_ids))
                text = table.to_csv(index=False)
            client.log_text(parent_id, text, path)
    return parent_id, imported, len(runs) - imported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["export", "import"])
    parser.add_argument("folder", type=Path, help="the archive: a folder of JSON files, one per run")
    parser.add_argument("--uri", default=None, help="tracking URI (default: the SQLite store in ./mlruns)")
    parser.add_argument("--parent", help="export: a sweep's parent run id (default: the latest sweep)")
    args = parser.parse_args(argv)
    uri = args.uri or default_store()
    try:
        if args.command == "export":
            if database := missing_sqlite_file(uri):  # reading must not leave an empty store behind
                raise ArchiveError(f"there is no store at {database}; give --uri of the store that holds the sweep")
            client = MlflowClient(tracking_uri=uri)
            parent = args.parent or latest_sweep(client)
            if parent is None:
                raise ArchiveError(f"there is no sweep in {uri} to export; give --uri of the store that holds it")
            exported, unfinished = export_sweep(client, parent, args.folder)
            left = (
                f"; {unfinished} unfinished run(s) left out: they go on in the store they are in" if unfinished else ""
            )
            print(f"Exported sweep {parent} with {exported} finished run(s) to {args.folder}{left}.")
        else:
            parent, imported, there = import_sweep(uri, args.folder)
            print(
                f"Imported {args.folder} into {uri}: sweep {parent}, {imported} run(s) imported, {there} already "
                "there. The sweep's own command, launched against this store, skips them and trains the rest."
            )
    except (ArchiveError, StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
