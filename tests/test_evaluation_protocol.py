"""Tests for matpac_jax/evaluation/protocol.py and evaluation/linear.py: the protocol's numerics (scikit-learn
against independent float64 numpy), early stopping, training, the learning-rate grid against
single-lr runs, the EVAR protocol against a plain optax reimplementation of the pre-grid code,
and the protocol over seeds and folds."""

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numerics import assert_close
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from matpac_jax.evaluation import linear as probe_train
from matpac_jax.evaluation import protocol as probe_lib
from matpac_jax.evaluation import tasks as probe_data

# A probe trained by two programs (a vmapped grid, plain optax): each epoch's update carries the
# rounding of the last, so the depth of the comparison (tests/numerics.py) counts the epochs.
PROBE_DEPTH = 64
FAST = probe_lib.ProbeConfig(learning_rates=(1e-2,), max_epochs=40, patience=5)


def test_scaler_matches_float64_numpy_and_sees_only_training_rows(monkeypatch):
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, size=(50, 6)).astype(np.float32)
    x_train[:, 4] = 1.5  # constant feature: scale 1
    x_other = rng.normal(-1.0, 5.0, size=(20, 6)).astype(np.float32)
    scaler = probe_lib.fit_scaler(x_train)
    x64 = x_train.astype(np.float64)
    mean, std = x64.mean(0), x64.std(0)  # population std, ddof 0
    std[4] = 1.0
    expected = ((x_other.astype(np.float64) - mean) / std).astype(np.float32)
    got = probe_lib.standardize(scaler, x_other)
    assert got.dtype == np.float32
    assert_close(got, expected, depth=2)
    np.testing.assert_allclose(probe_lib.standardize(scaler, x_train)[:, 4], 0.0)

    # Inside the protocol the scaler sees the training split (hold-out included), nothing else.
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    seen = []

    def identity(rows):
        seen.append(rows)
        return StandardScaler(with_mean=False, with_std=False).fit(rows)

    monkeypatch.setattr(probe_lib, "fit_scaler", identity)
    part = probe_lib.Partition(np.arange(0, 40), None, np.arange(40, 60))
    probe_lib.evaluate(x, y, [part], num_classes=3, seeds=(7,), cfg=FAST)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], x[:40])


def test_stratified_holdout_is_sklearns_and_keeps_every_class_in_train():
    sizes = [2, 3, 10, 25, 1, 40]
    y = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    train, valid = probe_lib.stratified_holdout(y, 0.1, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(np.r_[train, valid]), np.arange(len(y)))
    assert all((y[train] == c).any() for c in range(6))  # every class is trained on
    assert not (y[valid] == 4).any()  # a single example cannot be on both sides
    assert len(valid) == math.ceil(0.1 * 80)  # sklearn's size: 10% of the 80 splittable rows
    assert (y[valid] == 5).sum() == 4  # stratified: 40 of 80 rows -> half of the hold-out
    again = probe_lib.stratified_holdout(y, 0.1, np.random.default_rng(0))
    np.testing.assert_array_equal(again[1], valid)
    _, other = probe_lib.stratified_holdout(y, 0.1, np.random.default_rng(1))
    assert not np.array_equal(valid, other)

    # More classes than 10% of the rows: one validation row per class (sklearn's minimum).
    y = np.repeat(np.arange(20), 3)
    train, valid = probe_lib.stratified_holdout(y, 0.1, np.random.default_rng(0))
    assert sorted(y[valid]) == list(range(20)) and set(y[train]) == set(range(20))
    with pytest.raises(probe_lib.DataError, match="no class has two training clips"):
        probe_lib.stratified_holdout(np.arange(5), 0.1, np.random.default_rng(0))

    rng = np.random.default_rng(2)
    multi = (rng.random((80, 7)) < np.linspace(0.03, 0.5, 7)).astype(np.float32)
    train, valid = probe_lib.stratified_holdout(multi, 0.1, rng)
    for c in np.flatnonzero(multi.sum(0) >= 2):
        assert multi[valid, c].any() and multi[train, c].any(), c


