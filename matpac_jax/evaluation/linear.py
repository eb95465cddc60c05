"""The probe's linear classifier: several learning rates trained together, early stopping each.

`train_linear` trains one linear layer per learning rate of a grid in ONE jitted computation:
the parameters and Adam state carry a leading grid axis, and `jax.vmap` runs every member on the
same minibatch (same initial weights, same shuffling), each with its own learning rate. Because
the input is shared, the vmapped `x @ w` is a single matrix product with G x C columns, so a grid
of 6 costs far less than 6 runs. A grid of one learning rate is the EVAR protocol's single run.

Speed: one epoch is a single jitted `lax.scan` over minibatches (a fresh permutation per epoch
from `fold_in(key, epoch)`). Early stopping is tracked per member on the host, from one small
device-to-host copy of validation logits per epoch; the best weights of each member are kept on
the device. A member that has stopped keeps training (its updates are never used again) until
every member has stopped: masking it would not make the shared matrix product any smaller.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def init_linear(key: jax.Array, dim: int, num_classes: int) -> dict:
    """U(-1/sqrt(dim), 1/sqrt(dim)) weight and bias: torch nn.Linear's init, which EVAR uses."""
    bound = 1.0 / math.sqrt(dim)
    kw, kb = jax.random.split(key)
    return {
        "w": jax.random.uniform(kw, (dim, num_classes), jnp.float32, -bound, bound),
        "b": jax.random.uniform(kb, (num_classes,), jnp.float32, -bound, bound),
    }


@jax.jit
def predict(params: dict, x: jax.Array) -> jax.Array:
    """Logits (n, C) of one classifier."""
    return x @ params["w"] + params["b"]


def _grid_map(fn: Callable, in_axes: tuple) -> Callable:
    """`jax.vmap(fn, in_axes)`, except that a grid of one runs `fn` unbatched.

    XLA's batched products round differently in the last bit; a lone learning rate (the EVAR
    protocol) must reproduce the plain single-classifier run bit for bit. Shapes are static
    under jit, so the branch costs nothing at run time.
    """
    batched = jax.vmap(fn, in_axes=in_axes)

    def call(*args):
        size = next(jax.tree.leaves(a)[0].shape[0] for a, ax in zip(args, in_axes) if ax == 0)
        if size > 1:
            return batched(*args)
        args = [jax.tree.map(lambda v: v[0], a) if ax == 0 else a for a, ax in zip(args, in_axes)]
        return jax.tree.map(lambda v: v[None], fn(*args))

    return call


@jax.jit
def predict_grid(params: dict, x: jax.Array) -> jax.Array:
    """Logits (G, n, C) of a grid of classifiers (params with a leading G axis)."""
    return _grid_map(predict, (0, None))(params, x)


def member(params: dict, g: int) -> dict:
    """The parameters of grid member `g`."""
    return jax.tree.map(lambda a: a[g], params)


def _keep_improved(improved: jax.Array, new: dict, best: dict) -> dict:
    """`new` for the members flagged in `improved` (G,), `best` for the others."""
    return jax.tree.map(
        lambda n, b: jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)), n, b), new, best
    )


# torch.optim.Adam(weight_decay=...) as EVAR uses it: L2 added to the gradient (not AdamW). The
# learning rate is applied by hand after it, so that each grid member can have its own; the
# product is the one `optax.adam(lr)` computes, `(-lr) * update`, so one member is bit-identical
# to a plain optax run.
def _direction(weight_decay: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam())


def multilabel_loss(logits: jax.Array, y: jax.Array, known: jax.Array) -> jax.Array:
    """Sigmoid binary cross-entropy averaged over the known labels: (n, C) logits, targets in
    {0, 1} and `known` 1/0 (0: a partial label nobody annotated, which counts for nothing).

    With every label known it is the mean over rows and classes, EVAR's multi-label loss.
    """
    per_label = optax.sigmoid_binary_cross_entropy(logits, y) * known
    return jnp.sum(per_label) / jnp.maximum(jnp.sum(known), 1.0)


