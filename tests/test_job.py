"""The run's life (`harness.job`) without a store: the decision from what the store holds, and
the table from outcome to status, failure tag and exit code."""

import pytest
from mlflow.exceptions import MlflowException

from harness import record
from harness.job import ELSEWHERE, NEW, RESUME, SKIP, Kind, Outcome, Stored, decide, outcome_of, scheduler_stop
from harness.launchers import SchedulerStop
from harness.lease import LeaseLost
from harness.tracking.mlflow_store import CheckpointError, StoreError
from harness.tracking.writer import StoreOutage
from harness.train import DivergedError


def stored(status: str, alive: bool = False, failure: str | None = None, checkpoint: bool = False) -> Stored:
    return Stored(run_id="r1", status=status, alive=alive, failure=failure, has_checkpoint=checkpoint)


@pytest.mark.parametrize(
    "latest, rerun, action, replaces",
    [
        (None, False, NEW, False),
        (stored("FINISHED"), False, SKIP, True),
        (stored("FINISHED"), True, NEW, False),  # rerun: a new run beside the finished one
        (stored("RUNNING", alive=True), False, ELSEWHERE, True),
        (stored("RUNNING", alive=True), True, ELSEWHERE, True),  # rerun never touches a live run
        (stored("RUNNING", checkpoint=True), False, RESUME, True),  # its process died
        (stored("RUNNING"), False, NEW, True),  # died before its first checkpoint: trained anew
        (stored("KILLED", checkpoint=True), False, RESUME, True),
        (stored("KILLED", checkpoint=True), True, NEW, False),
        (stored("FAILED", failure=record.ENVIRONMENT, checkpoint=True), False, RESUME, True),
        (stored("FAILED", failure=record.ENVIRONMENT), False, NEW, True),
        (stored("FAILED", failure=record.RUN, checkpoint=True), False, NEW, True),  # a bug: anew
        (stored("FAILED", failure=record.DIVERGED, checkpoint=True), False, SKIP, True),  # a result, as P2's "fail"
        (stored("FAILED", failure=record.DIVERGED), True, NEW, False),
    ],
)
def test_what_the_store_holds_decides_the_launch(latest, rerun, action, replaces):
    decision = decide(latest, rerun)
    assert decision.action == action
    assert (decision.run is latest and latest is not None) == replaces


@pytest.mark.parametrize(
    "error, kind, status, failure, exit_code",
    [
        (None, Kind.FINISHED, "FINISHED", None, 0),
        (KeyboardInterrupt(), Kind.CTRL_C, "KILLED", None, 130),
        (SchedulerStop("timed-out"), Kind.SCHEDULER_STOP, "KILLED", None, 1),
        (LeaseLost("taken over"), Kind.LEASE_LOST, None, None, 1),
        (DivergedError(7, float("nan")), Kind.DIVERGED, "FAILED", record.DIVERGED, 1),
        (OSError("disk full"), Kind.ENVIRONMENT_FAILURE, "FAILED", record.ENVIRONMENT, 1),
        (StoreError("down"), Kind.ENVIRONMENT_FAILURE, "FAILED", record.ENVIRONMENT, 1),
        (CheckpointError("no space"), Kind.ENVIRONMENT_FAILURE, "FAILED", record.ENVIRONMENT, 1),
        (StoreOutage("unreachable for 601 s"), Kind.ENVIRONMENT_FAILURE, "FAILED", record.ENVIRONMENT, 1),
        (ValueError("a bug"), Kind.BUG, "FAILED", record.RUN, 1),
    ],
)
def test_each_way_a_run_ends_has_one_status_failure_and_exit_code(error, kind, status, failure, exit_code):
    assert outcome_of(error) is kind
    outcome = Outcome(kind)
    assert (outcome.status, outcome.failure, outcome.exit_code) == (status, failure, exit_code)


def test_every_stop_but_a_finished_run_exits_non_zero():
    assert [kind for kind in Kind if kind.exit_code == 0] == [Kind.FINISHED, Kind.SKIPPED]


def test_slurms_stop_inside_a_store_call_is_a_scheduler_stop():
    """submitit raises its stop from a signal handler, wherever the job is: inside an MLflow HTTP
    call, MLflow's client raises its own error while handling it."""
    try:
        try:
            raise SchedulerStop("Job not requeued because: timed-out too many times.")
        except Exception as stop:
            raise MlflowException(f"API request to /api/2.0/mlflow/runs/log-batch failed with exception {stop}")
    except MlflowException as wrapped:
        assert outcome_of(wrapped) is Kind.SCHEDULER_STOP
        assert isinstance(scheduler_stop(wrapped), SchedulerStop)
    assert outcome_of(MlflowException("the server is down")) is Kind.ENVIRONMENT_FAILURE