def _replay(curves, patience):
    """Feeds scripted validation curves (one per member) to `EarlyStopping` as training would."""
    stopping = probe_train.EarlyStopping(len(curves), patience)
    best = [0] * len(curves)  # the epoch whose weights each member keeps
    for epoch in range(1, len(curves[0]) + 1):
        improved = stopping.update([c[epoch - 1] for c in curves])
        best = [epoch if i else b for i, b in zip(improved, best)]
        if stopping.done:
            break
    return best, stopping.results()


def test_early_stopping_on_a_scripted_curve():
    # A tie (epoch 6) moves the best to the later epoch, as EVAR's `>=`.
    curve = [0.1, 0.5, 0.3, 0.7, 0.6, 0.7, 0.65, 0.2, 0.6, 0.5, 0.9, 0.95]
    (kept,), (stop,) = _replay([curve], patience=4)
    assert (kept, stop.best_epoch, stop.epochs_run, stop.best_score) == (6, 6, 10, 0.7)
    assert stop.history == curve[:10] and stop.stopped_early
    (kept,), (stop,) = _replay([curve], patience=5)  # still improving at the cap
    assert (kept, stop.best_epoch, stop.epochs_run, stop.stopped_early) == (12, 12, 12, False)

    # Members are judged apart: the first stops at epoch 10 and its later scores (0.9, 0.95)
    # are ignored, the second keeps improving until the cap; training ran 12 epochs.
    rising = [0.1 * e for e in range(1, 13)]
    kept, (first, second) = _replay([curve, rising], patience=4)
    assert kept == [6, 12] and first.history == curve[:10] and second.history == rising
    assert (first.epochs_run, first.stopped_early, second.epochs_run) == (10, True, 12)
    assert not second.stopped_early
    kept, stops = _replay([curve, curve[:4] + [0.0] * 8], patience=4)  # both stop: training ends
    assert kept == [6, 4] and [s.epochs_run for s in stops] == [10, 8]


def test_training_restores_the_best_validation_weights():
    # Noisy training labels on 64-d inputs: validation accuracy peaks, then falls as the
    # classifier fits the noise. Two learning rates trained together, each restored on its own.
    rng = np.random.default_rng(2)

    def make(n, flip):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 64)).astype(np.float32)
        x[:, 0] += 1.5 * (2 * y - 1)
        return x, np.where(rng.random(n) < flip, 1 - y, y), y

    x_train, y_train, _ = make(40, 0.3)
    x_valid, _, y_valid = make(400, 0.0)
    cfg = probe_lib.ProbeConfig(learning_rates=(1e-2, 3e-3), max_epochs=100, patience=10)
    params, stops = probe_lib.train_linear(
        x_train, y_train, x_valid, y_valid, num_classes=2, seed=0, cfg=cfg
    )
    assert params["w"].shape == (2, 64, 2) and len(stops) == 2
    for g, stop in enumerate(stops):
        assert 1 < stop.best_epoch and stop.epochs_run == stop.best_epoch + cfg.patience < 100
        assert stop.best_score == max(stop.history) > stop.history[-1] + 0.02
        logits = np.asarray(probe_train.predict(probe_train.member(params, g), x_valid), np.float64)
        assert probe_lib.accuracy(y_valid, logits) == stop.best_score
        # The validation loss at the best epoch: softmax cross-entropy, float64 numpy.
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        assert_close(stop.best_loss, -log_p[np.arange(400), y_valid].mean(), depth=3)


