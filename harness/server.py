"""`python -m harness.server start|stop|status`: a local MLflow tracking server for `tracking=server`.

The server keeps runs in PostgreSQL, in a private cluster that this module creates and runs on
loopback, and serves artifacts itself (`--serve-artifacts`), so that every job of a sweep, in any
process or on any machine that reaches the server, shares one store by HTTP alone.

    python -m harness.server start        # prints the URI and the override to use
    python -m harness.run tracking=server tracking.uri=http://127.0.0.1:5000
    python -m harness.server stop

Everything lives in one state folder (default ./mlruns/server):

    postgres/data           the PostgreSQL cluster, owned by the `postgres` user when run as root
    postgres/postgres.log   its log; its unix socket lies beside it
    artifacts/              the artifacts the server receives
    mlflow-server.log       the MLflow server's log
    mlflow-server.pid       its process id, the leader of its process group
    mlflow-server.json      its tracking URI, health URL and PostgreSQL port
"""

import argparse
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")
PG_INSTALLS = Path("/usr/lib/postgresql")  # Debian's layout: one VERSION/bin per installed major version
PG_USER = "mlflow"  # the cluster's superuser, whichever OS user runs the cluster
DATABASE = "mlflow"
WILDCARDS = ("0.0.0.0", "::")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT = 90  # seconds; the server imports MLflow in every worker, slow on a busy machine
STOP_TIMEOUT = 30
# The health check is always local; an http_proxy meant for the outside must not intercept it.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """A step failed; the message says what to do about it."""


class Paths:
    """Where the parts of one state folder live (see the module's docstring)."""

    def __init__(self, state: Path):
        self.state = state
        self.postgres = state / "postgres"  # owned by PostgreSQL's user: cluster, log and socket
        self.pg_data = self.postgres / "data"
        self.pg_log = self.postgres / "postgres.log"
        self.artifacts = state / "artifacts"
        self.log = state / "mlflow-server.log"
        self.pid = state / "mlflow-server.pid"
        self.info = state / "mlflow-server.json"


def postgres_programs(bin_dir: str | Path | None = None) -> dict[str, str]:
    """initdb, pg_ctl and postgres: from `bin_dir` if given, else from PATH, else from the newest
    /usr/lib/postgresql/VERSION/bin (Debian keeps them off PATH)."""
    if bin_dir is None:
        found = {name: shutil.which(name) for name in PG_PROGRAMS}
        if all(found.values()):
            return found
        version = {d: [int(n) for n in re.findall(r"\d+", d.parent.name)] for d in PG_INSTALLS.glob("*/bin")}
        candidates = sorted(version, key=version.get, reverse=True)
    else:
        candidates = [Path(bin_dir)]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in PG_PROGRAMS):
            return {name: str(candidate / name) for name in PG_PROGRAMS}
    where = f"in {bin_dir}" if bin_dir else f"on PATH or in {PG_INSTALLS}/*/bin"
    raise ServerError(
        f"PostgreSQL's server programs ({', '.join(PG_PROGRAMS)}) are not {where}. The tracking server keeps its "
        "runs in a private PostgreSQL cluster and needs them: install PostgreSQL (on Debian or Ubuntu: "
        "apt-get install postgresql, which puts them in /usr/lib/postgresql/VERSION/bin), or pass --pg-bin with "
        "the folder that holds them."
    )


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root, so root runs it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def run_pg(paths: Paths, *command: str) -> subprocess.CompletedProcess:
    # In a folder the `postgres` user may enter, else PostgreSQL's programs complain about the cwd.
    return subprocess.run(as_postgres(list(command)), cwd=paths.postgres, capture_output=True, text=True, check=False)


def tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
    return "\n".join(text) or "(empty)"


def check_port_free(port: int, what: str) -> None:
    """Fail now if something already listens on `port`: else a server that is not ours could answer
    our health check, or ours would die with a less obvious message."""
    with closing(socket.socket()) as probe:
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise ServerError(f"Port {port}, asked for {what}, is already in use; pick another with --{what}.")


def prepare_postgres_home(paths: Paths) -> None:
    """Create the folder PostgreSQL owns, and as root hand it to `postgres`, who must be able to reach it."""
    paths.postgres.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("No `postgres` user to run PostgreSQL as (it refuses root); install postgresql.") from None
    os.chown(paths.postgres, owner.pw_uid, owner.pw_gid)
    if subprocess.run(as_postgres(["test", "-x", str(paths.postgres)]), check=False).returncode != 0:
        closed = [p for p in reversed(paths.postgres.parents) if not p.stat().st_mode & stat.S_IXOTH]
        culprit = closed[0] if closed else "a folder above it"
        mode = f" (mode {stat.filemode(closed[0].stat().st_mode)})" if closed else ""
        raise ServerError(
            f"PostgreSQL refuses to run as root, so it runs as the `postgres` user, who cannot reach {paths.postgres}: "
            f"{culprit} is closed to other users{mode}. Pick a --state folder that every user may enter (e.g. "
            "mkdir -p /srv/mlflow && chmod 755 /srv/mlflow; not one under root's or pytest's private folders), or "
            f"open {culprit} with chmod o+x."
        )


