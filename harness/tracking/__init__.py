"""What the training loop may tell a tracker. MLflow lives behind this in `mlflow_store`.

A tracker also keeps the run's checkpoints, because a checkpoint and the curves logged up to
it must stay consistent: a resumed run may neither repeat nor skip a metric step.
"""

import copy
from collections import defaultdict
from typing import Protocol

from harness import record


class Tracker(Protocol):
    name: str

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_table(self, table, artifact_file: str) -> None:
        """Keep a pandas table as a file of the run (CSV)."""

    def checkpoint(self, state: dict) -> None:
        """Keep `state` and everything logged so far; a stopped run restarts from here."""

    def restore(self) -> dict | None:
        """The last checkpoint's state, or None for a fresh run."""


class MemoryTracker:
    """Keeps curves and the last checkpoint in memory: for benchmarks and tests."""

    def __init__(self, name: str = "run"):
        self.name = name
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.saved: tuple[dict, dict] | None = None
        self.tables: dict = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.history[key].append((step, value))

    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """What repeats bit for bit: every metric but the machine's measurements (time, memory)."""
        return {key: points for key, points in self.history.items() if key not in record.MACHINE_METRICS}

    def log_table(self, table, artifact_file: str) -> None:
        self.tables[artifact_file] = table

    def checkpoint(self, state: dict) -> None:
        self.saved = copy.deepcopy((state, dict(self.history)))

    def restore(self) -> dict | None:
        """Like a process killed after its last checkpoint: what was logged since is gone."""
        if self.saved is None:
            return None
        state, history = copy.deepcopy(self.saved)
        self.history = defaultdict(list, history)
        return state
