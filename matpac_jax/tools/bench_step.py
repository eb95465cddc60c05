r"""Train-step throughput and achieved FLOP/s, against a large matmul timed in the same run.

  python -m matpac_jax.tools.bench_step --config configs/matpac_pp.py:variant=B --batch_size 8
  python -m matpac_jax.tools.bench_step --config configs/matpac_pp.py:variant=Ti \
      --config.model.depth=4 --config.model.pred_depth=2 --config.model.cls_hidden=256 \
      --config.model.cls_bottleneck=256 --config.model.cls_classes=256 --batch_size 32
  python -m matpac_jax.tools.bench_step --config configs/matpac_pp.py:variant=B --batch_size 8 \
      --profile 15
  python -m matpac_jax.tools.bench_step --config configs/matpac_pp.py:variant=B --batch_size 8 \
      --xla_flags=--xla_cpu_use_xnnpack=true --xla_flags="--xla_cpu_enable_fast_math=true"

The step is the trainer's own (`train_step.make_train_step`, jitted, state donated) on random
normalised crops, configured as the trainer is (`--config.KEY=VALUE` overrides, checked the
same way); its FLOPs come from XLA's cost analysis of the compiled step. The reference rate is a
jitted 2048^2 matmul in the same dtype with XLA's default options: on a CPU it is about the best
XLA reaches, so the ratio says how much of the machine the step uses. The two take turns (four
rounds, each listed in `rounds`): on a shared machine another tenant's load moves the matmul's
rate by 10% or more between minutes, and timing it apart from the step moved the ratio with it.
(With `--xla_flags` the steps run in child processes and the matmul is timed once, after them:
those runs are for the speed-ups between settings.)

`--profile N` lists the N ops of one step that took longest (jax.profiler trace): time, share
of the step, the HLO op and, for a fusion, the ops it fuses; then how the ops fill the step's
timeline: the time with no op running (and the ops it follows: on a CPU, the dots XLA runs
asynchronously, outside YNNPACK, do their work there) and the time with two or more at once.

`--xla_flags FLAGS` (repeatable) compares XLA options in one command: the step runs in a fresh
process with the default options and then in one per FLAGS (added to XLA_FLAGS); each reports
its step time, its speed-up over the default, and how far its loss and gradients at the initial
state, on the same batch and mask, are from the default's (relative; `equal` below 1e-5).

Prints one JSON object (and, for the eye, a table on stderr).
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

from matpac_jax import cli, config_lib

# jax (and the trainer, which imports it) is imported inside the functions that run a step: the
# parent of an --xla_flags comparison never imports it, each child sets its XLA_FLAGS first.

GRAD_RTOL = 1e-5  # a setting is numerically `equal` to the default within this
# The step and the matmul take turns this many times, so that a change in the load of a shared
# machine (another tenant's work in the same L3 and memory) slows both, not one.
ROUNDS = 4


def call_times(fn, *args, seconds: float, min_runs: int = 3, warm_up: bool = True) -> list[float]:
    """Seconds of each call of a jitted function (outputs blocked on) over a `seconds` window."""
    import jax  # pylint: disable=g-import-not-at-top

    if warm_up:
        jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def median_time(fn, *args, seconds: float, min_runs: int = 3) -> float:
    """Median seconds per call of a jitted function (outputs blocked on)."""
    return median(call_times(fn, *args, seconds=seconds, min_runs=min_runs))


def matmul_fn(n: int, dtype):
    """A jitted (n, n) @ (n, n) matmul, its two operands and its FLOPs."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    return jax.jit(jnp.matmul), (a, b), 2 * n**3


def matmul_rate(n: int, dtype, seconds: float) -> float:
    """FLOP/s of an (n, n) @ (n, n) jitted matmul."""
    fn, args, flops = matmul_fn(n, dtype)
    return flops / median_time(fn, *args, seconds=seconds)


# ---------------------------------------------------------------------------------------------
# Profile: the compiled step's HLO names the ops that the trace times.

_HLO_INSTR = re.compile(
    r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|[^\s{]+)(?:\{[^}]*\})? ([\w-]+)\((.*)$", re.M
)
_HLO_COMP = re.compile(r"^%?([\w.\-]+) \(.*?\) -> .*?\{\n(.*?)\n\}", re.M | re.S)
_NOT_WORK = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple"}


def _dims(shape: str) -> list[int]:
    return [int(d) for d in re.findall(r"\d+", shape.split("[", 1)[-1].split("]", 1)[0])]


