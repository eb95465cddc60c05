"""Tests for matpac_jax/tools/accelerator_check.py: the --tiny check end to end as a user runs it
(so that the prepared accelerator check cannot rot), the peak table, and the sweep's stop at
the first batch that does not fit."""

import json
import subprocess
import sys

import pytest
from conftest import subprocess_env

from matpac_jax.tools import accelerator_check as check


@pytest.mark.parametrize(
    "kind,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5p", 459.0),
        ("cpu", None),
    ],
)
def test_peak_table(kind, peak):
    assert check.peak_tflops(kind) == peak


@pytest.mark.slow
def test_the_sweep_stops_at_the_first_batch_that_does_not_fit(monkeypatch):
    from matpac_jax.tools import bench_step

    config = bench_step.trainable_config(check.TINY_CONFIG, check.TINY_OVERRIDES)
    real = bench_step.step_parts

    import jax

    def parts(config, batch):  # the global batch: 8 fake devices here (tests/conftest.py)
        if batch >= 4 * jax.device_count():  # what XLA raises when the memory runs out
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return real(config, batch)

    monkeypatch.setattr(bench_step, "step_parts", parts)
    rows = check.step_rows(config, [2, 4, 8], steps=2, matmul=None)
    assert [r["per_device_batch"] for r in rows] == [2, 4]  # 8 never tried
    assert rows[0]["step_ms"] > 0 and rows[0]["mfu"] is None  # no peak known for a CPU
    assert rows[1]["error"].startswith("does not fit: RESOURCE_EXHAUSTED")

    def broken(config, batch):
        raise ValueError("a bug, not memory")

    monkeypatch.setattr(bench_step, "step_parts", broken)
    with pytest.raises(ValueError, match="a bug"):  # only memory ends a sweep quietly
        check.step_rows(config, [2], steps=2, matmul=None)


@pytest.mark.slow
def test_tiny_check_from_another_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "matpac_jax.tools.accelerator_check", "--out", "accel", "--tiny"],
        cwd=tmp_path,
        env=subprocess_env(devices=1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "accel" / "report.json").read_text())
    assert report["config"] == "configs/matpac_pp.py:runlocal" and report["dtype"] == "bfloat16"
    d = report["devices"]
    assert d["backend"] == "cpu" and d["device_count"] == 1 and d["jax"]
    assert d["peak_bf16_tflops_per_device"] is None and report["matmul_256_tflops"] > 0
    assert [r["per_device_batch"] for r in report["step"]] == [2]
    for row in report["step"]:
        assert row["step_ms"] > 0 and row["tflops_per_device"] > 0 and row["mfu"] is None
        assert row["examples_per_s"] == pytest.approx(
            1e3 * row["global_batch"] / row["step_ms"], rel=0.01
        )
    # The attention shapes are the step's own: the encoder's and the predictor's.
    shapes = report["attention"]["shapes"]
    assert report["attention"]["step_uses"] == "ours" and len(shapes) >= 2
    assert report["attention"]["dtype"] == "bfloat16"
    for row in shapes:
        assert row["calls"] >= 1 and row["ours"]["fwd_ms"] > 0
        assert row["xla_dot_product_attention"]["max_rel_diff"] < 0.05  # bf16 kernels
    assert report["embed"]["clips_per_s"] > 0 and report["embed"]["dtype"] == "bfloat16"
    agree = report["bf16_vs_float32"]
    assert agree["finite"] and 0 < agree["loss"]["rel_diff"] < 0.02
    assert agree["grad_norm"]["rel_diff"] < 0.05
    md = (tmp_path / "accel" / "report.md").read_text()
    assert "| 2 (2) |" in md and "## bf16 against float32" in md and "MFU not given" in md
    assert "elapsed" in out.stdout
