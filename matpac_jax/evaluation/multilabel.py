"""Multi-label scores: average precision per class and their mean (mAP), AudioSet's metric.

`average_precision` is scikit-learn's `average_precision_score` for one class, written in
numpy: the scores sorted high to low, one threshold per distinct score,
AP = sum over thresholds of (recall_k - recall_{k-1}) * precision_k. The mean (`mean_average_precision`)
is over the classes with at least one positive clip (AP is undefined without one; scikit-learn
warns and counts it as 0, which would tie the score to how many classes the eval split lacks).
"""

from __future__ import annotations

import numpy as np


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class: y_true (n,) in {0, 1}, scores (n,) any real; NaN without a positive."""
    y = np.asarray(y_true, np.float64)
    s = np.asarray(scores, np.float64)
    positives = y.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) AP of each class of (n, C) labels and scores; NaN for a class without a positive."""
    y, s = np.asarray(y_true), np.asarray(scores)
    return np.array([average_precision(y[:, c], s[:, c]) for c in range(y.shape[1])])


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """mAP over the classes with at least one positive clip."""
    ap = per_class_ap(y_true, scores)
    if np.isnan(ap).all():
        raise ValueError("no class has a positive clip: mAP is undefined")
    return float(np.nanmean(ap))
