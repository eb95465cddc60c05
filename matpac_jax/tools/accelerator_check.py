r"""One prepared check of an accelerator: ViT-B step throughput, MFU, memory, bf16 agreement.

  python -m matpac_jax.tools.accelerator_check --out runs/accel            # the paper's ViT-B
  python -m matpac_jax.tools.accelerator_check --out runs/accel_tiny --tiny # the same, tiny, CPU
  python -m matpac_jax.tools.accelerator_check --out runs/accel_cpu --batch_sizes 8 \
      --dtype float32                                                       # ViT-B on a CPU
  bash launch/accelerator_check.sh --wheels WHEELS --out runs/accel       # offline machine

Made for a lent machine with a hard budget (about 10 minutes a command) and no network. Before
JAX starts it sets the client's memory fraction (`--mem_fraction`, default 0.95 instead of
JAX's 0.75; `XLA_PYTHON_CLIENT_MEM_FRACTION` when set) and a persistent compilation cache
(`JAX_COMPILATION_CACHE_DIR`, default ~/.cache/matpac_jax/jax: a second run on the same machine
skips the compiles), then imports everything it will use. The default run refuses a CPU
backend (a CPU jaxlib would run ViT-B at batch 256 until killed) in one line saying what to
install. Then, on every device JAX sees, each part timed, in this order:

1. **Devices**: kind, count, memory (the allocator's limit under the fraction), versions,
   XLA_FLAGS, the peak dense bf16 rate (`PEAKS`, the longest matching name wins).
2. **FLOPs**: the train step lowered for the CPU backend on abstract inputs (no compile, no
   device memory) and XLA's CPU cost analysis of it, per example; every matmul is counted
   there. A GPU's own cost analysis of the compiled step counts each GEMM that autotuning hands
   to cuBLAS as a custom call of -1 FLOP, so it is reported beside it, not used.
3. **Train step** (`configs/matpac_pp.py:variant=B`, the trainer's own step, sharded over a
   data mesh of every device, state donated; `--dtype` bfloat16 compute by default, float32
   master weights): from the largest per-device batch of `--batch_sizes` (default 256, 64) down,
   halving on out-of-memory. The state is initialised once and carried from size to size. Per
   size: compile time, the median step time over `--steps` steps, examples/s, TFLOP/s and
   **MFU** (part 2's FLOPs over the step time, against the peak), XLA's memory analysis
   (arguments, outputs, temporaries, aliased, the peak they add to) and the allocator's peak.
4. **bf16 against float32**: the loss and the gradient norm of the same initial weights and
   batch in `--dtype` and in float32 at full matmul precision
   (`jax.default_matmul_precision("highest")`: on Hopper and Ampere a float32 matmul is TF32
   by default); their relative differences.
5. **Embedding**: `Encoder.embed` of 10 s clips (512; 4 with `--tiny`) with the log-mel
   computed on the device (`audio.device_frontend`): clips/s and x real time; and the host's
   numpy front end alone on 64 clips, for comparison.
6. **Attention** at the step's dominant shape (B, N, H, dh; the one with the most FLOPs over
   its calls, traced from the step): the model's einsum attention against
   `jax.nn.dot_product_attention` with XLA and, on a GPU, cuDNN, forward + backward, each
   compiled once; and which one the step uses.

`OUT/report.json` and `OUT/report.md` are rewritten after every part and every batch size: a
run cut short keeps what it measured. A part that raises is recorded with its error and the
rest goes on. `--deadline_s` (default 420) skips a part whose estimated time (`ESTIMATES`, or
the last batch size's time for the next one) would end past it, and says so in the report.

`--tiny` (configs/matpac_pp.py:runlocal on 64-frame crops, per-device batch 2) runs the same
code on a CPU in about a minute; the test suite runs it so that the command cannot rot. On a
CPU, where no dense-bf16 peak applies, the MFU column is `n/a` and each rate is also given as a
share of a 256^2 matmul (an accelerator not in `PEAKS`: an 8192^2 bf16 matmul) timed in the
same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import platform
import sys
import time

from matpac_jax import cli, storage  # no jax import: the environment is set before JAX starts

PROG = "python -m matpac_jax.tools.accelerator_check"
# The repository's configs, wherever the command runs from.
_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")
CONFIG = os.path.join(_CONFIGS, "matpac_pp.py") + ":variant=B"
TINY_CONFIG = os.path.join(_CONFIGS, "matpac_pp.py") + ":runlocal"
TINY_OVERRIDES = ["--config.data.crop_frames=64"]
DEFAULT_SIZES = (256, 64)  # per device; the paper's is 256 (2,048 over 8 GPUs)
DEFAULT_DEADLINE_S = 420.0
DEFAULT_MEM_FRACTION = 0.95
DEFAULT_CACHE = os.path.join("~", ".cache", "matpac_jax", "jax")
# Peak dense bf16 TFLOP/s per device, from the vendors' data sheets (without sparsity). The
# longest name found in jax's `device_kind` wins ("L40S" over "L40" over "L4").
PEAKS = {
    "H200": 989.4,  # H200 SXM
    "H200 NVL": 835.0,
    "GH200": 989.4,
    "H100": 989.4,  # H100 SXM (device_kind "NVIDIA H100 80GB HBM3")
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,  # Trillium (v6e)
    "TPU v6e": 918.0,
}
# Seconds each part is expected to take on one H100, compiles included (docs/PERFORMANCE.md,
# "Accelerator check"); a part starts only if this much time is left before the deadline.
ESTIMATES = {"flops": 25.0, "step": 90.0, "agreement": 60.0, "embed": 60.0, "attention": 30.0}
TINY_ESTIMATES = {"flops": 5.0, "step": 15.0, "agreement": 10.0, "embed": 5.0, "attention": 5.0}
CLIP_SECONDS = 10.0


def peak_tflops(device_kind: str) -> float | None:
    """The device's peak dense bf16 TFLOP/s, or None when no name of `PEAKS` is in it."""
    found = [name for name in PEAKS if name.lower() in device_kind.lower()]
    return PEAKS[max(found, key=len)] if found else None


