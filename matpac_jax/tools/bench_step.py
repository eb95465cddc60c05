r"""Train-step throughput and achieved FLOP/s, against a large matmul timed in the same run.

  python -m matpac_jax.tools.bench_step --config configs/matpac_pp.py:variant=B --batch_size 8
  python -m matpac_jax.tools.bench_step --config configs/matpac_pp.py:runlocal --batch_size 16

The step is the trainer's own (`train_step.make_train_step`, jitted, state donated) on random
normalised crops; its FLOPs come from XLA's cost analysis of the compiled step. The reference
rate is a jitted square matmul in the same dtype: on a CPU it is about the best XLA reaches, so
the ratio says how much of the machine the step uses. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time

from matpac_jax import cli, config_lib


def _time(fn, *args, seconds: float, min_runs: int = 3) -> float:
    """Median seconds per call of a jitted function (outputs blocked on)."""
    import jax  # pylint: disable=g-import-not-at-top

    jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def matmul_rate(n: int, dtype, seconds: float) -> float:
    """FLOP/s of an (n, n) @ (n, n) jitted matmul."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    return 2 * n**3 / _time(jax.jit(jnp.matmul), a, b, seconds=seconds)


def bench(config, batch_size: int, seconds: float, matmul_n: int) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from matpac_jax import config_lib, optimizer, train  # pylint: disable=g-import-not-at-top
    from matpac_jax import train_step as ts  # pylint: disable=g-import-not-at-top

    with config.unlocked():
        config.batch_size = batch_size
    model_cfg = train.model_config(config, {"front_end": {"n_mels": config.data.num_mels}})
    sched, _ = train.run_schedules(config, config_lib.PAPER_NUM_CLIPS)
    tx = optimizer.make_optimizer(config.optim, sched.lr)
    state = jax.jit(lambda k: ts.init_state(k, model_cfg, tx))(jax.random.key(0))
    x = jax.random.normal(
        jax.random.key(1), (batch_size, config.data.num_mels, config.data.crop_frames)
    )
    step = jax.jit(
        ts.make_train_step(model_cfg, ts.StepConfig.from_config(config), sched, tx, 0),
        donate_argnums=0,
    )
    compiled = step.lower(state, x).compile()
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

    holder = {"state": state}

    def run(batch):
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    step_s = _time(run, x, seconds=seconds)
    mm = matmul_rate(matmul_n, jnp.dtype(model_cfg.dtype), seconds=min(seconds, 5.0))
    return {
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "variant": config.model.variant,
        "compute_dtype": model_cfg.dtype,
        "batch_size": batch_size,
        "step_ms": round(step_s * 1e3, 2),
        "examples_per_s": round(batch_size / step_s, 2),
        "gflop_per_example": round(flops / batch_size / 1e9, 3),
        "step_tflop_per_s": round(flops / step_s / 1e12, 4),
        f"matmul_{matmul_n}_tflop_per_s": round(mm / 1e12, 4),
        "step_over_matmul": round(flops / step_s / mm, 3),
    }


PROG = "python -m matpac_jax.tools.bench_step"


def _main(argv=None) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--batch_size", type=int, required=True)
    p.add_argument("--seconds", type=float, default=20.0, help="timing window of the step")
    p.add_argument("--matmul_n", type=int, default=2048)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.seconds <= 0 or args.matmul_n < 1:
        raise cli.UserError("--batch_size and --matmul_n must be at least 1, --seconds above 0")
    config = config_lib.load_config(args.config)
    print(json.dumps(bench(config, args.batch_size, args.seconds, args.matmul_n), indent=1))
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
