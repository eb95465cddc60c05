"""The train step (matpac_jax/train/step.py): loss wiring, EMA, teacher isolation, skipping.

The loss is recomputed independently in numpy float64 from the model's own outputs (the
model itself is tested in test_models.py), so this checks what the step does with them: which
hypothesis reaches the cls head, the temperatures, the centre, the weighting.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_step_parts
from flax import nnx
from numerics import assert_close, assert_trees_close, encoder_depth

from matpac_jax import models
from matpac_jax.objective import masking, schedules
from matpac_jax.train import step as ts

B, F, T = 4, 32, 64  # grid (2, 4): 8 patches, 2 visible, 6 masked
# A step's longest path: the encoders and predictor of the "mu" model, forward and backward.
STEP_DEPTH = 2 * encoder_depth(2 + 2 + 1)
SEED = 3


def _setup(mcl=True, heads=3, center_on="probs"):
    model_cfg = models.model_config(
        {"variant": "mu", "num_mcl_heads": heads, "n_mels": F, "max_frames": T}
    )
    step_cfg, sched = tiny_step_parts(mcl=mcl, center_on=center_on)
    tx = optax.adamw(sched.lr, weight_decay=0.05)
    state = ts.init_state(jax.random.key(0), model_cfg, tx)
    step = jax.jit(ts.make_train_step(model_cfg, step_cfg, sched, tx, SEED))
    return model_cfg, sched, state, step


def _batch(seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, F, T)), jnp.float32)


def _np_softmax(x, axis=-1):
    x = x - x.max(axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis, keepdims=True)


def _reference_loss(model_cfg, sched, state, x, step):
    """Loss and new centre of one step, in float64 numpy from the model's outputs."""
    graph_s, graph_t = ts.graphdefs(model_cfg)
    student = nnx.merge(graph_s, state["params"])
    teacher = nnx.merge(graph_t, state["teacher"])
    key = jax.random.fold_in(jax.random.key(SEED), step)
    mask = masking.random_masking(key, B, 8, 0.7)
    z_hat, z_m, _ = models.forward(student, teacher, x, mask.visible_idx, mask.masked_idx)
    zh, zm = np.asarray(z_hat, np.float64), np.asarray(z_m, np.float64)
    zh_n = zh / np.linalg.norm(zh, axis=-1, keepdims=True)
    zm_n = zm / np.linalg.norm(zm, axis=-1, keepdims=True)
    d = 2 - 2 * np.einsum("bmkd,bmd->bmk", zh_n, zm_n)
    temp = 0.5 * 0.9**step
    w = _np_softmax(-d / temp) if temp > 1e-4 else np.eye(d.shape[-1])[d.argmin(-1)]
    pred = (w * d).sum(-1)
    best = d.argmin(-1)
    winner = np.take_along_axis(zh, best[..., None, None], axis=2)[:, :, 0]
    p_s = np.asarray(student.cls_logits(jnp.asarray(winner, jnp.float32)), np.float64)
    p_t = np.asarray(teacher.cls_logits(z_m), np.float64)
    tau = 0.04 + (0.07 - 0.04) * min(step / 20, 1.0)
    center = np.asarray(state["center"], np.float64)
    q = _np_softmax((p_t - center) / tau)
    log_p = np.log(_np_softmax(p_s / 0.1))
    cls = -(q * log_p).sum(-1)
    new_center = 0.9 * center + 0.1 * q.reshape(-1, q.shape[-1]).mean(0)
    return 0.5 * pred.mean() + 0.5 * cls.mean(), pred.mean(), cls.mean(), new_center


@pytest.mark.slow
def test_loss_and_center_match_float64_reference():
    model_cfg, sched, state, step = _setup()
    for i in range(3):  # step 0, then with a trained student, a moved teacher and centre
        x = _batch(i)
        want, want_pred, want_cls, want_center = _reference_loss(model_cfg, sched, state, x, i)
        state, metrics = step(state, x)
        assert float(metrics["loss"]) == pytest.approx(want, rel=2e-5)
        assert float(metrics["loss_pred"]) == pytest.approx(want_pred, rel=2e-5)
        assert float(metrics["loss_cls"]) == pytest.approx(want_cls, rel=2e-5)
        assert_close(state["center"], want_center, depth=STEP_DEPTH)  # float32 vs float64
        assert int(state["step"]) == i + 1


@pytest.mark.slow
def test_ema_from_pre_update_student_and_none_at_step_0():
    _, sched, state, step = _setup()
    before = jax.tree.map(np.asarray, state)
    state, _ = step(state, _batch(0))
    # Exact: the EMA at step 0 keeps the teacher's own values (no arithmetic on them).
    for part in ("encoder", "cls_head"):  # step 0: the teachers stay as initialised
        jax.tree.map(np.testing.assert_array_equal, state["teacher"][part], before["teacher"][part])
    before = jax.tree.map(np.asarray, state)
    state, metrics = step(state, _batch(1))
    m_enc, m_cls = (float(schedules.ema_momentum(1, *r, 100)) for r in ((0.9, 0.99), (0.8, 1.0)))
    assert float(metrics["ema/encoder"]) == pytest.approx(m_enc)
    for part, student_part, m in (("encoder", "student", m_enc), ("cls_head", "cls_head", m_cls)):
        want = jax.tree.map(
            lambda t, s: m * t.astype(np.float64) + (1 - m) * s,
            before["teacher"][part],
            before["params"][student_part],
        )
        assert_trees_close(state["teacher"][part], want, depth=1)  # m * t + (1 - m) * s


