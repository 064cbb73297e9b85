"""One writer per run: a lease on a run, kept in the tracking store itself, so that it holds
across processes and nodes with SQLite and with a tracking server alike.

A job that trains a run holds its lease: the tag `harness.heartbeat` (JSON: time, owner
`host:pid:token`, generation, interval), renewed every `INTERVAL` seconds by a daemon thread.
Another launch treats a RUNNING run as taken while the heartbeat is younger than `MISSED`
intervals and, on the same machine, while the owner process still lives (a process killed on
this machine frees its runs at once, not after the threshold).

Taking a run is a compare-and-swap on the store. MLflow has none for tags, but registered
model names are unique in every MLflow store with a registry (a UNIQUE constraint in the SQL
stores, and the server forwards it): `claimed(key, unchanged)` creates a registered model named
after the state the claimer saw (the run and the lease generation it wants to replace, or the
run a new one follows), and of all launches that saw that state at once exactly one creates it.
The winner makes its change (its heartbeat, its new run) inside the block, and the claim is
deleted when the block ends, so that nothing stays in the store. A launch that claims the same
key later, after the deletion, finds that the state has moved on (`unchanged` reads it again)
and stands back.

The holder writes (metrics, tags, its heartbeat) only while its last heartbeat in the store is
younger than MISSED - 1 intervals, and others take over only once it is older than MISSED
intervals; between the two lies one interval of margin for clock differences between nodes.
A holder whose heartbeat lapsed (the store unreachable, the process suspended) trains on, but
before its next write takes the run again as a relaunch would, through the same claim
(`Lease.ensure`): it goes on if no one took the run meanwhile, and stops without writing
(LeaseLost) if someone did. A store outage is not someone else's claim. A requeued SLURM job
knows the heartbeat of its own earlier incarnation as dead at once.

Interval 30 s, threshold 3 intervals (90 s): a beat costs one read and one write (about 25 ms
on SQLite, one HTTP round trip each on a server), under 0.1% of a run's time; 90 s tolerates a
store that stalls for a minute (SQLite waits up to 20 s for its lock) and clock differences
between nodes of a few seconds, and only delays a relaunch on another machine after a crash
(on this machine a dead owner is seen at once). `HARNESS_HEARTBEAT_SECONDS` sets the interval
(tests use 1 s); readers go by the interval the writer recorded.
"""

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
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


def slurm_incarnation() -> str:
    """JOB_ID.RESTARTS: SLURM keeps a job's id (one per job and per array element) across a requeue
    and counts the restarts; two launches inside one allocation share both."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"{job}.{os.environ.get('SLURM_RESTART_COUNT', '0')}" if job else ""


def earlier_incarnation(recorded: str, current: str) -> bool:
    """`recorded` was this SLURM job before one of its requeues."""
    if not recorded or not current:
        return False
    (job, _, restarts), (this_job, _, this_restarts) = recorded.partition("."), current.partition(".")
    return job == this_job and int(restarts or 0) < int(this_restarts or 0)


SLURM_JOB = slurm_incarnation()


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
    slurm_job: str = ""  # SLURM_JOB_ID.SLURM_RESTART_COUNT (slurm_incarnation)

    @classmethod
    def now(cls, generation: int, interval: float = INTERVAL) -> "Heartbeat":
        return cls(time.time(), owner_id(), generation, interval, BOOT, process_start(os.getpid()), SLURM_JOB)

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
        """The owner ran on this machine and no longer does (killed, crashed, pid reused), or it was
        this very SLURM job before a requeue (SLURM runs one incarnation of a job at a time)."""
        if earlier_incarnation(self.slurm_job, SLURM_JOB):
            return True
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


def _create_claim(client, key: str) -> str | None:
    """The name of the claim this launch created, or None where another launch holds it. A claim
    older than the threshold belongs to a claimer that died inside its block: passed over, the
    next name `key #2` is claimed instead."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, 20):
        name = f"{record.CLAIM_PREFIX} {key}" + (f" #{attempt}" if attempt > 1 else "")
        try:
            client.create_registered_model(name, tags={record.CLAIMED_BY: owner_id()})
            return name
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = client.get_registered_model(name)
        except MlflowException:  # its holder deleted it meanwhile: the state it guarded has moved on
            return None
        if time.time() - held.creation_timestamp / 1000 < MISSED * INTERVAL:
            return None
    return None