@functools.cache
def _epoch_fn(batch_size: int, multilabel: bool, weight_decay: float) -> Callable:
    """The jitted epoch of a grid: `(params, opt_state, best, improved, lrs, key, number, x, y,
    known, x_valid) -> (params, opt_state, best, validation logits (G, n_valid, C))`; `known`
    is the (n, C) label mask of a multi-label task (ones otherwise, and unused).

    It first keeps as `best` the incoming params of the members flagged in `improved` (the
    previous epoch's improvements), then trains one epoch, then predicts the validation rows:
    one dispatch and one device-to-host copy per epoch, whatever the grid size.
    """
    tx = _direction(weight_decay)

    def loss_fn(params, x, y, known, mask):
        logits = predict(params, x)
        if multilabel:  # the padded rows of the last batch are unknown labels too
            return multilabel_loss(logits, y, known * mask[:, None])
        # EVAR quirk, kept: its NLL is a mean over classes too, i.e. cross-entropy / C.
        per_row = optax.softmax_cross_entropy_with_integer_labels(logits, y) / logits.shape[-1]
        return jnp.sum(per_row * mask) / jnp.sum(mask)

    def member_step(params, opt_state, lr, x, y, known, mask):
        grads = jax.grad(loss_fn)(params, x, y, known, mask)
        direction, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(lambda p, d: p + (-lr) * d, params, direction), opt_state

    # The batch is shared (None), the members are not (0).
    grid_step = _grid_map(member_step, (0, 0, 0, None, None, None, None))

    def epoch(params, opt_state, best, improved, lrs, key, number, x, y, known, x_valid):
        best = _keep_improved(improved, params, best)
        n = x.shape[0]
        num_batches = -(-n // batch_size)
        # Pad the permutation to whole batches; the mask makes the last batch a short one, as a
        # torch DataLoader without drop_last gives.
        pad = num_batches * batch_size - n
        perm = jax.random.permutation(jax.random.fold_in(key, number), n)
        idx = jnp.concatenate([perm, jnp.zeros(pad, jnp.int32)])
        mask = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32)

        def step(carry, batch):
            i, m = batch
            return grid_step(*carry, lrs, x[i], y[i], known[i], m), None

        batches = (idx.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size))
        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, best, predict_grid(params, x_valid)

    return jax.jit(epoch)


class EarlyStop(NamedTuple):
    """Outcome of early stopping for one member; epochs are 1-based, `best_epoch` 0 if nothing
    improved.

    `stopped_early` False: patience never ran out, training ended at the epoch cap while the
    validation score was still improving (the classifier may be under-trained).
    """

    best_epoch: int
    epochs_run: int
    best_score: float
    history: list
    stopped_early: bool
    best_loss: float = math.nan  # validation loss at best_epoch (`train_linear` fills it in)


class EarlyStopping:
    """Early-stopping bookkeeping for G members, each judged on its own exactly as if it were
    trained alone (host-side, plain Python: one `update` per epoch).

    A score >= the member's best (a tie included) becomes its best and moves it to the later
    epoch, as EVAR's `EarlyStopping` does (`>=`): on a small validation set accuracy often
    plateaus while the classifier is still improving. A member stops after `patience` epochs
    without one; its later scores are ignored. Training can end once every member has stopped.
    """

    def __init__(self, members: int, patience: int):
        self.patience = patience
        self.best_epoch = [0] * members
        self.best_score = [-math.inf] * members
        self.history = [[] for _ in range(members)]
        self.stopped_at: list[int | None] = [None] * members
        self.epoch = 0

    @property
    def done(self) -> bool:
        """Every member has stopped."""
        return all(s is not None for s in self.stopped_at)

    def update(self, scores: Sequence[float]) -> np.ndarray:
        """Records one epoch's validation scores (one per member, higher is better).

        Returns:
          (G,) bool: the members whose weights of this epoch are their new best.
        """
        self.epoch += 1
        improved = np.zeros(len(scores), bool)
        for g, value in enumerate(scores):
            if self.stopped_at[g] is not None:
                continue
            self.history[g].append(value)
            if value >= self.best_score[g]:
                self.best_epoch[g], self.best_score[g], improved[g] = self.epoch, value, True
            elif self.epoch - self.best_epoch[g] >= self.patience:
                self.stopped_at[g] = self.epoch
        return improved

    def results(self) -> list[EarlyStop]:
        """One EarlyStop per member; a member that never stopped ran every epoch so far."""
        return [
            EarlyStop(best, stop or self.epoch, score, hist, stop is not None)
            for best, stop, score, hist in zip(
                self.best_epoch, self.stopped_at, self.best_score, self.history
            )
        ]


