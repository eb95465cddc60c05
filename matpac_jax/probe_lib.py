"""Linear-probe numerics (DESIGN.md section 8, EVAR style): pure functions of arrays and seeds.

`evaluate` runs the whole protocol on fixed embeddings: for every seed and every partition
(one train/valid/test split, or one per k-fold fold) it standardises with statistics of the
training split, trains one linear layer with Adam until validation stops improving, restores the
best weights and scores the test rows. `probe.py` wraps it with audio, caching and reports.

Training speed: one epoch is a single jitted `lax.scan` over minibatches (a fresh permutation per
epoch from `fold_in(key, epoch)`); the early-stopping bookkeeping stays on the host, one small
device-to-host copy of validation logits per epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Classifier hyperparameters; the defaults are the protocol's."""

    learning_rate: float = 3e-5
    weight_decay: float = 1e-8
    max_batch: int = 200
    max_epochs: int = 200
    patience: int = 20
    valid_fraction: float = 0.1


# ---------------------------------------------------------------------------------------------
# Standardisation, hold-out, metrics.


class Scaler(NamedTuple):
    """Per-feature affine map x -> (x - mean) / scale, as sklearn's StandardScaler."""

    mean: np.ndarray
    scale: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale).astype(np.float32)


def fit_scaler(x: np.ndarray) -> Scaler:
    """Mean and population std (ddof 0) in float64; constant features get scale 1."""
    x = np.asarray(x, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    return Scaler(mean, np.where(std > 0, std, 1.0))


def stratified_holdout(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Splits row indices into (train, valid), putting `fraction` of each class in valid.

    Every class with at least two rows lands in both parts; a class with one row stays in train.
    Multi-label `y` (n, C): a random `fraction` of rows, then each class with at least two
    positives gets one in valid and keeps one in train, rarest class first (best effort: moving
    a row moves all its labels).

    Args:
      y: (n,) integer labels or (n, C) multi-hot.
      fraction: share of rows to hold out, in (0, 1).
      rng: numpy generator; the split is a function of its state.

    Returns:
      Sorted int64 index arrays (train, valid).
    """
    n = len(y)
    valid = np.zeros(n, bool)
    if y.ndim == 1:
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            if len(rows) >= 2:
                k = min(max(1, round(fraction * len(rows))), len(rows) - 1)
                valid[rng.choice(rows, k, replace=False)] = True
    else:
        valid[rng.permutation(n)[: max(1, round(fraction * n))]] = True
        positives = y > 0
        for c in np.argsort(positives.sum(axis=0), kind="stable"):
            rows = np.flatnonzero(positives[:, c])
            if len(rows) < 2:
                continue
            if not valid[rows].any():
                valid[rng.choice(rows)] = True
            if valid[rows].all():
                valid[rng.choice(rows)] = False
    return np.flatnonzero(~valid), np.flatnonzero(valid)


def accuracy(y: np.ndarray, logits: np.ndarray) -> float:
    """Share of rows whose arg-max logit is the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct score thresholds (sklearn's definition).

    Without tied scores this is the mean, over positives, of the precision at the positive's
    rank. NaN when there is no positive.
    """
    positive = np.asarray(positive) > 0
    if not positive.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    s, hits = np.asarray(scores)[order], positive[order]
    # Tied scores form one threshold: keep only the last row of each run of equal scores.
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(hits)[ends]
    precision = tp / (ends + 1)
    recall_gain = np.diff(np.r_[0, tp]) / tp[-1]
    return float(np.sum(recall_gain * precision))


def mean_average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Macro mAP: AP per class, averaged over the classes with at least one positive."""
    aps = [average_precision(y[:, c], scores[:, c]) for c in range(y.shape[1]) if y[:, c].any()]
    return float(np.mean(aps)) if aps else float("nan")


def score(y: np.ndarray, logits: np.ndarray) -> float:
    """The protocol's metric: accuracy for (n,) labels, macro mAP for (n, C) multi-hot."""
    return accuracy(y, logits) if y.ndim == 1 else mean_average_precision(y, logits)


def ci95(values) -> tuple[float, float | None]:
    """Mean and half-width t_{0.975, n-1} * s / sqrt(n) (s with ddof 1); None when n < 2."""
    from scipy import stats  # pylint: disable=g-import-not-at-top

    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(v.mean()), None
    return float(v.mean()), float(
        stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    )


def confusion_matrix(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows the true class, columns the predicted one."""
    return np.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


# ---------------------------------------------------------------------------------------------
# The linear classifier.


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
    """Logits (n, C)."""
    return x @ params["w"] + params["b"]


def _optimizer(cfg: ProbeConfig) -> optax.GradientTransformation:
    # torch.optim.Adam(weight_decay=...) as EVAR uses it: L2 added to the gradient (not AdamW).
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(cfg.learning_rate))


@functools.cache
def _epoch_fn(cfg: ProbeConfig, batch_size: int, multilabel: bool) -> Callable:
    """A jitted `(params, opt_state, key, x, y) -> (params, opt_state, mean loss)` epoch."""
    tx = _optimizer(cfg)

    def loss_fn(params, x, y, mask):
        logits = predict(params, x)
        if multilabel:
            per_row = optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
        else:
            # EVAR quirk, kept: its NLL is a mean over classes too, i.e. cross-entropy / C.
            per_row = optax.softmax_cross_entropy_with_integer_labels(logits, y) / logits.shape[-1]
        return jnp.sum(per_row * mask) / jnp.sum(mask)

    def epoch(params, opt_state, key, x, y):
        n = x.shape[0]
        num_batches = -(-n // batch_size)
        # Pad the permutation to whole batches; the mask makes the last batch a short one, as a
        # torch DataLoader without drop_last gives.
        pad = num_batches * batch_size - n
        idx = jnp.concatenate([jax.random.permutation(key, n), jnp.zeros(pad, jnp.int32)])
        mask = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32)

        def step(carry, batch):
            params, opt_state = carry
            i, m = batch
            loss, grads = jax.value_and_grad(loss_fn)(params, x[i], y[i], m)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        batches = (idx.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size))
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, losses.mean()

    return jax.jit(epoch)


class EarlyStop(NamedTuple):
    """Outcome of `early_stopping`; epochs are 1-based, `best_epoch` 0 if nothing improved."""

    best_epoch: int
    epochs_run: int
    best_score: float
    history: list


def early_stopping(
    run_epoch: Callable[[Any, int], Any],
    evaluate: Callable[[Any], float],
    state: Any,
    *,
    max_epochs: int,
    patience: int,
) -> tuple[Any, EarlyStop]:
    """Runs epochs until `patience` epochs pass without a validation score >= the best.

    A tie counts as an improvement and moves the best to the later epoch, as EVAR's
    `EarlyStopping` does (`>=`): on a small validation set accuracy often plateaus while the
    classifier is still improving.

    Args:
      run_epoch: `(state, epoch) -> state`, epoch counted from 1.
      evaluate: `state -> validation score`, higher is better.
      state: the initial state, returned if no epoch ever scores above -inf.
      max_epochs: hard limit.
      patience: stop after this many epochs with no improvement over the best.

    Returns:
      (the state of the best epoch, EarlyStop).
    """
    best_state, best_epoch, best_score, history = state, 0, -math.inf, []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        state = run_epoch(state, epoch)
        history.append(evaluate(state))
        if history[-1] >= best_score:
            best_state, best_epoch, best_score = state, epoch, history[-1]
        elif epoch - best_epoch >= patience:
            break
    return best_state, EarlyStop(best_epoch, epoch, best_score, history)


def train_linear(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    cfg: ProbeConfig = ProbeConfig(),
) -> tuple[dict, EarlyStop]:
    """Trains one linear layer on standardised inputs; returns the best-validation params.

    Args:
      x_train, x_valid: (n, D) float32 features, already standardised.
      y_train, y_valid: (n,) int labels or (n, C) multi-hot (multi-label: sigmoid BCE, mAP).
      num_classes: C.
      seed: initialisation and shuffling.
      cfg: hyperparameters.
    """
    multilabel = y_train.ndim == 2
    epoch_fn = _epoch_fn(cfg, min(cfg.max_batch, len(x_train)), multilabel)
    init_key, shuffle_key = jax.random.split(jax.random.key(seed))
    params = init_linear(init_key, x_train.shape[1], num_classes)
    x, y = jnp.asarray(x_train), jnp.asarray(y_train)
    xv = jnp.asarray(x_valid)

    def run_epoch(state, epoch):
        params, opt_state = state
        params, opt_state, _ = epoch_fn(
            params, opt_state, jax.random.fold_in(shuffle_key, epoch), x, y
        )
        return params, opt_state

    def evaluate(state):
        return score(y_valid, np.asarray(predict(state[0], xv)))

    (params, _), stop = early_stopping(
        run_epoch,
        evaluate,
        (params, _optimizer(cfg).init(params)),
        max_epochs=cfg.max_epochs,
        patience=cfg.patience,
    )
    return params, stop


# ---------------------------------------------------------------------------------------------
# The protocol over seeds and folds.


class Partition(NamedTuple):
    """Row indices of one evaluation; `valid` None -> a stratified hold-out of `train`."""

    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray


def evaluate(
    x: np.ndarray,
    y: np.ndarray,
    partitions: list[Partition],
    *,
    num_classes: int,
    seeds=(0, 1, 2),
    cfg: ProbeConfig = ProbeConfig(),
) -> dict:
    """The linear-probe protocol on fixed embeddings.

    Args:
      x: (n, D) embeddings of every row.
      y: (n,) int labels or (n, C) multi-hot.
      partitions: one per fold (k-fold tasks) or a single one.
      num_classes: C.
      seeds: one classifier per seed and partition; a seed's score is its mean over partitions.
      cfg: hyperparameters.

    Returns:
      A dict: `scores` (per seed), `fold_scores`, `best_epoch`, `epochs_run` ([seed][fold]),
      `mean`, `ci95` (half-width or None), `n_train`/`n_valid`/`n_test` (per fold) and, for
      single-label tasks, `confusion` (test counts summed over seeds and folds).
    """
    multilabel = y.ndim == 2
    out = {
        k: [] for k in ("fold_scores", "best_epoch", "epochs_run", "n_train", "n_valid", "n_test")
    }
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for s, seed in enumerate(seeds):
        for key in ("fold_scores", "best_epoch", "epochs_run"):
            out[key].append([])
        for f, part in enumerate(partitions):
            # Fitted before any hold-out, on the whole training split, as EVAR's classifier does.
            scaler = fit_scaler(x[part.train])
            train, valid = part.train, part.valid
            if valid is None:
                rng = np.random.default_rng([seed, f])
                keep, held = stratified_holdout(y[train], cfg.valid_fraction, rng)
                train, valid = train[keep], train[held]
            if multilabel and not y[valid].any():
                raise ValueError(
                    f"fold {f}: the validation rows hold no positive label, so mAP is undefined; "
                    "add labelled validation clips or more training clips"
                )
            params, stop = train_linear(
                scaler.transform(x[train]),
                y[train],
                scaler.transform(x[valid]),
                y[valid],
                num_classes=num_classes,
                seed=seed,
                cfg=cfg,
            )
            logits = np.asarray(predict(params, jnp.asarray(scaler.transform(x[part.test]))))
            out["fold_scores"][-1].append(score(y[part.test], logits))
            out["best_epoch"][-1].append(stop.best_epoch)
            out["epochs_run"][-1].append(stop.epochs_run)
            if s == 0:
                for key, rows in (("n_train", train), ("n_valid", valid), ("n_test", part.test)):
                    out[key].append(len(rows))
            if not multilabel:
                confusion += confusion_matrix(y[part.test], logits.argmax(-1), num_classes)
    out["scores"] = [float(np.mean(f)) for f in out["fold_scores"]]
    out["mean"], out["ci95"] = ci95(out["scores"])
    if not multilabel:
        out["confusion"] = confusion.tolist()
    return out


# ---------------------------------------------------------------------------------------------
# Picture of a confusion matrix without matplotlib: a PNG heatmap from numpy and zlib.


def heatmap_png(matrix: np.ndarray, cell: int | None = None) -> bytes:
    """Row-normalised heatmap, white (0) to dark blue (1), no text; about 256 px wide by default."""
    m = np.asarray(matrix, np.float64)
    cell = cell or max(4, 256 // len(m))
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12)
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    rgb = np.rint(white + m[..., None] * (blue - white)).astype(np.uint8)  # (C, C, 3)
    rgb = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    return encode_png(rgb)


def encode_png(rgb: np.ndarray) -> bytes:
    """8-bit RGB PNG bytes of an (H, W, 3) uint8 array."""
    h, w, _ = rgb.shape
    # Every scanline starts with filter type 0 (none).
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
