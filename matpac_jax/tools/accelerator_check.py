r"""One prepared check of an accelerator: ViT-B step throughput, MFU, memory, bf16 agreement.

  python -m matpac_jax.tools.accelerator_check --out runs/accel            # the paper's ViT-B
  python -m matpac_jax.tools.accelerator_check --out runs/accel_tiny --tiny # the same, tiny, CPU
  python -m matpac_jax.tools.accelerator_check --out runs/accel_cpu --batch_sizes 8 \
      --dtype float32                                                       # ViT-B on a CPU

On whatever backend JAX finds (every device it sees), in this order, each part timed:

1. **Devices**: kind, count, memory, jax / jaxlib versions, XLA_FLAGS.
2. **Train step** (`configs/matpac_pp.py:variant=B`, the trainer's own step, sharded over a data
   mesh of every device, state donated; `--dtype` bfloat16 compute by default, float32 master
   weights) at per-device batch sizes `--batch_sizes` (default 32, 64, 128, 256; the paper's is
   256), stopping at the first that does not fit in memory and saying so. Per size: compile
   time, the median step time over `--steps` steps after the compile, examples/s, model
   TFLOP/s (XLA's cost analysis of the compiled step), **MFU** against the device's peak dense
   bf16 rate (`PEAKS`; an unknown device prints TFLOP/s and says so), and the peak device
   memory (from the device's allocator where it reports one).
3. **Attention** at the step's shapes (B, N, H, dh, traced from the step): the model's einsum
   attention against `jax.nn.dot_product_attention` with XLA and, on a GPU, cuDNN; forward and
   forward + backward; and which one the step uses.
4. **Embedding**: `Encoder.embed` of 10 s clips in the precise mode, in `--dtype`: clips/s and
   x real time.
5. **bf16 against float32**: the loss and the gradient norm of the same initial weights and
   batch, computed in both; their relative differences.

Writes `OUT/report.json` and `OUT/report.md` and prints the elapsed time. Budgeted to finish in
under 8 minutes on one H100 (compiles included); `--tiny` (configs/matpac_pp.py:runlocal on
64-frame crops, per-device batch 2) runs the same code on a CPU in under a minute, and the
test suite runs it so that the command cannot rot. On a CPU, where no dense-bf16 peak applies,
the MFU column is `n/a` and each rate is also given as a share of a 2048^2 matmul (256^2
with `--tiny`) timed in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time

from matpac_jax import cli

PROG = "python -m matpac_jax.tools.accelerator_check"
# The repository's configs, wherever the command runs from.
_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")
CONFIG = os.path.join(_CONFIGS, "matpac_pp.py") + ":variant=B"
TINY_CONFIG = os.path.join(_CONFIGS, "matpac_pp.py") + ":runlocal"
TINY_OVERRIDES = ["--config.data.crop_frames=64"]
# Peak dense bf16 TFLOP/s per device, from the vendors' data sheets (without sparsity). Matched
# against jax's `device_kind` in order: the first substring found wins.
PEAKS = (
    ("H200", 989.4),  # H200 SXM
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # H100 SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v6 lite", 918.0),  # Trillium (v6e)
    ("TPU v6e", 918.0),
)
CLIP_SECONDS = 10.0


def peak_tflops(device_kind: str) -> float | None:
    """The device's peak dense bf16 TFLOP/s, or None when it is not in `PEAKS`."""
    for name, peak in PEAKS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def _elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.0f} s"


def devices_info() -> dict:
    """The devices, versions and options of this process."""
    import jax  # pylint: disable=g-import-not-at-top
    import jaxlib  # pylint: disable=g-import-not-at-top

    devices = jax.devices()
    stats = _memory_stats(devices[0])
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "memory_bytes_per_device": stats.get("bytes_limit"),
        "peak_bf16_tflops_per_device": peak_tflops(devices[0].device_kind),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host": {"machine": platform.machine(), "processor": _cpu_name(), "cpus": os.cpu_count()},
    }


def _memory_stats(device) -> dict:
    try:
        return device.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except (a backend without the call)
        return {}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor()


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory"))


