"""`python -m harness.bench --whole-run`: a run's wall time against its bare steps, per depth and
precision (the numbers are measured, never asserted; the arithmetic is)."""

import pytest

from conftest import harness_command

pytestmark = pytest.mark.integration


def test_the_whole_run_ratio_is_the_run_over_its_bare_steps(tmp_path, data_root):
    result = harness_command(
        "harness.bench", "--whole-run", "--depths", "8", "--precisions", "fp32", "bf16", "--steps", "3",
        "--root", str(data_root), "--overrides", "schedule=smoke", "dataset.validation_size=500",
        "tracking.log_model=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("8 ")]
    assert [row[1] for row in rows] == ["fp32", "bf16"]
    for _depth, _precision, _threads, step_ms, iterations, seconds, ratio, *_ in rows:
        assert int(iterations) == 20
        assert float(ratio) == pytest.approx(float(seconds) / (int(iterations) * float(step_ms) / 1000), rel=0.02)
