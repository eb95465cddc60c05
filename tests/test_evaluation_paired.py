"""Tests for matpac_jax/evaluation/paired.py: weighted average precision and resampled scores
against scikit-learn on explicitly drawn rows (float64), and the paired interval's verdicts
where an unpaired or seeds-only interval would decide otherwise."""

import math

import numpy as np
import pytest
from sklearn import metrics

from matpac_jax.evaluation import paired
from matpac_jax.evaluation import protocol as probe_lib


def test_weighted_average_precision_is_sklearns_on_the_drawn_rows():
    rng = np.random.default_rng(0)
    n = 60
    positive = rng.random(n) < 0.3
    scores = np.round(rng.normal(size=n), 1)  # many ties: one threshold each
    counts = rng.multinomial(n, np.full(n, 1 / n), size=20).astype(float)
    counts[3, positive] = 0  # a draw without a positive
    got = paired.weighted_average_precision(positive, scores, counts)
    for r, w in enumerate(counts):
        drawn = np.repeat(np.arange(n), w.astype(int))
        if not positive[drawn].any():
            assert math.isnan(got[r])
            continue
        want = metrics.average_precision_score(positive[drawn], scores[drawn])
        assert abs(got[r] - want) <= 1e-12
        # Weights are sklearn's sample weights, too (the label mask's zeros included).
        assert abs(got[r] - metrics.average_precision_score(positive, scores, sample_weight=w)) <= (
            1e-12
        )


def _predictions(rng, n, classes, seeds=3, folds=1, multilabel=False):
    fold = np.sort(rng.integers(0, folds, size=n)).astype(np.int32)
    if multilabel:
        labels = (rng.random((n, classes)) < 0.3).astype(np.uint8)
        known = (rng.random((n, classes)) < 0.8).astype(np.uint8)
    else:
        labels, known = rng.integers(0, classes, size=n), None
    logits = rng.normal(size=(seeds, n, classes)).astype(np.float32)
    paths = np.array([f"/data/clips/{i}.wav" for i in range(n)])
    return paired.Predictions(np.arange(n), paths, fold, labels, known, logits)


def _report_score(p: paired.Predictions, rows_by_fold) -> float:
    """The probe's own metric on explicitly drawn rows: per seed, the mean over folds."""
    per_seed = []
    for seed in p.logits:
        per_fold = []
        for rows in rows_by_fold:
            known = None if p.known is None else p.known[rows]
            per_fold.append(probe_lib.score(p.labels[rows], seed[rows], known))
        per_seed.append(np.mean(per_fold))
    return float(np.mean(per_seed))


@pytest.mark.parametrize("multilabel", [False, True])
def test_score_draws_are_the_report_score_of_the_drawn_clips(multilabel):
    rng = np.random.default_rng(1)
    p = _predictions(rng, 90, 5, folds=3, multilabel=multilabel)
    draws = paired.bootstrap_draws(p.fold, 6, np.random.default_rng(2))
    got = paired.score_draws(p, draws)
    for r in range(6):
        rows = [np.repeat(where, w[r].astype(int)) for where, w in draws]
        assert abs(got[r] - _report_score(p, rows)) <= 1e-12
    # Unit weights: the undrawn test set, the report's own mean.
    whole = [(where, np.ones((1, len(where)))) for where, _ in draws]
    unit = paired.score_draws(p, whole)[0]
    assert abs(unit - _report_score(p, [where for where, _ in draws])) <= 1e-12
    # Draws are within folds: every fold keeps its size.
    assert all(np.all(w.sum(axis=1) == len(where)) for where, w in draws)


def _single_label(correct: np.ndarray, seeds=3) -> paired.Predictions:
    """Two-class predictions right exactly where `correct` says, for every seed."""
    n = len(correct)
    labels = np.arange(n) % 2
    guess = np.where(correct, labels, 1 - labels)
    logits = np.repeat(np.eye(2, dtype=np.float32)[guess][None], seeds, axis=0)
    paths = np.array([f"/data/clips/{i}.wav" for i in range(n)])
    return paired.Predictions(np.arange(n), paths, np.zeros(n, np.int32), labels, None, logits)


