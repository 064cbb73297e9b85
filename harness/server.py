"""`python -m harness.server start|stop|status`: a local MLflow tracking server for `tracking=server`.

The server keeps runs in PostgreSQL, in a private cluster that this module creates and that takes
connections on a unix socket in the state folder only, and serves artifacts itself
(`--serve-artifacts`), so that every job of a sweep, in any process or on any machine that reaches the
server, shares one store by HTTP alone. A server that listens beyond loopback asks for a password
(MLflow's basic authentication; `start` prints how jobs pass it).

    python -m harness.server start        # prints the URI and the override to use
    python -m harness.run tracking=server tracking.uri=http://127.0.0.1:5000
    python -m harness.server stop

Everything lives in one state folder (default ./mlruns/server):

    postgres/data           the PostgreSQL cluster, owned by the `postgres` user when run as root
    postgres/postgres.log   its log
    postgres/.s.PGSQL.PORT  its unix socket, open to PostgreSQL's user (and root) only
    artifacts/              the artifacts the server receives
    auth/                   mode 700, only once a server listened beyond loopback:
      admin-password          the `admin` user's password, mode 600, made on the first such start
      basic_auth.db           MLflow's users and permissions (SQLite)
      basic_auth.ini          MLflow's authentication settings, written at every such start
    mlflow-server.log       the MLflow server's log
    mlflow-server.pid       its process id, the leader of its process group
    mlflow-server.json      its tracking URI, health URL, PostgreSQL port and store URI, whether it asks
                            for a password
"""

import argparse
import base64
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path

import psycopg2

PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")
PG_INSTALLS = Path("/usr/lib/postgresql")  # Debian's layout: one VERSION/bin per installed major version
PG_USER = "mlflow"  # the cluster's superuser, whichever OS user runs the cluster
DATABASE = "mlflow"
ADMIN = "admin"  # the MLflow user that a server listening beyond loopback creates, and jobs log in as
WILDCARDS = ("0.0.0.0", "::")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT = 90  # seconds; the server imports MLflow in every worker, slow on a busy machine
STOP_TIMEOUT = 30
# The health and store checks are always local; an http_proxy meant for the outside must not intercept them.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """A step failed; the message says what to do about it."""


class Paths:
    """Where the parts of one state folder live (see the module's docstring)."""

    def __init__(self, state: Path):
        self.state = state
        self.postgres = state / "postgres"  # owned by PostgreSQL's user: cluster, log and socket
        self.pg_data = self.postgres / "data"
        self.pg_pid = self.pg_data / "postmaster.pid"
        self.pg_log = self.postgres / "postgres.log"
        self.artifacts = state / "artifacts"
        self.auth = state / "auth"
        self.password = self.auth / "admin-password"
        self.auth_db = self.auth / "basic_auth.db"
        self.auth_config = self.auth / "basic_auth.ini"
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


def process_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces); none once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Whether the process runs. Zombies do not count: in a container nobody may reap them."""
    fields = process_fields(pid)
    return bool(fields) and fields[0] != "Z"


def running(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies do not count, as in `alive`)."""
    for folder in Path("/proc").glob("[0-9]*"):
        fields = process_fields(folder.name)
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def lock_holder_alive(lock: Path) -> bool:
    """Whether the process on the first line of one of PostgreSQL's lock files runs."""
    try:
        return alive(int(lock.read_text().split("\n", 1)[0]))
    except (OSError, ValueError):
        return False


def pg_running(paths: Paths) -> bool:
    """Whether the cluster's postmaster runs. Not `pg_ctl status`: it takes a killed postmaster that
    lingers as a zombie for a live one."""
    return lock_holder_alive(paths.pg_pid)


def pg_port(paths: Paths) -> int:
    """The port of the running cluster: the fourth line of its postmaster.pid."""
    return int(paths.pg_pid.read_text().splitlines()[3])


def clear_stale_locks(paths: Paths, port: int) -> None:
    """Remove the lock files of a killed postmaster. PostgreSQL removes them itself once their process is
    gone, but refuses to start while it lingers as a zombie, which in a container may last."""
    for lock in (paths.pg_pid, paths.postgres / f".s.PGSQL.{port}.lock"):
        if lock.exists() and not lock_holder_alive(lock):
            lock.unlink()


