r"""Compiles the train step for a config and reports XLA's FLOPs and memory; no accelerator needed.

  python -m matpac_jax.tools.cost --config configs/matpac_pp.py:variant=B --batch_size 8
  python -m matpac_jax.tools.cost --config configs/matpac_pp.py:variant=B --batch_size 8 \
      --config.model.depth=6 --config.model.num_mcl_heads=3
  python -m matpac_jax.tools.cost --config configs/matpac_pp.py:variant=B \
      --batch_size 2048 --mesh 8,1 --dtype bfloat16

`--config.KEY=VALUE` overrides the config as for the trainer. `--batch_size` is the global
batch; `--mesh data,fsdp` lays it over that many devices (faked on a CPU host: the compiled
program and its per-device memory are those of the real mesh). Prints
one JSON object: FLOPs per step and per example (XLA's cost analysis of the whole step:
student and predictor forward and backward, teacher forward, optimiser, EMA), the analytic
figure of docs/method.md, section 9 for comparison, bytes accessed, XLA's memory analysis per
device (arguments = state + batch, temporaries = activations), and the bytes of the step's
collectives per device by kind (`collectives_per_device`; docs/launching.md).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

from matpac_jax import cli, config_lib  # none of these imports jax: XLA_FLAGS can still be set
from matpac_jax.tools import bench_step

PAPER_GFLOP_PER_EXAMPLE = 93.0  # docs/method.md, section 9, the paper's ViT-B configuration

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_BYTES.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8})
# `%name = SHAPE KIND(` or `%name = (SHAPE, SHAPE) KIND(`; async pairs count at their -start.
_OP = re.compile(r"=\s+(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")


def collective_bytes(hlo_text: str) -> dict:
    """{kind: {"count", "bytes"}} of the collectives in one device's compiled HLO: the bytes of
    each collective's result (for an all-gather the gathered array, for a reduce-scatter the
    scattered part), summed per kind, as written once in the program."""
    out = {}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        sizes = [
            _BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
            for dtype, dims in _ARRAY.findall(m.group(1))
            if dtype in _BYTES
        ]
        # An async start returns (operands, results, ...): its largest array stands for it.
        size = max(sizes, default=0) if m.group(3) else sum(sizes)
        entry = out.setdefault(m.group(2), {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += size
    return out


def analyse(config, batch_size: int, mesh_shape: tuple[int, int], dtype: str | None) -> dict:
    """Lowers and compiles one train step on abstract inputs; returns the figures."""
    # jax (and what imports it) only now: main sets XLA_FLAGS's device count first.
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from matpac_jax.objective import optimizer  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import sharding  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import trainer as train  # pylint: disable=g-import-not-at-top

    with config.unlocked():
        config.batch_size = batch_size
        if dtype:
            config.model.compute_dtype = dtype
    fake_index = {"front_end": {"n_mels": config.data.num_mels}}
    model_cfg = train.model_config(config, fake_index)
    sched, _ = train.run_schedules(config, config_lib.PAPER_NUM_CLIPS)
    tx = optimizer.make_optimizer(config.optim, sched.lr)
    if math.prod(mesh_shape) > jax.device_count():
        raise ValueError(
            f"mesh {mesh_shape} needs {math.prod(mesh_shape)} devices, this host has "
            f"{jax.device_count()} (run the tool as a command: it fakes them)"
        )
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[: math.prod(mesh_shape)])
    abstract = jax.eval_shape(lambda k: ts.init_state(k, model_cfg, tx), jax.random.key(0))
    state_sharding = sharding.state_shardings(abstract, mesh)
    batch = jax.ShapeDtypeStruct(
        (batch_size, config.data.num_mels, config.data.crop_frames),
        jnp.float32,
        sharding=sharding.batch_sharding(mesh),
    )
    step = jax.jit(
        ts.make_train_step(model_cfg, ts.StepConfig.from_config(config), sched, tx, 0),
        in_shardings=(state_sharding, batch.sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=0,
    )
    compiled = step.lower(abstract, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    # XLA analyses the partitioned program: one device's share of the work.
    flops = float(cost["flops"]) * mesh.size
    counts = {
        k: sum(math.prod(x.shape) for x in jax.tree.leaves(abstract[k]))
        for k in ("params", "teacher")
    }
    out = {
        "model": {
            "variant": config.model.variant,
            "compute_dtype": model_cfg.dtype,
            "num_mcl_heads": model_cfg.num_mcl_heads,
        },
        "batch_size": batch_size,
        "mesh": {"data": mesh.shape["data"], "fsdp": mesh.shape["fsdp"]},
        "backend": jax.default_backend(),
        "flops_per_step": flops,
        "gflop_per_example": flops / batch_size / 1e9,
        "bytes_accessed_per_device": float(cost.get("bytes accessed", float("nan"))),
        "params": counts,
        "collectives_per_device": collective_bytes(compiled.as_text()),
    }
    if config.model.variant == "B" and config.model.num_mcl_heads == 5:
        out["paper_gflop_per_example"] = PAPER_GFLOP_PER_EXAMPLE
        out["ratio_to_paper"] = out["gflop_per_example"] / PAPER_GFLOP_PER_EXAMPLE
    if memory is not None:
        per_device = {
            "arguments": memory.argument_size_in_bytes,
            "outputs": memory.output_size_in_bytes,
            "temporaries": memory.temp_size_in_bytes,
            "aliased": memory.alias_size_in_bytes,
            "generated_code": memory.generated_code_size_in_bytes,
        }
        # Donated state aliases its outputs: the peak is arguments + temporaries + the rest.
        per_device["peak_estimate"] = (
            per_device["arguments"]
            + per_device["temporaries"]
            + per_device["outputs"]
            - per_device["aliased"]
        )
        out["memory_per_device_gib"] = {k: round(v / 2**30, 3) for k, v in per_device.items()}
    return out


PROG = "python -m matpac_jax.tools.cost"


def _main(argv=None) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--config", required=True, help="e.g. configs/matpac_pp.py:variant=B")
    p.add_argument("--batch_size", type=int, required=True, help="global batch")
    p.add_argument("--mesh", default="1,1", help="data,fsdp device counts (faked on CPU)")
    p.add_argument("--dtype", default=None, help="compute dtype (default: the config's)")
    args, rest = p.parse_known_args(argv)
    try:
        mesh_shape = tuple(int(x) for x in args.mesh.split(","))
    except ValueError:
        mesh_shape = ()
    if len(mesh_shape) != 2 or min(mesh_shape) < 1:
        raise cli.UserError(f"--mesh {args.mesh}: takes two positive integers, data,fsdp")
    if args.batch_size < 1:
        raise cli.UserError(f"--batch_size {args.batch_size}: must be at least 1")
    devices = math.prod(mesh_shape)
    if devices > 1 and "jax" not in sys.modules:  # fake devices must exist before jax starts
        os.environ["XLA_FLAGS"] = cli.xla_flags_with_device_count(
            os.environ.get("XLA_FLAGS"), devices
        )
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # --config.KEY=VALUE as for the trainer, and its checks: an analysed config is a trainable
    # one (this imports the trainer, and jax: after XLA_FLAGS).
    config = bench_step.trainable_config(args.config, rest)
    result = analyse(config, args.batch_size, mesh_shape, args.dtype)
    print(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
