"""Per-clip test predictions of a probe run, and the paired comparison of two encoders.

A probe report's interval covers the classifier's seeds on fixed embeddings: run the probe again
on the same test clips and its mean stays inside. Whether encoder A beats encoder B also depends
on which clips happen to be in the test split: on 300 test clips at 83% accuracy, test sampling
alone moves one encoder's score by about ±4 points (95%). Two encoders probed on one task score
the same test clips, though, and much of that noise is shared (both miss the hard clips), so
the difference is judged on paired resamples: the same draws of test clips for both.

`probe.py` stores every run's test logits beside report.json (`predictions_TASK.npz`,
`write_predictions`). `compare` gives the difference of two reports' means and its 95%
half-width,

    half = sqrt(clips² + seeds_A² + seeds_B²)

- clips: 1.96 standard deviations of the difference over `RESAMPLES` paired bootstrap draws of
  the test clips (a k-fold task: drawn within each fold), each encoder scored on a draw as its
  report scores it (the mean over seeds of the mean over folds: accuracy, or macro mAP with the
  label mask), the draws' weights applied as scikit-learn's sample weights;
- seeds_A, seeds_B: each report's own half-width over classifier seeds (`ci95`).

The two sources are independent (which clips are tested, how the classifiers trained), so their
variances add. A difference is decided when its interval excludes 0 (`verdict`).

Numpy only (no jax): `python -m matpac_jax.evaluation.probe compare` and `tools.agreement`
answer without the slow imports.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from matpac_jax import cli

RESAMPLES = 1000  # paired bootstrap draws of the test clips (a fixed seed: reproducible)
_CHUNK = 250  # draws scored at once for a multi-label task (memory: _CHUNK x n_test floats)


class Predictions(NamedTuple):
    """A task's test rows over all folds (fold by fold) and every seed's logits on them."""

    rows: np.ndarray  # (n,) int64 row indices in the task CSV
    paths: np.ndarray  # (n,) str: the clips' audio files
    fold: np.ndarray  # (n,) int32 partition of each row (0 for a lone split)
    labels: np.ndarray  # (n,) class indices or (n, C) uint8 multi-hot
    known: np.ndarray | None  # (n, C) uint8 label mask of a multi-label task, or None
    logits: np.ndarray  # (seeds, n, C) float32


def predictions_name(task: str) -> str:
    """The file of a task's predictions, in the report's folder."""
    return f"predictions_{task}.npz"


def write_predictions(out: str, task: str, paths, tests, y, known, test_logits) -> str:
    """Writes OUT/predictions_TASK.npz and returns its name (report.json's `predictions`).

    Args:
      paths: the audio file of every row of the task.
      tests: per partition, the test rows (indices into the task's rows).
      y: (n_all,) labels or (n_all, C) multi-hot of every row of the task.
      known: (n_all, C) label mask or None.
      test_logits: [seed][partition] (n_test, C) logits (`probe_lib.evaluate(keep_logits=True)`).
    """
    rows = np.concatenate(tests).astype(np.int64)
    arrays = {
        "rows": rows,
        "paths": np.array([paths[r] for r in rows], dtype=str),
        "fold": np.concatenate([np.full(len(t), f, np.int32) for f, t in enumerate(tests)]),
        "labels": y[rows].astype(np.uint8) if y.ndim == 2 else y[rows].astype(np.int64),
        "logits": np.stack([np.concatenate(row) for row in test_logits]).astype(np.float32),
    }
    if known is not None:
        arrays["known"] = known[rows].astype(np.uint8)
    name = predictions_name(task)
    np.savez_compressed(os.path.join(out, name), **arrays)
    return name


def load_predictions(report_path: str, entry: dict) -> Predictions | None:
    """The predictions of a report's task entry; None for a report written before they were
    stored. `report_path`: the report's folder or its report.json.

    Raises:
      cli.UserError: the report names a predictions file that is missing or unreadable.
    """
    name = entry.get("predictions")
    if not name:
        return None
    full = cli.abspath(report_path)
    path = os.path.join(full if os.path.isdir(full) else os.path.dirname(full), name)
    try:
        with np.load(path, allow_pickle=False) as z:
            known = z["known"] if "known" in z.files else None
            return Predictions(z["rows"], z["paths"], z["fold"], z["labels"], known, z["logits"])
    except (OSError, ValueError, KeyError) as e:
        raise cli.UserError(
            f"{report_path}: task {entry['task']}: cannot read its test predictions {name} ({e}); "
            "probe again to write them"
        ) from e


# ---------------------------------------------------------------------------------------------
# Scores on weighted (resampled) test clips.


def weighted_average_precision(positive, scores, weights, rows=None) -> np.ndarray:
    """Average precision of one class under each row of sample weights, as scikit-learn's
    `average_precision_score(positive, scores, sample_weight=w)` computes it: the sum over
    distinct thresholds (tied scores one threshold) of the weighted recall step times the
    weighted precision. A bootstrap draw is the weights of how often each clip was drawn.

    Args:
      positive: (n,) bool.
      scores: (n,) float.
      weights: (R, n) non-negative integers (counts), any numeric dtype.
      rows: the clips that count (a label mask's known ones), or None: all.

    Returns:
      (R,) float64; NaN where a row gives no positive any weight.
    """
    rows = np.arange(len(scores)) if rows is None else np.asarray(rows)
    s = np.asarray(scores, np.float64)[rows]
    order = np.argsort(-s, kind="stable")
    s = s[order]
    hits = np.flatnonzero(np.asarray(positive, bool)[rows][order])  # sorted positions
    if not len(hits):
        return np.full(len(weights), np.nan)
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last row of each group of ties
    hit_end = ends[np.searchsorted(ends, hits)]  # each positive's threshold: its group's end
    # Only the thresholds with a positive add to the sum. Predicted weight at each of them (a
    # cumulative sum over the ranked clips; exact in float32 for counts below 2**24), and the
    # positive weight up to the end of each positive's group.
    ranked = weights[:, rows[order]].astype(np.float32, copy=False)
    predicted = np.cumsum(ranked, axis=1, out=ranked)[:, hit_end].astype(np.float64)
    w_hit = weights[:, rows[order[hits]]].astype(np.float64)
    tp = np.cumsum(w_hit, axis=1)
    last_of_group = np.searchsorted(hit_end, hit_end, side="right") - 1
    tp_at = tp[:, last_of_group]
    precision = np.divide(tp_at, predicted, out=np.zeros_like(tp_at), where=predicted > 0)
    total = tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w_hit * precision).sum(axis=1) / total, np.nan)


def _macro_map(y, logits, weights, known) -> np.ndarray:
    """(R,) macro mAP under each row of `weights`: AP per class over the classes with a
    weighted known positive (as `probe_lib.mean_average_precision`); NaN if none has one."""
    per_class = np.stack(
        [
            weighted_average_precision(
                y[:, c] > 0, logits[:, c], weights,
                None if known is None else np.flatnonzero(known[:, c]),
            )
            for c in range(y.shape[1])
        ]
    )  # fmt: skip
    defined = ~np.isnan(per_class)
    total = np.where(defined, per_class, 0.0).sum(axis=0)
    count = defined.sum(axis=0)
    return np.divide(total, count, out=np.full(len(total), np.nan), where=count > 0)


def score_draws(p: Predictions, draws: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """A report's score (the mean over seeds of the mean over folds) under each draw.

    Args:
      p: the predictions.
      draws: per fold, (its rows' positions in `p`, (R, n_fold) weights).

    Returns:
      (R,) float64.
    """
    per_fold = []
    for where, w in draws:
        y, logits = p.labels[where], p.logits[:, where]
        if y.ndim == 1:  # accuracy is linear in the weights: the seeds' mean per clip suffices
            correct = (logits.argmax(axis=-1) == y).mean(axis=0)
            per_fold.append(w @ correct / len(where))
        else:
            known = None if p.known is None else p.known[where]
            chunks = [
                np.mean([_macro_map(y, seed, w[i : i + _CHUNK], known) for seed in logits], axis=0)
                for i in range(0, len(w), _CHUNK)
            ]
            per_fold.append(np.concatenate(chunks))
    return np.mean(per_fold, axis=0)


def bootstrap_draws(fold: np.ndarray, resamples: int, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per fold, its positions and (resamples, n_fold) counts of a draw with replacement."""
    out = []
    for f in np.unique(fold):
        where = np.flatnonzero(fold == f)
        n = len(where)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
        out.append((where, counts.astype(np.float32)))  # exact below 2**24 clips
    return out


# ---------------------------------------------------------------------------------------------
# Two reports' difference.


def _same_clips(a: Predictions, b: Predictions) -> bool:
    """The same rows, folds and labels, and the same file names (the folders may differ: the
    same dataset copied elsewhere, or a suite's CSVs written into another output folder)."""
    names = [np.array([os.path.basename(str(x)) for x in p.paths]) for p in (a, b)]
    return (
        np.array_equal(a.rows, b.rows)
        and np.array_equal(*names)
        and np.array_equal(a.fold, b.fold)
        and np.array_equal(a.labels, b.labels)
    )


def compare(
    a: dict, pred_a: Predictions | None, b: dict, pred_b: Predictions | None, *,
    resamples: int = RESAMPLES, seed: int = 0,
) -> dict:  # fmt: skip
    """The difference of two report entries of one task (module docstring).

    Args:
      a, b: report.json task entries (`mean`, `ci95`).
      pred_a, pred_b: their predictions, or None (then the interval is the seeds' alone).
      resamples: paired bootstrap draws.
      seed: of the draws.

    Returns:
      {"difference": mean_a - mean_b, "half": the 95% half-width, "clips": the test clips'
      part (None without predictions), "seeds": the seeds' part, "n_test", "resamples"}.

    Raises:
      ValueError: the predictions are of different test clips (another task CSV or split).
    """
    seeds = math.hypot(a["ci95"] or 0.0, b["ci95"] or 0.0)
    out = {"difference": a["mean"] - b["mean"], "seeds": seeds, "clips": None, "n_test": None}
    out["resamples"] = None
    if pred_a is not None and pred_b is not None:
        if not _same_clips(pred_a, pred_b):
            raise ValueError(
                f"task {a['task']}: the two reports did not score the same test clips (rows, "
                "files, folds or labels differ): probe both encoders on the same task CSV"
            )
        draws = bootstrap_draws(pred_a.fold, resamples, np.random.default_rng(seed))
        diff = score_draws(pred_a, draws) - score_draws(pred_b, draws)
        out.update(clips=1.96 * float(np.nanstd(diff)), n_test=len(pred_a.rows))
        out["resamples"] = resamples
    out["half"] = math.hypot(out["clips"] or 0.0, seeds)
    return out


def compare_reports(
    path_a: str, report_a: dict, path_b: str, report_b: dict, *, resamples: int = RESAMPLES
) -> dict[str, tuple[dict, dict, dict]]:
    """{task: (entry A, entry B, `compare`'s result)} for the tasks both reports hold, in A's
    order; each with its stored predictions (`path_*`: the report's folder or report.json).

    Raises:
      cli.UserError: a task's reports scored different test clips, or a predictions file that
        the report names cannot be read.
    """
    by_task = {e["task"]: e for e in report_b["tasks"]}
    out = {}
    for a in report_a["tasks"]:
        b = by_task.get(a["task"])
        if b is None:
            continue
        pred_a, pred_b = load_predictions(path_a, a), load_predictions(path_b, b)
        try:
            out[a["task"]] = (a, b, compare(a, pred_a, b, pred_b, resamples=resamples))
        except ValueError as e:
            raise cli.UserError(str(e)) from e
    return out


def verdict(c: dict, better: str = "A", worse: str = "B") -> str:
    """`A better`, `B better` or `undecided` (the interval holds 0); `same` when every draw
    and seed scored both alike (a zero difference with a zero interval); `no interval` when
    there is none (one seed each and no predictions)."""
    if c["clips"] is None and c["seeds"] == 0.0:
        return "no interval"
    if c["half"] == 0.0 and c["difference"] == 0.0:
        return "same"
    if c["difference"] - c["half"] > 0:
        return f"{better} better"
    if c["difference"] + c["half"] < 0:
        return f"{worse} better"
    return "undecided"


def covers(c: dict) -> str:
    """What a comparison's interval covers, in words."""
    if c["clips"] is None:
        return "the classifier seeds alone (no test predictions stored: probe again to add them)"
    return (
        f"a paired bootstrap over the test clips ({c['resamples']:,} draws, the same clips for "
        "both encoders) combined with both reports' seed intervals"
    )
