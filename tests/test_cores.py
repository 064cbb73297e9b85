"""A job's threads (harness.cores): its launcher's share of the cores, and no more than other
work leaves free, looked at once as the launch begins (issue 43). Fake loads: no timing here."""

import json
import os
import time

import pytest
from omegaconf import OmegaConf

from harness import cores
from harness.cores import free_cores, torch_threads, why_fewer

DEFAULT = {"threads": None, "cores": None}
ALONE = OmegaConf.create({})  # the basic launcher: one job at a time
TWO_AT_ONCE = OmegaConf.create({"n_jobs": 2})


@pytest.mark.parametrize(("busy", "free"), [(0.0, 2), (0.4, 2), (0.6, 1), (1.3, 1), (1.6, 1), (2.5, 1)])
def test_the_load_takes_whole_cores_and_leaves_at_least_one(busy, free):
    assert free_cores(2, busy) == free


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})


def test_a_default_job_takes_the_cores_other_work_leaves(two_cores):
    assert torch_threads(DEFAULT, ALONE, load=lambda: 0.1) == 2
    assert torch_threads(DEFAULT, ALONE, load=lambda: 1.3) == 1
    assert torch_threads(DEFAULT, TWO_AT_ONCE, load=lambda: 0.0) == 1  # its share, whatever the load


def test_threads_or_cores_set_by_the_user_are_not_second_guessed(two_cores):
    def never():
        raise AssertionError("the load is not looked at")

    assert torch_threads({"threads": 2, "cores": None}, ALONE, load=never) == 2
    assert torch_threads({"threads": None, "cores": 2}, ALONE, load=never) == 2
    assert why_fewer({"threads": None, "cores": 2}, 2, ALONE) is None


def test_a_job_says_why_it_took_fewer_threads_than_its_share(two_cores, monkeypatch):
    monkeypatch.setattr(cores, "load_at_launch", lambda: 1.3)
    said = why_fewer(DEFAULT, 1, ALONE)
    assert said.startswith("threads=1, not its share of 2: other work kept 1.3 of 2 cores busy")
    assert "threads=N or cores=N sets them" in said and "no core was free" not in said
    monkeypatch.setattr(cores, "load_at_launch", lambda: 1.9)
    assert "no core was free, so it shares one" in why_fewer(DEFAULT, 1, ALONE)
    assert why_fewer(DEFAULT, 2, ALONE) is None


def test_the_launch_looks_at_the_load_once(monkeypatch):
    looks = []
    monkeypatch.setattr(cores, "sample_load", lambda: looks.append(1) or 0.0)
    cores.load_at_launch.cache_clear()
    try:
        for _ in range(3):
            torch_threads(DEFAULT, ALONE)
    finally:
        cores.load_at_launch.cache_clear()
    assert looks == [1]


def test_launches_begun_together_see_each_others_claims(monkeypatch, tmp_path):
    """Two launches at one moment each see the other idle; the claim the first wrote as it looked
    counts for the second, for a while and while its process lives (issue 43)."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cores, "sample_load", lambda: 0.0)
    now = time.time()
    other = os.getppid()  # a live process that is not this one
    claims = [
        {"pid": other, "cores": 2, "time": now},  # a launch that just took both cores
        {"pid": other, "cores": 2, "time": now - 2 * cores.CLAIM_SECONDS},  # long since training: the load shows it
        {"pid": 2**22 + 7, "cores": 2, "time": now},  # a process that is gone
    ]
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    cores.load_at_launch.cache_clear()
    try:
        assert cores.load_at_launch() == 2
        assert torch_threads(DEFAULT, ALONE) == 1
        monkeypatch.setenv(cores.SWEEP_PROCESS_ENV, f"host:boot:{other}:0")  # a job of that launch's sweep
        cores.load_at_launch.cache_clear()
        assert cores.load_at_launch() == 0.0
    finally:
        cores.load_at_launch.cache_clear()