def configure_environment(mem_fraction: float | None, cache_dir: str | None) -> dict:
    """Sets the client memory fraction and the compilation cache for the JAX about to start;
    returns what was set. An explicit argument wins over the environment, the environment over
    the defaults.

    `applied` is false when JAX had already started in this process (a call from Python, not
    the command): then the settings are recorded but do not take.

    Raises:
      cli.UserError: a fraction outside (0, 1].
    """
    applied = "jax" not in sys.modules
    env = os.environ
    if mem_fraction is None:
        mem_fraction = float(env.get("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_MEM_FRACTION))
    if not 0 < mem_fraction <= 1:
        raise cli.UserError(f"--mem_fraction {mem_fraction:g}: must be in (0, 1]")
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{mem_fraction:g}"
    cache = cache_dir or env.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_CACHE
    cache = os.path.abspath(os.path.expanduser(cache))
    env["JAX_COMPILATION_CACHE_DIR"] = cache
    return {"memory_fraction": mem_fraction, "compilation_cache": cache, "applied": applied}


def import_everything() -> None:
    """Every module the parts use, and librosa's filterbank, now: not minutes into the run."""
    for name in (
        "jax", "optax", "matpac_jax.audio.device_frontend", "matpac_jax.inference.encoder",
        "matpac_jax.tools.bench_attention", "matpac_jax.tools.bench_step",
        "matpac_jax.train.sharding", "matpac_jax.train.step",
    ):  # fmt: skip
        importlib.import_module(name)
    from matpac_jax.audio import frontend  # pylint: disable=g-import-not-at-top

    frontend._projections(frontend.FrontEnd())  # pylint: disable=protected-access (librosa)


def refuse_cpu(tiny: bool, sizes_given: bool) -> None:
    """The default (ViT-B) run on a CPU backend: one line saying what to install."""
    import jax  # pylint: disable=g-import-not-at-top

    if jax.default_backend() == "cpu" and not tiny and not sizes_given:
        raise cli.UserError(
            f"JAX {jax.__version__} sees no accelerator, only the CPU (a CPU-only jaxlib, or "
            "JAX_PLATFORMS=cpu): the ViT-B check would run on the CPU until killed. Install the "
            "accelerator build (pip install -e '.[cuda]' for NVIDIA GPUs, '.[tpu]' for TPUs; "
            "docs/launching.md), carry its wheels with launch/accelerator_check.sh --wheels, or "
            "run --tiny (or --batch_sizes N) to check on the CPU"
        )


def _elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.0f} s"


def devices_info(settings: dict) -> dict:
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
        **settings,
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


def _error(error: Exception) -> str:
    """A failure in one line, with its type: `ValueError: ...`."""
    return f"{type(error).__name__}: {cli.one_line(error)}"[:500]


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory"))


# ---------------------------------------------------------------------------------------------
# FLOPs.


def cpu_flops(fn, *abstract_args) -> float:
    """XLA's CPU cost analysis of `fn` lowered for the CPU backend on abstract arguments: no
    compile, no device memory, every matmul a dot (no backend custom calls yet)."""
    import jax  # pylint: disable=g-import-not-at-top

    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])

    def on_cpu(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu)

    args = jax.tree.map(on_cpu, abstract_args)
    cost = jax.jit(fn).lower(*args).cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def step_flops(config, batch: int) -> dict:
    """The train step's FLOPs at global `batch` (module docstring, part 2)."""
    import jax  # pylint: disable=g-import-not-at-top

    from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top

    model_cfg, step_cfg, sched, tx = bench_step.step_parts(config, batch)
    state = jax.eval_shape(lambda k: ts.init_state(k, model_cfg, tx), jax.random.key(0))
    x = jax.eval_shape(lambda: bench_step.random_crops(config, batch))
    flops = cpu_flops(ts.make_train_step(model_cfg, step_cfg, sched, tx, 0), state, x)
    return {
        "global_batch": batch,
        "flops_per_step": flops,
        "gflop_per_example": flops / batch / 1e9,
    }


