"""Linear-probe numerics (docs/method.md section 8, EVAR style): pure functions of arrays and seeds.

`evaluate` runs the whole protocol on fixed embeddings: for every seed and every partition
(one train/valid/test split, or one per k-fold fold) it standardises with statistics of the
training split, trains one linear layer with Adam until validation stops improving, restores the
best weights and scores the test rows. `probe.py` wraps it with audio, caching and reports.

Training speed: one epoch is a single jitted `lax.scan` over minibatches (a fresh permutation per
epoch from `fold_in(key, epoch)`); the early-stopping bookkeeping stays on the host, one small
device-to-host copy of validation logits per epoch.

Standardisation, the stratified hold-out, average precision and confusion matrices are
scikit-learn's (the library EVAR uses), so the numbers are the field's own definitions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import metrics
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler


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


class DataError(ValueError):
    """The task's data cannot be evaluated as asked (a fixable input problem, not a bug)."""


def fit_scaler(x: np.ndarray) -> StandardScaler:
    """sklearn's StandardScaler fitted in float64: per-feature mean and population std (ddof 0);
    constant features get scale 1."""
    return StandardScaler().fit(np.asarray(x, np.float64))


def standardize(scaler: StandardScaler, x: np.ndarray) -> np.ndarray:
    """`scaler` applied in float64, returned as float32 (what the classifier trains on)."""
    return scaler.transform(np.asarray(x, np.float64)).astype(np.float32)


