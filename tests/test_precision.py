"""`precision=auto` (harness.precision): decided by measuring bf16 against fp32 once per machine,
never by the CPU's flags, kept for every later launch there and recorded on each run."""

import json
import os

import pytest
import torch

import harness.device
from harness import edge, precision, record
from harness.config import compose_config
from harness.cores import torch_threads
from harness.device import device_name
from harness.precision import BF16_MIN_SPEEDUP, auto_decision

from helpers.config import resolved


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache file of the test's own, and no decision of this process remembered."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    auto_decision.cache_clear()
    yield tmp_path / "cache" / "precision.json"
    auto_decision.cache_clear()


def measuring(fp32_ms: float, bf16_ms: float, calls: list, busy: float = 0.0):
    """A fake measurement: these timings, taken beside `busy` cores of other work."""

    def measure(kind, threads):
        calls.append(kind)
        return fp32_ms, bf16_ms, busy

    return measure


def quiet():
    return 0.0


def busy():
    return 1.4


@pytest.mark.parametrize(
    "fp32_ms, bf16_ms, expected",
    [
        (130.0, 150.0, "fp32"),  # the Intel Xeon with avx512_bf16 and no AMX: 0.87x
        (250.0, 150.0, "bf16"),  # an AVX512-BF16 AMD EPYC: 1.67x
        (100.0, 100.0 / (BF16_MIN_SPEEDUP - 0.05), "fp32"),  # faster, but not clearly
        (100.0, 100.0 / (BF16_MIN_SPEEDUP + 0.05), "bf16"),
    ],
)
def test_auto_is_what_the_measurement_says_whatever_the_flags(own_cache, monkeypatch, fp32_ms, bf16_ms, expected):
    for flags in ({"avx512_bf16", "amx_bf16"}, set()):
        monkeypatch.setattr(harness.device, "cpu_flags", lambda: frozenset(flags))
        auto_decision.cache_clear()
        own_cache.unlink(missing_ok=True)
        decision = auto_decision("cpu", 2, measuring(fp32_ms, bf16_ms, calls := []))
        assert calls == ["cpu"] and decision.precision == expected
        assert (decision.fp32_ms, decision.bf16_ms) == (fp32_ms, bf16_ms)


def test_the_decision_is_measured_once_per_machine_and_kept(own_cache, capsys):
    calls = []
    first = auto_decision("cpu", 2, measuring(130.0, 150.0, calls))
    line = capsys.readouterr().out
    assert "bf16 0.87x fp32 here" in line and "precision=auto is fp32" in line and str(own_cache) in line
    auto_decision.cache_clear()  # as a new process would: a relaunch, a sweep's job
    again = auto_decision("cpu", 2, measuring(100.0, 50.0, calls))  # a measurement now would say bf16
    assert calls == ["cpu"] and again == first and capsys.readouterr().out == ""
    machine = precision.decision_key("cpu", 2)
    kept = json.loads(own_cache.read_text())
    assert kept[machine]["precision"] == "fp32" and kept[machine]["bf16_ms"] == 150.0
    precision.forget(machine)  # python -m harness.precision --again
    auto_decision.cache_clear()
    assert auto_decision("cpu", 2, measuring(100.0, 50.0, calls)).precision == "bf16" and len(calls) == 2


def test_another_machine_in_the_same_cache_measures_its_own(own_cache):
    own_cache.parent.mkdir(parents=True)
    other = precision.choose("Some Xeon (AVX512, bf16 units)", 250.0, 100.0)
    own_cache.write_text(json.dumps({other.machine: precision.asdict(other)}))
    assert auto_decision("cpu", 2, measuring(130.0, 150.0, calls := [])).precision == "fp32" and calls == ["cpu"]
    assert set(json.loads(own_cache.read_text())) == {other.machine, precision.decision_key("cpu", 2)}


def test_the_real_measurement_times_both_precisions():
    """The suite's own decision (measured by the first test that resolved precision=auto, or by
    this one), read back from its cache file as a new process reads it."""
    auto_decision.cache_clear()
    decision = auto_decision("cpu", 1)
    assert decision.machine == precision.decision_key("cpu", 1)
    assert decision.fp32_ms > 0 and decision.bf16_ms > 0 and decision.busy_cores >= 0
    assert decision.precision == ("bf16" if decision.fp32_ms / decision.bf16_ms >= BF16_MIN_SPEEDUP else "fp32")


def test_the_edge_leaves_a_named_precision_alone_and_reads_autos_decision(own_cache):
    auto_decision("cpu", 2, measuring(130.0, 150.0, []))  # kept: fp32, 0.87x
    for named in ("fp32", "bf16"):
        decided = edge.decide(compose_config("device=cpu", "threads=2", f"precision={named}"))
        assert (decided.threads, decided.precision, decided.measured) == (2, named, None)
    decided = edge.decide(compose_config("device=cpu", "threads=2"))
    assert (decided.threads, decided.precision, decided.measured.fp32_ms) == (2, "fp32", 130.0)