# ---------------------------------------------------------------------------------------------
# The train step sweep.


def sweep_sizes(sizes) -> list[int]:
    """Per-device batch sizes, largest first, each once."""
    return sorted(set(sizes), reverse=True)


class StepSweep:
    """Part 3: the step at each size, the state initialised once (module docstring)."""

    def __init__(self, config, steps: int, matmul: float | None):
        import jax  # pylint: disable=g-import-not-at-top

        from matpac_jax.train import sharding  # pylint: disable=g-import-not-at-top

        self.config, self.steps, self.matmul = config, steps, matmul
        self.mesh = sharding.make_mesh((-1, 1))
        self.count = jax.device_count()
        self.peak = peak_tflops(jax.devices()[0].device_kind)
        self.state = None
        self._init = None

    def _initial_state(self, tx, model_cfg):
        import jax  # pylint: disable=g-import-not-at-top

        from matpac_jax.train import sharding  # pylint: disable=g-import-not-at-top
        from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top

        if self._init is None:  # one compile: the state does not depend on the batch size
            init = lambda k: ts.init_state(k, model_cfg, tx)  # noqa: E731
            abstract = jax.eval_shape(init, jax.random.key(0))
            self.shardings = sharding.state_shardings(
                abstract, self.mesh, self.config.fsdp_min_size
            )
            self._init = jax.jit(init, out_shardings=self.shardings)
        return self._init(jax.random.key(0))

    def initial_state(self):
        """The run's initial weights (the init compiled once; for part 4)."""
        from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top

        model_cfg, _, _, tx = bench_step.step_parts(self.config, self.count)
        return self._initial_state(tx, model_cfg)

    def row(self, size: int, flops_per_example: float | None) -> dict:
        """One size's row; raises on a failure (an out-of-memory one included)."""
        import jax  # pylint: disable=g-import-not-at-top

        from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top
        from matpac_jax.train import sharding  # pylint: disable=g-import-not-at-top
        from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top

        batch = size * self.count
        row = {"per_device_batch": size, "global_batch": batch}
        model_cfg, step_cfg, sched, tx = bench_step.step_parts(self.config, batch)
        if self.state is None or any(x.is_deleted() for x in jax.tree.leaves(self.state)):
            self.state = self._initial_state(tx, model_cfg)  # first size, or lost to an OOM
        x = jax.device_put(
            bench_step.random_crops(self.config, batch), sharding.batch_sharding(self.mesh)
        )
        step = jax.jit(
            ts.make_train_step(model_cfg, step_cfg, sched, tx, 0),
            in_shardings=(self.shardings, sharding.batch_sharding(self.mesh)),
            out_shardings=(self.shardings, sharding.replicated(self.mesh)),
            donate_argnums=0,
        )
        start = time.perf_counter()
        compiled = step.lower(self.state, x).compile()
        row["compile_s"] = round(time.perf_counter() - start, 1)
        row["memory_analysis_gib"] = memory_analysis_gib(compiled)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        row["compiled_cost_analysis_gflop_per_example"] = round(
            float(cost.get("flops", float("nan"))) * self.count / batch / 1e9, 2
        )

        def run(batch_x):
            self.state, metrics = compiled(self.state, batch_x)
            return metrics["loss"]

        # The first call allocates; then `steps` calls, each blocked on.
        step_s = bench_step.median_time(run, x, seconds=0.0, min_runs=self.steps)
        row.update(step_ms=round(1e3 * step_s, 2), examples_per_s=round(batch / step_s, 1))
        if flops_per_example is not None:
            tflops = flops_per_example * batch / self.count / step_s / 1e12  # one device's share
            row["gflop_per_example"] = round(flops_per_example / 1e9, 2)
            row["tflops_per_device"] = float(f"{tflops:.4g}")
            row["mfu"] = None if self.peak is None else round(tflops / self.peak, 4)
            if self.matmul:
                row["of_matmul"] = round(tflops * 1e12 / self.matmul, 3)
        row["allocator_peak_gib"] = _peak_gib()
        return row