def test_ci95_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    v = np.random.default_rng(0).normal(0.8, 0.05, size=5)
    mean, half = probe_lib.ci95(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    np.testing.assert_allclose([mean - half, mean + half], [lo, hi], rtol=1e-12)
    # Three seeds: t_{0.975, 2} = 4.302652729911275 (tables).
    mean, half = probe_lib.ci95([0.7, 0.8, 0.75])
    np.testing.assert_allclose(half, 4.302652729911275 * 0.05 / math.sqrt(3), rtol=1e-9)
    assert probe_lib.ci95([0.5]) == (0.5, None)


def _brute_force_ap(positive, scores):
    """Mean over positives of the precision among the rows scored at least as high (float64)."""
    positive, scores = np.asarray(positive, bool), np.asarray(scores, np.float64)
    precisions = [positive[scores >= s].sum() / (scores >= s).sum() for s in scores[positive]]
    return float(np.mean(precisions))


def test_macro_map_is_sklearns_and_matches_brute_force():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 6)) < 0.3).astype(np.float32)
    y[:, 2] = 0.0  # no positive: left out of the macro average
    for scores in (rng.normal(size=(60, 6)) + 1.5 * y, np.round(rng.random((60, 6)), 1)):
        expected = np.mean([_brute_force_ap(y[:, c], scores[:, c]) for c in (0, 1, 3, 4, 5)])
        got = probe_lib.mean_average_precision(y, scores.astype(np.float32))
        np.testing.assert_allclose(got, expected, rtol=1e-6)  # the second set has many ties
    # Tied scores form one threshold: 0.5 * 1 + 0.5 * (2 / 3).
    ap = probe_lib.average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.5, 0.5, 0.1]))
    np.testing.assert_allclose(ap, 5 / 6, rtol=1e-12)
    assert math.isnan(probe_lib.average_precision(np.zeros(4), np.arange(4.0)))