# ---------------------------------------------------------------------------------------------
# The parts.


def step_rows(config, per_device: list[int], steps: int, matmul: float | None) -> list[dict]:
    """The train step at each per-device batch size (module docstring, part 2)."""
    import jax  # pylint: disable=g-import-not-at-top

    from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import sharding  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top

    mesh = sharding.make_mesh((-1, 1))
    count = jax.device_count()
    peak = peak_tflops(jax.devices()[0].device_kind)
    rows = []
    for size in per_device:
        batch = size * count
        row = {"per_device_batch": size, "global_batch": batch}
        try:
            model_cfg, step_cfg, sched, tx = bench_step.step_parts(config, batch)
            init = lambda k, model_cfg=model_cfg, tx=tx: ts.init_state(k, model_cfg, tx)  # noqa: E731
            abstract = jax.eval_shape(init, jax.random.key(0))
            shardings = sharding.state_shardings(abstract, mesh, config.fsdp_min_size)
            state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
            x = jax.device_put(
                bench_step.random_crops(config, batch), sharding.batch_sharding(mesh)
            )
            step = jax.jit(
                ts.make_train_step(model_cfg, step_cfg, sched, tx, 0),
                in_shardings=(shardings, sharding.batch_sharding(mesh)),
                out_shardings=(shardings, sharding.replicated(mesh)),
                donate_argnums=0,
            )
            start = time.perf_counter()
            compiled = step.lower(state, x).compile()
            row["compile_s"] = round(time.perf_counter() - start, 1)
            cost = compiled.cost_analysis()
            flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
            holder = {"state": state}

            def run(batch_x, holder=holder, compiled=compiled):
                holder["state"], metrics = compiled(holder["state"], batch_x)
                return metrics["loss"]

            # The first call allocates; then `steps` calls, each blocked on.
            step_s = bench_step.median_time(run, x, seconds=0.0, min_runs=steps)
            tflops = flops / step_s / 1e12  # the program's FLOPs: one device's share
            row.update(
                step_ms=round(1e3 * step_s, 2),
                examples_per_s=round(batch / step_s, 1),
                gflop_per_example=round(flops * count / batch / 1e9, 2),
                tflops_per_device=round(tflops, 3),
                mfu=None if peak is None else round(tflops / peak, 4),
                peak_memory_gib=_peak_gib(),
                temp_gib=_temp_gib(compiled),
            )
            if matmul:
                row["of_matmul"] = round(tflops * 1e12 / matmul, 3)
            del holder, state, compiled
        except Exception as e:  # pylint: disable=broad-except (an OOM ends the sweep)
            if not _out_of_memory(e):
                raise
            row["error"] = f"does not fit: {cli.one_line(e)[:200]}"
            rows.append(row)
            break
        rows.append(row)
    return rows


def _peak_gib() -> float | None:
    import jax  # pylint: disable=g-import-not-at-top

    peak = _memory_stats(jax.devices()[0]).get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**30, 2)


def _temp_gib(compiled) -> float | None:
    try:
        return round(compiled.memory_analysis().temp_size_in_bytes / 2**30, 3)
    except Exception:  # pylint: disable=broad-except (not every backend reports it)
        return None


def attention_rows(config, per_device: int, dtype: str) -> dict:
    """The attention kernels at the step's shapes (module docstring, part 3):
    `tools.bench_attention` in the compute dtype, and the kernel the step uses."""
    from matpac_jax.tools import bench_attention  # pylint: disable=g-import-not-at-top

    shapes = bench_attention.step_shapes(config, per_device)
    result = bench_attention.bench(shapes, 0.3, matmul_n=2048, dtype=dtype)
    return {**result, "step_uses": "ours"}  # the model's einsum attention (attention_impl None)


