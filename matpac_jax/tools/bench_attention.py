r"""The model's attention alone, at the train step's shapes, against a matmul timed in the same run.

  python -m matpac_jax.tools.bench_attention --config configs/matpac_pp.py:variant=B --batch_size 8
  python -m matpac_jax.tools.bench_attention --shape 8,191,16,32 --shape 8,134,12,64 --torch

For each shape (B, N, H, dh) it times, forward and forward + backward (the gradient of a weighted
sum of the output with respect to q, k and v):
- `ours`: the model's attention (`models.vit._attention`, on the qkv projection's (B, N, 3, H, dh)
  layout, transposes included);
- `xla_dot_product_attention`: `jax.nn.dot_product_attention` with XLA's implementation;
- `cudnn_dot_product_attention` (on a GPU): the same with cuDNN's fused kernel (a kernel the
  device lacks is reported with its error, not raised);
- `torch_sdpa` (with `--torch`): `torch.nn.functional.scaled_dot_product_attention`, PyTorch's
  fused CPU kernel, at torch's default thread count: what a fused attention kernel reaches on this
  machine. PyTorch is not a dependency of this package: install it yourself to use `--torch`.

The shapes come from the trainer's step for `--config` (the attention calls of its forward and
backward pass, traced, with how many calls each shape has: one per layer of the student, the
teacher and the predictor), or from `--shape`. FLOPs are those of attention's two products:
4 B H N^2 dh forward, three times that forward + backward (softmax and transposes not counted).
Each figure is also given as a share of a jitted 2048^2 matmul's rate (in the inputs' dtype:
float32 from the command, bf16 in tools.accelerator_check's bf16 check), timed before and
after the shapes (the `tools.bench_step` yardstick). `max_rel_diff` checks that the functions
compute the same thing: the largest difference of their outputs, over the largest output.

Prints one JSON object (and, for the eye, a table on stderr).
"""

from __future__ import annotations

import collections
import json
import sys
from unittest import mock

from matpac_jax import cli
from matpac_jax.tools import bench_step

PROG = "python -m matpac_jax.tools.bench_attention"


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """'B,N,H,dh' -> four positive integers."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise cli.UserError(f"--shape {text!r}: expected four positive integers B,N,H,dh")
    return shape


def step_shapes(config, batch_size: int) -> dict[tuple[int, int, int, int], int]:
    """{(B, N, H, dh): calls} of the attention in the trainer's step (forward and backward) for
    `config` at `batch_size`, in the order of their first call. Traced only: nothing is run."""
    import jax  # pylint: disable=g-import-not-at-top

    from matpac_jax.models import vit  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as ts  # pylint: disable=g-import-not-at-top

    model_cfg, step_cfg, sched, tx = bench_step.step_parts(config, batch_size)
    if model_cfg.attention_impl is not None:
        raise cli.UserError(
            f"model.attention_impl={model_cfg.attention_impl!r}: this tool times the model's own "
            "attention (attention_impl=None)"
        )
    state = jax.eval_shape(lambda k: ts.init_state(k, model_cfg, tx), jax.random.key(0))
    x = jax.eval_shape(lambda: bench_step.random_crops(config, batch_size))
    calls = collections.Counter()
    attention = vit._attention  # pylint: disable=protected-access

    def recorded(qkv):
        b, n, _, h, dh = qkv.shape
        calls[(b, n, h, dh)] += 1
        return attention(qkv)

    # Every attention layer calls `vit._attention` through the module: patched, it sees them all.
    with mock.patch.object(vit, "_attention", recorded):
        jax.eval_shape(ts.make_loss_and_grads(model_cfg, step_cfg, sched, 0), state, x)
    return dict(calls)


def _rates(flops: float, fwd_s: float, fwd_bwd_s: float, matmul: float) -> dict:
    return {
        "fwd_ms": round(fwd_s * 1e3, 3),
        "fwd_bwd_ms": round(fwd_bwd_s * 1e3, 3),
        "fwd_tflop_per_s": round(flops / fwd_s / 1e12, 4),
        "fwd_of_matmul": round(flops / fwd_s / matmul, 3),
        "fwd_bwd_of_matmul": round(3 * flops / fwd_bwd_s / matmul, 3),
    }


def _time_jax(fn, qkv, w, seconds: float) -> tuple[float, float, object]:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    fwd = jax.jit(fn)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(fn(t) * w)))
    return (
        bench_step.median_time(fwd, qkv, seconds=seconds),
        bench_step.median_time(grad, qkv, seconds=seconds),
        fwd(qkv),
    )


def _time_torch(qkv, w, seconds: float) -> tuple[float, float, object]:
    """PyTorch's fused scaled_dot_product_attention on (B, H, N, dh) tensors of the same values
    (torch runs synchronously on a CPU: timing its calls needs no blocking)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top

    q, k, v = (torch.from_numpy(np.ascontiguousarray(t)) for t in np.moveaxis(qkv, 2, 0))
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # (B, H, N, dh)
    wt = torch.from_numpy(np.ascontiguousarray(np.swapaxes(w, 1, 2)))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def fwd():
        with torch.no_grad():
            return sdpa(q, k, v)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        (sdpa(*leaves) * wt).sum().backward()

    return (
        bench_step.median_time(fwd, seconds=seconds),
        bench_step.median_time(fwd_bwd, seconds=seconds),
        fwd().transpose(1, 2).numpy(),
    )


