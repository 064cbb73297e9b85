"""What the training loop may tell a tracker. MLflow lives behind this in `mlflow_store`."""

from collections import defaultdict
from typing import Protocol


class Tracker(Protocol):
    name: str

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class MemoryTracker:
    """Keeps every curve in memory: for benchmarks and tests that need no store."""

    def __init__(self, name: str = "run"):
        self.name = name
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.history[key].append((step, value))
