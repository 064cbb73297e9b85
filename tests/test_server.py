"""`python -m harness.server`: an MLflow tracking server with a PostgreSQL store and served artifacts."""

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from harness import server

from helpers import REPO
from helpers.commands import wait_for
from helpers.servers import free_ports, server_state_folder, skip_without_postgres


def cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "harness.server", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def count(state: Path, query: str, *params) -> int:
    """One number from the server's PostgreSQL database, read directly, not through MLflow."""
    paths = server.Paths(state)
    with server.connect_postgres(paths, server.pg_port(paths)) as db, db.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()[0]


@pytest.mark.integration
def test_runs_metrics_params_and_artifacts_round_trip(tracking_server, tracking_server_state, tmp_path):
    client = MlflowClient(tracking_uri=tracking_server)
    experiment_id = client.create_experiment("server-round-trip")
    run_id = client.create_run(experiment_id, run_name="round-trip").info.run_id
    now = int(time.time() * 1000)
    losses = [1.0 / (step + 1) for step in range(250)]
    metrics = [Metric("loss", value, now, step) for step, value in enumerate(losses)]
    client.log_batch(run_id, metrics=metrics, params=[Param("depth", "20")])
    text = "logged through the tracking server\n"
    client.log_text(run_id, text, "notes/hello.txt")
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == list(enumerate(losses))
    assert run.data.params == {"depth": "20"}
    assert Path(client.download_artifacts(run_id, "notes/hello.txt", str(tmp_path))).read_text() == text
    # Served artifacts: the client only knows an mlflow-artifacts: URI; the file lies in the server's state folder.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    [on_disk] = (tracking_server_state / "artifacts").rglob("hello.txt")
    assert run_id in on_disk.parts and on_disk.read_text() == text
    # The store is PostgreSQL.
    state = tracking_server_state
    assert count(state, "SELECT count(*) FROM runs WHERE run_uuid = %s AND status = 'FINISHED'", run_id) == 1
    assert count(state, "SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'loss'", run_id) == 250


@pytest.mark.integration
def test_start_is_idempotent_and_stop_stops_both(tracking_server, tracking_server_state):
    paths = server.Paths(tracking_server_state)
    pid, pg_port = server.server_pid(paths), server.pg_port(paths)
    port = int(tracking_server.rsplit(":", 1)[1])
    assert server.start(tracking_server_state) == tracking_server  # other ports asked for, the running one answered
    assert server.server_pid(paths) == pid
    status = cli("status", "--state", str(tracking_server_state))
    assert status.returncode == 0 and "), answering" in status.stdout, status.stdout + status.stderr
    client = MlflowClient(tracking_uri=tracking_server)
    run_id = client.create_run(client.create_experiment("server-restart")).info.run_id

    try:
        server.stop(tracking_server_state)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{tracking_server}/health", timeout=5)
        assert not server.running(pid)  # uvicorn's workers too: the whole process group
        pg_ctl = server.postgres_programs()["pg_ctl"]
        command = server.as_postgres([pg_ctl, "status", "-D", str(paths.pg_data)])
        pg_status = subprocess.run(command, cwd=paths.postgres, capture_output=True, text=True, check=False)
        assert pg_status.returncode == 3, pg_status.stdout  # pg_ctl's "no server running"
        with pytest.raises(psycopg2.OperationalError):
            server.connect_postgres(paths, pg_port)
        server.stop(tracking_server_state)  # nothing left to stop: no error
        status = cli("status", "--state", str(tracking_server_state))
        assert status.returncode == 1 and status.stdout.count("not running") == 2, status.stdout + status.stderr
    finally:  # the session's other tests keep their server, on the same ports
        restarted = server.start(tracking_server_state, port=port, pg_port=pg_port, workers=2)
    assert restarted == tracking_server
    assert MlflowClient(tracking_uri=tracking_server).get_run(run_id).info.run_id == run_id  # kept across the restart


