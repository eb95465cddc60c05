"""The optimiser (matpac_jax/objective/optimizer.py) and the update of one whole train step.

The step's update (global-norm clipping, AdamW with its decay mask, the learning rate of the
step, the EMA teachers from the pre-update student) is recomputed in float64 numpy from the
gradients the step used: the model's loss and gradients are replaced by known ones (they have
their own float64 tests in test_train_step.py), so both sides start from the same numbers.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import tiny_step_parts

from matpac_jax import models
from matpac_jax.objective import optimizer
from matpac_jax.train import step as ts

B, F, T = 2, 32, 64
OPTIM = dict(b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.05)


def _names(params):
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): (path[-1].key, leaf) for path, leaf in leaves}


def _model_cfg():
    return models.model_config({"variant": "mu", "n_mels": F, "max_frames": T})


@pytest.fixture(scope="module")
def params():
    return ts.init_state(jax.random.key(0), _model_cfg(), optax.sgd(0.0))["params"]


def test_decay_mask_decays_everything_when_asked(params):
    mask = _names(optimizer.decay_mask(params, decay_all=True))
    assert all(value is True for _, value in mask.values())
    names = {name for name, _ in mask.values()}
    assert {"bias", "scale", "g", "cls_token", "mask_token", "kernel", "v"} <= names


def test_decay_mask_textbook_decays_weight_matrices_only(params):
    mask = _names(optimizer.decay_mask(params, decay_all=False))
    decayed = {path for path, (_, value) in mask.items() if value}
    # Weight matrices: linear kernels and the weight-normalised layer's direction v. Not the
    # biases (mcl_heads.bias is 2-D), norm scales, the weight-norm gain g, the tokens.
    assert decayed == {path for path, (name, _) in mask.items() if name in ("kernel", "v")}
    assert "['mcl_heads']['bias']" not in decayed and "['cls_token']" not in decayed


@pytest.mark.parametrize("max_norm", [0.5, 50.0])  # clipped; not clipped
def test_clip_by_global_norm_uses_the_given_norm(max_norm):
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(3, 4)), "b": {"c": rng.normal(size=(5,)) * 3}}
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
    norm = np.sqrt(sum(np.square(np.asarray(g, np.float64)).sum() for g in jax.tree.leaves(grads)))
    clip = optimizer.clip_by_global_norm(max_norm)
    state = clip.init(grads)
    want, _ = optax.clip_by_global_norm(max_norm).update(grads, state)
    # optax's clip agrees with the float64 definition g * min(1, max_norm / ||g||).
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(
            w, np.asarray(g, np.float64) * min(1.0, max_norm / norm), rtol=1e-6
        )
    for given in (None, jnp.float32(norm)):
        got, _ = clip.update(grads, state, grad_norm=given)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-6)
    # The norm given is the norm used: twice it halves a clipped update.
    got, _ = clip.update(grads, state, grad_norm=jnp.float32(2 * norm))
    factor = min(1.0, max_norm / (2 * norm)) / min(1.0, max_norm / norm)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, np.asarray(w) * factor, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# One whole step against float64 numpy.


def _leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _fake_loss_and_grads(grads_by_step, center):
    """Stands in for ts.make_loss_and_grads: the loss 1.0 and known gradients per step."""

    def make(model_cfg, step_cfg, sched, seed):
        k = model_cfg.num_mcl_heads

        def loss_and_grads(state, x):
            grads = jax.tree.map(
                lambda *per_step: jnp.stack(per_step)[state["step"]], *grads_by_step
            )
            aux = (
                {"loss/pred": jnp.float32(1.0), "loss/cls": jnp.float32(1.0)},
                {"mcl/win_rate": jnp.zeros(k), "mcl/head_std": jnp.zeros(k)},
                center,
            )
            return (jnp.float32(1.0) + 0 * x.sum(), aux), grads

        return loss_and_grads

    return make


def _np_step(params, teacher, mu, nu, count, grads, *, lr, clip, decay, m_enc, m_head):
    """One step in float64: clip -> AdamW (optax's form) -> EMA of the pre-update student."""
    g = _leaves(grads)
    norm = np.sqrt(sum(np.square(x).sum() for x in g))
    g = [x * min(1.0, clip / norm) for x in g]
    t = count + 1
    b1, b2, eps, wd = OPTIM["b1"], OPTIM["b2"], OPTIM["eps"], OPTIM["weight_decay"]
    new_mu = [b1 * m + (1 - b1) * x for m, x in zip(mu, g)]
    new_nu = [b2 * v + (1 - b2) * x * x for v, x in zip(nu, g)]
    new_p = []
    for p, m, v, d in zip(params, new_mu, new_nu, decay):
        update = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + (wd * p if d else 0.0)
        new_p.append(p - lr * update)
    teacher_new = {
        "encoder": [m_enc * te + (1 - m_enc) * s for te, s in zip(*teacher["encoder"])],
        "cls_head": [m_head * te + (1 - m_head) * s for te, s in zip(*teacher["cls_head"])],
    }
    return new_p, new_mu, new_nu, teacher_new, norm


@pytest.mark.parametrize("decay_all", [True, False])
def test_one_step_is_clipped_adamw_and_ema_in_float64(decay_all, monkeypatch):
    model_cfg = _model_cfg()
    step_cfg, sched = tiny_step_parts()
    sched = dataclasses.replace(sched, peak_lr=0.1)  # steps far above float32 rounding
    state = ts.init_state(jax.random.key(0), model_cfg, optax.sgd(0.0))
    rng = np.random.default_rng(0)
    # Distinct gradients per leaf and per step, of varied scales (a few large, most small).
    grads_by_step = [
        jax.tree.map(
            lambda p: jnp.asarray(rng.normal(size=p.shape) * 10 ** rng.uniform(-4, 0), jnp.float32),
            state["params"],
        )
        for _ in range(2)
    ]
    norms = [np.sqrt(sum(np.square(x).sum() for x in _leaves(g))) for g in grads_by_step]
    clip = 0.5 * norms[1]  # the second (tested) step is clipped
    config = ml_collections.ConfigDict({**OPTIM, "grad_clip": float(clip), "decay_all": decay_all})
    tx = optimizer.make_optimizer(config, sched.lr)
    center = jnp.asarray(rng.normal(size=(1, model_cfg.cls_out)), jnp.float32)
    monkeypatch.setattr(ts, "make_loss_and_grads", _fake_loss_and_grads(grads_by_step, center))
    state = ts.init_state(jax.random.key(0), model_cfg, tx)
    # Parameters and teachers all non-zero and distinct (biases start at 0, where weight decay
    # would not show), so that every term of the update and of the EMA shows.
    for part in ("params", "teacher"):
        state[part] = jax.tree.map(
            lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.5, jnp.float32), state[part]
        )
    step = jax.jit(ts.make_train_step(model_cfg, step_cfg, sched, tx, 0))
    x = jnp.zeros((B, F, T))
    state, _ = step(state, x)  # step 0: moments start, no EMA yet
    before = jax.device_get(state)
    state, metrics = jax.device_get(step(state, x))  # step 1: the one recomputed

    adam = before["opt"][1][0]
    # The mask as the papers' code (all) or the textbook (weight matrices) says, independently.
    decay = [decay_all or name in ("kernel", "v") for name, _ in _names(before["params"]).values()]
    s = {k: float(v) for k, v in sched(1).items()}
    lr = float(sched.lr(1))
    assert lr > 0 and 0 < s["ema/encoder"] < 1 and s["ema/encoder"] != s["ema/cls_head"]
    teacher = {
        part: (_leaves(before["teacher"][part]), _leaves(before["params"][src]))
        for part, src in (("encoder", "student"), ("cls_head", "cls_head"))
    }
    want_p, want_mu, want_nu, want_teacher, norm = _np_step(
        _leaves(before["params"]),
        teacher,
        _leaves(adam.mu),
        _leaves(adam.nu),
        int(adam.count),
        grads_by_step[1],
        lr=lr,
        clip=clip,
        decay=decay,
        m_enc=s["ema/encoder"],
        m_head=s["ema/cls_head"],
    )
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-6)  # before clipping
    adam_after = state["opt"][1][0]
    assert int(adam_after.count) == int(adam.count) + 1
    # Float32 results of float32 inputs: rounding of eps32 times the inputs' magnitude (the
    # EMA's difference of two close numbers keeps absolute, not relative, precision); and the
    # clipping factor, whose float32 global norm over all the gradients is good to ~log2(N) eps32,
    # scales the moments and the update: RTOL.
    for got, want, p0 in zip(_leaves(state["params"]), want_p, _leaves(before["params"])):
        _close(got - p0, want - p0, rtol=RTOL, scale=np.abs(p0).max())
    for got, want in zip(_leaves(adam_after.mu), want_mu):
        _close(got, want, rtol=RTOL, scale=np.abs(want).max())
    for got, want in zip(_leaves(adam_after.nu), want_nu):
        _close(got, want, rtol=RTOL, scale=np.abs(want).max())
    for part in ("encoder", "cls_head"):
        inputs = zip(*teacher[part])
        for got, want, (t, st) in zip(_leaves(state["teacher"][part]), want_teacher[part], inputs):
            _close(got, want, rtol=4 * EPS32, scale=max(np.abs(t).max(), np.abs(st).max()))
    # Each term is visible above the tolerance: weight decay on every leaf (under decay_all),
    # and the step itself.
    for want, p0, d in zip(want_p, _leaves(before["params"]), decay):
        update = np.abs(want - p0)
        assert update.max() > 1e3 * 2 * EPS32 * np.abs(p0).max()
        if d:
            assert OPTIM["weight_decay"] * lr * np.abs(p0).max() > 100 * RTOL * update.max()


EPS32 = float(np.finfo(np.float32).eps)


RTOL = 1e-5


def _close(got, want, *, rtol, scale):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=2 * EPS32 * scale)