def validation_loss(y: np.ndarray, logits: np.ndarray, known: np.ndarray | None = None) -> float:
    """Mean cross-entropy in float64: softmax for (n,) labels, sigmoid per class (averaged over
    the known labels, all by default) for (n, C) multi-hot. The training loss up to EVAR's
    constant 1/C factor."""
    z = np.asarray(logits, np.float64)
    if y.ndim == 2:
        per_label = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        known = np.ones_like(per_label) if known is None else np.asarray(known, np.float64)
        return float(np.sum(per_label * known) / max(known.sum(), 1.0))
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def train_linear(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    learning_rates: Sequence[float],
    weight_decay: float,
    max_batch: int,
    max_epochs: int,
    patience: int,
    score: Callable[..., float],
    known_train: np.ndarray | None = None,
    known_valid: np.ndarray | None = None,
) -> tuple[dict, list[EarlyStop]]:
    """Trains one linear layer per learning rate, together; returns each one's best weights.

    Every member starts from the same weights and sees the same minibatches (both from `seed`),
    so member g is the run a lone `learning_rates=[lr_g]` would give.

    Args:
      x_train, x_valid: (n, D) float32 features, already standardised.
      y_train, y_valid: (n,) int labels or (n, C) multi-hot (multi-label: sigmoid BCE).
      num_classes: C.
      seed: initialisation and shuffling.
      learning_rates: the G Adam learning rates.
      weight_decay: L2 added to the gradient.
      max_batch: batch size min(max_batch, n_train), last batch short.
      max_epochs, patience: early stopping (`EarlyStopping`) on `score(y_valid, logits)`.
      score: the validation metric, higher is better: `score(y_valid, logits)`, or with a third
        argument, the validation label mask, when `known_valid` is given.
      known_train, known_valid: (n, C) 1/0 label masks of a multi-label task with partial
        labels (0: unknown, left out of the loss and the score); None: every label known.

    Returns:
      (params with a leading G axis: each member's best-validation weights, one EarlyStop per
      member, with its `validation_loss` at the best epoch).
    """
    lrs = jnp.asarray(learning_rates, jnp.float32)
    epoch_fn = _epoch_fn(min(max_batch, len(x_train)), y_train.ndim == 2, weight_decay)
    init_key, shuffle_key = jax.random.split(jax.random.key(seed))
    one = init_linear(init_key, x_train.shape[1], num_classes)
    params = best = jax.tree.map(lambda a: jnp.repeat(a[None], len(lrs), axis=0), one)
    opt_state = jax.vmap(_direction(weight_decay).init)(params)
    if known_train is None:
        known_train = np.ones(y_train.shape, np.float32)
    data = (jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(known_train, jnp.float32))
    data += (jnp.asarray(x_valid),)
    masked = () if known_valid is None else (known_valid,)
    stopping = EarlyStopping(len(lrs), patience)
    improved = np.zeros(len(lrs), bool)
    for epoch in range(1, max_epochs + 1):
        params, opt_state, best, logits = epoch_fn(
            params, opt_state, best, improved, lrs, shuffle_key, epoch, *data
        )
        improved = stopping.update([score(y_valid, v, *masked) for v in np.asarray(logits)])
        if stopping.done:
            break
    best = _keep_improved(improved, params, best)
    # The loss of the restored weights is the loss at the best epoch: computed once, here.
    losses = [
        validation_loss(y_valid, v, known_valid) for v in np.asarray(predict_grid(best, data[3]))
    ]
    return best, [s._replace(best_loss=v) for s, v in zip(stopping.results(), losses)]
