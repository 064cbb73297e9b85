"""The harness's commands as a user runs them, and waiting on what they start."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def harness_command(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS` as a user would, in `cwd`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def wait_for(
    look: Callable,
    timeout: float = 1200,
    what: str = "",
    job: subprocess.Popen | None = None,
    interval: float = 0.02,
    details: Callable[[], str] = lambda: "",
):
    """What `look()` returns once it is truthy; fails after `timeout` seconds, or once `job` (a
    process the test started) has ended first. `details()`, called only then, adds what explains the
    failure, such as the tail of the job's log."""
    deadline = time.monotonic() + timeout
    while not (found := look()):
        if job is not None and job.poll() is not None:
            pytest.fail(f"the job ended (exit code {job.returncode}) before {what}\n{details()}".rstrip())
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s\n{details()}".rstrip())
        time.sleep(interval)
    return found
