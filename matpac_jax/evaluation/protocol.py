"""Linear-probe numerics (docs/method.md section 8, EVAR style): pure functions of arrays and seeds.

`evaluate` runs the whole protocol on fixed embeddings: for every seed and every partition
(one train/valid/test split, or one per k-fold fold) it standardises with statistics of the
training split, trains one linear layer per learning rate of `ProbeConfig.learning_rates` with
Adam until validation stops improving (`probe_train`) and restores each one's best weights;
then, per partition, it keeps the learning rate with the best validation score averaged over
the seeds, and scores every seed's test rows with that learning rate's classifier.
`evaluation/probe.py` wraps it with audio, caching and reports.

Two protocols (`docs/probe.md`): `GRID` (the default) selects the learning rate per partition
on the validation rows pooled over seeds, from `LR_GRID`; `EVAR` trains at the papers' fixed
3e-5.

Standardisation, the stratified hold-out, average precision and confusion matrices are
scikit-learn's (the library EVAR uses), so the numbers are the field's own definitions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from sklearn import metrics
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from matpac_jax.evaluation import linear as probe_train

EVAR_LR = 3e-5  # EVAR's (and the papers') learning rate, tuned for 3,840-d ViT-B embeddings
# Half-decade steps (as the HEAR evaluation kit's grid) from EVAR's own 3e-5, so that the grid can
# still pick the published setting, up to 1e-2, where Adam moves a weight by 1e-2 per step: more
# than a 160-d embedding needs to separate its classes within the first few epochs.
LR_GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Classifier hyperparameters; the defaults are the grid protocol's.

    `learning_rates`: one value -> every run trains at it (the EVAR protocol: (3e-5,)); several ->
    every run trains all of them together and keeps the one with the best validation score
    (`select_lr`). A list is stored as a tuple.
    """

    learning_rates: tuple[float, ...] = LR_GRID
    weight_decay: float = 1e-8
    max_batch: int = 200
    max_epochs: int = 200
    patience: int = 20
    valid_fraction: float = 0.1

    def __post_init__(self):
        lrs = tuple(float(lr) for lr in self.learning_rates)
        if not lrs or not all(lr > 0 for lr in lrs):
            raise ValueError(f"learning_rates {lrs}: need at least one, all greater than 0")
        object.__setattr__(self, "learning_rates", lrs)

    @property
    def protocol(self) -> str:
        """`grid` (several learning rates), `evar` (3e-5 alone) or `fixed` (another lone one)."""
        if len(self.learning_rates) > 1:
            return "grid"
        return "evar" if self.learning_rates == (EVAR_LR,) else "fixed"


GRID = ProbeConfig()
EVAR = ProbeConfig(learning_rates=(EVAR_LR,))


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


def average_precision(positive: np.ndarray, scores: np.ndarray, known=None) -> float:
    """sklearn's average precision: sum_k (R_k - R_{k-1}) P_k, tied scores one threshold.

    `known` (1/0 per row, default all 1) is the sample weight: a row whose label is unknown
    (a partial label) counts as neither positive nor negative. NaN when no known positive.
    """
    positive = np.asarray(positive) > 0
    weight = None if known is None else np.asarray(known, np.float64)
    if not (positive if weight is None else positive & (weight > 0)).any():
        return float("nan")
    return float(
        metrics.average_precision_score(
            positive, np.asarray(scores, np.float64), sample_weight=weight
        )
    )


def roc_auc(positive: np.ndarray, scores: np.ndarray, known=None) -> float:
    """sklearn's area under the ROC curve, with `known` as the sample weight as in
    `average_precision`; NaN without a known positive and a known negative."""
    positive = np.asarray(positive) > 0
    weight = np.ones(len(positive)) if known is None else np.asarray(known, np.float64)
    if not (positive & (weight > 0)).any() or not (~positive & (weight > 0)).any():
        return float("nan")
    return float(
        metrics.roc_auc_score(positive, np.asarray(scores, np.float64), sample_weight=weight)
    )