def _dot_flops(instrs: list[tuple[str, str, str, str]], shapes: dict[str, str]) -> int:
    """FLOPs of the dots among HLO instructions: 2 x output elements x contracted size."""
    flops = 0
    for _, shape, opcode, rest in instrs:
        contracted = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        lhs = re.match(r"\s*%?([\w.\-]+)", rest)
        if opcode == "dot" and contracted and lhs and lhs.group(1) in shapes:
            lhs_dims = _dims(shapes[lhs.group(1)])
            k = math.prod(lhs_dims[int(d)] for d in contracted.group(1).split(",") if d)
            flops += 2 * math.prod(_dims(shape)) * k
    return flops


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str, int]]:
    """Instruction name -> (its shape, its kind, the FLOPs of its dots). The kind is the opcode,
    or for a fusion its name's stem and the ops it fuses, e.g. "loop_fusion{add,select}"."""
    comps = {m.group(1): _HLO_INSTR.findall(m.group(2)) for m in _HLO_COMP.finditer(hlo_text)}
    instrs = _HLO_INSTR.findall(hlo_text)
    shapes = {name: shape for name, shape, *_ in instrs}  # names are unique in a module
    ops = {}
    for instr in instrs:
        name, shape, opcode, rest = instr
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        if opcode == "fusion" and called and called.group(1) in comps:
            body = comps[called.group(1)]
            fused = sorted({op for _, _, op, _ in body} - _NOT_WORK)
            stem = re.sub(r"\.\d+$", "", name)
            ops[name] = (shape, f"{stem}{{{','.join(fused)}}}", _dot_flops(body, shapes))
        else:
            ops[name] = (shape, opcode, _dot_flops([instr], shapes))
    return ops


def profile_ops(fn, *args, hlo_text: str, top: int) -> dict:
    """Profiles one call of `fn(*args)` (jax.profiler trace): `summarise_ops` of its XLA op events.

    On an accelerator the device's timeline is used, on a CPU the XLA threads'.
    """
    import jax  # pylint: disable=g-import-not-at-top

    ops = hlo_ops(hlo_text)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            jax.block_until_ready(fn(*args))
        (path,) = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    per_plane = collections.defaultdict(list)
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in ops:
                    start = event.start_ns
                    per_plane[plane.name].append((start, start + event.duration_ns, event.name))
    if not per_plane:
        raise RuntimeError("the profile has no XLA op events (no profiler on this backend?)")
    devices = [p for p in per_plane if p.startswith("/device:")]
    events = per_plane[
        max(devices or per_plane, key=lambda p: sum(e - s for s, e, _ in per_plane[p]))
    ]
    return summarise_ops(events, ops, top)


def summarise_ops(events: list[tuple[int, int, str]], ops: dict, top: int) -> dict:
    """The `top` kinds of op by self time, and how the ops fill the timeline.

    Args:
      events: (start_ns, end_ns, instruction name) of every op event of the call, all threads.
      ops: `hlo_ops` of the program.
      top: how many kinds to list.

    Returns:
      {"top_ops": rows, "timeline": {...}}. Rows group ops by kind (`hlo_ops`: opcode, or
      fusion stem and fused ops): `ops` of them, run `runs` times in all; `ms` is their time
      summed over runs and threads, `share` its fraction of the summed time of all the call's
      ops, `largest` the kind's longest op and its shape. `gap_ms` is time when no op was
      running, right after one of this kind ended: on a CPU, XLA runs a dot it does not hand to
      YNNPACK (the weight gradients, for one) asynchronously, so its event ends when the dot is
      dispatched and its work runs on in that gap. `gflop_per_s` divides a kind's dot FLOPs by
      `ms + gap_ms`. The timeline: `span_ms` from the first op's start to the last op's end,
      `no_op_ms` of it with no op event open, `concurrent_ms` with two or more.
    """
    if not events:
        raise ValueError("no op events to summarise")
    events = sorted(events)
    # Sweep the starts and ends: time with 0 / 2+ ops open; each idle gap goes to the op whose
    # end opened it.
    points = sorted(
        [(s, 1, i) for i, (s, _, _) in enumerate(events)]
        + [(e, -1, i) for i, (_, e, _) in enumerate(events)]
    )
    gap_after = collections.Counter()
    open_ops, last_t, last_closed = 0, points[0][0], None
    no_op = concurrent = 0
    for t, delta, i in points:
        if open_ops == 0 and last_closed is not None and t > last_t:
            no_op += t - last_t
            gap_after[events[last_closed][2]] += t - last_t
        elif open_ops >= 2:
            concurrent += t - last_t
        open_ops += delta
        last_t = t
        if open_ops == 0:
            last_closed = i
    times, runs = collections.Counter(), collections.Counter()
    for s, e, name in events:
        times[name] += e - s
        runs[name] += 1
    total = sum(times.values())
    groups = collections.defaultdict(lambda: {"ns": 0, "gap": 0, "ops": 0, "runs": 0, "flops": 0})
    for name, ns in times.items():
        shape, kind, flops = ops[name]
        g = groups[kind]
        if ns > g.get("largest_ns", -1):
            g["largest_ns"], g["largest"] = ns, f"{name} {shape}"
        g["ns"] += ns
        g["gap"] += gap_after[name]
        g["ops"] += 1
        g["runs"] += runs[name]
        g["flops"] += flops * runs[name]
    rows = []
    for kind, g in sorted(groups.items(), key=lambda kv: -kv[1]["ns"])[:top]:
        row = {
            "kind": kind[:120],
            "ms": round(g["ns"] / 1e6, 2),
            "share": round(g["ns"] / total, 4),
        }
        row.update(ops=g["ops"], runs=g["runs"], largest=g["largest"][:100])
        if g["gap"]:
            row["gap_ms"] = round(g["gap"] / 1e6, 2)
        if g["flops"]:
            row["gflop_per_s"] = round(g["flops"] / (g["ns"] + g["gap"]), 1)
        rows.append(row)
    span = max(e for _, e, _ in events) - events[0][0]
    timeline = {
        "span_ms": round(span / 1e6, 2),
        "no_op_ms": round(no_op / 1e6, 2),
        "concurrent_ms": round(concurrent / 1e6, 2),
        "no_op_after": {k: round(v / 1e6, 2) for k, v in _top_kinds(gap_after, ops, 5)},
    }
    return {"top_ops": rows, "timeline": timeline}


