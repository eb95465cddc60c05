"""MATPAC++ losses (docs/method.md, section 4) and the collapse monitors of section 6.

Pure functions of arrays. Everything is computed in float32 whatever the activations' dtype, so
bf16 compute does not leak into softmaxes, cosines or the centre. Targets (teacher outputs, the
MCL assignment, teacher probabilities) carry no gradient here even if the caller forgot to stop
it: the teacher path shares the student's patch embedding, so a leak would train it.

Global batch: under `jax.jit` with sharded inputs, `jnp.mean` over an array already averages the
global batch (XLA inserts the cross-device reduction), which is what the reference's all-reduced
sums compute; no `pmean` is needed.

Order of use in a train step (z_hat from the predictor, z_m from the teacher):

  d = prediction_distance(z_hat, z_m)                           # (B, M, K)
  pred_tok, best, weights = mcl_prediction_loss(d, mcl_temperature)
  p_student = student_cls_head(select_hypothesis(z_hat, best))
  cls_tok, q, new_center = cls_loss_and_new_center(p_student, teacher_cls_head(z_m), center, tau)
  total, aux = matpac_loss(pred_tok, cls_tok, alpha, weighting)
"""

import jax
import jax.numpy as jnp

CENTER_ON = ("probs", "logits")
_F32 = jnp.float32


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) over the last axis, as torch's F.normalize.

    Written as x / sqrt(max(||x||^2, eps^2)): same value, but at an all-zero vector the gradient is
    finite (1 / eps, as torch's) where differentiating ||x|| would give NaN.
    """
    sq_norm = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(sq_norm, eps * eps))


def prediction_distance(z_hat: jax.Array, z_m: jax.Array) -> jax.Array:
    """d_k = 2 - 2 cos(z_hat_k, z_m) per masked token and head.

    Args:
      z_hat: (B, M, K, D) predictions of the K heads, in the order of `Mask.masked_idx`.
      z_m: (B, M, D) teacher targets, same order.

    Returns:
      (B, M, K) float32 distances in [0, 4].
    """
    if z_hat.ndim != 4 or z_m.shape != z_hat.shape[:2] + z_hat.shape[3:]:
        raise ValueError(
            f"expected z_hat (B, M, K, D) and z_m (B, M, D), got {z_hat.shape} and {z_m.shape}"
        )
    z_hat = l2_normalize(z_hat.astype(_F32))  # (B, M, K, D)
    z_m = l2_normalize(jax.lax.stop_gradient(z_m).astype(_F32))[:, :, None, :]  # (B, M, 1, D)
    # An elementwise product and sum, not a matmul: no TF32/bf16 matmul precision on accelerators.
    return 2.0 - 2.0 * jnp.sum(z_hat * z_m, axis=-1)


def mcl_prediction_loss(
    d: jax.Array, temperature: jax.Array | float, hard_threshold: float = 1e-4
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Annealed winner-takes-all loss over the K hypotheses.

    While `temperature > hard_threshold` the loss is sum_k w_k d_k with the soft assignment
    w = stop_gradient(softmax(-d / T)); afterwards it is min_k d_k (w is then one-hot of `best`, so
    the gradient reaches only the winning head, as torch's `min` does). The branch is selected with
    `jnp.where`, so `temperature` may be traced. K = 1 gives plain d.

    Args:
      d: (B, M, K) distances from `prediction_distance`.
      temperature: scalar MCL temperature, see `schedules.mcl_temperature`.
      hard_threshold: temperature at or below which the hard minimum is used.

    Returns:
      loss_tok (B, M) float32; best (B, M) int32 argmin over k (ties -> lowest k);
      weights (B, M, K) float32 assignment, without gradient.
    """
    d = d.astype(_F32)
    best = jnp.argmin(d, axis=-1).astype(jnp.int32)  # (B, M); argmin returns the first minimum
    temperature = jnp.asarray(temperature, _F32)
    soft = temperature > hard_threshold
    # Both branches are evaluated: a stand-in temperature keeps the unused soft one finite at T = 0.
    safe_t = jnp.where(soft, temperature, 1.0)
    # Shifting by the minimum first (softmax is shift-invariant) keeps -d / T small: near T = 1e-4,
    # -d / T ~ -1e4 would round to ~5e-4 in float32 and put that relative error on the weights.
    gap = d - jnp.min(d, axis=-1, keepdims=True)  # (B, M, K), >= 0
    soft_w = jax.nn.softmax(-gap / safe_t, axis=-1)  # (B, M, K)
    hard_w = jax.nn.one_hot(best, d.shape[-1], dtype=_F32)  # (B, M, K)
    weights = jax.lax.stop_gradient(jnp.where(soft, soft_w, hard_w))
    # With one-hot weights this sum is exactly d[best] = min_k d (the other terms are +0).
    return jnp.sum(weights * d, axis=-1), best, weights


def select_hypothesis(z_hat: jax.Array, best: jax.Array) -> jax.Array:
    """The winning head's prediction per token: (B, M, K, D), (B, M) -> (B, M, D).

    Differentiable in z_hat: the classification loss trains the winning head and the predictor.
    """
    return jnp.take_along_axis(z_hat, best[:, :, None, None], axis=2)[:, :, 0, :]


def teacher_probs(p_teacher: jax.Array, center: jax.Array, tau_t: jax.Array | float) -> jax.Array:
    """Centred, sharpened teacher distribution q = softmax((p - c) / tau_t), float32, no gradient.

    Args:
      p_teacher: (B, M, C) teacher cls-head logits.
      center: (1, C) (or any shape broadcasting against the logits).
      tau_t: scalar teacher temperature, see `schedules.teacher_temperature`.
    """
    p = jax.lax.stop_gradient(p_teacher).astype(_F32)
    return jax.nn.softmax((p - center) / tau_t, axis=-1)


def classification_loss(p_student: jax.Array, q: jax.Array, student_temp: float = 0.1) -> jax.Array:
    """Per-token cross-entropy -sum_c q_c log_softmax(p_student / student_temp)_c: -> (B, M)."""
    log_p = jax.nn.log_softmax(p_student.astype(_F32) / student_temp, axis=-1)
    return -jnp.sum(jax.lax.stop_gradient(q) * log_p, axis=-1)


def update_center(center: jax.Array, x: jax.Array, momentum: float = 0.9) -> jax.Array:
    """c <- momentum * c + (1 - momentum) * mean of x over every token.

    Averages exactly what it is given: the teacher probabilities q for the reference, the teacher
    logits for DINO (`cls_loss_and_new_center` chooses).

    Args:
      center: (1, C) current centre (any shape holding C values).
      x: (..., C) teacher outputs; all leading axes are averaged (the global batch under jit).
      momentum: centre momentum, 0.9 in the papers.

    Returns:
      The new centre, shape and dtype of `center`.
    """
    if center.size != x.shape[-1]:
        raise ValueError(f"center {center.shape} does not hold one value per class of {x.shape}")
    batch_center = jnp.mean(jax.lax.stop_gradient(x).astype(_F32).reshape(-1, x.shape[-1]), axis=0)
    new = momentum * center.astype(_F32) + (1.0 - momentum) * batch_center.reshape(center.shape)
    return new.astype(center.dtype)


def cls_loss_and_new_center(
    p_student: jax.Array,
    p_teacher: jax.Array,
    center: jax.Array,
    tau_t: jax.Array | float,
    center_on: str = "probs",
    student_temp: float = 0.1,
    center_momentum: float = 0.9,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Classification loss of one step and the centre for the next one.

    q is computed with the centre passed in (which already holds batch t-1); the centre built from
    this batch is returned for step t + 1 and must not be used for this step's q.

    Args:
      p_student: (B, M, C) student cls-head logits on the winning predictions.
      p_teacher: (B, M, C) teacher cls-head logits on the teacher targets.
      center: (1, C) centre from the previous step.
      tau_t: scalar teacher temperature.
      center_on: "probs" averages q into the centre (reference), "logits" averages p_teacher (DINO).
      student_temp: student softmax temperature.
      center_momentum: centre momentum.

    Returns:
      loss_tok (B, M), q (B, M, C), new_center (shape of `center`).
    """
    if center_on not in CENTER_ON:
        raise ValueError(f"center_on must be one of {CENTER_ON}, got {center_on!r}")
    q = teacher_probs(p_teacher, center, tau_t)  # (B, M, C)
    loss_tok = classification_loss(p_student, q, student_temp)  # (B, M)
    # quirk: the reference centres on the teacher probabilities q, not on the logits as DINO does.
    # quirk: the reference applies the update one step late (async all-reduce): returned for t + 1.
    new_center = update_center(center, q if center_on == "probs" else p_teacher, center_momentum)
    return loss_tok, q, new_center


ALPHA_WEIGHTINGS = ("reference", "weights")


def loss_weights(alpha: float, weighting: str = "reference") -> tuple[float, float]:
    """(weight of the prediction loss, weight of the classification loss).

    quirk ("reference"): both weights are fixed at 0.5 and alpha only drops a term: alpha = 1
    gives 0.5 * pred alone, alpha = 0 gives 0.5 * cls alone, anything between gives both at 0.5.
    "weights" is the textbook (alpha, 1 - alpha).
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if weighting == "reference":
        return 0.5 * (alpha > 0.0), 0.5 * (alpha < 1.0)
    if weighting == "weights":
        return alpha, 1.0 - alpha
    raise ValueError(f"alpha_weighting={weighting!r}; allowed: {ALPHA_WEIGHTINGS}")


def matpac_loss(
    pred_loss_tok: jax.Array,
    cls_loss_tok: jax.Array,
    alpha: float = 0.5,
    weighting: str = "reference",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """total = w_pred * mean(pred) + w_cls * mean(cls), means over every masked token.

    The weights come from `loss_weights(alpha, weighting)`. A term whose weight is 0 is left out
    of the sum (not multiplied by 0), so alpha = 1 or 0 trains on one loss even if the other is
    not finite, as the reference drops it.

    Args:
      pred_loss_tok: (B, M) from `mcl_prediction_loss`.
      cls_loss_tok: (B, M) from `cls_loss_and_new_center`.
      alpha: static, in [0, 1]; 1 = prediction only, 0 = classification only.
      weighting: "reference" (0.5 / 0.5, alpha only drops a term) or "weights".

    Returns:
      total scalar and aux {"loss/total", "loss/pred", "loss/cls"}.
    """
    w_pred, w_cls = loss_weights(alpha, weighting)
    pred = jnp.mean(pred_loss_tok.astype(_F32))
    cls = jnp.mean(cls_loss_tok.astype(_F32))
    total = jnp.zeros((), _F32)
    if w_pred > 0.0:
        total = total + w_pred * pred
    if w_cls > 0.0:
        total = total + w_cls * cls
    return total, {"loss/total": total, "loss/pred": pred, "loss/cls": cls}


def _entropy(p: jax.Array) -> jax.Array:
    """Shannon entropy in nats over the last axis; 0 log 0 = 0."""
    return jnp.sum(jax.scipy.special.entr(p), axis=-1)


def _feature_std(x: jax.Array) -> jax.Array:
    """The reference's `compute_var`: mean over features of sqrt(unbiased var over tokens + 1e-6)."""
    x = x.reshape(-1, x.shape[-1])  # (tokens, D)
    return jnp.mean(jnp.sqrt(jnp.var(x, axis=0, ddof=1) + 1e-6))


def collapse_monitors(
    best: jax.Array, weights: jax.Array, z_hat: jax.Array, z_m: jax.Array, q: jax.Array
) -> dict[str, jax.Array]:
    """Collapse monitors of docs/method.md, section 6 that depend only on the loss arrays.

    Args:
      best: (B, M) winning head per token.
      weights: (B, M, K) MCL assignment.
      z_hat: (B, M, K, D) predictions.
      z_m: (B, M, D) teacher targets.
      q: (B, M, C) teacher probabilities.

    Returns:
      "mcl/win_rate" (K,): share of tokens each head wins; a head stuck near 0 is dead.
      "mcl/win_entropy": entropy (nats) of that distribution; log K when heads share evenly.
      "mcl/assign_entropy": mean over tokens of the entropy of the soft weights; falls from about
        log K towards 0 as T anneals and is 0 in the hard phase.
      "mcl/head_std" (K,) and "teacher/target_std": std over tokens of the L2-normalised vectors,
        averaged over features (reference formula with +1e-6 inside the sqrt, not scaled by 1000):
        about 1/sqrt(D) when healthy, 1e-3 when collapsed.
      "cls/perplexity": exp(H(mean q)); falling towards 1 is collapse.
      "cls/distinct_targets": number of distinct teacher argmax classes in the batch.
    """
    best, weights, z_hat, z_m, q = jax.lax.stop_gradient((best, weights, z_hat, z_m, q))
    num_heads, num_classes = weights.shape[-1], q.shape[-1]
    win_rate = jnp.mean(jax.nn.one_hot(best, num_heads, dtype=_F32), axis=(0, 1))  # (K,)
    z_hat = l2_normalize(z_hat.astype(_F32))
    head_std = jnp.stack([_feature_std(z_hat[:, :, k]) for k in range(num_heads)])  # (K,)
    targets = jnp.argmax(q, axis=-1).reshape(-1)  # (B * M,)
    mean_q = jnp.mean(q.astype(_F32).reshape(-1, num_classes), axis=0)  # (C,)
    return {
        "mcl/win_rate": win_rate,
        "mcl/win_entropy": _entropy(win_rate),
        "mcl/assign_entropy": jnp.mean(_entropy(weights.astype(_F32))),
        "mcl/head_std": head_std,
        "teacher/target_std": _feature_std(l2_normalize(z_m.astype(_F32))),
        "cls/perplexity": jnp.exp(_entropy(mean_q)),
        "cls/distinct_targets": jnp.sum(jnp.bincount(targets, length=num_classes) > 0),
    }