def connect_postgres(paths: Paths, port: int, database: str = DATABASE):
    """A connection over the cluster's unix socket, the only way in."""
    connection = psycopg2.connect(host=str(paths.postgres), port=port, user=PG_USER, dbname=database, connect_timeout=5)
    return closing(connection)


def postgres_problem(paths: Paths, port: int) -> str | None:
    """Why the cluster does not answer `SELECT 1`; None if it does."""
    try:
        with connect_postgres(paths, port) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except psycopg2.Error as error:
        return str(error).strip()
    return None


def start_postgres(paths: Paths, programs: dict[str, str], port: int) -> int:
    """Create the cluster once, run it and create the database if missing; the port it runs on."""
    prepare_postgres_home(paths)
    if not (paths.pg_data / "PG_VERSION").exists():
        # No passwords: the cluster listens on no TCP port, only on a unix socket that PostgreSQL's user
        # (and root) alone may open. Other machines reach the MLflow server only.
        options = ["-U", PG_USER, "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C"]
        done = run_pg(paths, programs["initdb"], "-D", str(paths.pg_data), *options)
        if done.returncode != 0:
            raise ServerError(f"initdb could not create a cluster in {paths.pg_data}:\n{done.stdout}{done.stderr}")
        print(f"Created a PostgreSQL cluster in {paths.pg_data}")
    if pg_running(paths):
        port = pg_port(paths)
    else:
        clear_stale_locks(paths, port)
        # Given at every start, not written into the cluster: clusters made when it also listened on
        # 127.0.0.1, and trusted whoever connected there, stop listening there at their next start.
        socket_only = "-c listen_addresses='' -c unix_socket_permissions=0700"
        server = f"{socket_only} -p {port} -k {shlex.quote(str(paths.postgres))}"
        # pg_ctl start waits until the cluster accepts connections, or fails.
        done = run_pg(
            paths, programs["pg_ctl"], "start", "-D", str(paths.pg_data), "-l", str(paths.pg_log), "-o", server
        )
        if done.returncode != 0:
            log = f"The end of {paths.pg_log}:\n{tail(paths.pg_log)}"
            raise ServerError(f"PostgreSQL did not start: {done.stdout}{done.stderr}{log}")
    with connect_postgres(paths, port, "postgres") as connection:
        connection.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    print(f"PostgreSQL runs on its unix socket in {paths.postgres} (port {port}), database {DATABASE}")
    return port


def backend_uri(paths: Paths, pg_port: int) -> str:
    """The MLflow server's store: the database over the cluster's unix socket."""
    socket_folder = urllib.parse.quote(str(paths.postgres), safe="/")
    # +psycopg2: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed.
    return f"postgresql+psycopg2://{PG_USER}@/{DATABASE}?host={socket_folder}&port={pg_port}"


def public_name(host: str) -> str:
    """The name other machines reach a server listening on `host` by, as a URL wants it."""
    name = socket.gethostname() if host in WILDCARDS else host
    return f"[{name}]" if ":" in name else name


def asks_password(host: str) -> bool:
    """Beyond loopback, whoever reaches the port could otherwise read, change and delete every run."""
    return host not in LOOPBACK


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