def memory_analysis_gib(compiled) -> dict | None:
    """XLA's memory analysis of one device's program, GiB; `peak` = arguments + outputs +
    temporaries - aliased (the donated state's outputs reuse its buffers)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except (not every backend reports it)
        return None
    if m is None:
        return None
    parts = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
    }
    parts["peak"] = parts["arguments"] + parts["outputs"] + parts["temporaries"] - parts["aliased"]
    return {k: round(v / 2**30, 3) for k, v in parts.items()}


def _peak_gib() -> float | None:
    import jax  # pylint: disable=g-import-not-at-top

    peak = _memory_stats(jax.devices()[0]).get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**30, 2)


# ---------------------------------------------------------------------------------------------
# The other parts.


def bf16_agreement(config, batch: int, state, dtype: str) -> dict:
    """Loss and gradient norm of the same weights and batch in `dtype` and in true float32."""
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top

    from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top

    model_cfg, step_cfg, sched, _ = bench_step.step_parts(config, batch)
    x = bench_step.random_crops(config, batch)
    out = {}
    for name, compute, precision in (("float32", "float32", "highest"), (dtype, dtype, None)):
        cfg = dataclasses.replace(model_cfg, dtype=compute)
        with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
            fn = jax.jit(ts.make_loss_and_grads(cfg, step_cfg, sched, 0))
            (loss, _), grads = fn(state, x)
            out[name] = (float(loss), float(optax.global_norm(grads)))
    (l32, g32), (l16, g16) = out["float32"], out[dtype]
    return {
        "batch": batch,
        "dtype": dtype,
        "float32_matmul_precision": "highest",
        "loss": {"float32": l32, dtype: l16, "rel_diff": abs(l16 - l32) / abs(l32)},
        "grad_norm": {"float32": g32, dtype: g16, "rel_diff": abs(g16 - g32) / abs(g32)},
        "finite": bool(np.isfinite([l16, g16]).all()),
    }


def embed_row(model: str, dtype: str, clips: int, batch_size: int, host_clips: int) -> dict:
    """Encoder.embed of 10 s clips with the device front end, and the host front end alone."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    from matpac_jax.audio import frontend  # pylint: disable=g-import-not-at-top
    from matpac_jax.inference.encoder import Encoder  # pylint: disable=g-import-not-at-top

    enc = Encoder.random(model, dtype=dtype, batch_size=batch_size, device_front_end=True)
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((clips, int(CLIP_SECONDS * 16_000)))).astype(np.float32)
    start = time.perf_counter()
    enc.embed(waves[:batch_size], 16_000)  # compiles the front end and the model
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    enc.embed(waves, 16_000)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    for wave in waves[:host_clips]:
        frontend.log_mel(wave)
    host_s = time.perf_counter() - start
    return {
        "model": model,
        "dtype": dtype,
        "clips": clips,
        "batch_size": batch_size,
        "front_end": "device",
        "first_call_s": round(compile_s, 1),
        "clips_per_s": round(clips / seconds, 2),
        "x_real_time": round(clips * CLIP_SECONDS / seconds, 1),
        "host_front_end": {
            "clips": host_clips,
            "clips_per_s": round(host_clips / host_s, 2),
            "x_real_time": round(host_clips * CLIP_SECONDS / host_s, 1),
        },
    }


