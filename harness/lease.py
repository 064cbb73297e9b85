"""One writer per run: a lease on a run, kept in the tracking store itself, so that it holds
across processes and nodes with SQLite and with a tracking server alike.

A job that trains a run holds its lease: the tag `harness.heartbeat` (JSON: time, owner
`host:pid:token`, generation, interval), renewed every `INTERVAL` seconds by a daemon thread.
Another launch treats a RUNNING run as taken while the heartbeat is younger than `MISSED`
intervals and, on the same machine, while the owner process still lives (a process killed on
this machine frees its runs at once, not after the threshold).

Taking a run is a compare-and-swap on the store. MLflow has none for tags, but experiment
names are unique in every MLflow store (a UNIQUE constraint in the SQL stores, and the server
forwards it): `claim(key)` creates an experiment named after the state the claimer saw (the
run and the lease generation it wants to replace, or the run a new one follows), and of all
launches that saw that state exactly one creates it. The claim experiment is deleted at once
(deleted experiments keep their name, so the claim stays spent and out of the UI).

The holder stops itself before anyone may take over: it renews (and writes metrics) only while
its last heartbeat in the store is younger than MISSED - 1 intervals, and others take over only
once it is older than MISSED intervals; between the two lies one interval of margin for clock
differences between nodes. A holder stalled past that (suspended, store unreachable for a
minute) finds its lease expired and stops without writing; its run resumes from the checkpoint.
Writes of metrics check the lease without a store call; the renewing thread reads the store
each beat and also catches a takeover that clocks out of step would allow.

Interval 30 s, threshold 3 intervals (90 s): a beat costs one read and one write (about 25 ms
on SQLite, one HTTP round trip each on a server), under 0.1% of a run's time; 90 s tolerates a
store that stalls for a minute (SQLite waits up to 20 s for its lock) and clock differences
between nodes of a few seconds, and only delays a relaunch on another machine after a crash
(on this machine a dead owner is seen at once). `HARNESS_HEARTBEAT_SECONDS` sets the interval
(tests use 1 s); readers go by the interval the writer recorded.
"""

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import record

log = logging.getLogger(__name__)

INTERVAL = float(os.environ.get("HARNESS_HEARTBEAT_SECONDS", "30"))
MISSED = 3  # intervals without a beat after which the owner counts as dead


