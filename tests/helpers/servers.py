"""What a test needs to start a tracking server of its own: free ports, PostgreSQL, a state folder."""

import contextlib
import shutil
import socket
import tempfile
from pathlib import Path

import pytest


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
