import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from harness import record

# A test run started in the background of a script (`pytest &`, nohup) inherits SIGINT ignored, and
# so would every command the tests start; the Ctrl-C tests need it as a terminal gives it. A handled
# signal is reset to its default in the commands started (exec), an ignored one is not.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
# What precision=auto means is measured once per machine and kept (harness/precision.py): the suite
# keeps it in a folder of its own, shared by its workers (they inherit this), never the user's.
if "HARNESS_CACHE_DIR" not in os.environ:
    os.environ["HARNESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="harness-cache-")
# The in-process tests run tiny models, which intra-op threads only slow down, badly so when
# another process is using the cores.
torch.set_num_threads(1)
# A tiny budget: 20 iterations of 32 images, curves every 5 and evaluations every 10
# iterations, evaluated on 500 held-out training images instead of the 10k test images.
TINY = ["schedule=smoke", "dataset.validation_size=500"]

# Every metric of a TINY run, and the steps it must have: curves every 5 iterations,
# evaluations (on the 500 held-out images: val_*, never test_*) and probes every 10, the final
# model's training error once at the end. No warm-up in the smoke schedule: no warmup_ended_at.
EXPECTED_STEPS = {
    "train_error": [5, 10, 15, 20], "train_loss": [5, 10, 15, 20], "lr": [5, 10, 15, 20],
    "val_error": [10, 20], "val_loss": [10, 20], "final_train_error": [20], "final_train_loss": [20],
    "response_std_mean": [10, 20], "output_grad_first_over_last": [10, 20], "seconds_per_iteration": [20],
    "peak_rss_mb": [20],
}  # fmt: skip


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, then switch to eval
    mode, so that a BN cannot pass for the identity in a hand-computed forward."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()


def layers_in_execution_order(model: torch.nn.Module, x: torch.Tensor) -> list[torch.nn.Module]:
    """The convs, BNs and linear layers of `model` in the order a forward pass runs them."""
    order = []
    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return order


def check_sweep(client, jobs: int, experiment: str = "degradation") -> list:
    """One parent run with `jobs` FINISHED children, each with every metric step; returns them."""
    experiment = client.get_experiment_by_name(experiment)
    parents = client.search_runs([experiment.experiment_id], record.SWEEPS_FILTER)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], record.children_filter(parents[0].info.run_id))
    assert len(children) == jobs
    assert len(client.search_runs([experiment.experiment_id], record.JOBS_FILTER)) == jobs
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get(record.ERROR)
        assert set(run.data.metrics) == set(EXPECTED_STEPS)
        for key, steps in EXPECTED_STEPS.items():
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps, (run.info.run_name, key)
    assert len({(r.data.tags["residual"], r.data.tags["seed"]) for r in children}) == jobs
    return children


def most_at_once(runs) -> int:
    """The largest number of runs that were training at the same moment."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


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


@pytest.fixture
def store(tmp_path) -> str:
    """The default store's place in the test's folder (./mlruns/mlflow.db), empty."""
    return empty_store(tmp_path / "mlruns" / "mlflow.db")


def wait_for(look, timeout: float = 1200, what: str = "", job: subprocess.Popen | None = None, interval: float = 0.02):
    """What `look()` returns once it is truthy; fails after `timeout` seconds, or once `job` (a
    process the test started) has ended first."""
    deadline = time.monotonic() + timeout
    while not (found := look()):
        if job is not None and job.poll() is not None:
            pytest.fail(f"the job ended before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(interval)
    return found


def job_runs(client, experiment: str = "degradation") -> list:
    """The training runs of an experiment (none where it does not exist yet)."""
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], record.JOBS_FILTER) if found else []


def sweep(tmp_path: Path, store: str, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """A tiny sweep (TINY) of these overrides into `store`, as a user launches it; it must succeed."""
    result = harness_command(
        "harness.run", "-m", *overrides, *TINY, f"tracking.uri={store}", f"dataset.root={data_root}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def harness_command(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS` as a user would, in `cwd`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on, all distinct: held open together while the kernel picks them."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def skip_without_postgres() -> None:
    from harness import server

    try:
        server.postgres_programs()
    except server.ServerError as error:
        pytest.skip(str(error))


@contextlib.contextmanager
def server_state_folder():
    """A state folder for a tracking server, removed afterwards. Not under pytest's tmp_path: when the tests
    run as root, PostgreSQL runs as `postgres`, who cannot enter /tmp/pytest-of-root (mode 700)."""
    state = Path(tempfile.mkdtemp(prefix="harness-server-"))
    state.chmod(0o755)
    try:
        yield state
    finally:
        shutil.rmtree(state, ignore_errors=True)


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
