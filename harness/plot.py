"""`python -m harness.plot`: the paper's figures, claims and tables from tracked runs.

    python -m harness.plot                       # the latest sweep in ./mlruns
    python -m harness.plot --parent RUN_ID       # one sweep (every run it trained or reused)
    python -m harness.plot --experiment degradation --filter "tags.dataset = 'cifar10'"

Everything is read from MLflow (`harness.tracking.runs`), so any store that holds the runs can
be plotted; the report itself is `harness.report`.
"""

import argparse
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.config import default_store
from harness.report import report_runs, report_sweep
from harness.tracking.runs import latest_sweep, load_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=None, help="tracking URI (default: the SQLite store in ./mlruns)")
    parser.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--experiment", help="every run of this experiment instead of one sweep")
    parser.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"tags.dataset = 'cifar10'\"")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: figures/<selection>)")
    parser.add_argument("--min-effect", type=float, default=1.0, help="points of error a claim must reach (default 1)")
    parser.add_argument("--confidence", type=float, default=0.95, help="of the t intervals (default 0.95)")
    args = parser.parse_args(argv)
    if not 0 < args.confidence < 1 or args.min_effect < 0:
        print(
            f"error: --confidence={args.confidence} must lie between 0 and 1 and --min-effect={args.min_effect} "
            "must be 0 or more.",
            file=sys.stderr,
        )
        return 2

    client = MlflowClient(tracking_uri=args.uri or default_store())
    if args.experiment or (args.filter and not args.parent):
        names = [args.experiment] if args.experiment else None
        experiments = [e for e in client.search_experiments() if names is None or e.name in names]
        if not experiments:
            print(f"error: no experiment named {args.experiment!r} in {client.tracking_uri}.", file=sys.stderr)
            return 2
        runs = load_runs(client, [e.experiment_id for e in experiments], args.filter)
        label = args.experiment or "filtered"
        if runs.empty:
            print(f"error: no runs match experiment={args.experiment!r} filter={args.filter!r}.", file=sys.stderr)
            return 2
        out = args.out or Path("figures") / label
        written = report_runs(client, runs, out, f"Runs of {label}", args.min_effect, args.confidence)
    else:
        parent = args.parent or latest_sweep(client)
        if parent is None:
            print(
                f"error: no sweep in {client.tracking_uri}; run one with python -m harness.run -m ...", file=sys.stderr
            )
            return 2
        out = args.out or Path("figures") / parent
        written = report_sweep(client, parent, out, args.min_effect, args.confidence)
        if not written:
            print(f"error: sweep {parent} has no runs to plot.", file=sys.stderr)
            return 2
    print(f"Wrote {len(written)} files to {out}: {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