def test_confusion_matrix_is_sklearns_and_matches_numpy():
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    pred[pred == 4] = 3  # a class never predicted still gets its column
    expected = np.zeros((5, 5), np.int64)
    np.add.at(expected, (y, pred), 1)
    got = probe_lib.confusion_matrix(y, pred, 5)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_kfold_scores_are_fold_means(tmp_path):
    rows = [(f"c{i}.wav", "abc"[i % 3], str(1 + i // 3 % 3)) for i in range(90)]
    for name, _, _ in rows:
        (tmp_path / name).touch()
    with open(tmp_path / "folds.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "fold"), *rows])
    task = probe_data.read_task(str(tmp_path / "folds.csv"))
    parts = task.partitions()
    assert task.kfold and task.folds() == ["1", "2", "3"] and task.classes == ["a", "b", "c"]
    y = task.targets()
    rng = np.random.default_rng(0)
    x = (3 * np.eye(3)[y] @ rng.normal(size=(3, 32)) + rng.normal(size=(90, 32))).astype(np.float32)
    # A grid of two: the choice is made per fold, on validation pooled over the seeds.
    cfg = probe_lib.ProbeConfig(learning_rates=(1e-3, 1e-2), max_epochs=40, patience=5)
    result = probe_lib.evaluate(x, y, parts, num_classes=3, seeds=(0, 1), cfg=cfg)

    runs = {}  # (seed, fold): the grid trained by hand, and its test rows standardised
    for s, seed in enumerate((0, 1)):
        for f, part in enumerate(parts):
            assert set(part.test) == {i for i in range(90) if rows[i][2] == str(f + 1)}
            keep, held = probe_lib.stratified_holdout(
                y[part.train], 0.1, np.random.default_rng([seed, f])
            )
            train, valid = part.train[keep], part.train[held]
            scaler = probe_lib.fit_scaler(x[part.train])
            runs[s, f] = probe_lib.train_linear(
                probe_lib.standardize(scaler, x[train]),
                y[train],
                probe_lib.standardize(scaler, x[valid]),
                y[valid],
                num_classes=3,
                seed=seed,
                cfg=cfg,
            ) + (probe_lib.standardize(scaler, x[part.test]),)
    for f, part in enumerate(parts):
        valid = np.mean([[stop.best_score for stop in runs[s, f][1]] for s in (0, 1)], axis=0)
        loss = np.mean([[stop.best_loss for stop in runs[s, f][1]] for s in (0, 1)], axis=0)
        g = int(np.lexsort((loss, -valid))[0])  # the best mean score; ties: the lower mean loss
        for s in (0, 1):
            params, stops, test_x = runs[s, f]
            logits = np.asarray(probe_train.predict(probe_train.member(params, g), test_x))
            assert result["valid_by_lr"][s][f] == [stop.best_score for stop in stops]
            assert result["learning_rate"][s][f] == cfg.learning_rates[g]  # both seeds: one lr
            assert result["fold_scores"][s][f] == probe_lib.accuracy(y[part.test], logits)
            assert result["best_epoch"][s][f] == stops[g].best_epoch
    for s in (0, 1):
        assert result["scores"][s] == pytest.approx(np.mean(result["fold_scores"][s]))
    assert result["mean"] == pytest.approx(np.mean(result["scores"])) and result["mean"] > 0.8
    assert result["n_test"] == [30, 30, 30] and np.sum(result["confusion"]) == 180


def test_multilabel_task_scores_map(tmp_path):
    labels = ["a;b", "b", "c;a", "a", "b;c", "c"] * 8
    for i in range(len(labels)):
        (tmp_path / f"{i}.wav").touch()
    splits = ["train"] * 36 + ["test"] * 12
    with open(tmp_path / "ml.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ("path", "label", "split"),
                *((f"{i}.wav", lab, s) for i, (lab, s) in enumerate(zip(labels, splits))),
            ]
        )
    task = probe_data.read_task(str(tmp_path / "ml.csv"))
    y = task.targets()
    assert task.multilabel and y.shape == (48, 3) and y[0].tolist() == [1, 1, 0]
    x = (y @ np.random.default_rng(0).normal(size=(3, 16))).astype(np.float32)
    x += 0.3 * np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    result = probe_lib.evaluate(x, y, task.partitions(), num_classes=3, seeds=(0,), cfg=FAST)
    assert result["mean"] > 0.9 and "confusion" not in result
    assert result["n_train"] == [32] and result["n_valid"] == [4]


# ---------------------------------------------------------------------------------------------
# The learning-rate grid, and the EVAR protocol unchanged by it.


def test_protocol_configs():
    assert probe_lib.GRID == probe_lib.ProbeConfig() and probe_lib.GRID.protocol == "grid"
    assert probe_lib.GRID.learning_rates == probe_lib.LR_GRID
    assert list(probe_lib.LR_GRID) == sorted(probe_lib.LR_GRID) and 3e-5 in probe_lib.LR_GRID
    assert probe_lib.EVAR.learning_rates == (3e-5,) and probe_lib.EVAR.protocol == "evar"
    one = probe_lib.ProbeConfig(learning_rates=[1e-3])  # a list (JSON) is stored as a tuple
    assert one.learning_rates == (1e-3,) and one.protocol == "fixed" and hash(one)
    for bad in ((), (1e-3, 0.0)):
        with pytest.raises(ValueError, match="learning_rates"):
            probe_lib.ProbeConfig(learning_rates=bad)


def test_select_lr_takes_the_best_validation_score_then_the_lower_loss_then_the_smaller_lr():
    lrs = (3e-5, 1e-4, 1e-3, 1e-2)
    losses = [0.5, 0.4, 0.3, 0.2]
    assert probe_lib.select_lr([0.2, 0.5, 0.9, 0.7], losses, lrs) == 2
    assert probe_lib.select_lr([0.2, 0.9, 0.9, 0.8], losses, lrs) == 2  # tie: lower loss
    assert probe_lib.select_lr([0.9, 0.9, 0.9], [0.3, 0.1, 0.1], lrs[:3]) == 1  # then smaller lr
    assert probe_lib.select_lr([0.9, 0.5, 0.9], [0.2, 0.1, 0.2], (1e-2, 1e-3, 1e-4)) == 2
    nan = math.nan
    assert probe_lib.select_lr([-math.inf] * 2, [nan, nan], (1e-3, 1e-2)) == 0  # no epoch ran


def _toy(seed=1, n=120, dim=32, classes=4):
    """Weakly separable classes: validation accuracy depends clearly on the learning rate within
    the few epochs allowed."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    means = rng.normal(size=(classes, dim))
    x = (0.6 * np.eye(classes)[y] @ means + rng.normal(size=(n, dim))).astype(np.float32)
    part = probe_lib.Partition(np.arange(0, 80), np.arange(80, 100), np.arange(100, 120))
    return x, y, part


def test_the_rate_is_chosen_from_the_seeds_mean_validation_score(monkeypatch):
    """Seed 0's validation prefers the first rate, seeds 1 and 2 the second, and their mean
    the second: every seed's classifier is the second rate's (a choice from seed 0 alone, or
    one per seed, would give seed 0 the first)."""
    x, y, part = _toy()
    lrs = (1e-4, 1e-3, 1e-2)
    crafted = {0: [0.9, 0.2, 0.1], 1: [0.1, 0.8, 0.7], 2: [0.1, 0.8, 0.7]}  # means .37 .6 .5
    real_grid = probe_lib._grid  # pylint: disable=protected-access

    def grid(x, y, part, seed, *args):
        out = real_grid(x, y, part, seed, *args)
        return {**out, "valid_by_lr": crafted[seed], "valid_loss_by_lr": [1.0, 1.0, 1.0]}

    monkeypatch.setattr(probe_lib, "_grid", grid)
    cfg = probe_lib.ProbeConfig(learning_rates=lrs, max_epochs=3, patience=3)
    result = probe_lib.evaluate(x, y, [part], num_classes=4, seeds=(0, 1, 2), cfg=cfg)
    assert [row[0] for row in result["learning_rate"]] == [1e-3] * 3


def test_grid_chooses_the_lr_that_single_runs_score_best_on_validation():
    x, y, part = _toy()
    seeds = (0, 1, 2)
    grid = probe_lib.ProbeConfig(max_epochs=40, patience=10)
    result = probe_lib.evaluate(x, y, [part], num_classes=4, seeds=seeds, cfg=grid)
    single = []  # the single-lr path, one lr at a time
    for lr in grid.learning_rates:
        cfg = probe_lib.ProbeConfig(learning_rates=(lr,), max_epochs=40, patience=10)
        single.append(probe_lib.evaluate(x, y, [part], num_classes=4, seeds=seeds, cfg=cfg))
    for s in range(len(seeds)):
        valid = np.array([r["valid_by_lr"][s][0][0] for r in single])  # one score per lr
        loss = np.array([r["valid_loss_by_lr"][s][0][0] for r in single])
        # The grid (one vmapped program) and the single runs are two programs whose weights
        # differ by rounding (losses: rtol). Accuracies and epochs are discrete: equal unless
        # a validation example lies within rounding of the boundary at some epoch.
        np.testing.assert_array_equal(result["valid_by_lr"][s][0], valid)
        assert_close(result["valid_loss_by_lr"][s][0], loss, depth=PROBE_DEPTH)
        assert valid.max() > valid.min() + 0.2  # the toy makes the choice matter
    # The best validation score averaged over the seeds; ties: the lower mean loss (lexsort's
    # last key is the primary one). One learning rate for every seed.
    mean_valid = np.mean([[r["valid_by_lr"][s][0][0] for r in single] for s in range(3)], axis=0)
    mean_loss = np.mean([r["valid_loss_by_lr"] for r in single], axis=(1, 2, 3))
    g = int(np.lexsort((mean_loss, -mean_valid))[0])
    chosen = single[g]
    for s in range(len(seeds)):
        assert result["learning_rate"][s][0] == grid.learning_rates[g]
        np.testing.assert_allclose(
            result["fold_scores"][s][0], chosen["fold_scores"][s][0], rtol=0, atol=1e-6
        )
        assert result["best_epoch"][s][0] == chosen["best_epoch"][s][0]
        assert result["epochs_run"][s][0] == chosen["epochs_run"][s][0]

    # The choice never looks at the test rows: other test labels, same choices.
    y_other = y.copy()
    y_other[part.test] = (y[part.test] + 1) % 4
    other = probe_lib.evaluate(x, y_other, [part], num_classes=4, seeds=seeds, cfg=grid)
    assert other["learning_rate"] == result["learning_rate"]
    assert other["valid_by_lr"] == result["valid_by_lr"]


def _pre_grid_run(x_train, y_train, x_valid, y_valid, x_test, *, num_classes, seed, lr):
    """The single-classifier EVAR training as it was before the grid, in plain optax (unbatched,
    `optax.adam(lr)`, best weights kept on the host): (test logits, best epoch, epochs run)."""
    tx = optax.chain(optax.add_decayed_weights(1e-8), optax.adam(lr))
    batch = min(200, len(x_train))
    predict = jax.jit(lambda p, x: x @ p["w"] + p["b"])

    def loss_fn(params, x, y, mask):
        per_row = optax.softmax_cross_entropy_with_integer_labels(predict(params, x), y)
        return jnp.sum(per_row / num_classes * mask) / jnp.sum(mask)

    @jax.jit
    def epoch(params, opt_state, key, x, y):
        n = x.shape[0]
        num_batches = -(-n // batch)
        idx = jnp.concatenate(
            [jax.random.permutation(key, n), jnp.zeros(num_batches * batch - n, jnp.int32)]
        )
        mask = (jnp.arange(num_batches * batch) < n).astype(jnp.float32)

        def step(carry, b):
            grads = jax.grad(loss_fn)(carry[0], x[b[0]], y[b[0]], b[1])
            updates, opt_state = tx.update(grads, carry[1], carry[0])
            return (optax.apply_updates(carry[0], updates), opt_state), None

        batches = (idx.reshape(num_batches, batch), mask.reshape(num_batches, batch))
        return jax.lax.scan(step, (params, opt_state), batches)[0]

    init_key, shuffle_key = jax.random.split(jax.random.key(seed))
    params = probe_train.init_linear(init_key, x_train.shape[1], num_classes)
    state, best, best_epoch, best_score = (params, tx.init(params)), params, 0, -math.inf
    for e in range(1, 201):
        state = epoch(*state, jax.random.fold_in(shuffle_key, e), x_train, y_train)
        valid = float(np.mean(np.argmax(np.asarray(predict(state[0], x_valid)), -1) == y_valid))
        if valid >= best_score:
            best, best_epoch, best_score = state[0], e, valid
        elif e - best_epoch >= 20:
            break
    return np.asarray(predict(best, x_test)), best_epoch, e


def test_evar_protocol_is_the_pre_grid_single_run_bit_for_bit():
    x, y, part = _toy(seed=3, dim=48, classes=3)
    scaler = probe_lib.fit_scaler(x[part.train])
    xs = [probe_lib.standardize(scaler, x[rows]) for rows in part]
    result = probe_lib.evaluate(x, y, [part], num_classes=3, seeds=(0, 1), cfg=probe_lib.EVAR)
    for s, seed in enumerate((0, 1)):
        logits, best_epoch, epochs = _pre_grid_run(
            xs[0], y[part.train], xs[1], y[part.valid], xs[2], num_classes=3, seed=seed, lr=3e-5
        )
        accuracy = float(np.mean(np.argmax(logits, -1) == y[part.test]))
        assert result["fold_scores"][s] == [accuracy] and result["learning_rate"][s] == [3e-5]
        assert result["best_epoch"][s] == [best_epoch] and result["epochs_run"][s] == [epochs]
        params, _ = probe_lib.train_linear(
            xs[0], y[part.train], xs[1], y[part.valid], num_classes=3, seed=seed, cfg=probe_lib.EVAR
        )
        got = np.asarray(probe_train.predict(probe_train.member(params, 0), xs[2]))
        # Plain optax against the library's batched training: two compiled programs, equal up to
        # float32 rounding. The discrete outcomes above (scores, epochs) are equal unless a
        # validation example lies within rounding of the boundary at some epoch.
        assert_close(got, logits, depth=PROBE_DEPTH)


# ---------------------------------------------------------------------------------------------
# Partial labels (OpenMIC-2018): a label mask in the loss, the training and the metrics.


def _multilabel(seed=0, n=40, classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    y = (rng.random((n, classes)) < 0.4).astype(np.float32)
    known = np.ones_like(y)
    known[5, 2] = known[11, 0] = 0.0
    flipped = y.copy()
    flipped[5, 2], flipped[11, 0] = 1 - y[5, 2], 1 - y[11, 0]
    return logits, y, known, flipped


def _np_masked_bce(logits, y, known):
    z = logits.astype(np.float64)
    per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    return (per * known).sum() / known.sum()


def test_a_masked_label_changes_neither_loss_nor_metrics_and_unmasking_changes_them():
    logits, y, known, flipped = _multilabel()

    def loss(labels, mask):
        return float(probe_train.multilabel_loss(*map(jnp.asarray, (logits, labels, mask))))

    metrics = (probe_lib.mean_average_precision, probe_lib.mean_roc_auc)
    # Masked: the label's value is not seen (the same program on other inputs: exact).
    assert loss(flipped, known) == loss(y, known)
    assert probe_train.validation_loss(flipped, logits, known) == probe_train.validation_loss(
        y, logits, known
    )
    for metric in metrics:
        assert metric(flipped, logits, known) == metric(y, logits, known)
    # Unmasked: the same change moves every one of them.
    everything = np.ones_like(known)
    assert loss(flipped, everything) != loss(y, everything)
    for metric in metrics:
        assert metric(flipped, logits, everything) != metric(y, logits, everything)
    # Against float64 numpy and scikit-learn on the known rows alone.
    assert_close(loss(y, known), _np_masked_bce(logits, y, known), depth=2)
    assert probe_train.validation_loss(y, logits, known) == pytest.approx(
        _np_masked_bce(logits, y, known), rel=1e-12
    )
    keep = known[:, 2] > 0
    ap = average_precision_score(y[keep, 2], logits[keep, 2])
    auc = roc_auc_score(y[keep, 2], logits[keep, 2])
    assert probe_lib.average_precision(y[:, 2], logits[:, 2], known[:, 2]) == pytest.approx(ap)
    assert probe_lib.roc_auc(y[:, 2], logits[:, 2], known[:, 2]) == pytest.approx(auc)
    # No mask is the mask of ones.
    assert probe_lib.mean_average_precision(y, logits) == probe_lib.mean_average_precision(
        y, logits, everything
    )


def test_masked_labels_do_not_train_the_probe():
    x, _, _ = _toy(seed=4, dim=16, classes=3)
    _, y, known, flipped = _multilabel(seed=1, n=len(x), classes=3)
    part = probe_lib.Partition(np.arange(0, 80), np.arange(80, 100), np.arange(100, 120))
    cfg = probe_lib.ProbeConfig(learning_rates=(1e-3, 1e-2), max_epochs=5, patience=5)

    def fit(labels, mask):
        return probe_lib.train_linear(
            x[part.train], labels[part.train], x[part.valid], labels[part.valid],
            num_classes=3, seed=0, cfg=cfg,
            known_train=mask[part.train], known_valid=mask[part.valid],
        )[0]  # fmt: skip

    same, other = fit(y, known), fit(flipped, known)
    jax.tree.map(np.testing.assert_array_equal, same, other)  # one program, the same numbers
    moved = fit(flipped, np.ones_like(known))
    assert not np.array_equal(moved["w"], same["w"])
    result = probe_lib.evaluate(x, y, [part], num_classes=3, seeds=(0, 1), cfg=cfg, known=known)
    assert len(result["fold_auc"]) == 2 and 0 <= result["auc_mean"] <= 1
    assert result["auc_scores"] == [f[0] for f in result["fold_auc"]]
    with pytest.raises(ValueError, match="label mask"):
        probe_lib.evaluate(x, y, [part], num_classes=3, cfg=cfg, known=known[:, :2])
