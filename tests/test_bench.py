"""`python -m harness.bench --whole-run`: a run's wall time against its bare steps, per depth and
precision (the numbers are measured, never asserted; the arithmetic is)."""

import pytest

from helpers.commands import harness_command

pytestmark = pytest.mark.integration


def test_the_whole_run_ratio_is_the_run_over_its_bare_steps(tmp_path, data_root):
    result = harness_command(
        "harness.bench", "--whole-run", "--depths", "8", "--precisions", "fp32", "--steps", "3",
        "--root", str(data_root), "--overrides", "schedule=smoke", "schedule.iterations=10",
        "dataset.validation_size=500", "tracking.log_model=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("8 ")]
    assert [row[1] for row in rows] == ["fp32"]
    for _depth, _precision, _threads, step_ms, iterations, seconds, loop, ratio, *_ in rows:
        assert int(iterations) == 10 and 0 < float(loop) < float(seconds)
        assert float(ratio) == pytest.approx(float(seconds) / (int(iterations) * float(step_ms) / 1000), rel=0.02)


def test_the_gpu_benchmark_says_in_one_line_where_there_is_no_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: harness.bench --gpu measures (minutes)")
    result = harness_command("harness.bench", "--gpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "harness.bench --gpu: no CUDA device here; it measures on a GPU only (docs/performance.md, 'On a GPU')."
    ]


def test_the_gpu_benchmarks_rate_is_timed_between_logging_points_past_the_warm_up(monkeypatch):
    from harness import bench_gpu

    clock = iter([10.0, 11.0, 12.0, 13.0])
    monkeypatch.setattr(bench_gpu.time, "perf_counter", lambda: next(clock))
    tracker = bench_gpu.RateTracker(seconds=2.5)
    tracker.log_metrics({"train_loss": 1.0}, bench_gpu.WARMUP - 20)  # warming up: not timed
    for step in (bench_gpu.WARMUP, bench_gpu.WARMUP + 20, bench_gpu.WARMUP + 40):
        tracker.log_metrics({"train_loss": 1.0}, step)
    with pytest.raises(bench_gpu.Stop):  # 3 s timed, more than 2.5
        tracker.log_metrics({"train_loss": 1.0}, bench_gpu.WARMUP + 60)
    assert tracker.rate() == pytest.approx(60 / 3)