def pg_running(paths: Paths, programs: dict[str, str]) -> bool:
    return run_pg(paths, programs["pg_ctl"], "status", "-D", str(paths.pg_data)).returncode == 0


def pg_port(paths: Paths) -> int:
    """The port of the running cluster: the fourth line of its postmaster.pid."""
    return int((paths.pg_data / "postmaster.pid").read_text().splitlines()[3])


def start_postgres(paths: Paths, programs: dict[str, str], port: int) -> int:
    """Create the cluster once, run it and create the database if missing; the port it runs on."""
    prepare_postgres_home(paths)
    if not (paths.pg_data / "PG_VERSION").exists():
        # Trust authentication, no passwords: acceptable only because the cluster listens on 127.0.0.1 and on a
        # unix socket inside the state folder, never on the network. Other machines reach the MLflow server only.
        options = ["-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C"]
        done = run_pg(paths, programs["initdb"], "-D", str(paths.pg_data), *options)
        if done.returncode != 0:
            raise ServerError(f"initdb could not create a cluster in {paths.pg_data}:\n{done.stdout}{done.stderr}")
        print(f"Created a PostgreSQL cluster in {paths.pg_data}")
    if pg_running(paths, programs):
        port = pg_port(paths)
    else:
        check_port_free(port, "pg-port")
        server = f"-c listen_addresses=127.0.0.1 -p {port} -k {shlex.quote(str(paths.postgres))}"
        # pg_ctl start waits until the cluster accepts connections, or fails.
        done = run_pg(
            paths, programs["pg_ctl"], "start", "-D", str(paths.pg_data), "-l", str(paths.pg_log), "-o", server
        )
        if done.returncode != 0:
            log = f"The end of {paths.pg_log}:\n{tail(paths.pg_log)}"
            raise ServerError(f"PostgreSQL did not start: {done.stdout}{done.stderr}{log}")
    import psycopg2  # only here: `stop` and `status` do without it

    with closing(psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres")) as connection:
        connection.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    print(f"PostgreSQL runs on 127.0.0.1:{port}, database {DATABASE} (log: {paths.pg_log})")
    return port


def public_name(host: str) -> str:
    """The name other machines reach a server listening on `host` by, as a URL wants it."""
    name = socket.gethostname() if host in WILDCARDS else host
    return f"[{name}]" if ":" in name else name


def exposure_options(host: str, port: int) -> list[str]:
    """MLflow's security middleware accepts only Host headers of loopback and private addresses, and
    state-changing browser requests only from localhost origins. A server listening for other machines
    must also accept the name they reach it by, and its UI's own origin."""
    if host in LOOPBACK:
        return []
    from mlflow.server.security_utils import get_default_allowed_hosts  # imports all of MLflow: seconds

    name = public_name(host)
    hosts = [*get_default_allowed_hosts(), name, f"{name}:*"]
    return ["--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", f"http://{name}:{port}"]


def running(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: in a container nobody may reap them."""
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def server_pid(paths: Paths) -> int | None:
    """The process group of this state folder's MLflow server, if it runs."""
    if not paths.pid.exists():
        return None
    pid = int(paths.pid.read_text())
    return pid if running(pid) else None


def healthy(url: str) -> bool:
    try:
        with LOCAL.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_group(pgid: int) -> None:
    """SIGTERM the whole group (the `mlflow server` command, uvicorn and its workers), SIGKILL what stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while running(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not running(pgid):
            return


def start_mlflow(paths: Paths, host: str, port: int, pg_port: int, workers: int) -> str:
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    uri = f"http://{public_name(host)}:{port}"
    health = f"http://{'127.0.0.1' if host in WILDCARDS else public_name(host)}:{port}/health"
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        # +psycopg2: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed.
        *("--backend-store-uri", f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{pg_port}/{DATABASE}"),
        *("--serve-artifacts", "--artifacts-destination", str(paths.artifacts)),
        *("--host", host, "--port", str(port), "--workers", str(workers)),
        *exposure_options(host, port),
    ]
    # MLflow 3 also starts a job runner with seven huey consumers, each importing MLflow, for GenAI jobs
    # (scorers, prompt optimisation) that training runs never ask for; they would only slow the start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with paths.log.open("w") as log:
        # A session of its own: it outlives this command, and `stop` signals its whole process group.
        server = subprocess.Popen(
            command, cwd=paths.state, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    paths.pid.write_text(f"{server.pid}\n")
    paths.info.write_text(json.dumps({"uri": uri, "health": health, "pg_port": pg_port}, indent=2) + "\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not healthy(health):
        if server.poll() is not None or time.monotonic() > deadline:
            stop_group(server.pid)
            exited = server.returncode is not None
            why = f"exited with code {server.returncode}" if exited else f"did not answer {health} in {START_TIMEOUT} s"
            log = f"PostgreSQL keeps running (`stop` stops it). The end of {paths.log}:\n{tail(paths.log)}"
            raise ServerError(f"The MLflow server {why}. {log}")
        time.sleep(0.5)
    return uri


def start(
    state_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    pg_port: int = 5433,
    workers: int = 4,
    pg_bin: str | Path | None = None,
) -> str:
    """Start PostgreSQL and the MLflow server of `state_dir` unless they run; the tracking URI."""
    paths = Paths(Path(state_dir).resolve())
    if server_pid(paths) is not None:
        uri = json.loads(paths.info.read_text())["uri"]
        print(f"The MLflow server of {paths.state} is already running at {uri}")
        return uri
    programs = postgres_programs(pg_bin)
    check_port_free(port, "port")  # before PostgreSQL starts, so that a busy port leaves nothing running
    paths.state.mkdir(parents=True, exist_ok=True)
    pg_port = start_postgres(paths, programs, pg_port)
    uri = start_mlflow(paths, host, port, pg_port, workers)
    print(f"MLflow server running at {uri} (log: {paths.log}, artifacts: {paths.artifacts})")
    print(f"Track runs there with: python -m harness.run tracking=server tracking.uri={uri}")
    return uri


def stop(state_dir: str | Path, pg_bin: str | Path | None = None) -> None:
    """Stop the MLflow server, then PostgreSQL; nothing to do for what is not running."""
    paths = Paths(Path(state_dir).resolve())
    pid = server_pid(paths)
    if pid is not None:
        stop_group(pid)
        print(f"Stopped the MLflow server (pid {pid})")
    paths.pid.unlink(missing_ok=True)
    if (paths.pg_data / "PG_VERSION").exists():  # else no cluster: nothing to stop, no need for PostgreSQL
        programs = postgres_programs(pg_bin)
        if pg_running(paths, programs):
            done = run_pg(paths, programs["pg_ctl"], "stop", "-D", str(paths.pg_data), "-m", "fast", "-w")
            if done.returncode != 0:
                raise ServerError(f"PostgreSQL did not stop: {done.stdout.strip()} {done.stderr.strip()}")
            print(f"Stopped PostgreSQL ({paths.pg_data})")


def status(state_dir: str | Path, pg_bin: str | Path | None = None) -> bool:
    """Print whether PostgreSQL and the MLflow server run; whether both do."""
    paths = Paths(Path(state_dir).resolve())
    # No cluster, nothing to ask pg_ctl: status works where PostgreSQL is not even installed.
    pg_up = (paths.pg_data / "PG_VERSION").exists() and pg_running(paths, postgres_programs(pg_bin))
    state = f"running on 127.0.0.1:{pg_port(paths)}" if pg_up else "not running"
    print(f"PostgreSQL: {state} ({paths.pg_data})")
    pid = server_pid(paths)
    if pid is None:
        print(f"MLflow server: not running ({paths.state})")
    else:
        info = json.loads(paths.info.read_text())
        answer = "answering" if healthy(info["health"]) else "NOT answering"
        print(f"MLflow server: running at {info['uri']} (pid {pid}), {answer} {info['health']}")
    return pg_up and pid is not None


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1-65535)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"], help="status exits with 1 unless both run")
    parser.add_argument("--state", type=Path, default=Path("mlruns/server"), help="default: ./mlruns/server")
    parser.add_argument("--host", default="127.0.0.1", help="MLflow server interface; 0.0.0.0 lets other machines in")
    parser.add_argument("--port", type=port_number, default=5000, help="MLflow server port (default: 5000)")
    parser.add_argument("--pg-port", type=port_number, default=5433, help="PostgreSQL on 127.0.0.1 (default: 5433)")
    parser.add_argument("--workers", type=int, default=4, help="MLflow server worker processes (default: 4)")
    parser.add_argument("--pg-bin", help="folder of initdb, pg_ctl, postgres (default: PATH, else /usr/lib/postgresql)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            start(args.state, args.host, args.port, args.pg_port, args.workers, args.pg_bin)
        elif args.command == "stop":
            stop(args.state, args.pg_bin)
        else:
            return 0 if status(args.state, args.pg_bin) else 1
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
