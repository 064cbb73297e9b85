"""A run's writes to the tracking store, sent by a thread beside the training loop.

The loop hands each write (a batch of metrics, tags, a small artifact) to `StoreWriter.put`
and goes on at once; the thread sends the writes in order. Where the store cannot be reached
(a server down, its database down, 500s, a locked SQLite file), the thread keeps them and
tries again with a growing pause, and says once that the store is unreachable and once that
it is back: an outage costs the run no training time. Past `outage_limit` seconds, or with
more than `capacity` metric points waiting, the writer fails, and the loop's next call raises
that failure: the run stops as an environment failure, resumable from its checkpoint, which
holds every point not yet sent (`unsent_metrics`).

Before each write the thread calls `before_send` (the run's lease, `harness.lease.Lease.ensure`),
so that nothing reaches the store from a launch that no longer holds the run.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException

from harness.lease import LeaseLost

log = logging.getLogger(__name__)

FIRST_PAUSE, LONGEST_PAUSE = 1.0, 10.0  # seconds between tries while the store is unreachable: back within 10 s
BATCH_POINTS = 1000  # the most metric points MLflow takes in one request
# Answers that trying again cannot change: the write itself is wrong, or the credentials are.
REFUSALS = {
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND",
}  # fmt: skip


class StoreOutage(RuntimeError):
    """The store stayed unreachable past the limit, or the writes waiting for it filled the buffer."""


def refused(error: BaseException) -> bool:
    """The store answered and said no (as opposed to not answering, or failing inside)."""
    return isinstance(error, MlflowException) and error.error_code in REFUSALS


@dataclass
class Write:
    """A call to make, or (without `send`) metric points, which go out with the points written
    next to them, up to BATCH_POINTS a request: a backlog is sent in few requests."""

    send: Callable[[], None] | None = None
    metrics: list = field(default_factory=list)  # the points it carries, kept in checkpoints until sent


class StoreWriter:
    def __init__(
        self,
        name: str,
        send_metrics: Callable[[list], None],
        before_send: Callable[[], None] = lambda: None,
        outage_limit: float = 600.0,
        capacity: int = 100_000,
    ):
        self.name = name
        self.send_metrics = send_metrics
        self.before_send = before_send
        self.outage_limit = outage_limit
        self.capacity = capacity
        self.waiting: deque[Write] = deque()
        self.waiting_points = 0
        self.changed = threading.Condition()
        self.failure: BaseException | None = None
        self.closing = False
        self.down_since: float | None = None
        self.thread = threading.Thread(target=self._send_all, name=f"store-writer-{name}", daemon=True)
        self.thread.start()

    def check(self) -> None:
        """Raise what stopped the writer, in the loop's thread."""
        if self.failure is not None:
            raise self.failure

    def put(self, write: Write) -> None:
        self.check()
        with self.changed:
            if self.waiting_points + len(write.metrics) > self.capacity:
                self.failure = StoreOutage(
                    f"{self.waiting_points} metric points of {self.name} are waiting for the tracking store, "
                    f"the most tracking.buffer_points={self.capacity} allows"
                )
                raise self.failure
            self.waiting.append(write)
            self.waiting_points += len(write.metrics)
            self.changed.notify_all()

    def unsent_metrics(self) -> list:
        with self.changed:
            return [metric for write in self.waiting for metric in write.metrics]

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every write is sent (True), the writer failed (raised here), or `timeout`
        passed or the writer was closed (False)."""
        with self.changed:
            self.changed.wait_for(lambda: not self.waiting or self.failure is not None or self.closing, timeout)
            self.check()
            return not self.waiting

    def close(self) -> None:
        """Stop the thread; writes still waiting are dropped (a checkpoint holds their metrics)."""
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def _send_all(self) -> None:
        pause = FIRST_PAUSE
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.waiting or self.closing)
                if self.closing:
                    return
                writes = self._next_request()
            try:
                self.before_send()
                if writes[0].send is None:
                    self.send_metrics([metric for write in writes for metric in write.metrics])
                else:
                    writes[0].send()
            except LeaseLost as error:
                self._fail(error)
                return
            except Exception as error:
                if refused(error):
                    self._fail(error)
                    return
                if not self._wait_out(error, pause):
                    return
                pause = min(2 * pause, LONGEST_PAUSE)
                continue
            with self.changed:
                for write in writes:
                    self.waiting.popleft()
                    self.waiting_points -= len(write.metrics)
                self.changed.notify_all()
                kept = len(self.waiting) + len(writes)
            if self.down_since is not None:
                log.warning(
                    "%s: the tracking store answers again after %.0f s; sending the %d writes kept meanwhile",
                    self.name,
                    time.monotonic() - self.down_since,
                    kept,
                )
                self.down_since = None
                pause = FIRST_PAUSE

    def _next_request(self) -> list[Write]:
        """The writes at the head of the queue that go out in one request (the lock held)."""
        head = self.waiting[0]
        if head.send is not None:
            return [head]
        writes, points = [], 0
        for write in self.waiting:
            if write.send is not None or (writes and points + len(write.metrics) > BATCH_POINTS):
                break
            writes.append(write)
            points += len(write.metrics)
        return writes

    def _wait_out(self, error: Exception, pause: float) -> bool:
        """A failed try: say so once, then pause, unless the outage is past its limit (False)."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.warning(
                "%s: the tracking store cannot be reached (%s: %s); training goes on and its writes are kept, "
                "for up to tracking.outage_limit=%.0f s",
                self.name,
                type(error).__name__,
                str(error)[:200],
                self.outage_limit,
            )
        if now - self.down_since > self.outage_limit:
            self._fail(
                StoreOutage(
                    f"the tracking store stayed unreachable for {now - self.down_since:.0f} s, past "
                    f"tracking.outage_limit={self.outage_limit:.0f} s (last error: {type(error).__name__}: "
                    f"{str(error)[:200]})"
                )
            )
            return False
        with self.changed:
            self.changed.wait_for(lambda: self.closing, pause)
            return not self.closing

    def _fail(self, error: BaseException) -> None:
        with self.changed:
            self.failure = error
            self.changed.notify_all()
