"""The store writer: a run's writes leave the loop at once and reach the store in order, across
an outage up to its limit; past the limit, a full buffer, a refusal or a lost lease stop it."""

import logging
import threading

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from harness.lease import LeaseLost
from harness.tracking import writer
from harness.tracking.writer import StoreOutage, StoreWriter, Write


class FlakyStore:
    """Takes writes while up; while down, fails each as a server without its database does."""

    def __init__(self):
        self.up = threading.Event()
        self.up.set()
        self.received = []
        self.tries = 0

    def send(self, item):
        self.tries += 1
        if not self.up.is_set():
            raise MlflowException("API request to /api/2.0/mlflow/runs/log-batch failed", TEMPORARILY_UNAVAILABLE)
        self.received.append(item)

    def send_batch(self, points):
        self.send(tuple(points))

    def write(self, item, points: int = 0) -> Write:
        return Write(lambda: self.send(item), metrics=[f"{item}.{i}" for i in range(points)])

    def points(self, item, points: int) -> Write:
        return Write(metrics=[f"{item}.{i}" for i in range(points)])


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(writer, "FIRST_PAUSE", 0.01)
    monkeypatch.setattr(writer, "LONGEST_PAUSE", 0.05)


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == writer.__name__]


def test_writes_made_during_an_outage_wait_in_order_and_are_said_once(caplog):
    caplog.set_level(logging.WARNING, logger=writer.__name__)
    store = FlakyStore()
    sending = StoreWriter("resnet-8", store.send_batch, outage_limit=60)
    store.up.clear()
    for item in range(5):
        sending.put(store.write(item, points=2))  # the loop goes on: nothing here waits for the store
    assert sending.unsent_metrics() == [f"{item}.{i}" for item in range(5) for i in range(2)]
    assert not sending.drain(timeout=0.3) and store.tries > 1  # it keeps trying
    store.up.set()
    assert sending.drain(timeout=10)
    assert store.received == [0, 1, 2, 3, 4] and sending.unsent_metrics() == []
    said = messages(caplog)
    assert len(said) == 2, said
    assert "cannot be reached" in said[0] and "log-batch failed" in said[0]
    assert "tracking.outage_limit=60" in said[0] and "answers again" in said[1] and "5 writes" in said[1]
    sending.close()


def test_an_outage_past_its_limit_stops_the_run_in_the_loop():
    store = FlakyStore()
    store.up.clear()
    sending = StoreWriter("resnet-8", store.send_batch, outage_limit=0.2)
    sending.put(store.write("a", points=1))
    with pytest.raises(StoreOutage, match=r"unreachable for \d+ s, past tracking.outage_limit=0 s"):
        sending.drain(timeout=10)
    with pytest.raises(StoreOutage):  # every later call of the loop says the same
        sending.put(store.write("b"))
    assert sending.unsent_metrics() == ["a.0"]  # still there for the checkpoint
    sending.close()


def test_a_full_buffer_stops_the_run():
    store = FlakyStore()
    store.up.clear()
    sending = StoreWriter("resnet-8", store.send_batch, capacity=3)
    sending.put(store.write("a", points=2))
    with pytest.raises(StoreOutage, match=r"2 metric points of resnet-8 are waiting.*tracking.buffer_points=3"):
        sending.put(store.write("b", points=2))
    sending.close()


def test_a_refused_write_is_not_tried_again():
    refusals = []

    def refuse():
        refusals.append(1)
        raise MlflowException("Changing param values is not allowed", INVALID_PARAMETER_VALUE)

    sending = StoreWriter("resnet-8", FlakyStore().send_batch)
    sending.put(Write(refuse))
    with pytest.raises(MlflowException, match="not allowed"):
        sending.drain(timeout=10)
    assert refusals == [1]
    sending.close()


def test_nothing_is_sent_once_another_launch_holds_the_run():
    store = FlakyStore()

    def taken():
        raise LeaseLost("MLflow run abc was taken over by another launch")

    sending = StoreWriter("resnet-8", store.send_batch, before_send=taken)
    sending.put(store.write("a"))
    with pytest.raises(LeaseLost):
        sending.drain(timeout=10)
    assert store.received == [] and store.tries == 0
    sending.close()


def test_a_backlog_of_points_goes_out_in_few_requests_and_calls_keep_their_place(monkeypatch):
    monkeypatch.setattr(writer, "BATCH_POINTS", 5)
    store = FlakyStore()
    store.up.clear()
    sending = StoreWriter("resnet-8", store.send_batch)
    for write in (store.points("a", 2), store.points("b", 2), store.points("c", 2), store.write("tag"),
                  store.points("d", 1)):  # fmt: skip
        sending.put(write)
    store.up.set()
    assert sending.drain(timeout=10)
    assert store.received == [("a.0", "a.1", "b.0", "b.1"), ("c.0", "c.1"), "tag", ("d.0",)]
    sending.close()