def log_losses(client: MlflowClient, run_id: str, steps: range) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (step + 1), now, step) for step in steps])


@pytest.mark.integration
def test_start_restarts_whichever_part_died(tracking_server, tracking_server_state):
    paths = server.Paths(tracking_server_state)
    port, pg_port = int(tracking_server.rsplit(":", 1)[1]), server.pg_port(paths)
    state = ("--state", str(tracking_server_state))
    client = MlflowClient(tracking_uri=tracking_server)
    run_id = client.create_run(client.create_experiment("server-heals")).info.run_id
    log_losses(client, run_id, range(0, 5))
    try:
        # PostgreSQL dies under the MLflow server, which still answers /health (it never reads the database).
        os.kill(int(paths.pg_pid.read_text().splitlines()[0]), signal.SIGKILL)
        status = cli("status", *state)
        assert status.returncode == 1, status.stdout + status.stderr
        assert "PostgreSQL: not running" in status.stdout and "FAILING store queries: " in status.stdout
        started = cli("start", *state)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Restarted PostgreSQL, which was not running; the MLflow server at" in started.stdout
        assert server.pg_port(paths) == pg_port  # the socket the running server's store URI names
        log_losses(client, run_id, range(5, 10))  # the same server, its connections to PostgreSQL renewed

        # The MLflow server dies, PostgreSQL runs on.
        pid = server.server_pid(paths)
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not server.running(pid), 60, "end of the killed MLflow server", interval=0.1)
        status = cli("status", *state)
        assert status.returncode == 1 and "MLflow server: not running" in status.stdout, status.stdout
        started = cli("start", *state, "--port", str(port), "--workers", "2")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Restarted the MLflow server, which was not running; PostgreSQL kept running" in started.stdout
        log_losses(client, run_id, range(10, 15))
        assert cli("status", *state).returncode == 0
    finally:  # the session's other tests keep their server, on the same ports, whatever a failure left dead
        server.start(tracking_server_state, port=port, pg_port=pg_port, workers=2)
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(15))


@pytest.mark.integration
def test_a_server_for_other_machines_asks_a_password(capsys, monkeypatch):
    skip_without_postgres()
    port, pg_port = free_ports(2)
    local = f"http://127.0.0.1:{port}"
    with server_state_folder() as state:
        try:
            server.start(state, host="0.0.0.0", port=port, pg_port=pg_port, workers=1)
            password = state / "auth" / "admin-password"
            login = f"MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$(cat {password}) python -m harness.run"
            assert login in capsys.readouterr().out
            assert stat.S_IMODE(password.stat().st_mode) == 0o600
            with pytest.raises(urllib.error.HTTPError) as refused:
                server.LOCAL.open(f"{local}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
            assert refused.value.code == 401
            # Nor PostgreSQL: no TCP port, and a socket that only its own user (and root) may open.
            with closing(socket.socket()) as probe:
                assert probe.connect_ex(("127.0.0.1", pg_port)) != 0
            assert stat.S_IMODE((state / "postgres" / f".s.PGSQL.{pg_port}").stat().st_mode) == 0o700

            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password.read_text().strip())
            client = MlflowClient(tracking_uri=local)
            run_id = client.create_run(client.create_experiment("server-auth")).info.run_id
            client.log_metric(run_id, "loss", 0.5, step=1)
            assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 0.5)]
            status = cli("status", "--state", str(state))  # its store query logs in
            assert status.returncode == 0, status.stdout + status.stderr
        finally:
            server.stop(state)


def test_the_admin_password_is_made_once_and_kept(tmp_path, capsys):
    paths = server.Paths(tmp_path)
    password = server.admin_password(paths)
    assert len(password) >= 32 and server.admin_password(paths) == password
    assert stat.S_IMODE(paths.auth.stat().st_mode) == 0o700 and stat.S_IMODE(paths.password.stat().st_mode) == 0o600
    paths.password.unlink()
    paths.auth_db.touch()  # MLflow created the admin user with the password now lost: a new one would not work
    with pytest.raises(server.ServerError, match=f"{paths.password} is missing, but {paths.auth_db} holds"):
        server.admin_password(paths)