def attention_part(config, per_device: int, dtype: str, seconds: float) -> dict:
    """Part 6: the step's dominant attention shape, each implementation compiled once."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    from matpac_jax.models import vit  # pylint: disable=g-import-not-at-top
    from matpac_jax.tools import bench_attention  # pylint: disable=g-import-not-at-top
    from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top

    shapes = bench_attention.step_shapes(config, per_device)

    def work(item):  # FLOPs of a shape's products over its calls
        (b, n, h, dh), calls = item
        return calls * b * h * n * n * dh

    (b, n, h, dh), calls = max(shapes.items(), key=work)

    def dot_product(implementation):
        return lambda t: jax.nn.dot_product_attention(
            t[:, :, 0], t[:, :, 1], t[:, :, 2], implementation=implementation
        )

    kernels = {"ours": vit._attention, "xla": dot_product("xla")}  # pylint: disable=protected-access
    if jax.default_backend() == "gpu":
        kernels["cudnn"] = dot_product("cudnn")
    dt = jnp.dtype(dtype)
    keys = jax.random.split(jax.random.key(0), 2)
    qkv = jax.random.normal(keys[0], (b, n, 3, h, dh), dt)
    w = jax.random.normal(keys[1], (b, n, h, dh), dt)
    flops = 3 * 4 * b * h * n * n * dh  # forward and backward of the two products
    rows, ref = {}, None
    for name, fn in kernels.items():

        def fwd_bwd(t, fn=fn):
            out, vjp = jax.vjp(fn, t)
            return out, vjp(w)[0]

        try:
            compiled = jax.jit(fwd_bwd).lower(qkv).compile()
            seconds_per = bench_step.median_time(compiled, qkv, seconds=seconds)
            out = np.asarray(compiled(qkv)[0], np.float64)
        except Exception as e:  # pylint: disable=broad-except (a kernel this device lacks)
            if name == "ours":
                raise
            rows[name] = {"error": cli.one_line(e)[:200]}
            continue
        rows[name] = {
            "fwd_bwd_ms": round(1e3 * seconds_per, 3),
            "tflop_per_s": round(flops / seconds_per / 1e12, 3),
        }
        if ref is None:
            ref = out
        else:
            rows[name]["max_rel_diff"] = float(
                f"{np.max(np.abs(out - ref)) / np.max(np.abs(ref)):.2e}"
            )
    return {
        "dtype": dtype,
        "shape": [b, n, h, dh],
        "calls_per_step": calls,
        "step_shapes": [[*s, c] for s, c in shapes.items()],
        "kernels": rows,
        "step_uses": "ours",  # the model's einsum attention (attention_impl None)
    }


# ---------------------------------------------------------------------------------------------
# The report, written as the run goes.


class Report:
    """report.json / report.md under OUT, rewritten by every `save`, and the deadline."""

    def __init__(self, out: str, data: dict, deadline_s: float, estimates: dict):
        self.out, self.data, self.deadline_s, self.estimates = out, data, deadline_s, estimates
        self.start = time.perf_counter()
        cli.make_dir(out)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, seconds: float) -> bool:
        """Whether `seconds` more end before the deadline."""
        return self.elapsed() + seconds <= self.deadline_s

    def skipped(self, seconds: float) -> dict:
        left = max(self.deadline_s - self.elapsed(), 0.0)
        return {
            "skipped": f"would not end before the deadline (--deadline_s {self.deadline_s:g}): "
            f"about {seconds:.0f} s needed, {left:.0f} s left"
        }

    def part(self, name: str, fn):
        """Runs a part unless it would pass the deadline; records its result, its error (and
        goes on), or that it was skipped; saves. Returns the result or None."""
        estimate = self.estimates[name]
        if not self.fits(estimate):
            self.data[name] = self.skipped(estimate)
            print(f"{name}: {self.data[name]['skipped']}", flush=True)
            self.save()
            return None
        began = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # pylint: disable=broad-except (recorded; the other parts go on)
            result = None
            self.data[name] = {"error": _error(e)}
            print(f"{name}: failed: {self.data[name]['error']}", flush=True)
        else:
            self.data[name] = result
        self.data.setdefault("seconds", {})[name] = round(time.perf_counter() - began, 1)
        self.save()
        return result

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        # Readers (and a run cut off mid-write) see the old file or the new one, never half.
        storage.write_text(os.path.join(self.out, "report.json"), json.dumps(self.data, indent=1))
        storage.write_text(os.path.join(self.out, "report.md"), render(self.data))


def render(report: dict) -> str:
    """report.md, of whatever parts the report holds so far."""
    d = report["devices"]
    peak = d["peak_bf16_tflops_per_device"]
    mem = d["memory_bytes_per_device"]
    lines = [
        f"# Accelerator check: {d['device_count']} x {d['device_kind']} ({d['backend']})",
        "",
        f"jax {d['jax']}, jaxlib {d['jaxlib']}; XLA_FLAGS `{d['xla_flags'] or '(none)'}`; "
        f"memory per device {'n/a' if mem is None else f'{mem / 2**30:.1f} GiB'} (client memory "
        f"fraction {_na(d['memory_fraction'])}); peak dense bf16 "
        f"{'unknown for this device: MFU not given' if peak is None else f'{peak} TFLOP/s'}."
        f" Host: {d['host']['processor']}, {d['host']['cpus']} CPUs. Elapsed: "
        f"{report['elapsed_s']:.0f} s (deadline {report['deadline_s']:g} s).",
    ]
    lines += _section("FLOPs", report.get("flops"), _flops_lines)
    lines += _section(
        f"Train step (`{report['config']}`, compute {report['dtype']}, float32 master weights)",
        report.get("step"),
        _step_lines,
    )
    lines += _section("bf16 against float32", report.get("agreement"), _agreement_lines)
    lines += _section("Embedding", report.get("embed"), _embed_lines)
    lines += _section("Attention", report.get("attention"), _attention_lines)
    return "\n".join(lines) + "\n"


def _section(title: str, part, body) -> list[str]:
    lines = ["", f"## {title}", ""]
    if part is None:
        return lines + ["(not reached)"]
    if isinstance(part, dict) and ("error" in part or "skipped" in part):
        return lines + [
            f"failed: {part['error']}" if "error" in part else f"skipped: {part['skipped']}"
        ]
    return lines + body(part)


def _flops_lines(f: dict) -> list[str]:
    return [
        f"{f['gflop_per_example']:.4g} GFLOP per example (XLA's CPU cost analysis of the step "
        f"lowered for the CPU at global batch {f['global_batch']}: every matmul counted; the "
        "compiled step's own analysis is in the table, beside it)."
    ]


def _step_lines(s: dict) -> list[str]:
    lines = [
        "| batch / device (global) | step ms | examples/s | TFLOP/s / device | MFU | of the "
        "matmul | XLA peak GiB (args / temp) | allocator peak GiB | compiled-analysis GFLOP/ex "
        "| compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        where = f"| {r['per_device_batch']} ({r['global_batch']}) |"
        if "error" in r or "skipped" in r:
            lines.append(f"{where} {r.get('error') or 'skipped: ' + r['skipped']} |")
            continue
        mfu = r.get("mfu")
        mfu = "n/a" if mfu is None else f"{100 * mfu:.1f}%"
        m = r["memory_analysis_gib"]
        mem = "n/a" if m is None else f"{m['peak']} ({m['arguments']} / {m['temporaries']})"
        lines.append(
            f"{where} {r['step_ms']} | {r['examples_per_s']} | {_na(r.get('tflops_per_device'))} "
            f"| {mfu} | {r.get('of_matmul', '-')} | {mem} | {_na(r['allocator_peak_gib'])} | "
            f"{r['compiled_cost_analysis_gflop_per_example']} | {r['compile_s']} |"
        )
    return lines


def _agreement_lines(b: dict) -> list[str]:
    dt = b["dtype"]
    return [
        f"Same initial weights and batch of {b['batch']}; float32 with matmul precision "
        f"`{b['float32_matmul_precision']}`. Loss {b['loss']['float32']:.6f} / {b['loss'][dt]:.6f} "
        f"(relative difference {b['loss']['rel_diff']:.2e}); gradient norm "
        f"{b['grad_norm']['float32']:.6f} / {b['grad_norm'][dt]:.6f} "
        f"({b['grad_norm']['rel_diff']:.2e}); finite: {b['finite']}."
    ]


def _embed_lines(e: dict) -> list[str]:
    h = e["host_front_end"]
    return [
        f"{e['model']}, {e['dtype']}, {e['clips']} clips of 10 s, batch {e['batch_size']}, log-mel "
        f"on the device: {e['clips_per_s']} clips/s, {e['x_real_time']}x real time (first call "
        f"{e['first_call_s']} s). The host's numpy front end alone: {h['clips_per_s']} clips/s "
        f"({h['clips']} clips)."
    ]


def _attention_lines(a: dict) -> list[str]:
    lines = [
        f"Shape (B, N, H, dh) {a['shape']}, {a['calls_per_step']} calls per step, {a['dtype']}; "
        f"the step uses {a['step_uses']}.",
        "",
        "| kernel | fwd+bwd ms | TFLOP/s | max rel diff |",
        "|---|---|---|---|",
    ]
    for name, r in a["kernels"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |")
        else:
            lines.append(
                f"| {name} | {r['fwd_bwd_ms']} | {r['tflop_per_s']} | {r.get('max_rel_diff', '-')} |"
            )
    return lines


def _na(value) -> str:
    return "n/a" if value is None else str(value)


def run_sweep(report: Report, sweep: StepSweep, sizes, per_example: float | None) -> list[dict]:
    """Part 3's rows, largest size first, each saved as it comes: a size that does not fit is
    recorded and its half tried next (unless the next size given is already that small); a
    size that would pass the deadline is skipped; another failure is recorded and the sweep
    goes on."""
    report.data["step"] = {"rows": []}
    rows = report.data["step"]["rows"]
    estimate = report.estimates["step"]
    queue = sweep_sizes(sizes)
    while queue:
        size = queue.pop(0)
        row = {"per_device_batch": size, "global_batch": size * sweep.count}
        began = time.perf_counter()
        if not report.fits(estimate):
            row.update(report.skipped(estimate))
        else:
            try:
                row = sweep.row(size, per_example)
            except Exception as e:  # pylint: disable=broad-except (recorded; the sweep goes on)
                if _out_of_memory(e):
                    row["error"] = f"does not fit: {cli.one_line(e)[:200]}"
                    half = size // 2
                    if half >= 1 and (not queue or queue[0] < half):
                        queue.insert(0, half)
                else:
                    row["error"] = _error(e)
            estimate = time.perf_counter() - began  # the next size: about as long
        rows.append(row)
        report.save()
        what = row.get("step_ms", row.get("error", row.get("skipped")))
        print(f"step, batch {size}/device: {what} ({_elapsed(report.start)})", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# The run.


def run(
    out: str,
    *,
    tiny: bool,
    batch_sizes: list[int],
    dtype: str,
    steps: int,
    deadline_s: float = DEFAULT_DEADLINE_S,
    settings: dict | None = None,
) -> dict:
    """The check (module docstring); returns the report. `settings`: what
    `configure_environment` set, for the report."""
    import jax  # pylint: disable=g-import-not-at-top

    from matpac_jax.tools import bench_step  # pylint: disable=g-import-not-at-top

    spec = TINY_CONFIG if tiny else CONFIG
    overrides = (TINY_OVERRIDES if tiny else []) + [f"--config.model.compute_dtype={dtype}"]
    config = bench_step.trainable_config(spec, overrides)
    shown = (
        os.path.relpath(spec.split(":")[0], os.path.dirname(_CONFIGS)) + ":" + spec.split(":")[1]
    )
    settings = settings or {"memory_fraction": None, "compilation_cache": None, "applied": False}
    data = {
        "config": shown,
        "overrides": overrides,
        "dtype": dtype,
        "deadline_s": deadline_s,
        "devices": devices_info(settings),
    }
    report = Report(out, data, deadline_s, TINY_ESTIMATES if tiny else ESTIMATES)
    d = data["devices"]
    print(f"{d['device_count']} x {d['device_kind']} ({d['backend']}), jax {d['jax']}", flush=True)
    matmul = None
    if d["peak_bf16_tflops_per_device"] is None:  # no peak to set MFU against: a matmul's rate
        n, mm_dtype = (256, dtype) if tiny or d["backend"] == "cpu" else (8192, "bfloat16")
        matmul = bench_step.matmul_rate(n, jax.numpy.dtype(mm_dtype), 1.0)
        data[f"matmul_{n}_{mm_dtype}_tflops"] = round(matmul / 1e12, 4)
    report.save()

    sizes = sweep_sizes(batch_sizes)
    flops = report.part("flops", lambda: step_flops(config, sizes[0] * d["device_count"]))
    per_example = None if flops is None else flops["flops_per_step"] / flops["global_batch"]
    if per_example is not None:
        print(
            f"flops: {per_example / 1e9:.2f} GFLOP/example ({_elapsed(report.start)})", flush=True
        )

    sweep = StepSweep(config, steps, matmul)
    rows = run_sweep(report, sweep, sizes, per_example)
    fitted = [r["per_device_batch"] for r in rows if "step_ms" in r]

    def agreement():
        return bf16_agreement(config, 2 if tiny else 8, sweep.initial_state(), dtype)

    report.part("agreement", agreement)
    report.part(
        "embed",
        lambda: embed_row(
            "mu" if tiny else "B", dtype, 4 if tiny else 512, 4 if tiny else 32, 4 if tiny else 64
        ),
    )
    report.part(
        "attention",
        lambda: attention_part(config, fitted[0] if fitted else sizes[-1], dtype, 0.3),
    )
    report.save()
    print(f"-> {os.path.join(out, 'report.md')} (elapsed {_elapsed(report.start)})")
    return report.data


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise cli.UserError(f"--batch_sizes {text}: expected positive integers, e.g. 256,64")
    return sizes


def _main(argv) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--out", required=True, help="folder for report.json and report.md")
    p.add_argument("--tiny", action="store_true", help="the tiny model on 64-frame crops (CPU)")
    p.add_argument("--batch_sizes", help="per-device batch sizes (default 256,64; tiny 2)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--steps", type=cli.int_at_least(2), default=8, help="timed steps per size")
    p.add_argument(
        "--deadline_s", type=float, default=DEFAULT_DEADLINE_S,
        help="skip parts that would end later than this (seconds from the start)",
    )  # fmt: skip
    p.add_argument(
        "--mem_fraction", type=float,
        help=f"client memory fraction (default {DEFAULT_MEM_FRACTION}, or "
        "XLA_PYTHON_CLIENT_MEM_FRACTION)",
    )  # fmt: skip
    p.add_argument("--cache_dir", help=f"compilation cache (default {DEFAULT_CACHE})")
    args = p.parse_args(argv)
    sizes = _sizes(args.batch_sizes or ("2" if args.tiny else ",".join(map(str, DEFAULT_SIZES))))
    out = cli.output_dir(args.out, "--out")
    settings = configure_environment(args.mem_fraction, args.cache_dir)
    start = time.perf_counter()
    import_everything()
    print(f"imports: {_elapsed(start)}", flush=True)
    refuse_cpu(args.tiny, args.batch_sizes is not None)
    run(
        out,
        tiny=args.tiny,
        batch_sizes=sizes,
        dtype=args.dtype,
        steps=args.steps,
        deadline_s=args.deadline_s,
        settings=settings,
    )
    return 0


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