def _top_kinds(per_op: collections.Counter, ops: dict, n: int) -> list[tuple[str, int]]:
    by_kind = collections.Counter()
    for name, ns in per_op.items():
        by_kind[ops[name][1][:120]] += ns
    return by_kind.most_common(n)


# ---------------------------------------------------------------------------------------------
# The step, in this process.


def trainable_config(spec: str, overrides: list[str]):
    """The config file `spec` with its `--config.KEY=VALUE` overrides, checked as the trainer
    checks it: a benchmarked config is a trainable one."""
    config = config_lib.load_config(spec)
    unknown = config_lib.apply_overrides(config, overrides)
    if unknown:
        raise cli.UserError(f"unrecognized arguments: {' '.join(unknown)}")
    from matpac_jax.train import trainer as train  # pylint: disable=g-import-not-at-top

    train.check_config(config)
    return config


def step_parts(config, batch_size: int) -> tuple:
    """(model config, step config, schedules, optimiser) of the trainer's step for `config` at
    `batch_size`, built as the trainer builds them (sets `config.batch_size`)."""
    from matpac_jax.objective import optimizer  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import trainer as train  # pylint: disable=g-import-not-at-top

    with config.unlocked():
        config.batch_size = batch_size
    model_cfg = train.model_config(config, {"front_end": {"n_mels": config.data.num_mels}})
    sched, _ = train.run_schedules(config, config_lib.PAPER_NUM_CLIPS)
    tx = optimizer.make_optimizer(config.optim, sched.lr)
    return model_cfg, ts.StepConfig.from_config(config), sched, tx


def random_crops(config, batch_size: int):
    """A batch of random normal crops of the config's input shape (B, mels, frames)."""
    import jax  # pylint: disable=g-import-not-at-top

    shape = (batch_size, config.data.num_mels, config.data.crop_frames)
    return jax.random.normal(jax.random.key(1), shape)


