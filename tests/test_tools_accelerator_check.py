"""Tests for matpac_jax/tools/accelerator_check.py: the --tiny check end to end as a user runs it
(so that the prepared accelerator check cannot rot), the FLOP count against XLA's CPU cost
analysis, the peak table, the sweep's halving on out-of-memory, the report written as the run
goes, the deadline, and the refusal of a CPU backend."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import subprocess_env

from matpac_jax.tools import accelerator_check as check
from matpac_jax.tools import bench_step


@pytest.mark.parametrize(
    "kind,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", 70.0),
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5p", 459.0),
        ("TPU v6 lite", 918.0),
        ("cpu", None),
    ],
)
def test_peak_table(kind, peak):
    assert check.peak_tflops(kind) == peak


def test_every_gemm_is_counted():
    # Three GEMMs of known sizes and nothing else: 2 m n k each, whatever a backend would hand
    # to a library call after optimisation (the count is of the program lowered for the CPU).
    def fn(a, b, c):
        return (a @ b) @ c, jnp.einsum("bij,bjk->bik", a[None], b[None])

    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((64, 96), (96, 40), (40, 24))]
    exact = 2 * 64 * 96 * 40 + 2 * 64 * 40 * 24 + 2 * 64 * 96 * 40
    assert check.cpu_flops(fn, *args) == exact


def _config(spec, overrides=()):
    return bench_step.trainable_config(spec, list(overrides))


@pytest.mark.slow
def test_step_flops_equal_the_compiled_cpu_cost_analysis():
    # A ViT-B-wide encoder two blocks deep at the paper's crop: the figure from the lowered
    # program against XLA's CPU cost analysis of the compiled one, within 1%.
    config = _config(check.CONFIG, ["--config.model.depth=2", "--config.model.pred_depth=1"])
    got = check.step_flops(config, 2)["flops_per_step"]
    from matpac_jax.train import step as ts

    model_cfg, step_cfg, sched, tx = bench_step.step_parts(config, 2)
    state = jax.eval_shape(lambda k: ts.init_state(k, model_cfg, tx), jax.random.key(0))
    x = jax.eval_shape(lambda: bench_step.random_crops(config, 2))
    cost = jax.jit(ts.make_train_step(model_cfg, step_cfg, sched, tx, 0)).lower(state, x)
    compiled = cost.compile().cost_analysis()
    want = float((compiled[0] if isinstance(compiled, (list, tuple)) else compiled)["flops"])
    assert abs(got - want) <= 0.01 * want


@pytest.mark.slow
def test_vit_b_at_the_papers_shapes_is_about_95_gflop_per_example():
    # Lowered only (no compile): the paper's ViT-B, 608-frame crops, K = 5 heads.
    flops = check.step_flops(_config(check.CONFIG), 2)
    assert 94.0 <= flops["gflop_per_example"] <= 97.0, flops


class _FakeSweep:
    """StepSweep's interface, out of memory at `fits_below` and above."""

    count = 2

    def __init__(self, fits_below):
        self.fits_below, self.tried = fits_below, []

    def row(self, size, per_example):
        self.tried.append(size)
        if size >= self.fits_below:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        if size == 3:
            raise ValueError("a bug, not memory")
        return {"per_device_batch": size, "global_batch": 2 * size, "step_ms": 1.0}


def _report(tmp_path, deadline_s=1e9):
    data = {"config": "c", "dtype": "bfloat16", "deadline_s": deadline_s, "devices": {}}
    return check.Report(str(tmp_path / "out"), data, deadline_s, check.TINY_ESTIMATES)


def test_the_sweep_starts_large_and_halves_on_out_of_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(check, "render", lambda report: "")
    sweep = _FakeSweep(fits_below=70)
    rows = check.run_sweep(_report(tmp_path), sweep, [64, 256, 3], None)
    # 256 does not fit: 128 (its half) next, then 64 as given (not 64 twice); a bug at 3 is
    # recorded and does not stop the sweep.
    assert sweep.tried == [256, 128, 64, 3]
    assert [r["per_device_batch"] for r in rows] == [256, 128, 64, 3]
    assert rows[0]["error"].startswith("does not fit: RESOURCE_EXHAUSTED")
    assert rows[2]["step_ms"] == 1.0 and rows[3]["error"] == "ValueError: a bug, not memory"
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["step"]["rows"] == rows
    # Nothing fits: halving goes down to 1.
    sweep = _FakeSweep(fits_below=1)
    check.run_sweep(_report(tmp_path), sweep, [8], None)
    assert sweep.tried == [8, 4, 2, 1]