def _macro(metric, y: np.ndarray, scores: np.ndarray, known) -> float:
    """`metric` per class, averaged over the classes where it is defined (NaN if none is)."""
    per_class = [
        metric(y[:, c], scores[:, c], None if known is None else known[:, c])
        for c in range(y.shape[1])
    ]
    defined = [v for v in per_class if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def mean_average_precision(y: np.ndarray, scores: np.ndarray, known=None) -> float:
    """Macro mAP (the papers' figure for multi-label tasks): AP per class, averaged over the
    classes with at least one known positive; `known` (n, C) masks partial labels out."""
    return _macro(average_precision, y, scores, known)


def mean_roc_auc(y: np.ndarray, scores: np.ndarray, known=None) -> float:
    """Macro ROC-AUC: per class, over the classes with a known positive and negative."""
    return _macro(roc_auc, y, scores, known)


def score(y: np.ndarray, logits: np.ndarray, known=None) -> float:
    """The protocol's metric: accuracy for (n,) labels, macro mAP for (n, C) multi-hot (with
    the label mask `known` of partial labels)."""
    return accuracy(y, logits) if y.ndim == 1 else mean_average_precision(y, logits, known)


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
# Training, and the choice among the grid.


def train_linear(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    cfg: ProbeConfig = GRID,
    known_train: np.ndarray | None = None,
    known_valid: np.ndarray | None = None,
) -> tuple[dict, list[probe_train.EarlyStop]]:
    """`probe_train.train_linear` with `cfg`'s hyperparameters and the protocol's metric.

    Args:
      x_train, x_valid: (n, D) float32 features, already standardised.
      y_train, y_valid: (n,) int labels or (n, C) multi-hot (multi-label: sigmoid BCE, mAP).
      num_classes: C.
      seed: initialisation and shuffling.
      cfg: hyperparameters; one classifier per learning rate.
      known_train, known_valid: (n, C) label masks of partial labels (0: unknown), or None.

    Returns:
      (params with a leading axis over `cfg.learning_rates`, one EarlyStop per learning rate).
    """
    return probe_train.train_linear(
        x_train,
        y_train,
        x_valid,
        y_valid,
        num_classes=num_classes,
        seed=seed,
        learning_rates=cfg.learning_rates,
        weight_decay=cfg.weight_decay,
        max_batch=cfg.max_batch,
        max_epochs=cfg.max_epochs,
        patience=cfg.patience,
        score=score,
        known_train=known_train,
        known_valid=known_valid,
    )


def select_lr(
    valid_scores: Sequence[float], valid_losses: Sequence[float], learning_rates: Sequence[float]
) -> int:
    """Index of the best validation score; among ties, the lowest validation loss, then the
    smallest learning rate.

    Ties are common on small validation sets (several rates at 100%). The loss (cross-entropy
    at each one's best epoch) tells them apart: a rate that only just reached the score, still
    under-trained at the epoch cap, has small, unconfident logits and a high loss.
    """
    best = max(valid_scores)
    tied = [g for g, v in enumerate(valid_scores) if v == best]
    # A NaN loss (no epoch ran) must not win, nor break the ordering.
    losses = [math.inf if math.isnan(v) else v for v in valid_losses]
    return min(tied, key=lambda g: (losses[g], learning_rates[g]))


# ---------------------------------------------------------------------------------------------
# The protocol over seeds and folds.


class Partition(NamedTuple):
    """Row indices of one evaluation; `valid` None -> a stratified hold-out of `train`."""

    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray


PER_RUN = (
    "fold_scores",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "learning_rate",
    "valid_by_lr",
    "valid_loss_by_lr",
)


def evaluate(
    x: np.ndarray,
    y: np.ndarray,
    partitions: list[Partition],
    *,
    num_classes: int,
    seeds=(0, 1, 2),
    cfg: ProbeConfig = GRID,
    known: np.ndarray | None = None,
    keep_logits: bool = False,
) -> dict:
    """The linear-probe protocol on fixed embeddings.

    The learning rate is chosen once per partition: the one whose validation score, averaged
    over the seeds, is the best (ties: the lower mean validation loss, then the smaller rate).
    Every seed's test score is that rate's classifier's, so the seeds differ by their
    initialisation, shuffling and hold-out only, not by a choice made on a few validation clips.

    Args:
      x: (n, D) embeddings of every row.
      y: (n,) int labels or (n, C) multi-hot.
      partitions: one per fold (k-fold tasks) or a single one.
      num_classes: C.
      seeds: one run per seed and partition; a seed's score is its mean over partitions.
      cfg: hyperparameters.
      known: (n, C) 1/0 mask of a multi-label task's partial labels (0: nobody annotated it;
        left out of the loss, the validation score and the test metrics); None: all known.
      keep_logits: also return `test_logits`, [seed][fold] (n_test, C) arrays of the chosen
        classifiers (not JSON: for callers that score further, e.g. with intervals).

    Returns:
      A dict: `scores` (per seed), `mean`, `ci95` (half-width or None); per run ([seed][fold]):
      `fold_scores` (test), `learning_rate` (the one chosen for the fold), `valid_by_lr` and
      `valid_loss_by_lr` (each learning rate's best validation score and its validation loss
      at that epoch, in `cfg.learning_rates` order), and the chosen rate's `best_epoch`,
      `epochs_run`, `stopped_early`; `n_train`/`n_valid`/`n_test` (per fold) and, for
      single-label tasks, `confusion` (test counts summed over seeds and folds); for
      multi-label tasks, the macro ROC-AUC beside the mAP: `fold_auc` per run, `auc_scores`,
      `auc_mean`, `auc_ci95`.

    Raises:
      DataError: a partition leaves nothing to validate on.
    """
    if known is not None and (y.ndim != 2 or known.shape != y.shape):
        raise ValueError(f"a label mask {np.shape(known)} needs (n, C) multi-hot labels {y.shape}")
    grids = [
        [_grid(x, y, part, seed, f, num_classes, cfg, known) for f, part in enumerate(partitions)]
        for seed in seeds
    ]
    chosen = [
        select_lr(
            np.mean([row[f]["valid_by_lr"] for row in grids], axis=0).tolist(),
            np.mean([row[f]["valid_loss_by_lr"] for row in grids], axis=0).tolist(),
            cfg.learning_rates,
        )
        for f in range(len(partitions))
    ]
    runs = [
        [
            _score(grid, g, y, part, num_classes, cfg, known)
            for grid, g, part in zip(row, chosen, partitions)
        ]
        for row in grids
    ]
    per_run = PER_RUN + (("fold_auc",) if y.ndim == 2 else ())
    out = {key: [[r[key] for r in row] for row in runs] for key in per_run}
    out.update({key: [r[key] for r in runs[0]] for key in ("n_train", "n_valid", "n_test")})
    out["scores"] = [float(np.mean(f)) for f in out["fold_scores"]]
    out["mean"], out["ci95"] = ci95(out["scores"])
    if y.ndim == 2:
        out["auc_scores"] = [float(np.mean(f)) for f in out["fold_auc"]]
        out["auc_mean"], out["auc_ci95"] = ci95(out["auc_scores"])
    if y.ndim == 1:
        out["confusion"] = np.sum([r["confusion"] for row in runs for r in row], axis=0).tolist()
    if keep_logits:
        out["test_logits"] = [[r["logits"] for r in row] for row in runs]
    return out


def _grid(x, y, part: Partition, seed: int, fold: int, num_classes: int, cfg: ProbeConfig, known):
    """One seed on one partition: the grid trained, its validation scores, its test logits."""
    # Fitted before any hold-out, on the whole training split, as EVAR's classifier does.
    scaler = fit_scaler(x[part.train])
    train, valid = part.train, part.valid
    if valid is None:
        keep, held = stratified_holdout(
            y[train], cfg.valid_fraction, np.random.default_rng([seed, fold])
        )
        train, valid = train[keep], train[held]
    mask = (lambda rows: None) if known is None else (lambda rows: known[rows])
    if y.ndim == 2 and not (y[valid] * (1 if known is None else known[valid]) > 0).any():
        raise DataError(
            f"fold {fold}: the validation rows hold no positive label, so mAP is undefined; "
            "add labelled validation clips or more training clips"
        )
    params, stops = train_linear(
        standardize(scaler, x[train]),
        y[train],
        standardize(scaler, x[valid]),
        y[valid],
        num_classes=num_classes,
        seed=seed,
        cfg=cfg,
        known_train=mask(train),
        known_valid=mask(valid),
    )
    test_x = jnp.asarray(standardize(scaler, x[part.test]))
    return {
        "logits": np.asarray(probe_train.predict_grid(params, test_x)),  # (G, n_test, C)
        "stops": stops,
        "valid_by_lr": [stop.best_score for stop in stops],
        "valid_loss_by_lr": [stop.best_loss for stop in stops],
        "n_train": len(train),
        "n_valid": len(valid),
    }


def _score(grid: dict, g: int, y, part: Partition, num_classes: int, cfg: ProbeConfig, known):
    """One run's record: the test scores of grid member `g` (the rate chosen for the fold)."""
    logits, stop = grid["logits"][g], grid["stops"][g]
    test_known = None if known is None else known[part.test]
    out = {
        "fold_scores": score(y[part.test], logits, test_known),
        "best_epoch": stop.best_epoch,
        "epochs_run": stop.epochs_run,
        "stopped_early": stop.stopped_early,
        "learning_rate": cfg.learning_rates[g],
        "valid_by_lr": grid["valid_by_lr"],
        "valid_loss_by_lr": grid["valid_loss_by_lr"],
        "n_train": grid["n_train"],
        "n_valid": grid["n_valid"],
        "n_test": len(part.test),
        "logits": logits,
    }
    if y.ndim == 1:
        out["confusion"] = confusion_matrix(y[part.test], logits.argmax(-1), num_classes)
    else:
        out["fold_auc"] = mean_roc_auc(y[part.test], logits, test_known)
    return out
