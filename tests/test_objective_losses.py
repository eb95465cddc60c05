"""Tests of matpac_jax/objective/losses.py against independent float64 numpy computations.

Tolerances: the module computes in float32; results are compared with rtol 1e-5 / atol 1e-6
(a few float32 roundings on values of order 1), looser only where a log or exp amplifies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matpac_jax.objective import losses

TOL = dict(rtol=1e-5, atol=1e-6)


# ----- float64 references -----


def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def np_entropy(p):
    p = np.asarray(p, np.float64)
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=-1)


def np_std_monitor(x):
    x = x.reshape(-1, x.shape[-1])
    return np.mean(np.sqrt(x.var(axis=0, ddof=1) + 1e-6))


def f64(x):
    return np.asarray(x, np.float64)


def random_distances(rng, shape, spread=1.0):
    return rng.uniform(0.2, 0.2 + spread, size=shape).astype(np.float32)


# ----- prediction distance and MCL -----


def test_prediction_distance():
    rng = np.random.default_rng(0)
    z_hat = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    z_m = rng.normal(size=(2, 5, 8)).astype(np.float32)
    d = losses.prediction_distance(jnp.asarray(z_hat), jnp.asarray(z_m))
    cos = np.einsum("bmkd,bmd->bmk", np_normalize(f64(z_hat)), np_normalize(f64(z_m)))
    assert d.shape == (2, 5, 3) and d.dtype == jnp.float32
    np.testing.assert_allclose(d, 2 - 2 * cos, **TOL)


def test_prediction_distance_bf16_inputs_and_zero_vector_gradient():
    rng = np.random.default_rng(1)
    z_hat = rng.normal(size=(1, 2, 2, 4)).astype(np.float32)
    z_hat[0, 0, 1] = 0.0  # F.normalize maps it to 0: distance 2, and the gradient must stay finite
    z_m = rng.normal(size=(1, 2, 4)).astype(np.float32)
    d = losses.prediction_distance(jnp.asarray(z_hat, jnp.bfloat16), jnp.asarray(z_m, jnp.bfloat16))
    assert d.dtype == jnp.float32
    np.testing.assert_allclose(d[0, 0, 1], 2.0, rtol=0, atol=0)
    grad = jax.grad(lambda z: losses.prediction_distance(z, jnp.asarray(z_m)).sum())(z_hat)
    assert np.all(np.isfinite(grad))


def test_prediction_distance_bad_shapes():
    with pytest.raises(ValueError, match="z_hat"):
        losses.prediction_distance(jnp.ones((2, 5, 3, 8)), jnp.ones((2, 4, 8)))


def np_mcl(d, temperature, threshold=1e-4):
    d = f64(d)
    best = np.argmin(d, axis=-1)
    if temperature > threshold:
        w = np_softmax(-d / temperature)
        return (w * d).sum(-1), best, w
    return d.min(-1), best, np.eye(d.shape[-1])[best]


@pytest.mark.parametrize("temperature", [0.1, 0.013, 5e-5])
def test_mcl_soft_and_hard_branches(temperature):
    rng = np.random.default_rng(2)
    d = random_distances(rng, (3, 7, 5), spread=0.05)
    loss, best, w = losses.mcl_prediction_loss(jnp.asarray(d), temperature)
    ref_loss, ref_best, ref_w = np_mcl(d, temperature)
    np.testing.assert_allclose(loss, ref_loss, **TOL)
    # Exact here and below where a value is selected (argmin, min, one-hot, gather), not computed.
    np.testing.assert_array_equal(best, ref_best)
    assert best.dtype == jnp.int32
    np.testing.assert_allclose(w, ref_w, **TOL)


def test_mcl_jit_with_traced_temperature_on_both_sides_of_the_threshold():
    rng = np.random.default_rng(3)
    # Differences of order T so that soft and hard weights differ visibly near T = 1e-4.
    d = (1.0 + rng.uniform(0, 4e-4, size=(2, 6, 5))).astype(np.float32)
    fn = jax.jit(losses.mcl_prediction_loss)
    for temperature in (1.5e-4, 1.0001e-4, 1e-4, 0.5e-4, 0.0):
        loss, best, w = fn(jnp.asarray(d), jnp.float32(temperature))
        # Float32 sees 1.0001e-4 > 1e-4 as well: the reference's switch is `T > threshold`.
        ref_loss, ref_best, ref_w = np_mcl(
            d, float(np.float32(temperature)), float(np.float32(1e-4))
        )
        np.testing.assert_allclose(w, ref_w, **TOL)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(best, ref_best)
    soft_w = fn(jnp.asarray(d), jnp.float32(1.5e-4))[2]
    assert np.all(np.asarray(soft_w).max(-1) < 0.999), "soft weights should not be one-hot here"


def test_mcl_hard_loss_is_exactly_the_minimum():
    rng = np.random.default_rng(4)
    d = random_distances(rng, (4, 9, 5))
    loss, _, w = losses.mcl_prediction_loss(jnp.asarray(d), 1e-5)
    np.testing.assert_array_equal(loss, d.min(-1))
    np.testing.assert_array_equal(np.asarray(w).sum(-1), 1.0)


def test_mcl_gradient_is_the_stopped_weights():
    rng = np.random.default_rng(5)
    d = random_distances(rng, (2, 4, 5), spread=0.3)
    for temperature in (0.07, 1e-5):
        grad = jax.grad(lambda x: losses.mcl_prediction_loss(x, temperature)[0].sum())(
            jnp.asarray(d)
        )
        np.testing.assert_allclose(grad, np_mcl(d, temperature)[2], **TOL)


def test_mcl_ties_go_to_the_lowest_head():
    rng = np.random.default_rng(6)
    d = random_distances(rng, (2, 3, 5))
    d[0, 1, 1] = d[0, 1, 3] = d[0, 1].min() - 0.1
    d[1, 2, :] = 0.7
    loss, best, w = losses.mcl_prediction_loss(jnp.asarray(d), 1e-6)
    assert best[0, 1] == 1 and best[1, 2] == 0
    np.testing.assert_array_equal(w[0, 1], np.eye(5)[1])
    np.testing.assert_array_equal(loss[0, 1], d[0, 1, 1])


def test_mcl_single_head_is_plain_distance():
    rng = np.random.default_rng(7)
    d = random_distances(rng, (3, 6, 1))
    for temperature in (0.1, 1e-6):
        loss, best, w = losses.mcl_prediction_loss(jnp.asarray(d), temperature)
        np.testing.assert_array_equal(loss, d[..., 0])
        np.testing.assert_array_equal(best, 0)
        np.testing.assert_array_equal(w, 1.0)


def test_select_hypothesis():
    rng = np.random.default_rng(8)
    z_hat = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    best = rng.integers(0, 3, size=(2, 4)).astype(np.int32)
    expected = np.stack([[z_hat[b, m, best[b, m]] for m in range(4)] for b in range(2)])
    np.testing.assert_array_equal(
        losses.select_hypothesis(jnp.asarray(z_hat), jnp.asarray(best)), expected
    )


# ----- classification loss and centre -----


def test_teacher_probs_and_classification_loss():
    rng = np.random.default_rng(9)
    p_t = rng.normal(scale=2.0, size=(2, 3, 16)).astype(np.float32)
    p_s = rng.normal(scale=2.0, size=(2, 3, 16)).astype(np.float32)
    center = rng.normal(scale=0.5, size=(1, 16)).astype(np.float32)
    q = losses.teacher_probs(jnp.asarray(p_t), jnp.asarray(center), 0.055)
    ref_q = np_softmax((f64(p_t) - f64(center)) / np.float64(np.float32(0.055)))
    np.testing.assert_allclose(q, ref_q, rtol=1e-4, atol=1e-7)
    loss = losses.classification_loss(jnp.asarray(p_s), q, 0.1)
    ref = -(f64(q) * np_log_softmax(f64(p_s) / 0.1)).sum(-1)
    assert loss.shape == (2, 3)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_classification_loss_has_no_gradient_through_the_target():
    rng = np.random.default_rng(10)
    p_s = jnp.asarray(rng.normal(size=(1, 2, 6)), jnp.float32)
    q = jnp.asarray(np_softmax(rng.normal(size=(1, 2, 6))), jnp.float32)
    grad_q = jax.grad(lambda q: losses.classification_loss(p_s, q).sum())(q)
    np.testing.assert_array_equal(grad_q, 0.0)


def test_update_center_averages_all_tokens():
    rng = np.random.default_rng(11)
    center = rng.normal(size=(1, 7)).astype(np.float32)
    x = rng.normal(size=(3, 5, 7)).astype(np.float32)
    new = losses.update_center(jnp.asarray(center), jnp.asarray(x), 0.9)
    ref = 0.9 * f64(center) + 0.1 * f64(x).reshape(-1, 7).mean(0, keepdims=True)
    assert new.shape == (1, 7)
    np.testing.assert_allclose(new, ref, **TOL)
    with pytest.raises(ValueError, match="center"):
        losses.update_center(jnp.zeros((1, 6)), jnp.asarray(x))


@pytest.mark.parametrize("center_on", ["probs", "logits"])
def test_centre_is_used_one_step_late_over_two_steps(center_on):
    rng = np.random.default_rng(12)
    c0 = rng.normal(scale=0.3, size=(1, 8)).astype(np.float32)
    batches = [
        (
            rng.normal(size=(2, 3, 8)).astype(np.float32),
            rng.normal(size=(2, 3, 8)).astype(np.float32),
        )
        for _ in range(2)
    ]
    taus = (0.04, 0.05)

    # float64 reference: step t's q uses the centre holding batches up to t-1.
    ref_c, ref = f64(c0), []
    for (p_s, p_t), tau in zip(batches, taus):
        q = np_softmax((f64(p_t) - ref_c) / np.float64(np.float32(tau)))
        loss = -(q * np_log_softmax(f64(p_s) / 0.1)).sum(-1)
        fed = q if center_on == "probs" else f64(p_t)
        ref_c = 0.9 * ref_c + 0.1 * fed.reshape(-1, 8).mean(0, keepdims=True)
        ref.append((loss, q, ref_c))

    fn = jax.jit(losses.cls_loss_and_new_center, static_argnames="center_on")
    center = jnp.asarray(c0)
    for (p_s, p_t), tau, (ref_loss, ref_q, ref_new) in zip(batches, taus, ref):
        loss, q, center = fn(jnp.asarray(p_s), jnp.asarray(p_t), center, tau, center_on=center_on)
        np.testing.assert_allclose(q, ref_q, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(center, ref_new, **TOL)


def test_bad_center_on_is_a_clear_error():
    x = jnp.asarray(np.random.default_rng(13).normal(size=(1, 2, 4)), jnp.float32)
    with pytest.raises(ValueError, match="center_on"):
        losses.cls_loss_and_new_center(x, x, jnp.zeros((1, 4)), 0.04, center_on="mean")


# ----- total and monitors -----


# The reference's weights: 0.5 each, alpha only drops a term (0.3 is no weight there).
REFERENCE_WEIGHTS = {0.5: (0.5, 0.5), 0.0: (0.0, 0.5), 1.0: (0.5, 0.0), 0.3: (0.5, 0.5)}


@pytest.mark.parametrize("weighting", ["reference", "weights"])
@pytest.mark.parametrize("alpha", [0.5, 0.0, 1.0, 0.3])
def test_matpac_loss_weights_the_two_means(alpha, weighting):
    rng = np.random.default_rng(14)
    pred = rng.uniform(0, 2, size=(4, 6)).astype(np.float32)
    cls = rng.uniform(0, 8, size=(4, 6)).astype(np.float32)
    total, aux = losses.matpac_loss(jnp.asarray(pred), jnp.asarray(cls), alpha, weighting)
    w_pred, w_cls = REFERENCE_WEIGHTS[alpha] if weighting == "reference" else (alpha, 1 - alpha)
    ref = w_pred * f64(pred).mean() + w_cls * f64(cls).mean()
    np.testing.assert_allclose(total, ref, **TOL)
    np.testing.assert_allclose(aux["loss/pred"], f64(pred).mean(), **TOL)
    np.testing.assert_allclose(aux["loss/cls"], f64(cls).mean(), **TOL)


def test_matpac_loss_drops_a_zero_weighted_term():
    rng = np.random.default_rng(15)
    pred = rng.uniform(0, 2, size=(2, 3)).astype(np.float32)
    nan = jnp.full((2, 3), jnp.nan)
    total, _ = losses.matpac_loss(jnp.asarray(pred), nan, 1.0)
    np.testing.assert_allclose(total, 0.5 * f64(pred).mean(), **TOL)  # the reference's 0.5
    total, _ = losses.matpac_loss(nan, jnp.asarray(pred), 0.0, "weights")
    np.testing.assert_allclose(total, f64(pred).mean(), **TOL)
    with pytest.raises(ValueError, match="alpha"):
        losses.matpac_loss(jnp.asarray(pred), jnp.asarray(pred), 1.5)
    with pytest.raises(ValueError, match="alpha_weighting"):
        losses.matpac_loss(jnp.asarray(pred), jnp.asarray(pred), 0.5, "textbook")


def test_collapse_monitors():
    rng = np.random.default_rng(16)
    b, m, k, d, c = 3, 7, 4, 6, 10
    z_hat = rng.normal(size=(b, m, k, d)).astype(np.float32)
    z_m = rng.normal(size=(b, m, d)).astype(np.float32)
    dist = random_distances(rng, (b, m, k), spread=0.2)
    q = np_softmax(rng.normal(scale=3.0, size=(b, m, c))).astype(np.float32)
    _, best, weights = losses.mcl_prediction_loss(jnp.asarray(dist), 0.05)
    out = jax.jit(losses.collapse_monitors)(
        best, weights, jnp.asarray(z_hat), jnp.asarray(z_m), jnp.asarray(q)
    )

    best_np = np.argmin(dist, axis=-1)
    win = np.array([(best_np == h).mean() for h in range(k)])
    np.testing.assert_allclose(out["mcl/win_rate"], win, **TOL)
    np.testing.assert_allclose(out["mcl/win_entropy"], np_entropy(win), **TOL)
    soft = np_softmax(-f64(dist) / np.float64(np.float32(0.05)))
    np.testing.assert_allclose(out["mcl/assign_entropy"], np_entropy(soft).mean(), rtol=1e-4)
    head_std = [np_std_monitor(np_normalize(f64(z_hat[:, :, h]))) for h in range(k)]
    np.testing.assert_allclose(out["mcl/head_std"], head_std, **TOL)
    np.testing.assert_allclose(
        out["teacher/target_std"], np_std_monitor(np_normalize(f64(z_m))), **TOL
    )
    mean_q = f64(q).reshape(-1, c).mean(0)
    np.testing.assert_allclose(out["cls/perplexity"], np.exp(np_entropy(mean_q)), rtol=1e-5)
    assert int(out["cls/distinct_targets"]) == len(np.unique(np.argmax(q, axis=-1)))


def test_collapse_monitors_flag_a_collapsed_batch():
    rng = np.random.default_rng(17)
    z = np.broadcast_to(rng.normal(size=(1, 1, 1, 6)), (2, 3, 2, 6)).astype(np.float32)
    q = np.broadcast_to(np_softmax(rng.normal(scale=5.0, size=(1, 1, 5))), (2, 3, 5))
    best = jnp.zeros((2, 3), jnp.int32)
    out = jax.jit(losses.collapse_monitors)(
        best,
        jax.nn.one_hot(best, 2),
        jnp.asarray(z),
        jnp.asarray(z[:, :, 0]),
        jnp.asarray(q, jnp.float32),
    )
    np.testing.assert_allclose(out["mcl/win_rate"], [1.0, 0.0])
    np.testing.assert_allclose(out["mcl/win_entropy"], 0.0, atol=1e-7)
    np.testing.assert_allclose(out["mcl/head_std"], 1e-3, rtol=1e-3)
    assert int(out["cls/distinct_targets"]) == 1


def test_centre_and_total_are_global_means_on_a_sharded_batch():
    devices = np.array(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(18)
    b = len(devices)
    p_s, p_t = (rng.normal(size=(b, 3, 8)).astype(np.float32) for _ in range(2))
    center = rng.normal(scale=0.3, size=(1, 8)).astype(np.float32)

    @jax.jit
    def step(p_s, p_t, center):
        loss_tok, q, new_center = losses.cls_loss_and_new_center(p_s, p_t, center, 0.05)
        return losses.matpac_loss(loss_tok, loss_tok, 0.5)[0], new_center

    total, new_center = step(jax.device_put(p_s, batch), jax.device_put(p_t, batch), center)
    q = np_softmax((f64(p_t) - f64(center)) / np.float64(np.float32(0.05)))
    ref_total = -(q * np_log_softmax(f64(p_s) / 0.1)).sum(-1).mean()
    np.testing.assert_allclose(total, ref_total, rtol=1e-5)
    np.testing.assert_allclose(
        new_center, 0.9 * f64(center) + 0.1 * q.reshape(-1, 8).mean(0), **TOL
    )