def admin_password(paths: Paths) -> str:
    """The admin user's password: made together with the auth database, reused ever after. MLflow reads
    it only when it creates the admin user, so a new password for an existing database would lock jobs out."""
    if paths.password.exists():
        return paths.password.read_text().strip()
    if paths.auth_db.exists():
        raise ServerError(
            f"{paths.password} is missing, but {paths.auth_db} holds the admin user it was the password of "
            "(MLflow sets that password only when it creates the user). Put the file back, or delete "
            f"{paths.auth_db}, and with it any users added since, to have start make both anew."
        )
    paths.auth.mkdir(mode=0o700, exist_ok=True)
    password = secrets.token_urlsafe(24)
    with open(os.open(paths.password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(f"{password}\n")
    print(f"Made a password for the MLflow user {ADMIN} in {paths.password}")
    return password


def auth_environment(paths: Paths) -> dict[str, str]:
    """What `mlflow server --app-name basic-auth` needs: its settings file, the admin's password (here, not
    in the file, which so holds no secret), and a key for its CSRF protection that every worker shares (a
    new one at each start invalidates only sign-up forms open in a browser)."""
    password = admin_password(paths)
    settings = {"default_permission": "READ", "database_uri": f"sqlite:///{paths.auth_db}", "admin_username": ADMIN}
    paths.auth_config.write_text("[mlflow]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(paths.auth_config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
    }


def login_prefix(paths: Paths, info: dict) -> str:
    """What a job's command line starts with to log in to the server; nothing where it asks no password."""
    if not info.get("auth"):
        return ""
    return f"MLFLOW_TRACKING_USERNAME={ADMIN} MLFLOW_TRACKING_PASSWORD=$(cat {shlex.quote(str(paths.password))}) "


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


def store_problem(paths: Paths, info: dict) -> str | None:
    """Why the MLflow server fails a request that reads its store (its /health does not touch the
    database); None if it answers."""
    url = info["health"].removesuffix("/health") + "/api/2.0/mlflow/experiments/search?max_results=1"
    headers = {}
    if info.get("auth"):
        login = base64.b64encode(f"{ADMIN}:{paths.password.read_text().strip()}".encode()).decode()
        headers["Authorization"] = f"Basic {login}"
    try:
        with LOCAL.open(urllib.request.Request(url, headers=headers), timeout=30):
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} from {url}"
    except OSError as error:
        return f"no answer from {url}: {error}"


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


def start_mlflow(paths: Paths, host: str, port: int, pg_port: int, workers: int) -> dict:
    """Start the MLflow server and wait until it answers; what mlflow-server.json records of it."""
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    auth = asks_password(host)
    uri = f"http://{public_name(host)}:{port}"
    # MLflow's basic authentication lets /health in without a password.
    health = f"http://{'127.0.0.1' if host in WILDCARDS else public_name(host)}:{port}/health"
    backend = backend_uri(paths, pg_port)
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend),
        *("--serve-artifacts", "--artifacts-destination", str(paths.artifacts)),
        *("--host", host, "--port", str(port), "--workers", str(workers)),
        *exposure_options(host, port),
        *(("--app-name", "basic-auth") if auth else ()),
    ]
    # MLflow 3 also starts a job runner with seven huey consumers, each importing MLflow, for GenAI jobs
    # (scorers, prompt optimisation) that training runs never ask for; they would only slow the start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(auth_environment(paths) if auth else {})}
    with paths.log.open("w") as log:
        # A session of its own: it outlives this command, and `stop` signals its whole process group.
        server = subprocess.Popen(
            command, cwd=paths.state, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    paths.pid.write_text(f"{server.pid}\n")
    info = {"uri": uri, "health": health, "pg_port": pg_port, "backend": backend, "auth": auth}
    paths.info.write_text(json.dumps(info, indent=2) + "\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not healthy(health):
        if server.poll() is not None or time.monotonic() > deadline:
            stop_group(server.pid)
            exited = server.returncode is not None
            why = f"exited with code {server.returncode}" if exited else f"did not answer {health} in {START_TIMEOUT} s"
            log = f"PostgreSQL keeps running (`stop` stops it). The end of {paths.log}:\n{tail(paths.log)}"
            raise ServerError(f"The MLflow server {why}. {log}")
        time.sleep(0.5)
    return info


def restart_postgres(paths: Paths, programs: dict[str, str], info: dict, pid: int) -> None:
    """Bring back the PostgreSQL of a running MLflow server, on the port its store URI names. The server
    need not restart: its SQLAlchemy pool pings every connection before use and replaces the dead ones."""
    if "backend" not in info:
        raise ServerError(
            f"The MLflow server at {info['uri']} runs but its PostgreSQL does not, and an older harness.server "
            f"started it to reach PostgreSQL on 127.0.0.1:{info['pg_port']}, where the cluster no longer listens "
            f"(it takes connections on its unix socket only). Run `python -m harness.server stop --state "
            f"{paths.state}`, then start."
        )
    start_postgres(paths, programs, info["pg_port"])
    problem = store_problem(paths, info)
    if problem is not None:
        raise ServerError(
            f"PostgreSQL is back, but the MLflow server at {info['uri']} still fails a store query ({problem}). "
            f"Restart both: `python -m harness.server stop --state {paths.state}`, then start."
        )
    print(f"Restarted PostgreSQL, which was not running; the MLflow server at {info['uri']} (pid {pid}) kept running")


def start(
    state_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    pg_port: int = 5433,
    workers: int = 4,
    pg_bin: str | Path | None = None,
) -> str:
    """Start PostgreSQL and the MLflow server of `state_dir`, or whichever of them is not running; the
    tracking URI. What runs keeps its settings, and the other part follows them."""
    paths = Paths(Path(state_dir).resolve())
    pid = server_pid(paths)
    if pid is not None:
        info = json.loads(paths.info.read_text())
        if pg_running(paths):
            print(f"The MLflow server of {paths.state} is already running at {info['uri']}")
        else:
            restart_postgres(paths, postgres_programs(pg_bin), info, pid)
    else:
        programs = postgres_programs(pg_bin)
        check_port_free(port, "port")  # before PostgreSQL starts, so that a busy port leaves nothing running
        paths.state.mkdir(parents=True, exist_ok=True)
        postgres_kept = pg_running(paths)
        info = start_mlflow(paths, host, port, start_postgres(paths, programs, pg_port), workers)
        if postgres_kept:
            print("Restarted the MLflow server, which was not running; PostgreSQL kept running")
        print(f"MLflow server running at {info['uri']} (log: {paths.log}, artifacts: {paths.artifacts})")
    command = f"{login_prefix(paths, info)}python -m harness.run tracking=server tracking.uri={info['uri']}"
    print(f"Track runs there with: {command}")
    return info["uri"]


def stop(state_dir: str | Path, pg_bin: str | Path | None = None) -> None:
    """Stop the MLflow server, then PostgreSQL; nothing to do for what is not running."""
    paths = Paths(Path(state_dir).resolve())
    pid = server_pid(paths)
    if pid is not None:
        stop_group(pid)
        print(f"Stopped the MLflow server (pid {pid})")
    paths.pid.unlink(missing_ok=True)
    if pg_running(paths):  # else nothing to stop, no need for PostgreSQL's programs
        programs = postgres_programs(pg_bin)
        done = run_pg(paths, programs["pg_ctl"], "stop", "-D", str(paths.pg_data), "-m", "fast", "-w")
        if done.returncode != 0:
            raise ServerError(f"PostgreSQL did not stop: {done.stdout.strip()} {done.stderr.strip()}")
        print(f"Stopped PostgreSQL ({paths.pg_data})")


def status(state_dir: str | Path) -> bool:
    """Print whether PostgreSQL and the MLflow server run and answer queries; whether all do."""
    paths = Paths(Path(state_dir).resolve())
    pg_answers = False
    if pg_running(paths):
        port = pg_port(paths)
        problem = postgres_problem(paths, port)
        pg_answers = problem is None
        answer = "answering SELECT 1" if pg_answers else f"NOT answering SELECT 1: {problem}"
        print(f"PostgreSQL: running on its unix socket in {paths.postgres} (port {port}), {answer}")
    else:
        print(f"PostgreSQL: not running ({paths.pg_data})")
    pid = server_pid(paths)
    if pid is None:
        print(f"MLflow server: not running ({paths.state})")
        return False
    info = json.loads(paths.info.read_text())
    health = healthy(info["health"])
    problem = store_problem(paths, info)
    answers = f"{'answering' if health else 'NOT answering'} {info['health']}, " + (
        "answering store queries" if problem is None else f"FAILING store queries: {problem}"
    )
    print(f"MLflow server: running at {info['uri']} (pid {pid}), {answers}")
    return pg_answers and health and problem is None


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1-65535)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"], help="status exits with 1 unless all answer")
    parser.add_argument("--state", type=Path, default=Path("mlruns/server"), help="default: ./mlruns/server")
    parser.add_argument("--host", default="127.0.0.1", help="MLflow server interface; 0.0.0.0: others, by password")
    parser.add_argument("--port", type=port_number, default=5000, help="MLflow server port (default: 5000)")
    parser.add_argument("--pg-port", type=port_number, default=5433, help="PostgreSQL's socket, no TCP (default: 5433)")
    parser.add_argument("--workers", type=int, default=4, help="MLflow server worker processes (default: 4)")
    parser.add_argument("--pg-bin", help="folder of initdb, pg_ctl, postgres (default: PATH, else /usr/lib/postgresql)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            start(args.state, args.host, args.port, args.pg_port, args.workers, args.pg_bin)
        elif args.command == "stop":
            stop(args.state, args.pg_bin)
        else:
            return 0 if status(args.state) else 1
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