class LeaseLost(RuntimeError):
    """Another launch took this run over (this process was stalled past the threshold)."""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (tells a pid's reuse apart); None if
    there is no such process. Where /proc is missing, 0 for any live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0


HOST = socket.gethostname()
BOOT = boot_id()
TOKEN = secrets.token_hex(4)


def owner_id() -> str:
    return f"{HOST}:{os.getpid()}:{TOKEN}"


@dataclass
class Heartbeat:
    time: float
    owner: str
    generation: int
    interval: float
    boot: str = ""
    start: int | None = None  # the owner process's start time (process_start)

    @classmethod
    def now(cls, generation: int, interval: float = INTERVAL) -> "Heartbeat":
        return cls(time.time(), owner_id(), generation, interval, BOOT, process_start(os.getpid()))

    @classmethod
    def parse(cls, value: str | None) -> "Heartbeat | None":
        if not value:
            return None
        try:
            return cls(**json.loads(value))
        except (ValueError, TypeError):
            return None

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def age(self) -> float:
        return max(0.0, time.time() - self.time)

    def owner_gone(self) -> bool:
        """The owner ran on this machine and no longer does (killed, crashed, pid reused)."""
        host, _, rest = self.owner.partition(":")
        if host != HOST or self.boot != BOOT or not rest:
            return False
        try:
            pid = int(rest.split(":")[0])
        except ValueError:
            return False
        start = process_start(pid)
        return start is None or (self.start is not None and start not in (0, self.start))

    def alive(self) -> bool:
        return not self.owner_gone() and self.age() <= MISSED * self.interval


def heartbeat_of(run) -> Heartbeat | None:
    return Heartbeat.parse(run.data.tags.get(record.HEARTBEAT))


def claim(client, key: str) -> bool:
    """True for exactly one of the launches that claim `key` (an atomic create of a uniquely
    named experiment). A claim older than the threshold whose effect never came (its claimer
    died in between) is passed over: the next name `key #2` is claimed instead."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, 20):
        name = f"{record.CLAIM_PREFIX} {key}" + (f" #{attempt}" if attempt > 1 else "")
        try:
            experiment_id = client.create_experiment(name, tags={record.CLAIMED_BY: owner_id()})
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            earlier = client.get_experiment_by_name(name)
            if earlier is None or time.time() - earlier.creation_time / 1000 < MISSED * INTERVAL:
                return False
            continue
        try:
            client.delete_experiment(experiment_id)
        except Exception as error:  # the claim holds either way; it only stays visible
            log.warning("could not delete the claim experiment %r: %s", name, error)
        return True
    return False


class Lease:
    """This process's lease on one run, renewed by a daemon thread until `release`."""

    def __init__(self, client, run_id: str, heartbeat: Heartbeat):
        self.client = client
        self.run_id = run_id
        self.heartbeat = heartbeat
        self.lost = threading.Event()
        self.stopped = threading.Event()
        # When the heartbeat in the store was written, on this process's monotonic clock.
        self.written = time.monotonic() - max(0.0, time.time() - heartbeat.time)
        self.beats = 0
        self.beat_seconds = 0.0  # time spent renewing, for the cost measurement
        self.thread: threading.Thread | None = None

    @classmethod
    def take(cls, client, run_id: str, generation: int) -> "Lease":
        lease = cls(client, run_id, Heartbeat.now(generation))
        client.set_tag(run_id, record.HEARTBEAT, lease.heartbeat.encode())
        return lease

    def start(self) -> "Lease":
        self.thread = threading.Thread(target=self._renew, name=f"lease-{self.run_id[:8]}", daemon=True)
        self.thread.start()
        return self

    def holds(self) -> bool:
        """Whether the store still names this process as the run's owner (one read)."""
        if self.lost.is_set():
            return False
        current = heartbeat_of(self.client.get_run(self.run_id))
        if current is None or current.owner != self.heartbeat.owner or current.generation != self.heartbeat.generation:
            self.lost.set()
            return False
        return True

    def expired(self) -> bool:
        """No heartbeat of ours reached the store for MISSED - 1 intervals: another launch may
        soon count this one as dead (after MISSED), so this one must stop writing first."""
        return time.monotonic() - self.written > (MISSED - 1) * self.heartbeat.interval

    def check(self) -> None:
        """Raise LeaseLost unless this process still owns the run: before every write of metrics.
        No store call: the renewing thread reads the store, and a lease whose renewal stalled
        counts as lost before any other launch may take it (expired)."""
        if self.expired():
            self.lost.set()
            raise LeaseLost(
                f"the lease on MLflow run {self.run_id} expired (no heartbeat reached the store for "
                f"{time.monotonic() - self.written:.0f} s): this launch stops without writing more; the same command "
                "resumes the run from its last checkpoint"
            )
        if self.lost.is_set():
            raise LeaseLost(
                f"MLflow run {self.run_id} was taken over by another launch; this one stops without writing"
            )

    def beat(self) -> None:
        started = time.perf_counter()
        if self.expired():  # too late to renew: another launch may be taking the run over
            self.lost.set()
        elif self.holds():
            stamp = time.monotonic()
            self.heartbeat.time = time.time()
            self.client.set_tag(self.run_id, record.HEARTBEAT, self.heartbeat.encode())
            self.written = stamp
        self.beats += 1
        self.beat_seconds += time.perf_counter() - started

    def _renew(self) -> None:
        while not self.stopped.wait(self.heartbeat.interval):
            try:
                self.beat()
            except Exception as error:  # a store that stalls: keep trying, the threshold allows it
                log.warning("heartbeat of MLflow run %s failed: %s", self.run_id, error)
            if self.lost.is_set():
                log.error("MLflow run %s was taken over by another launch", self.run_id)
                return

    def release(self) -> None:
        self.stopped.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)