def test_a_run_records_the_decision_and_its_timings(own_cache):
    auto_decision("cpu", 2, measuring(130.0, 150.0, []))
    auto_decision.cache_clear()  # the run's process reads the kept decision
    machine = record.Machine(threads=2)
    tags = record.job_tags(resolved(compose_config("device=cpu", "threads=2")), machine, "unknown")
    assert tags["precision"] == "fp32"
    assert tags["precision_fp32_ms"] == "130.0" and tags["precision_bf16_ms"] == "150.0"
    assert "bf16 0.87x fp32 here" in tags["precision_auto"]
    forced = record.job_tags(resolved(compose_config("device=cpu", "precision=bf16")), machine, "unknown")
    assert forced["precision"] == "bf16" and "precision_auto" not in forced


def test_a_decision_measured_beside_other_work_says_so():
    busy = precision.choose("a CPU", 130.0, 150.0, busy_cores=1.4)
    assert "measured beside other work (1.4 cores busy)" in busy.line()
    assert "beside other work" not in precision.choose("a CPU", 130.0, 150.0, busy_cores=0.1).line()


def test_a_cache_that_cannot_be_written_is_said_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(blocked / "cache"))  # under a file: not a folder anyone can make
    auto_decision.cache_clear()
    try:
        assert auto_decision("cpu", 2, measuring(130.0, 150.0, [])).precision == "fp32"
    finally:
        auto_decision.cache_clear()
    said = capsys.readouterr().out
    assert "measured, but not kept" in said and "HARNESS_CACHE_DIR" in said


def test_the_key_names_the_cpu_torch_and_the_threads(monkeypatch):
    """Two hosts that Linux names alike, two torch builds, 1 and 2 threads: each its own entry."""
    key = precision.decision_key("cpu", 1)
    assert key.startswith(device_name(torch.device("cpu"))) and f"torch {torch.__version__}" in key
    assert key.endswith("1 thread(s)") and precision.decision_key("cpu", 2) != key
    # Two AMD EPYCs of one VM name and the same flags, Zen 3 and Zen 4 (issue 43's host is family 25 model 17).
    keys = set()
    for model in ("1", "17"):
        info = {"model name": "AMD EPYC", "flags": "avx2 avx512f avx512_bf16", "cpu family": "25", "model": model}
        monkeypatch.setattr(harness.device, "cpu_info", lambda info=info: info)
        keys.add(precision.decision_key("cpu", 2))
    assert len(keys) == 2 and all("AMD EPYC" in key and "family 25" in key for key in keys)


def test_a_decision_measured_beside_other_work_is_provisional(own_cache, capsys):
    """Issue 43: measured beside a busy process, a decision is kept as provisional: the jobs of a
    launch that stays busy read it, and the first launch that finds the machine quiet measures
    again and keeps its own, which later busy launches read."""
    calls = []
    first = auto_decision("cpu", 2, measuring(130.0, 600.0, calls, busy=1.3), load=busy)
    assert first.precision == "fp32" and first.provisional
    assert "kept as provisional while the machine is busy" in capsys.readouterr().out
    auto_decision.cache_clear()  # a job of the same busy launch
    assert auto_decision("cpu", 2, measuring(130.0, 80.0, calls), load=busy) == first and len(calls) == 1
    auto_decision.cache_clear()  # a later launch on a quiet machine
    again = auto_decision("cpu", 2, measuring(130.0, 80.0, calls), load=quiet)
    assert len(calls) == 2 and again.precision == "bf16" and not again.provisional
    auto_decision.cache_clear()  # and a busy one after it reads the quiet decision, never measures
    assert auto_decision("cpu", 2, measuring(130.0, 600.0, calls, busy=1.3), load=busy) == again
    assert len(calls) == 2


def test_a_sweeps_job_reads_its_launchs_provisional_decision_even_on_a_quiet_machine(own_cache, monkeypatch):
    """The launch decided at its edge; a job that its launcher started elsewhere never measures
    again, or two jobs of one study could train at two precisions."""
    auto_decision("cpu", 1, measuring(130.0, 90.0, calls := [], busy=1.3), load=busy)
    monkeypatch.setenv("HARNESS_SWEEP_PROCESS", f"host:boot:{os.getpid() + 1}:0")
    auto_decision.cache_clear()
    assert auto_decision("cpu", 1, measuring(130.0, 600.0, calls), load=quiet).precision == "bf16"
    assert len(calls) == 1


def test_a_busy_first_launch_measures_at_the_threads_the_load_leaves_it(own_cache):
    """The issue's host: bf16 1.55x quiet, 0.21x measured with 2 threads beside 1.3 busy cores.
    Beside that load a default job takes 1 thread, and bf16 is measured, and chosen, at 1."""

    def measure(kind, threads):  # oversubscribed, bf16's OpenMP barriers wait on a busy core
        return (1227.0, 253.0, 1.3) if threads == 1 else (253.0, 1227.0, 1.3)

    threads = torch_threads({"threads": None, "cores": None}, load=lambda: 1.3)
    assert threads == 1 or len(os.sched_getaffinity(0)) > 2
    assert auto_decision("cpu", threads, measure, load=busy).precision == ("bf16" if threads == 1 else "fp32")