@pytest.mark.slow
def test_gradient_never_reaches_teacher():
    model_cfg, _, state, _ = _setup()
    graph_s, graph_t = ts.graphdefs(model_cfg)
    mask = masking.random_masking(jax.random.key(0), B, 8, 0.7)
    x = _batch(0)

    def loss_of_teacher(teacher_state):
        z_hat, z_m, _ = models.forward(
            nnx.merge(graph_s, state["params"]),
            nnx.merge(graph_t, teacher_state),
            x,
            mask.visible_idx,
            mask.masked_idx,
        )
        return jnp.sum(z_m) + jnp.sum(z_hat)

    grads = jax.grad(loss_of_teacher)(state["teacher"])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_non_finite_batch_skips_update():
    _, _, state, step = _setup()
    state, _ = step(state, _batch(0))
    before = jax.tree.map(np.asarray, state)
    x = _batch(1).at[0, 3, 5].set(jnp.nan)
    state, metrics = step(state, x)
    assert int(metrics["skipped"]) == 1 and int(state["skips"]) == 1
    # Exact: a skipped step hands back the kept values, with no arithmetic on them.
    for k in ("params", "teacher", "center"):
        jax.tree.map(np.testing.assert_array_equal, state[k], before[k])
    # The moments stay; only the learning-rate clock moves on with the step.
    jax.tree.map(np.testing.assert_array_equal, state["opt"], ts.with_lr_clock(before["opt"], 2))
    assert int(state["step"]) == 2
    state, _ = step(state, x)
    assert int(state["skips"]) == 2
    state, metrics = step(state, _batch(2))
    assert int(metrics["skipped"]) == 0 and int(state["skips"]) == 0


@pytest.mark.slow
def test_matpac_plain_loss_needs_one_head():
    with pytest.raises(ValueError, match="one prediction head"):
        _setup(mcl=False, heads=3)
    model_cfg, sched, state, step = _setup(mcl=False, heads=1)
    x = _batch(0)
    want, *_ = _reference_loss(model_cfg, sched, state, x, 0)  # K = 1: MCL == plain loss
    _, metrics = step(state, x)
    assert float(metrics["loss"]) == pytest.approx(want, rel=2e-5)


def _schedule_counts(opt_state):
    nodes = jax.tree.leaves(
        opt_state,
        is_leaf=lambda n: isinstance(n, (optax.ScaleByScheduleState, optax.ScaleByAdamState)),
    )
    return {type(n).__name__: int(n.count) for n in nodes if hasattr(n, "count")}


def test_learning_rate_stays_on_the_steps_clock():
    _, sched, state, step = _setup()
    state, _ = step(state, _batch(0))
    x = _batch(1).at[0, 3, 5].set(jnp.nan)
    state, _ = step(state, x)  # skipped: Adam's moments and count stay, the lr clock moves on
    assert int(state["step"]) == 2
    assert _schedule_counts(state["opt"]) == {"ScaleByAdamState": 1, "ScaleByScheduleState": 2}
    # A fresh optimiser on a later step (a converted checkpoint): the update uses lr(step).
    params = state["params"]
    fresh = {
        **state,
        "opt": optax.adamw(sched.lr, weight_decay=0.05).init(params),
        "step": jnp.int32(5),
    }
    new, metrics = step(fresh, _batch(2))
    assert _schedule_counts(new["opt"]) == {"ScaleByAdamState": 1, "ScaleByScheduleState": 6}
    # First Adam step: update = -lr * (sign(g) + weight decay * p), so lr(5) shows in the change.
    leaf = new["params"]["cls_token"] - params["cls_token"]
    grads_sign_bound = float(sched.lr(5)) * (1 + 0.05 * float(jnp.abs(params["cls_token"]).max()))
    assert 0 < float(jnp.abs(leaf).max()) <= grads_sign_bound * (1 + 1e-5)
    assert float(jnp.abs(leaf).max()) > 0.5 * float(sched.lr(5))
    assert float(metrics["lr"]) == pytest.approx(float(sched.lr(5)))


@pytest.mark.slow
def test_step_loss_is_the_loss_of_the_step():
    model_cfg, sched, state, step = _setup()
    step_cfg, _ = tiny_step_parts()
    x = _batch(4)
    mask = masking.random_masking(jax.random.fold_in(jax.random.key(SEED), 0), B, 8, 0.7)
    loss_of = jax.jit(
        functools.partial(ts.step_loss, model_cfg=model_cfg, step_cfg=step_cfg, sched=sched)
    )
    loss, (aux, _, new_center) = loss_of(
        state["params"], state["teacher"], state["center"], 0, x, mask
    )
    new, metrics = step(state, x)
    # The loss alone and the whole step are two programs.
    assert_close(loss, metrics["loss"], depth=STEP_DEPTH)
    assert_close(aux["loss/cls"], metrics["loss_cls"], depth=STEP_DEPTH)
    assert_close(new_center, new["center"], depth=STEP_DEPTH)