def bench(
    config,
    batch_size: int,
    seconds: float,
    *,
    profile: int = 0,
    grads_out: str | None = None,
    matmul_n: int | None = None,
) -> dict:
    """Times the trainer's step at `batch_size` in this process (with this process's XLA options).

    With `matmul_n`, the step and an (n, n) matmul in the step's dtype take turns (`ROUNDS`
    times): the medians of all their calls give `step_ms` and the matmul's rate, and `rounds`
    each round's own figures, to show the spread. With `grads_out`, first saves the loss and the
    gradients of the initial state on the timed batch (and the step's own mask) there, as an
    .npz, for comparison across XLA options.
    """
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top

    model_cfg, step_cfg, sched, tx = step_parts(config, batch_size)
    state = jax.jit(lambda k: ts.init_state(k, model_cfg, tx))(jax.random.key(0))
    x = random_crops(config, batch_size)
    if grads_out:
        (loss, _), grads = jax.jit(ts.make_loss_and_grads(model_cfg, step_cfg, sched, 0))(state, x)
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(grads))[0]
        leaves = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}
        np.savez(grads_out, __loss__=np.asarray(loss), **leaves)
    step = jax.jit(ts.make_train_step(model_cfg, step_cfg, sched, tx, 0), donate_argnums=0)
    compiled = step.lower(state, x).compile()
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    holder = {"state": state}

    def run(batch):
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    if matmul_n:
        mm_fn, mm_args, mm_flops = matmul_fn(matmul_n, jax.numpy.dtype(model_cfg.dtype))
        jax.block_until_ready(mm_fn(*mm_args))
        step_times, mm_times, rounds = [], [], []
        for i in range(ROUNDS):
            s = call_times(run, x, seconds=seconds / ROUNDS, min_runs=1, warm_up=i == 0)
            m = call_times(mm_fn, *mm_args, seconds=min(seconds, 5.0) / ROUNDS, warm_up=False)
            step_times, mm_times = step_times + s, mm_times + m
            rounds.append((median(s), mm_flops / median(m)))
        step_s = median(step_times)
    else:
        step_s = median_time(run, x, seconds=seconds)
    out = {
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "model": {k: getattr(model_cfg, k) for k in _MODEL_KEYS},
        "compute_dtype": model_cfg.dtype,
        "batch_size": batch_size,
        "step_ms": round(step_s * 1e3, 2),
        "examples_per_s": round(batch_size / step_s, 2),
        "gflop_per_example": round(flops / batch_size / 1e9, 3),
        "step_tflop_per_s": round(flops / step_s / 1e12, 6),
        # The compiled program's fingerprint: equal for options that change nothing in it.
        "program_sha1": hashlib.sha1(compiled.as_text().encode()).hexdigest()[:12],
    }
    if matmul_n:
        out = _with_matmul(out, mm_flops / median(mm_times), matmul_n)
        out["rounds"] = [
            {
                "step_ms": round(t * 1e3, 2),
                f"matmul_{matmul_n}_tflop_per_s": round(mm / 1e12, 6),
                "step_over_matmul": round(flops / t / mm, 3),
            }
            for t, mm in rounds
        ]
    if profile:
        out.update(profile_ops(run, x, hlo_text=compiled.as_text(), top=profile))
    return out


_MODEL_KEYS = (
    "width",
    "depth",
    "num_heads",
    "pred_width",
    "pred_depth",
    "num_mcl_heads",
    "cls_hidden",
    "cls_bottleneck",
    "cls_out",
)


def _with_matmul(result: dict, mm: float, n: int) -> dict:
    step_rate = result["step_tflop_per_s"] * 1e12
    return {
        **result,
        f"matmul_{n}_tflop_per_s": round(mm / 1e12, 6),
        "step_over_matmul": round(step_rate / mm, 3),
    }


# ---------------------------------------------------------------------------------------------
# XLA options compared: one fresh process per setting.


def grad_difference(path: str, reference: str) -> dict:
    """Relative distance of one run's loss and gradients from the reference run's."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    with np.load(path) as got, np.load(reference) as want:
        loss, want_loss = float(got["__loss__"]), float(want["__loss__"])
        keys = [k for k in want.files if k != "__loss__"]
        diff_sq = ref_sq = 0.0
        worst, worst_key = 0.0, ""
        for k in keys:
            g, w = got[k].astype(np.float64), want[k].astype(np.float64)
            d, r = np.square(g - w).sum(), np.square(w).sum()
            diff_sq, ref_sq = diff_sq + d, ref_sq + r
            rel = math.sqrt(d / r) if r > 0 else (0.0 if d == 0 else math.inf)
            if rel > worst:
                worst, worst_key = rel, k
    grad_rel = math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else 0.0
    loss_rel = abs(loss - want_loss) / max(abs(want_loss), 1e-30)
    return {
        "loss_rel": float(f"{loss_rel:.3g}"),
        "grad_rel": float(f"{grad_rel:.3g}"),
        "grad_rel_worst_leaf": [worst_key, float(f"{worst:.3g}")],
        "equal": bool(loss_rel <= GRAD_RTOL and grad_rel <= GRAD_RTOL),
    }


def _child_run(argv: list[str], extra_flags: str, grads_out: str, timeout: float) -> dict:
    """One setting in a fresh process: this command with `--_grads_out`, `extra_flags` added to
    XLA_FLAGS. A failure is reported, not raised: some options break the compiler."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), extra_flags) if f)
    cmd = [sys.executable, "-m", "matpac_jax.tools.bench_step", *argv, "--_grads_out", grads_out]
    try:
        out = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
        return {"error": f"exit {out.returncode}: {lines[-1][:300] if lines else ''}"}
    return json.loads(out.stdout)