def test_the_deadline_skips_what_would_end_past_it(tmp_path, capsys):
    report = check.run(str(tmp_path / "out"), tiny=True, batch_sizes=[2], dtype="float32",
                       steps=2, deadline_s=0.0)  # fmt: skip
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved == report
    for part in ("flops", "agreement", "embed", "attention"):
        assert saved[part]["skipped"].startswith(
            "would not end before the deadline (--deadline_s 0)"
        )
    assert saved["step"]["rows"][0]["skipped"].startswith("would not end before the deadline")
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("skipped: would not end before the deadline") == 5  # 4 parts, 1 size
    assert "flops: would not end before the deadline" in capsys.readouterr().out


@pytest.mark.slow
def test_the_report_is_written_as_the_run_goes(tmp_path, monkeypatch):
    # The agreement part fails (recorded; the run goes on), then the embedding part is cut off
    # by something the check does not catch: what ran before is on disk.
    def broken(*args):
        raise ValueError("no such kernel")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "bf16_agreement", broken)
    monkeypatch.setattr(check, "embed_row", killed)
    with pytest.raises(KeyboardInterrupt):
        check.run(str(tmp_path / "out"), tiny=True, batch_sizes=[2], dtype="bfloat16", steps=2)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["flops"]["gflop_per_example"] > 0
    (row,) = saved["step"]["rows"]
    assert row["step_ms"] > 0 and row["tflops_per_device"] > 0 and row["memory_analysis_gib"]
    assert saved["agreement"] == {"error": "ValueError: no such kernel"}
    assert "embed" not in saved and "attention" not in saved
    md = (tmp_path / "out" / "report.md").read_text()
    assert "failed: ValueError: no such kernel" in md and "## Embedding\n\n(not reached)" in md


def test_a_cpu_backend_is_refused_for_the_default_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "matpac_jax.tools.accelerator_check", "--out", "accel"],
        cwd=tmp_path,
        env=subprocess_env(devices=1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "sees no accelerator" in line and "pip install -e '.[cuda]'" in line
    assert "--tiny" in line and not (tmp_path / "accel").exists()


@pytest.mark.slow
def test_tiny_check_from_another_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "matpac_jax.tools.accelerator_check", "--out", "accel", "--tiny",
         "--cache_dir", "jax_cache", "--mem_fraction", "0.5"],
        cwd=tmp_path,
        env=subprocess_env(devices=1),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "accel" / "report.json").read_text())
    assert report["config"] == "configs/matpac_pp.py:runlocal" and report["dtype"] == "bfloat16"
    d = report["devices"]
    assert d["backend"] == "cpu" and d["device_count"] == 1 and d["jax"]
    assert d["memory_fraction"] == 0.5 and d["applied"]
    assert d["compilation_cache"] == str(tmp_path / "jax_cache")
    assert any((tmp_path / "jax_cache").iterdir())  # the compiles were cached
    assert d["peak_bf16_tflops_per_device"] is None and report["matmul_256_bfloat16_tflops"] > 0
    (row,) = report["step"]["rows"]
    assert row["per_device_batch"] == 2 and row["step_ms"] > 0 and row["mfu"] is None
    assert row["examples_per_s"] == pytest.approx(
        1e3 * row["global_batch"] / row["step_ms"], rel=0.01
    )
    # The rate is the lowered step's FLOPs over the step time.
    flops = report["flops"]["flops_per_step"] / report["flops"]["global_batch"] * 2
    assert row["tflops_per_device"] == pytest.approx(flops / row["step_ms"] / 1e9, rel=0.01)
    mem = row["memory_analysis_gib"]
    assert mem["peak"] == pytest.approx(
        mem["arguments"] + mem["outputs"] + mem["temporaries"] - mem["aliased"], abs=0.002
    )
    att = report["attention"]
    assert (
        att["step_uses"] == "ours" and att["calls_per_step"] >= 1 and len(att["step_shapes"]) >= 2
    )
    assert att["kernels"]["ours"]["fwd_bwd_ms"] > 0 and att["kernels"]["xla"]["max_rel_diff"] < 0.05
    e = report["embed"]
    assert (
        e["clips_per_s"] > 0
        and e["front_end"] == "device"
        and e["host_front_end"]["clips_per_s"] > 0
    )
    agree = report["agreement"]
    assert agree["finite"] and 0 < agree["loss"]["rel_diff"] < 0.02
    assert agree["float32_matmul_precision"] == "highest"
    assert agree["grad_norm"]["rel_diff"] < 0.05
    md = (tmp_path / "accel" / "report.md").read_text()
    assert "| 2 (2) |" in md and "## bf16 against float32" in md and "MFU not given" in md
    assert "imports: " in out.stdout and "elapsed" in out.stdout
