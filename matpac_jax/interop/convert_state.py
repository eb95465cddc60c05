"""A reference training checkpoint -> a workdir that `python -m matpac_jax.train` continues.

`python -m matpac_jax.interop.convert from-torch CKPT --train_state --out WORKDIR` writes

  WORKDIR/checkpoints/<step>/state/   the train state (matpac_jax/train/step.py), no input position
  WORKDIR/converted.json              the source, the step, the sizes and the trainer's overrides
  WORKDIR/export/                     the student encoder, for embeddings right away

From the reference: the student (patch embedding, cls token, encoder, predictor `decoder.*`, MCL
heads, cls head), the teachers (`_ema`, `_cls_head_ema`), the centre (`cls_head_loss.center`) and
the step (fairseq's `optimizer_history[-1]["num_updates"]`, `num_updates` in a flat file, or
`--step`). Adam's moments come along when the file has them (`last_optimizer_state`, per
parameter or fairseq's flat fp16 form; `optimizer.exp_avg.NAME` / `optimizer.exp_avg_sq.NAME` in
a flat file); otherwise the optimiser starts fresh, its learning rate on the step's clock.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from matpac_jax import cli, config_lib, models
from matpac_jax.inference import export
from matpac_jax.interop import torch_layout as tl
from matpac_jax.objective import optimizer
from matpac_jax.train import checkpoints as checkpointing
from matpac_jax.train import step as train_step

_NOT_TRAINED_PREFIXES = (
    *("_ema.", "_cls_head_ema.", "head_norm.", "head.", "probe."),
    *("optimizer.", "num_updates"),  # a flat file's optimiser state and step
)


def trainable_names(sd_keys: list[str]) -> list[str]:
    """The reference's trained parameters in its optimiser's order: the model's state-dict
    order without fixed tables, buffers and EMA copies (torch lists parameters in the order
    `state_dict` does, and fairseq builds its optimiser from `model.parameters()`)."""
    skip = (*tl.FIXED_KEYS, "cls_head_loss.center")
    return [
        k
        for k in sd_keys
        if k not in skip
        and not k.startswith(_NOT_TRAINED_PREFIXES)
        and not k.endswith(tl.NO_STATE_DICT_KEYS)
    ]


def moments_from_torch(sd: dict[str, Any], optimizer_state: dict) -> dict:
    """Adam moments by parameter name, from a torch / fairseq optimiser state dict.

    Two forms are read: one state per parameter (torch's Adam, fairseq's memory-efficient fp16),
    or a single flat state over all parameters (fairseq's fp16 optimiser flattens them).

    Args:
      sd: the model state dict, in its saved key order.
      optimizer_state: {"state": {index: {"exp_avg", "exp_avg_sq", "step"}}, ...}.

    Returns:
      {"exp_avg": {name: array}, "exp_avg_sq": {name: array}, "step": int}.

    Raises:
      ValueError: a form or size that does not fit the model's parameters.
    """
    names = trainable_names(list(sd))
    states = [optimizer_state["state"][i] for i in sorted(optimizer_state.get("state", {}))]
    if not states or any("exp_avg" not in s for s in states):
        raise ValueError("no Adam moments (exp_avg, exp_avg_sq) in the optimiser state")
    sizes = [int(np.prod(np.shape(sd[n]))) for n in names]
    out = {"exp_avg": {}, "exp_avg_sq": {}, "step": int(np.asarray(states[0].get("step", 0)))}
    if len(states) == 1 and np.size(states[0]["exp_avg"]) == sum(sizes) and len(names) > 1:
        offsets = np.cumsum([0, *sizes])
        for part in ("exp_avg", "exp_avg_sq"):
            flat = np.asarray(states[0][part], np.float32).reshape(-1)
            for name, a, b in zip(names, offsets[:-1], offsets[1:]):
                out[part][name] = flat[a:b].reshape(np.shape(sd[name]))
        return out
    if len(states) != len(names):
        raise ValueError(
            f"{len(states)} optimiser states for {len(names)} trained parameters: not this model's"
        )
    for name, state in zip(names, states):
        for part in ("exp_avg", "exp_avg_sq"):
            if np.shape(state[part]) != np.shape(sd[name]):
                raise ValueError(f"the {part} of {name} has shape {np.shape(state[part])}")
            out[part][name] = np.asarray(state[part], np.float32)
    return out


def reference_step(sd: dict, meta: dict) -> int | None:
    """The number of updates the reference checkpoint had done, if it says."""
    history = meta.get("optimizer_history")
    if isinstance(history, (list, tuple)) and history and "num_updates" in history[-1]:
        return int(np.asarray(history[-1]["num_updates"]))
    for source in (meta, sd):
        if "num_updates" in source:
            return int(np.asarray(source["num_updates"]))
    return None


def reference_moments(sd: dict, meta: dict) -> tuple[dict | None, str]:
    """(moments by reference name, "") or (None, why there are none)."""
    flat = {
        part: {
            k[len(f"optimizer.{part}.") :]: v
            for k, v in sd.items()
            if k.startswith(f"optimizer.{part}.")
        }
        for part in ("exp_avg", "exp_avg_sq")
    }
    if flat["exp_avg"]:
        step = sd.get("optimizer.step")
        return {**flat, "step": None if step is None else int(np.asarray(step))}, ""
    state = meta.get("last_optimizer_state")
    if not isinstance(state, dict):
        return None, "the checkpoint has no optimiser state"
    try:
        return moments_from_torch(sd, state), ""
    except (ValueError, KeyError, TypeError) as e:
        return None, f"its optimiser state does not fit ({e})"


def _opt_state(params: dict, cfg, moments: dict | None, rules, shapes, step: int):
    """The trainer's optax state for `params`: fresh, or Adam's moments from the reference."""
    # The state's structure does not depend on the numbers: the default optimiser config gives it.
    optim = config_lib.pretraining_config(
        variant="B", runlocal=False, num_mcl_heads=cfg.num_mcl_heads, mcl=True
    ).optim
    opt = optimizer.make_optimizer(optim, lambda count: 0.0).init(params)
    if moments is not None:
        mu, nu = (tl.gather(moments[p], rules, shapes) for p in ("exp_avg", "exp_avg_sq"))
        count = moments["step"] if moments["step"] is not None else step

        def fill(node):
            if isinstance(node, optax.ScaleByAdamState):
                as_jax = lambda t: jax_tree(t, jnp)
                return node._replace(count=jnp.int32(count), mu=as_jax(mu), nu=as_jax(nu))
            return node

        opt = _map_nodes(fill, opt, optax.ScaleByAdamState)
    return train_step.with_lr_clock(opt, step)


def _map_nodes(fn: Callable, tree: Any, node_type: type) -> Any:
    return jax.tree.map(
        lambda n: fn(n) if isinstance(n, node_type) else n,
        tree,
        is_leaf=lambda n: isinstance(n, node_type),
    )


def jax_tree(tree: Any, jnp) -> Any:
    """Nested dicts of numpy arrays as jax arrays."""
    if isinstance(tree, dict):
        return {k: jax_tree(v, jnp) for k, v in tree.items()}
    return jnp.asarray(tree)


def import_train_state(
    sd: dict[str, Any],
    meta: dict,
    *,
    n_mels: int = 80,
    num_heads: int | None = None,
    pred_num_heads: int | None = None,
    step: int | None = None,
) -> tuple[dict, Any, dict]:
    """A reference training state dict -> (train state, model config, report).

    Raises:
      cli.UserError: a missing or misshapen key, or no step in the file and none given.
    """

    cfg = tl.infer_model_config(
        sd, n_mels=n_mels, num_heads=num_heads, pred_num_heads=pred_num_heads, train_state=True
    )
    step = reference_step(sd, meta) if step is None else step
    if step is None:
        raise cli.UserError("the checkpoint does not say its step: give --step")
    shapes = tl.expected_shapes(cfg)
    rules = tl.student_rules(cfg, list(sd), tl.encoder_prefix(sd))
    params = tl.gather(sd, rules, shapes["student"])
    teacher = tl.gather(sd, tl.teacher_rules(cfg), shapes["teacher"])
    center = np.asarray(sd.get("cls_head_loss.center", np.zeros(cfg.cls_out)), np.float32)
    if center.size != cfg.cls_out:
        raise cli.UserError(
            f"cls_head_loss.center has shape {center.shape}, expected (1, 1, {cfg.cls_out})"
        )
    moments, why = reference_moments(sd, meta)
    params = jax_tree(params, jnp)
    state = {
        "params": params,
        "teacher": jax_tree(teacher, jnp),
        "opt": _opt_state(params, cfg, moments, rules, shapes["student"], step),
        "center": jnp.asarray(center.reshape(1, -1)),
        "step": jnp.int32(step),
        "skips": jnp.int32(0),
    }
    used = {r.ref for r in rules + tl.teacher_rules(cfg)} | {"cls_head_loss.center", "num_updates"}
    unused = [
        k
        for k in tl.unused_keys(sd, used)
        if not k.startswith(("optimizer.", "decoder.decoder_pred."))  # unused by the reference
    ]
    report = {
        "unused": unused,
        "pos_embed": tl.pos_embed_difference(sd, "pos_embed", cfg, cfg.width),
        "decoder_pos_embed": tl.pos_embed_difference(
            sd, "decoder.decoder_pos_embed", cfg, cfg.pred_width
        ),
        "moments": moments is not None,
        "no_moments_because": why,
    }
    return state, cfg, report


def trainer_overrides(cfg) -> list[str]:
    """The trainer flags that build this model (and the reference's 608-frame crops)."""
    variant = tl.matching_variant(dataclasses.asdict(cfg))
    if variant is None or models_heads(variant) != (cfg.num_heads, cfg.pred_num_heads):
        raise cli.UserError(
            f"the trainer builds the variants Ti, S, B, mu; these sizes (width {cfg.width}, depth "
            f"{cfg.depth}, predictor {cfg.pred_width} x {cfg.pred_depth}) are none of them"
        )
    config = "configs/matpac_pp.py" if cfg.num_mcl_heads > 1 else "configs/matpac.py"
    return [
        f"--config={config}:variant={variant}",
        f"--config.model.num_mcl_heads={cfg.num_mcl_heads}",
        f"--config.model.cls_hidden={cfg.cls_hidden}",
        f"--config.model.cls_bottleneck={cfg.cls_bottleneck}",
        f"--config.model.cls_classes={cfg.cls_out}",
        f"--config.data.crop_frames={cfg.max_frames}",
    ]


def models_heads(variant: str) -> tuple[int, int]:
    sizes = models.decode_variant(variant)
    return sizes["num_heads"], sizes["pred_num_heads"]


def main(args, path: str, out: str, sd: dict, meta: dict, report_fn: Callable) -> int:
    """`convert from-torch --train_state`: writes the workdir; prints the command to continue."""
    if os.path.isdir(os.path.join(out, "checkpoints")) and os.listdir(
        os.path.join(out, "checkpoints")
    ):
        raise cli.UserError(f"--out {args.out}: already holds checkpoints; choose a new workdir")
    state, cfg, report = import_train_state(
        sd,
        meta,
        n_mels=args.n_mels,
        num_heads=args.num_heads,
        pred_num_heads=args.pred_num_heads,
        step=args.step,
    )
    overrides = trainer_overrides(cfg)
    report_fn(report)
    if not report["moments"]:
        print(f"optimiser: fresh Adam moments ({report['no_moments_because']})")
    step = int(state["step"])
    info = {"source": path, "model": dataclasses.asdict(cfg), "trainer_flags": overrides}
    with cli.removed_on_failure(out):
        checkpointing.write_state_only(out, step, state, info)
        encoder = {k: state["params"][k] for k in ("patch_embed", "cls_token", "student")}
        export.export_encoder(out, encoder, tl.export_config(cfg, path))
    print(f"wrote {out}: step {step}, K = {cfg.num_mcl_heads} heads. Continue with:")
    print(
        f"  python -m matpac_jax.train --workdir={out} {' '.join(overrides)} --config.data.dir=..."
    )
    return 0