def bench(
    shapes: dict,
    seconds: float,
    *,
    with_torch: bool = False,
    matmul_n: int = 2048,
    dtype: str = "float32",
) -> dict:
    """Times every shape (see the module doc); `shapes` maps (B, N, H, dh) to its calls (or None).
    Inputs and the matmul are in `dtype` (bf16 for an accelerator's step)."""
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    from matpac_jax.models import vit  # pylint: disable=g-import-not-at-top

    def dot_product(implementation):
        return lambda t: jax.nn.dot_product_attention(
            t[:, :, 0], t[:, :, 1], t[:, :, 2], implementation=implementation
        )

    kernels = {
        "ours": vit._attention,  # pylint: disable=protected-access
        "xla_dot_product_attention": dot_product("xla"),
    }
    if jax.default_backend() == "gpu":
        kernels["cudnn_dot_product_attention"] = dot_product("cudnn")
    dt = jax.numpy.dtype(dtype)
    mm_fn, mm_args, mm_flops = bench_step.matmul_fn(matmul_n, dt)
    mm_times = bench_step.call_times(mm_fn, *mm_args, seconds=min(seconds, 5.0))
    rows = []
    for i, ((b, n, h, dh), calls) in enumerate(shapes.items()):
        keys = jax.random.split(jax.random.key(i), 2)
        qkv = jax.random.normal(keys[0], (b, n, 3, h, dh), dt)
        w = jax.random.normal(keys[1], (b, n, h, dh), dt)
        timed = {}
        for name, fn in kernels.items():
            try:
                timed[name] = _time_jax(fn, qkv, w, seconds)
            except Exception as e:  # pylint: disable=broad-except (a kernel this device lacks)
                if name == "ours":
                    raise
                timed[name] = cli.one_line(e)[:200]
        if with_torch:
            timed["torch_sdpa"] = _time_torch(np.asarray(qkv), np.asarray(w), seconds)
        rows.append(((b, n, h, dh), calls, timed))
    mm_times += bench_step.call_times(mm_fn, *mm_args, seconds=min(seconds, 5.0), warm_up=False)
    matmul = mm_flops / bench_step.median(mm_times)

    out_rows = []
    for (b, n, h, dh), calls, timed in rows:
        flops = 4 * b * h * n * n * dh
        ref = np.asarray(timed["ours"][2], np.float64)
        row = {"shape": [b, n, h, dh], "gflop_fwd": round(flops / 1e9, 4)}
        if calls is not None:
            row["calls"] = calls
        for name, result in timed.items():
            if isinstance(result, str):
                row[name] = {"error": result}
                continue
            fwd_s, fwd_bwd_s, out = result
            row[name] = _rates(flops, fwd_s, fwd_bwd_s, matmul)
            if name != "ours":
                diff = np.max(np.abs(np.asarray(out, np.float64) - ref)) / np.max(np.abs(ref))
                row[name]["max_rel_diff"] = float(f"{diff:.2e}")
        out_rows.append(row)
    return {
        "device": str(jax.devices()[0]),
        "dtype": dtype,
        f"matmul_{matmul_n}_tflop_per_s": round(matmul / 1e12, 6),
        "shapes": out_rows,
    }


def _print_table(result: dict) -> None:
    for row in result["shapes"]:
        calls = row.get("calls")
        calls = "" if calls is None else f", {calls} call{'s' if calls > 1 else ''} a step"
        print(f"B, N, H, dh = {tuple(row['shape'])}{calls}:", file=sys.stderr)
        for name, r in row.items():
            if isinstance(r, dict) and "error" in r:
                print(f"  {name:26s} {r['error']}", file=sys.stderr)
            elif isinstance(r, dict):
                print(
                    f"  {name:26s} fwd {r['fwd_ms']:9.3f} ms ({r['fwd_of_matmul']:.2f} of the "
                    f"matmul), fwd+bwd {r['fwd_bwd_ms']:9.3f} ms ({r['fwd_bwd_of_matmul']:.2f})",
                    file=sys.stderr,
                )


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--config", help="the step's shapes for this config, e.g. configs/matpac_pp.py")
    p.add_argument("--batch_size", type=int, help="with --config")
    p.add_argument(
        "--shape", action="append", default=[], metavar="B,N,H,dh", help="a shape (repeatable)"
    )
    p.add_argument("--seconds", type=float, default=3.0, help="timing window of each function")
    p.add_argument("--matmul_n", type=int, default=2048)
    p.add_argument("--torch", action="store_true", help="also time PyTorch's fused attention")
    args, rest = p.parse_known_args(argv)
    if (args.config is None) == (not args.shape):
        raise cli.UserError("give either --config with --batch_size, or --shape")
    if args.seconds <= 0 or args.matmul_n < 1:
        raise cli.UserError("--seconds must be above 0 and --matmul_n at least 1")
    if args.torch:
        try:
            import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
        except ImportError as e:
            raise cli.UserError(
                "--torch needs PyTorch, which is not a dependency of this package: "
                "pip install torch"
            ) from e
    if args.shape:
        if rest or args.batch_size is not None:
            given = " ".join(rest) or "--batch_size"
            raise cli.UserError(f"{given}: goes with --config, not with --shape")
        shapes = {parse_shape(s): None for s in args.shape}
    else:
        if args.batch_size is None or args.batch_size < 1:
            raise cli.UserError("--config needs --batch_size, at least 1")
        config = bench_step.trainable_config(args.config, rest)
        shapes = step_shapes(config, args.batch_size)
    result = bench(shapes, args.seconds, with_torch=args.torch, matmul_n=args.matmul_n)
    _print_table(result)
    print(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
