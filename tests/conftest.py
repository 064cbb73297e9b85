import os
import signal
import tempfile
from pathlib import Path

import pytest
import torch

from helpers.servers import free_ports, server_state_folder, skip_without_postgres
from helpers.stores import empty_store

# A test run started in the background of a script (`pytest &`, nohup) inherits SIGINT ignored, and
# so would every command the tests start; the Ctrl-C tests need it as a terminal gives it. A handled
# signal is reset to its default in the commands started (exec), an ignored one is not.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# What precision=auto means is measured once per machine and kept (harness/precision.py): the suite
# keeps it in a folder of its own, shared by its workers (they inherit this), never the user's.
if "HARNESS_CACHE_DIR" not in os.environ:
    os.environ["HARNESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="harness-cache-")
# The in-process tests run tiny models, which intra-op threads only slow down, badly so when
# another process is using the cores.
torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): one worker more than the cores. The long tests spend about
    a third of their time waiting (SLURM's 30-s ticks, store outages, servers and Ray starting),
    which the extra worker fills."""
    return len(os.sched_getaffinity(0)) + 1


@pytest.fixture(autouse=True)
def restore_torch_state():
    """Global torch state that a test (or the code it runs in process: `harness.run.run_job`
    sets deterministic algorithms and the thread count) may change, as it was before the test:
    the next test in the same worker must not inherit it."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One Fashion-MNIST copy for the whole session (unzipped from Debian's package)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def store(tmp_path) -> str:
    """The default store's place in the test's folder (./mlruns/mlflow.db), empty."""
    return empty_store(tmp_path / "mlruns" / "mlflow.db")


@pytest.fixture(scope="session")
def tracking_server_state() -> Path:
    """The state folder of the session's tracking server."""
    with server_state_folder() as state:
        yield state


@pytest.fixture(scope="session")
def tracking_server(tracking_server_state) -> str:
    """The tracking URI of an MLflow server (`python -m harness.server`) with a PostgreSQL store, on free
    ports, for the whole session; skipped where PostgreSQL is not installed."""
    from harness import server

    skip_without_postgres()
    port, pg_port = free_ports(2)
    try:
        yield server.start(tracking_server_state, port=port, pg_port=pg_port, workers=2)
    finally:  # also after a failed start, which may leave PostgreSQL running
        server.stop(tracking_server_state)