def stratified_holdout(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Splits row indices into (train, valid), holding out `fraction` of the rows.

    Single-label `y`: sklearn's `train_test_split(stratify=y)` (EVAR's hold-out) over the classes
    with at least two rows; a class with one row stays in train. The hold-out has
    max(ceil(fraction * n), number of classes) rows (sklearn needs one row per class at least),
    and every class keeps at least one row in train.
    Multi-label `y` (n, C), which sklearn cannot stratify: a random `fraction` of rows, then each
    class with at least two positives gets one in valid and keeps one in train, rarest class
    first (best effort: moving a row moves all its labels).

    Args:
      y: (n,) integer labels or (n, C) multi-hot.
      fraction: share of rows to hold out, in (0, 1).
      rng: numpy generator; the split is a function of its state.

    Returns:
      Sorted int64 index arrays (train, valid).

    Raises:
      DataError: no class has two rows, so nothing can be held out.
    """
    if y.ndim == 2:
        return _multilabel_holdout(y, fraction, rng)
    classes, counts = np.unique(y, return_counts=True)
    eligible = np.flatnonzero(np.isin(y, classes[counts >= 2]))
    if not len(eligible):
        raise DataError(
            "no class has two training clips, so none can be held out for validation; "
            "add valid rows to the task CSV"
        )
    num_valid = max(math.ceil(fraction * len(eligible)), int((counts >= 2).sum()))
    _, held = train_test_split(
        eligible,
        test_size=num_valid,
        stratify=y[eligible],
        random_state=int(rng.integers(2**32 - 1)),
    )
    valid = np.zeros(len(y), bool)
    valid[held] = True
    return np.flatnonzero(~valid), np.flatnonzero(valid)


def _multilabel_holdout(y: np.ndarray, fraction: float, rng: np.random.Generator):
    """The multi-label branch of `stratified_holdout`."""
    n = len(y)
    valid = np.zeros(n, bool)
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
    """sklearn's average precision: sum_k (R_k - R_{k-1}) P_k, tied scores one threshold.

    NaN when there is no positive.
    """
    positive = np.asarray(positive) > 0
    if not positive.any():
        return float("nan")
    return float(metrics.average_precision_score(positive, np.asarray(scores, np.float64)))


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
    """(C, C) int64 counts (sklearn's), rows the true class, columns the predicted one."""
    return metrics.confusion_matrix(y, pred, labels=np.arange(num_classes)).astype(np.int64)


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
    """Outcome of `early_stopping`; epochs are 1-based, `best_epoch` 0 if nothing improved.

    `stopped_early` False: patience never ran out, training ended at the epoch cap while the
    validation score was still improving (the classifier may be under-trained).
    """

    best_epoch: int
    epochs_run: int
    best_score: float
    history: list
    stopped_early: bool


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
    epoch, stopped = 0, False
    for epoch in range(1, max_epochs + 1):
        state = run_epoch(state, epoch)
        history.append(evaluate(state))
        if history[-1] >= best_score:
            best_state, best_epoch, best_score = state, epoch, history[-1]
        elif epoch - best_epoch >= patience:
            stopped = True
            break
    return best_state, EarlyStop(best_epoch, epoch, best_score, history, stopped)


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
      A dict: `scores` (per seed), `fold_scores`, `best_epoch`, `epochs_run`, `stopped_early`
      ([seed][fold]), `mean`, `ci95` (half-width or None), `n_train`/`n_valid`/`n_test` (per
      fold) and, for single-label tasks, `confusion` (test counts summed over seeds and folds).

    Raises:
      DataError: a partition leaves nothing to validate on.
    """
    multilabel = y.ndim == 2
    per_run = ("fold_scores", "best_epoch", "epochs_run", "stopped_early")
    out = {k: [] for k in (*per_run, "n_train", "n_valid", "n_test")}
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for s, seed in enumerate(seeds):
        for key in per_run:
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
                raise DataError(
                    f"fold {f}: the validation rows hold no positive label, so mAP is undefined; "
                    "add labelled validation clips or more training clips"
                )
            params, stop = train_linear(
                standardize(scaler, x[train]),
                y[train],
                standardize(scaler, x[valid]),
                y[valid],
                num_classes=num_classes,
                seed=seed,
                cfg=cfg,
            )
            logits = np.asarray(predict(params, jnp.asarray(standardize(scaler, x[part.test]))))
            out["fold_scores"][-1].append(score(y[part.test], logits))
            out["best_epoch"][-1].append(stop.best_epoch)
            out["epochs_run"][-1].append(stop.epochs_run)
            out["stopped_early"][-1].append(stop.stopped_early)
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
# Warnings about results that would mislead, and the picture of a confusion matrix.


def class_warnings(onehot, partitions, classes, names) -> list[str]:
    """Per partition: classes with one training row, and classes tested or validated on but
    absent from train.

    Args:
      onehot: (n, C) bool, row r has class c.
      partitions: `Partition`s, named by `names` ("" for a lone split).
      classes: the C class names.
    """
    out = []
    order = [classes.index(c) for c in natural_order(classes)]
    for name, part in zip(names, partitions):
        where = f" ({name})" if name else ""
        held = part.test if part.valid is None else np.r_[part.test, part.valid]
        held_name = "test" if part.valid is None else "test/valid"
        n_train = onehot[part.train].sum(axis=0)
        for c in order:
            if n_train[c] == 1:
                out.append(
                    f"class {classes[c]!r} has 1 training clip{where}: too few to learn from or "
                    "to hold out for validation"
                )
            elif n_train[c] == 0 and onehot[held, c].any():
                out.append(
                    f"class {classes[c]!r} is in the {held_name} rows but not in train{where}: "
                    "the classifier cannot learn it"
                )
    return out


def cap_warnings(result: dict, seeds, names, cfg: ProbeConfig) -> list[str]:
    """Runs of `evaluate`'s `result` that hit the epoch cap before early stopping triggered.

    Ties count as improvements (EVAR's `>=`), so a validation score saturated at its maximum
    also runs to the cap: the warning says the run did not stop by itself, nothing more.
    """
    out = []
    for s, seed in enumerate(seeds):
        for f, name in enumerate(names):
            if not result["stopped_early"][s][f]:
                where = f", {name}" if name else ""
                out.append(
                    f"seed {seed}{where}: hit the {cfg.max_epochs}-epoch cap before early "
                    f"stopping (validation last matched or beat its best at epoch "
                    f"{result['best_epoch'][s][f]}, patience {cfg.patience}): may not have "
                    "converged; a larger --lr may help"
                )
    return out


_NOTE = re.compile(r"^([A-Ga-g])([#♯b♭]?)(-?\d+)?$")
_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def natural_order(labels) -> list[str]:
    """Numbers numerically, note names musically (C, C#, D, ... B; octave first), the rest
    alphabetically."""
    labels = list(labels)
    try:
        return sorted(labels, key=float)
    except ValueError:
        pass
    notes = [_NOTE.match(x) for x in labels]
    if all(notes) and len({m[3] is None for m in notes}) <= 1:
        shift = {"#": 1, "♯": 1, "b": -1, "♭": -1}
        keys = [(int(m[3] or 0), _SEMITONE[m[1].upper()] + shift.get(m[2], 0)) for m in notes]
        return [x for _, x in sorted(zip(keys, labels))]
    return sorted(labels)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: str, *, title: str) -> None:
    """Writes a PNG of a confusion matrix: true class down, predicted across, in
    `natural_order`; colour = share of the true class's row, text = count (blank for 0)."""
    # The Agg canvas directly, not pyplot: no display needed and no global backend switched
    # under a notebook that imports this module.
    # pylint: disable=g-import-not-at-top
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = [classes.index(c) for c in natural_order(classes)]
    counts = np.asarray(matrix)[np.ix_(order, order)]
    names = [classes[i] for i in order]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(names)
    side = min(3.0 + 0.35 * n, 30.0)
    fig = Figure(figsize=(side + 1.5, side + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(title, fontsize=10)
    size = max(5.0, min(10.0, 200.0 / n))
    for i, j in zip(*np.nonzero(counts)):
        color = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=size, color=color)
    fig.tight_layout()
    fig.savefig(path)