@contextlib.contextmanager
def claimed(client, key: str, unchanged: Callable[[], bool] = lambda: True):
    """True (for the block) in exactly one of the launches that claim `key` at once, and in none
    that claims it after the state it names has changed (`unchanged`, read after the claim)."""
    name = _create_claim(client, key)
    try:
        yield name is not None and unchanged()
    finally:
        if name is not None:
            try:
                client.delete_registered_model(name)
            except Exception as error:  # a stale claim is passed over after the threshold
                log.warning("could not delete the claim %r: %s", name, error)


def generation_of(run) -> int:
    """The lease generation a run's heartbeat records; 0 for a run without one."""
    heartbeat = heartbeat_of(run)
    return heartbeat.generation if heartbeat else 0


class Lease:
    """This process's lease on one run, renewed by a daemon thread until `release`."""

    def __init__(self, client, run_id: str, heartbeat: Heartbeat):
        self.client = client
        self.run_id = run_id
        self.heartbeat = heartbeat
        self.lost = threading.Event()
        self.stopped = threading.Event()
        self.renewing = threading.Lock()  # the renewing thread and the store writer both renew
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
        soon count this one as dead (after MISSED), so this one must take the run again before
        it writes."""
        return time.monotonic() - self.written > (MISSED - 1) * self.heartbeat.interval

    def check(self) -> None:
        """Raise LeaseLost if another launch took the run over: in the loop, without a store call
        (the renewing thread and the store writer read the store)."""
        if self.lost.is_set():
            raise LeaseLost(
                f"MLflow run {self.run_id} was taken over by another launch; this one stops without writing more; "
                "the other launch trains it"
            )

    def ensure(self) -> None:
        """Before a write: LeaseLost if another launch holds the run; the run taken again first
        where this lease lapsed."""
        with self.renewing:
            self.check()
            if self.expired():
                self._take_again()

    def _take_again(self) -> None:
        """Claim the next generation as a relaunch would; of the two, one wins."""
        lapsed = time.monotonic() - self.written
        generation = self.heartbeat.generation + 1
        with claimed(self.client, f"{self.run_id} generation {generation}", self.holds) as won:
            if not won:
                self.lost.set()
                self.check()
            stamp = time.monotonic()
            self.heartbeat = Heartbeat.now(generation)
            self.client.set_tag(self.run_id, record.HEARTBEAT, self.heartbeat.encode())
            self.written = stamp
        log.warning("MLflow run %s: lease taken again after %.0f s without a heartbeat", self.run_id, lapsed)

    def beat(self) -> None:
        started = time.perf_counter()
        with self.renewing:
            if self.expired():
                self._take_again()
            elif self.holds():
                stamp = time.monotonic()
                self.heartbeat.time = time.time()
                self.client.set_tag(self.run_id, record.HEARTBEAT, self.heartbeat.encode())
                self.written = stamp
        self.beats += 1
        self.beat_seconds += time.perf_counter() - started

    def _renew(self) -> None:
        failing = False
        while not self.stopped.wait(self.heartbeat.interval):
            try:
                self.beat()
                failing = False
            except LeaseLost:
                pass
            except Exception as error:  # the store writer says once that the store is unreachable
                if not failing:
                    log.debug("heartbeat of MLflow run %s failed: %s", self.run_id, error)
                failing = True
            if self.lost.is_set():
                log.error("MLflow run %s was taken over by another launch", self.run_id)
                return

    def release(self) -> None:
        self.stopped.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)