def compare_flags(argv: list[str], settings: list[str], matmul_n: int, timeout: float) -> dict:
    """The default and each setting of `settings`, each in its own process; then the matmul."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "default.npz")
        for i, flags in enumerate(["", *settings]):
            grads = reference if i == 0 else os.path.join(tmp, f"{i}.npz")
            result = {"setting": flags or "(default)", **_child_run(argv, flags, grads, timeout)}
            if "error" not in result and i > 0 and os.path.exists(reference):
                result.update(grad_difference(grads, reference))
                result["same_program"] = result["program_sha1"] == runs[0].get("program_sha1")
            runs.append(result)
    base = runs[0].get("step_ms")
    mm = matmul_rate(matmul_n, jnp.float32, seconds=5.0)  # the children ran in float32 on CPU
    for r in runs:
        if "step_ms" in r:
            r.update(_with_matmul(r, mm, matmul_n))
            if base:
                r["speedup"] = round(base / r["step_ms"], 3)
    return {f"matmul_{matmul_n}_tflop_per_s": round(mm / 1e12, 6), "runs": runs}


def _print_table(result: dict) -> None:
    for row in result.get("top_ops", ()):
        gap = row.get("gap_ms", 0)
        gap = f", then {gap} ms with no op running" if gap >= 1 else ""
        rate = f", {row['gflop_per_s']} GFLOP/s" if "gflop_per_s" in row else ""
        print(
            f"{row['ms']:10.2f} ms {100 * row['share']:5.1f}% {row['ops']:4d} ops {row['kind']} "
            f"(largest {row['largest']}{gap}{rate})",
            file=sys.stderr,
        )
    if "timeline" in result:
        t = result["timeline"]
        print(
            f"the ops span {t['span_ms']} ms: {t['no_op_ms']} ms with no op running (after "
            + ", ".join(f"{k}: {v} ms" for k, v in t["no_op_after"].items())
            + f"), {t['concurrent_ms']} ms with two or more at once",
            file=sys.stderr,
        )
    for r in result.get("runs", ()):
        if "error" in r:
            print(f"{r['setting']}: {r['error']}", file=sys.stderr)
            continue
        check = (
            ""
            if "equal" not in r
            else (
                f", loss rel {r['loss_rel']:.1e}, grads rel {r['grad_rel']:.1e} "
                f"({'equal' if r['equal'] else 'DIFFERENT'}"
                f"{', same program' if r['same_program'] else ''})"
            )
        )
        print(
            f"{r['setting']}: {r['step_ms']:.1f} ms, {r['step_over_matmul']:.3f} of the matmul, "
            f"x{r.get('speedup', float('nan')):.3f}{check}",
            file=sys.stderr,
        )


PROG = "python -m matpac_jax.tools.bench_step"


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--config", required=True, help="e.g. configs/matpac_pp.py:variant=B")
    p.add_argument("--batch_size", type=int, required=True)
    p.add_argument("--seconds", type=float, default=20.0, help="timing window of the step")
    p.add_argument("--matmul_n", type=int, default=2048)
    p.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=15,
        default=0,
        metavar="N",
        help="also profile one step and list its N (default 15) longest XLA ops",
    )
    p.add_argument(
        "--xla_flags",
        action="append",
        default=[],
        metavar="FLAGS",
        help="compare these XLA options with the defaults, one fresh process each (repeatable)",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per process with --xla_flags"
    )
    p.add_argument("--_grads_out", default=None, help=argparse.SUPPRESS)  # set for a child
    args, rest = p.parse_known_args(argv)
    if args.batch_size < 1 or args.seconds <= 0 or args.matmul_n < 1 or args.profile < 0:
        raise cli.UserError(
            "--batch_size and --matmul_n must be at least 1, --seconds above 0, --profile >= 0"
        )
    config = trainable_config(args.config, rest)
    if args.xla_flags:
        child_argv = [
            *("--config", args.config, "--batch_size", str(args.batch_size)),
            *("--seconds", str(args.seconds), "--profile", str(args.profile)),
            *rest,
        ]
        result = compare_flags(child_argv, args.xla_flags, args.matmul_n, args.timeout)
    else:
        result = bench(
            config,
            args.batch_size,
            args.seconds,
            profile=args.profile,
            grads_out=args._grads_out,
            # a child's parent times the matmul, with default options
            matmul_n=None if args._grads_out else args.matmul_n,
        )
    _print_table(result)
    print(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