def test_a_killed_postmaster_left_a_zombie_counts_as_dead(tmp_path):
    paths = server.Paths(tmp_path)
    paths.pg_data.mkdir(parents=True)
    zombie = subprocess.Popen(["true"])  # unreaped until wait(), like a postmaster whose init never reaps it
    try:
        wait_for(lambda: server.process_fields(zombie.pid)[:1] == ["Z"], 60, "zombie", interval=0.01)
        paths.pg_pid.write_text(f"{zombie.pid}\n{paths.pg_data}\n0\n5433\n")
        socket_lock = paths.postgres / ".s.PGSQL.5433.lock"
        socket_lock.write_text(f"{os.getpid()}\n")
        assert not server.pg_running(paths)
        server.clear_stale_locks(paths, 5433)
        assert not paths.pg_pid.exists() and socket_lock.exists()  # the lock of a live process stays
    finally:
        zombie.wait()


def test_bad_port_is_one_line_of_usage_error(tmp_path):
    result = cli("start", "--port", "99999", "--state", str(tmp_path / "state"))
    assert result.returncode == 2
    assert "error: argument --port: 99999 is not a TCP port" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_missing_postgres_says_what_to_install(tmp_path):
    result = cli("start", "--pg-bin", str(tmp_path / "nowhere"), "--state", str(tmp_path / "state"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [paragraph] = result.stderr.strip().split("\n")
    assert paragraph.startswith("error: PostgreSQL's server programs (initdb, pg_ctl, postgres) are not in")
    assert "apt-get install postgresql" in paragraph
    assert not (tmp_path / "state").exists()


def test_postgres_is_looked_up_on_path_then_in_debians_folders(tmp_path, monkeypatch):
    for version in ("9.6", "13", "15"):
        (tmp_path / version / "bin").mkdir(parents=True)
        for name in server.PG_PROGRAMS:
            (tmp_path / version / "bin" / name).touch(mode=0o755)
    (tmp_path / "15" / "bin" / "postgres").unlink()  # an incomplete install is passed over
    monkeypatch.setattr(server, "PG_INSTALLS", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert server.postgres_programs()["pg_ctl"] == str(tmp_path / "13" / "bin" / "pg_ctl")
    monkeypatch.setenv("PATH", str(tmp_path / "9.6" / "bin"))
    assert server.postgres_programs()["initdb"] == str(tmp_path / "9.6" / "bin" / "initdb")
    monkeypatch.setattr(server, "PG_INSTALLS", tmp_path / "empty")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(server.ServerError, match="apt-get install postgresql"):
        server.postgres_programs()


@pytest.mark.integration
def test_unreachable_state_folder_is_explained_as_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root hands PostgreSQL to the postgres user")
    closed = [p for p in tmp_path.parents if not p.stat().st_mode & 0o001]
    if not closed:
        pytest.skip(f"every folder above {tmp_path} is open to other users")
    skip_without_postgres()
    port, pg_port = free_ports(2)
    result = cli("start", "--state", str(tmp_path / "state"), "--port", str(port), "--pg-port", str(pg_port))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot reach {tmp_path / 'state' / 'postgres'}: {closed[-1]} is closed to other users" in result.stderr
    assert "chmod" in result.stderr
    assert not (tmp_path / "state" / "postgres" / "data").exists()


def test_a_server_for_other_machines_accepts_its_host_name():
    name = socket.gethostname()
    assert server.exposure_options("127.0.0.1", 5000) == []
    options = dict(zip(*[iter(server.exposure_options("0.0.0.0", 5000))] * 2))
    hosts = options["--allowed-hosts"].split(",")
    assert {name, f"{name}:*", "localhost:*", "127.0.0.1:*", "10.*"} <= set(hosts)
    assert options["--cors-allowed-origins"] == f"http://{name}:5000"