def _entry(p: paired.Predictions, ci: float) -> dict:
    mean = float((p.logits.argmax(-1) == p.labels).mean())
    return {"task": "pitch", "mean": mean, "ci95": ci}


def test_the_same_hard_clips_are_paired_out():
    # 300 test clips; A right on 249 (83%), B on the same clips but 9 fewer: +3 points. Alone,
    # each score moves by about +-4 points over test draws; the difference, paired, by about 2.
    correct_a = np.zeros(300, bool)
    correct_a[:249] = True
    correct_b = correct_a.copy()
    correct_b[:9] = False
    a, b = _single_label(correct_a), _single_label(correct_b)
    c = paired.compare(_entry(a, 0.005), a, _entry(b, 0.005), b)
    assert abs(c["difference"] - 0.03) < 1e-12 and c["n_test"] == 300
    # sd of the mean of a 0/1 difference that is 1 on 9 of 300 clips.
    expected = 1.96 * math.sqrt(0.03 * 0.97 / 300)
    assert abs(c["clips"] - expected) < 0.15 * expected
    assert c["half"] == math.hypot(c["clips"], 0.005, 0.005)
    assert paired.verdict(c, "A", "B") == "A better"
    # Without the pairing (each clip set drawn apart) the same +3 would be undecided.
    draws_a = paired.bootstrap_draws(a.fold, 1000, np.random.default_rng(5))
    draws_b = paired.bootstrap_draws(a.fold, 1000, np.random.default_rng(6))
    unpaired = paired.score_draws(a, draws_a) - paired.score_draws(b, draws_b)
    assert 1.96 * np.std(unpaired) > 0.05
    # A wide seed interval is combined in: the same clips, undecided.
    wide = paired.compare(_entry(a, 0.03), a, _entry(b, 0.03), b)
    assert wide["clips"] == c["clips"] and paired.verdict(wide, "A", "B") == "undecided"
    assert paired.verdict(paired.compare(_entry(b, 0.005), b, _entry(a, 0.005), a)) == "B better"


def test_independent_errors_at_83_percent_are_undecided():
    # The case: +2.8 points on 300 clips at 83%, seed intervals that do not overlap
    # (the old "outside"), errors on different clips: within test sampling.
    rng = np.random.default_rng(3)
    correct_a = rng.permutation(np.arange(300) < 249)
    correct_b = rng.permutation(np.arange(300) < 241)
    a, b = _single_label(correct_a), _single_label(correct_b)
    c = paired.compare(_entry(a, 0.005), a, _entry(b, 0.005), b)
    assert abs(c["difference"] - 8 / 300) < 1e-12
    assert c["clips"] > 0.04 and paired.verdict(c) == "undecided"


def test_without_predictions_the_interval_is_the_seeds_and_other_clips_are_refused():
    a = _single_label(np.arange(20) < 15)
    c = paired.compare(_entry(a, 0.02), None, _entry(a, None), a)
    assert c["clips"] is None and c["half"] == 0.02 and "seeds alone" in paired.covers(c)
    assert paired.verdict(paired.compare(_entry(a, None), None, _entry(a, None), None)) == (
        "no interval"
    )
    # The same files in another folder (a copied dataset, another suite output) are the same
    # clips; other rows, files or labels are not.
    moved = a._replace(paths=np.char.replace(a.paths, "/data/", "/copy/of/data/"))
    assert paired.compare(_entry(a, 0.02), a, _entry(a, 0.02), moved)["clips"] == 0.0
    # One seed each, the same predictions: nothing to tell them apart.
    assert paired.verdict(paired.compare(_entry(a, None), a, _entry(a, None), a)) == "same"
    for other in (
        a._replace(rows=a.rows[::-1]),
        a._replace(paths=np.char.replace(a.paths, ".wav", ".flac")),
        a._replace(labels=1 - a.labels),
    ):
        with pytest.raises(ValueError, match="did not score the same test clips"):
            paired.compare(_entry(a, 0.02), a, _entry(a, 0.02), other)
