"""The MATPAC++ training state and step: pure functions of plain pytrees.

State: {"params": student, "teacher": {"encoder", "cls_head"}, "opt": optax state of params
only, "center": (1, C), "step": int32, "skips": int32 (non-finite steps in a row)}.

One step (docs/method.md, sections 3-5): mask (key = fold_in(seed, step)) -> student, predictor and
K heads on the visible tokens, teacher on the masked ones -> annealed winner-takes-all
prediction loss -> classification loss on the winning prediction against the centred,
sharpened teacher -> AdamW on the student; EMA of the teachers from the student weights that
produced this step's loss (as the reference, which updates them inside its forward pass); new
centre for the next step. A non-finite loss or gradient norm leaves every part of the state
but `step` and `skips` (and the learning-rate clock, which follows `step`) as it was.

`step_loss` is the loss alone, for a batch and a mask given by the caller (parity checks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from matpac_jax import models
from matpac_jax.objective import ema, losses, masking, schedules

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static numbers of a step (everything that is not a schedule)."""

    mask_ratio: float
    alpha: float
    mcl: bool
    mcl_threshold: float
    student_temp: float
    center_on: str
    center_momentum: float
    alpha_weighting: str = "reference"  # quirk: 0.5 / 0.5, alpha only drops a term

    @classmethod
    def from_config(cls, config) -> "StepConfig":
        return cls(
            mask_ratio=config.model.mask_ratio,
            alpha=config.loss.alpha,
            mcl=config.loss.mcl,
            mcl_threshold=config.loss.mcl_threshold,
            student_temp=config.loss.student_temp,
            center_on=config.loss.center_on,
            center_momentum=config.loss.center_momentum,
            alpha_weighting=config.loss.alpha_weighting,
        )


def init_state(
    key: jax.Array, model_cfg: models.ModelConfig, tx: optax.GradientTransformation
) -> State:
    """A fresh state (call under jit with out_shardings to create it already sharded)."""
    student, teacher = models.build(model_cfg, nnx.Rngs(key))
    params = nnx.to_pure_dict(nnx.state(student))
    return {
        "params": params,
        "teacher": nnx.to_pure_dict(nnx.state(teacher)),
        "opt": tx.init(params),
        "center": jnp.zeros((1, model_cfg.cls_out), jnp.float32),
        "step": jnp.zeros((), jnp.int32),
        "skips": jnp.zeros((), jnp.int32),
    }


def graphdefs(model_cfg: models.ModelConfig):
    """(student, teacher) graph definitions, without allocating any parameter."""
    student, teacher = nnx.eval_shape(lambda: models.build(model_cfg, nnx.Rngs(0)))
    return nnx.graphdef(student), nnx.graphdef(teacher)


def with_lr_clock(opt_state: Any, step: jax.Array | int) -> Any:
    """The optimiser state with its learning-rate schedule's count set to `step`.

    optax counts the updates it applied; the masks, EMA momenta and temperatures follow the
    state's `step`. A skipped (non-finite) step or a fresh optimiser on a converted checkpoint
    would set the two apart; this keeps the learning rate on the step's clock, as fairseq keeps
    one update counter for all. Adam's own count (its bias correction) is left alone: it counts
    the moment updates, as torch's Adam does.
    """

    def fix(node):
        if isinstance(node, optax.ScaleByScheduleState):
            return node._replace(count=jnp.asarray(step, node.count.dtype))
        return node

    return jax.tree.map(fix, opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))


def step_loss(
    params: Any,
    teacher_state: Any,
    center: jax.Array,
    step: jax.Array | int,
    x: jax.Array,
    mask: masking.Mask,
    *,
    model_cfg: models.ModelConfig,
    step_cfg: StepConfig,
    sched: schedules.Schedules,
    graphs: tuple | None = None,
) -> tuple[jax.Array, tuple[dict, dict, jax.Array]]:
    """The training loss of one step for a given batch and mask (what the step differentiates).

    Public for parity checks against other implementations: pass the mask the other side drew.

    Args:
      params: the student's parameters (pure dict).
      teacher_state: the teachers' parameters {"encoder", "cls_head"}.
      center: (1, C) centre of the teacher logits or probabilities.
      step: the step, for the schedules (MCL and teacher temperatures).
      x: (B, F, T) normalised log-mels.
      mask: visible and masked token indices, (B, Nv) and (B, Nm).
      model_cfg, step_cfg, sched: the run's model, loss numbers and schedules.
      graphs: (student, teacher) graph definitions, `graphdefs(model_cfg)` by default.

    Returns:
      (loss, (loss_aux with "loss/pred" and "loss/cls", monitors, new centre)).
    """
    graph_s, graph_t = graphs or graphdefs(model_cfg)
    s = sched(step)
    student, teacher = nnx.merge(graph_s, params), nnx.merge(graph_t, teacher_state)
    z_hat, z_m, _ = models.forward(
        student, teacher, x, mask.visible_idx, mask.masked_idx
    )  # (B, M, K, D), (B, M, D)
    d = losses.prediction_distance(z_hat, z_m)  # (B, M, K)
    if step_cfg.mcl:
        pred_tok, best, weights = losses.mcl_prediction_loss(
            d, s["mcl_temperature"], step_cfg.mcl_threshold
        )
    else:  # MATPAC: one head, plain loss
        pred_tok, best, weights = d[..., 0], jnp.zeros(d.shape[:2], jnp.int32), jnp.ones_like(d)
    p_student = student.cls_logits(losses.select_hypothesis(z_hat, best))
    cls_tok, q, new_center = losses.cls_loss_and_new_center(
        p_student,
        teacher.cls_logits(z_m),
        center,
        s["teacher_tau"],
        center_on=step_cfg.center_on,
        student_temp=step_cfg.student_temp,
        center_momentum=step_cfg.center_momentum,
    )
    total, loss_aux = losses.matpac_loss(
        pred_tok, cls_tok, step_cfg.alpha, step_cfg.alpha_weighting
    )
    monitors = losses.collapse_monitors(best, weights, z_hat, z_m, q)
    return total, (loss_aux, monitors, new_center)


