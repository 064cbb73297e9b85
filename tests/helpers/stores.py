"""Empty MLflow stores, copied from one made per test process."""

import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def store_template() -> Path:
    """An empty MLflow store, created once per test process: MLflow's migrations take seconds,
    minutes on a busy machine, and are MLflow's to test."""
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="harness-store-template-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def empty_store(path: Path) -> str:
    """The URI of an empty SQLite store at `path` (a copy of the template)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(store_template(), path)
    return f"sqlite:///{path}"