def embed_row(model: str, dtype: str, clips: int, batch_size: int) -> dict:
    """Encoder.embed of 10 s clips (module docstring, part 4)."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    from matpac_jax.inference.encoder import Encoder  # pylint: disable=g-import-not-at-top

    enc = Encoder.random(model, dtype=dtype, batch_size=batch_size)
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((clips, int(CLIP_SECONDS * 16_000)))).astype(np.float32)
    start = time.perf_counter()
    enc.embed(waves, 16_000)  # compiles
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    enc.embed(waves, 16_000)
    seconds = time.perf_counter() - start
    return {
        "model": model,
        "dtype": dtype,
        "clips": clips,
        "batch_size": batch_size,
        "first_call_s": round(compile_s, 1),
        "clips_per_s": round(clips / seconds, 2),
        "x_real_time": round(clips * CLIP_SECONDS / seconds, 1),
    }


def bf16_agreement(config, batch: int) -> dict:
    """Loss and gradient norm of the same initial weights and batch in bf16 and float32."""
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top

    from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top

    model_cfg, step_cfg, sched, tx = bench_step.step_parts(config, batch)
    state = jax.jit(lambda k: ts.init_state(k, model_cfg, tx))(jax.random.key(0))
    x = bench_step.random_crops(config, batch)
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = dataclasses.replace(model_cfg, dtype=dtype)
        (loss, _), grads = jax.jit(ts.make_loss_and_grads(cfg, step_cfg, sched, 0))(state, x)
        out[dtype] = (float(loss), float(optax.global_norm(grads)))
    (l32, g32), (l16, g16) = out["float32"], out["bfloat16"]
    return {
        "batch": batch,
        "loss": {"float32": l32, "bfloat16": l16, "rel_diff": abs(l16 - l32) / abs(l32)},
        "grad_norm": {"float32": g32, "bfloat16": g16, "rel_diff": abs(g16 - g32) / abs(g32)},
        "finite": bool(np.isfinite([l16, g16]).all()),
    }


# ---------------------------------------------------------------------------------------------
# The report.


def render(report: dict) -> str:
    """report.md."""
    d = report["devices"]
    peak = d["peak_bf16_tflops_per_device"]
    mem = d["memory_bytes_per_device"]
    lines = [
        f"# Accelerator check: {d['device_count']} x {d['device_kind']} ({d['backend']})",
        "",
        f"jax {d['jax']}, jaxlib {d['jaxlib']}; XLA_FLAGS `{d['xla_flags'] or '(none)'}`; "
        f"memory per device {'n/a' if mem is None else f'{mem / 2**30:.1f} GiB'}; peak dense "
        f"bf16 {'unknown for this device: MFU not given' if peak is None else f'{peak} TFLOP/s'}."
        f" Host: {d['host']['processor']}, {d['host']['cpus']} CPUs. Elapsed: "
        f"{report['elapsed_s']:.0f} s.",
        "",
        f"## Train step (`{report['config']}`, compute {report['dtype']}, float32 master weights)",
        "",
        "| batch / device (global) | step ms | examples/s | TFLOP/s / device | MFU | of the "
        "matmul | peak memory GiB | temp GiB | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["step"]:
        if "error" in r:
            lines.append(f"| {r['per_device_batch']} ({r['global_batch']}) | {r['error']} |")
            continue
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['per_device_batch']} ({r['global_batch']}) | {r['step_ms']} | "
            f"{r['examples_per_s']} | {r['tflops_per_device']} | {mfu} | {r.get('of_matmul', '-')} "
            f"| {_na(r['peak_memory_gib'])} | {_na(r['temp_gib'])} | {r['compile_s']} |"
        )
    att = report["attention"]
    lines += [
        "",
        f"## Attention ({att['dtype']}; the step uses {att['step_uses']})",
        "",
        "| shape (B, N, H, dh) | calls / step | kernel | fwd ms | fwd+bwd ms | fwd TFLOP/s | "
        "max rel diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in att["shapes"]:
        for name in [k for k in row if isinstance(row[k], dict)]:
            r = row[name]
            where = f"| {row['shape']} | {row['calls']} | {name} |"
            if "error" in r:
                lines.append(f"{where} {r['error']} |")
                continue
            lines.append(
                f"{where} {r['fwd_ms']} | {r['fwd_bwd_ms']} | {r['fwd_tflop_per_s']} | "
                f"{r.get('max_rel_diff', '-')} |"
            )
    e = report["embed"]
    b = report["bf16_vs_float32"]
    lines += [
        "",
        f"## Embedding ({e['model']}, {e['dtype']}, {e['clips']} clips of 10 s, batch "
        f"{e['batch_size']})",
        "",
        f"{e['clips_per_s']} clips/s, {e['x_real_time']}x real time (first call {e['first_call_s']} s).",
        "",
        f"## bf16 against float32 (same weights and batch of {b['batch']})",
        "",
        f"loss {b['loss']['float32']:.6f} / {b['loss']['bfloat16']:.6f} (relative difference "
        f"{b['loss']['rel_diff']:.2e}); gradient norm {b['grad_norm']['float32']:.6f} / "
        f"{b['grad_norm']['bfloat16']:.6f} ({b['grad_norm']['rel_diff']:.2e}); finite: {b['finite']}.",
    ]
    return "\n".join(lines) + "\n"


def _na(value) -> str:
    return "n/a" if value is None else str(value)


def run(out: str, *, tiny: bool, batch_sizes: list[int], dtype: str, steps: int) -> dict:
    """The check (module docstring); writes OUT/report.json and report.md, returns the report."""
    start = time.perf_counter()
    from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top

    spec = TINY_CONFIG if tiny else CONFIG
    overrides = (TINY_OVERRIDES if tiny else []) + [f"--config.model.compute_dtype={dtype}"]
    config = bench_step.trainable_config(spec, overrides)
    shown = (
        os.path.relpath(spec.split(":")[0], os.path.dirname(_CONFIGS)) + ":" + spec.split(":")[1]
    )
    report = {"config": shown, "overrides": overrides, "dtype": dtype, "devices": devices_info()}
    d = report["devices"]
    print(f"{d['device_count']} x {d['device_kind']} ({d['backend']}), jax {d['jax']}", flush=True)
    matmul = None
    if d["peak_bf16_tflops_per_device"] is None:  # no peak to set MFU against: the matmul's rate
        import jax  # pylint: disable=g-import-not-at-top

        matmul = bench_step.matmul_rate(256 if tiny else 2048, jax.numpy.dtype(dtype), 1.0)
        report["matmul_2048_tflops" if not tiny else "matmul_256_tflops"] = round(matmul / 1e12, 4)
    report["step"] = step_rows(config, batch_sizes, steps, matmul)
    for r in report["step"]:
        print(
            f"step, batch {r['per_device_batch']}/device: {r.get('step_ms', r.get('error'))} ms "
            f"({_elapsed(start)})",
            flush=True,
        )
    fitted = [r["per_device_batch"] for r in report["step"] if "error" not in r]
    report["attention"] = attention_rows(config, fitted[-1] if fitted else batch_sizes[0], dtype)
    print(f"attention: {len(report['attention']['shapes'])} shapes ({_elapsed(start)})", flush=True)
    report["embed"] = embed_row("mu" if tiny else "B", dtype, 4 if tiny else 64, 4 if tiny else 32)
    print(f"embed: {report['embed']['clips_per_s']} clips/s ({_elapsed(start)})", flush=True)
    report["bf16_vs_float32"] = bf16_agreement(config, 2 if tiny else 8)
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    cli.make_dir(out)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(render(report))
    print(f"-> {os.path.join(out, 'report.md')} (elapsed {_elapsed(start)})")
    return report


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise cli.UserError(f"--batch_sizes {text}: expected positive integers, e.g. 32,64,128")
    return sizes


def _main(argv) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--out", required=True, help="folder for report.json and report.md")
    p.add_argument("--tiny", action="store_true", help="the tiny model on 64-frame crops (CPU)")
    p.add_argument("--batch_sizes", help="per-device batch sizes (default 32,64,128,256; tiny 2)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--steps", type=cli.int_at_least(2), default=8, help="timed steps per size")
    args = p.parse_args(argv)
    sizes = _sizes(args.batch_sizes or ("2" if args.tiny else "32,64,128,256"))
    out = cli.output_dir(args.out, "--out")
    run(out, tiny=args.tiny, batch_sizes=sizes, dtype=args.dtype, steps=args.steps)
    return 0


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