def make_loss_and_grads(
    model_cfg: models.ModelConfig,
    step_cfg: StepConfig,
    sched: schedules.Schedules,
    seed: int,
) -> Callable[[State, jax.Array], tuple[tuple[jax.Array, Any], Any]]:
    """Returns `fn(state, x) -> ((loss, (loss_aux, monitors, new_center)), grads)`: the train
    step's forward and backward pass (its own mask), before any update."""
    graphs = graphdefs(model_cfg)
    if not step_cfg.mcl and model_cfg.num_mcl_heads != 1:
        raise ValueError(
            f"the plain (non-MCL) loss needs one prediction head, the model has "
            f"num_mcl_heads={model_cfg.num_mcl_heads}"
        )

    def loss_and_grads(state: State, x: jax.Array):
        step = state["step"]
        batch_size, n_mels, frames = x.shape
        num_patches = (n_mels // model_cfg.patch) * (frames // model_cfg.patch)
        key = jax.random.fold_in(jax.random.key(seed), step)
        mask = masking.random_masking(key, batch_size, num_patches, step_cfg.mask_ratio)

        def loss_fn(params):
            return step_loss(
                params,
                state["teacher"],
                state["center"],
                step,
                x,
                mask,
                model_cfg=model_cfg,
                step_cfg=step_cfg,
                sched=sched,
                graphs=graphs,
            )

        return jax.value_and_grad(loss_fn, has_aux=True)(state["params"])

    return loss_and_grads


def make_train_step(
    model_cfg: models.ModelConfig,
    step_cfg: StepConfig,
    sched: schedules.Schedules,
    tx: optax.GradientTransformation,
    seed: int,
) -> Callable[[State, jax.Array], tuple[State, dict]]:
    """Returns `train_step(state, x) -> (state, metrics)`; x (B, F, T) normalised log-mels."""
    loss_and_grads = make_loss_and_grads(model_cfg, step_cfg, sched, seed)

    def train_step(state: State, x: jax.Array) -> tuple[State, dict]:
        step = state["step"]
        s = sched(step)
        params = state["params"]
        (loss, (loss_aux, monitors, new_center)), grads = loss_and_grads(state, x)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(_):
            # The learning rate of this update is the schedule at `step`, whatever optax counted.
            updates, new_opt = tx.update(
                grads, with_lr_clock(state["opt"], step), params, grad_norm=grad_norm
            )
            return {
                "params": optax.apply_updates(params, updates),
                "opt": new_opt,
                "teacher": {
                    "encoder": ema.ema_update(
                        state["teacher"]["encoder"], params["student"], s["ema/encoder"], step
                    ),
                    "cls_head": ema.ema_update(
                        state["teacher"]["cls_head"], params["cls_head"], s["ema/cls_head"], step
                    ),
                },
                "center": new_center,
            }

        def keep(_):
            return {k: state[k] for k in ("params", "opt", "teacher", "center")}

        # One branch runs: a finite step pays nothing for the guard (a select between two
        # copies of the state reads and writes all of it, every step).
        kept = jax.lax.cond(ok, update, keep, None)
        new_state = {
            **kept,
            # A skipped step keeps the moments but not the clock: lr and schedules move on together.
            "opt": with_lr_clock(kept["opt"], step + 1),
            "step": step + 1,
            "skips": jnp.where(ok, 0, state["skips"] + 1),
        }
        win_rate = monitors.pop("mcl/win_rate")
        head_std = monitors.pop("mcl/head_std")
        metrics = {
            "loss": loss,
            "loss_pred": loss_aux["loss/pred"],
            "loss_cls": loss_aux["loss/cls"],
            "grad_norm": grad_norm,
            "skipped": 1 - ok.astype(jnp.int32),
            "skip_streak": new_state["skips"],
            **s,
            **monitors,
            **{f"mcl/win_rate/{k}": win_rate[k] for k in range(win_rate.shape[0])},
            **{f"mcl/head_std/{k}": head_std[k] for k in range(head_std.shape[0])},
        }
        return new_state, metrics

    return train_step
