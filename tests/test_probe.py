"""Tests for matpac_jax/probe.py and matpac_jax/probe_lib.py: protocol numerics (sklearn
against independent float64 numpy), warnings, the confusion picture, and the command as a user
types it (a subprocess from another directory, relative paths, one-line errors)."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import subprocess_env
from sklearn.preprocessing import StandardScaler

from matpac_jax import probe, probe_lib

FAST = probe_lib.ProbeConfig(learning_rate=1e-2, max_epochs=40, patience=5)


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
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
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


def test_early_stopping_on_a_scripted_curve():
    # A tie (epoch 6) moves the best to the later epoch, as EVAR's `>=`.
    curve = [0.1, 0.5, 0.3, 0.7, 0.6, 0.7, 0.65, 0.2, 0.6, 0.5, 0.9, 0.95]

    def fit(patience):
        return probe_lib.early_stopping(
            lambda state, epoch: epoch,
            lambda state: curve[state - 1],
            0,
            max_epochs=len(curve),
            patience=patience,
        )

    state, stop = fit(patience=4)
    assert (state, stop.best_epoch, stop.epochs_run, stop.best_score) == (6, 6, 10, 0.7)
    assert stop.history == curve[:10] and stop.stopped_early
    state, stop = fit(patience=5)  # still improving at the cap: not stopped by patience
    assert (state, stop.best_epoch, stop.epochs_run, stop.stopped_early) == (12, 12, 12, False)


def test_training_restores_the_best_validation_weights():
    # Noisy training labels on 64-d inputs: validation accuracy peaks, then falls as the
    # classifier fits the noise.
    rng = np.random.default_rng(2)

    def make(n, flip):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 64)).astype(np.float32)
        x[:, 0] += 1.5 * (2 * y - 1)
        return x, np.where(rng.random(n) < flip, 1 - y, y), y

    x_train, y_train, _ = make(40, 0.3)
    x_valid, _, y_valid = make(400, 0.0)
    cfg = probe_lib.ProbeConfig(learning_rate=1e-2, max_epochs=100, patience=10)
    params, stop = probe_lib.train_linear(
        x_train, y_train, x_valid, y_valid, num_classes=2, seed=0, cfg=cfg
    )
    assert 1 < stop.best_epoch and stop.epochs_run == stop.best_epoch + cfg.patience < 100
    assert stop.best_score == max(stop.history) > stop.history[-1] + 0.02
    restored = probe_lib.accuracy(y_valid, np.asarray(probe_lib.predict(params, x_valid)))
    assert restored == stop.best_score


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
    task = probe.read_task(str(tmp_path / "folds.csv"))
    parts = task.partitions()
    assert task.kfold and task.folds() == ["1", "2", "3"] and task.classes == ["a", "b", "c"]
    y = task.targets()
    rng = np.random.default_rng(0)
    x = (3 * np.eye(3)[y] @ rng.normal(size=(3, 32)) + rng.normal(size=(90, 32))).astype(np.float32)
    result = probe_lib.evaluate(x, y, parts, num_classes=3, seeds=(0, 1), cfg=FAST)

    for s, seed in enumerate((0, 1)):
        for f, part in enumerate(parts):
            assert set(part.test) == {i for i in range(90) if rows[i][2] == str(f + 1)}
            keep, held = probe_lib.stratified_holdout(
                y[part.train], 0.1, np.random.default_rng([seed, f])
            )
            train, valid = part.train[keep], part.train[held]
            scaler = probe_lib.fit_scaler(x[part.train])
            params, stop = probe_lib.train_linear(
                probe_lib.standardize(scaler, x[train]),
                y[train],
                probe_lib.standardize(scaler, x[valid]),
                y[valid],
                num_classes=3,
                seed=seed,
                cfg=FAST,
            )
            logits = probe_lib.predict(params, probe_lib.standardize(scaler, x[part.test]))
            logits = np.asarray(logits)
            assert result["fold_scores"][s][f] == probe_lib.accuracy(y[part.test], logits)
            assert result["best_epoch"][s][f] == stop.best_epoch
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
    task = probe.read_task(str(tmp_path / "ml.csv"))
    y = task.targets()
    assert task.multilabel and y.shape == (48, 3) and y[0].tolist() == [1, 1, 0]
    x = (y @ np.random.default_rng(0).normal(size=(3, 16))).astype(np.float32)
    x += 0.3 * np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    result = probe_lib.evaluate(x, y, task.partitions(), num_classes=3, seeds=(0,), cfg=FAST)
    assert result["mean"] > 0.9 and "confusion" not in result
    assert result["n_train"] == [32] and result["n_valid"] == [4]


def test_natural_class_order():
    assert probe_lib.natural_order(["10", "2", "1.5", "-3"]) == ["-3", "1.5", "2", "10"]
    pitch = ["A", "A#", "B", "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#"]
    assert probe_lib.natural_order(pitch) == pitch[3:] + pitch[:3]
    assert probe_lib.natural_order(["C4", "A3", "C#4", "Bb3", "B3"]) == [
        "A3",
        "Bb3",
        "B3",
        "C4",
        "C#4",
    ]
    assert probe_lib.natural_order(["dog", "Cat", "bird"]) == ["Cat", "bird", "dog"]
    assert probe_lib.natural_order(["C", "C4"]) == ["C", "C4"]  # mixed: alphabetical


def test_confusion_picture(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    classes = ["A", "C", "C#", "G"]  # drawn C, C#, G, A
    matrix = np.array([[5, 0, 1, 0], [0, 7, 0, 0], [2, 0, 3, 0], [0, 0, 0, 0]])
    path = tmp_path / "c.png"
    probe_lib.plot_confusion(matrix, classes, str(path), title="pitch, encoder x")
    pixels = image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200


class BandEnergies:
    """Fake featurizer: log energy in 24 FFT bands, fixed random projection to 4096 dims.

    About as wide as the encoder's 3,840: at the protocol's lr 3e-5 a logit moves in proportion
    to the width, so a narrow fake would stop, on a 9-clip validation set, still half-trained.
    """

    def __init__(self):
        self.calls = 0
        self.projection = np.random.default_rng(0).normal(size=(24, 4096))

    def embed(self, audio, sample_rate):
        self.calls += 1
        assert sample_rate == 16_000 and len({len(a) for a in audio}) == 1
        spec = np.abs(np.fft.rfft(np.stack(audio), axis=1)) ** 2
        bands = np.stack([b.sum(1) for b in np.array_split(spec, 24, axis=1)], axis=1)
        return np.log(bands + 1e-6) @ self.projection


class Broken:
    def embed(self, audio, sample_rate):
        raise AssertionError("embeddings should have come from the cache")


def _write_tone_corpus(root):
    """DIR/clips/*.wav tones at three frequencies, DIR/tasks/tones.csv relative to DIR."""
    rng = np.random.default_rng(0)
    os.makedirs(root / "clips")
    os.makedirs(root / "tasks")
    rows = []
    for i in range(42):
        label = ("low", "mid", "high")[i % 3]
        freq = {"low": 220.0, "mid": 880.0, "high": 3520.0}[label] * rng.uniform(0.97, 1.03)
        t = np.arange(int(16_000 * rng.uniform(0.4, 0.6))) / 16_000
        wave = 0.3 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6)) + 0.01 * rng.normal(
            size=t.size
        )
        sf.write(root / "clips" / f"{i}.wav", wave, 16_000)
        split = "train" if i < 24 else "valid" if i < 33 else "test"
        rows.append((f"clips/{i}.wav", label, split))
    with open(root / "tasks" / "tones.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    return root / "tasks" / "tones.csv"


def test_run_end_to_end_and_cache(tmp_path, capsys):
    task_csv = _write_tone_corpus(tmp_path / "corpus")
    fake = BandEnergies()
    out = tmp_path / "out"
    report = probe.run("fake", [str(task_csv)], str(out), featurizer=fake)
    (entry,) = report["tasks"]
    assert entry == json.loads((out / "report.json").read_text())["tasks"][0]
    assert entry["task"] == "tones" and entry["metric"] == "accuracy" and entry["mean"] >= 0.9
    assert (entry["n_train"], entry["n_valid"], entry["n_test"]) == ([24], [9], [9])
    assert entry["clip_seconds"] == 0.5 and entry["embedding_dim"] == 4096
    assert len(entry["scores"]) == 3 and entry["ci95"] is not None
    for best, run, stopped in zip(entry["best_epoch"], entry["epochs_run"], entry["stopped_early"]):
        assert run == [min(200, best[0] + 20)] and stopped == [run[0] < 200]
    assert np.array(entry["confusion"]).sum() == 27 and fake.calls == 1
    assert "| tones | accuracy |" in (out / "report.md").read_text()
    assert (
        entry["confusion_png"] == "confusion_tones.png" and (out / "confusion_tones.png").exists()
    )

    # Same encoder, task and clip length: the embeddings come from the cache.
    again = probe.run(
        "fake",
        [str(task_csv)],
        str(tmp_path / "again"),
        featurizer=Broken(),
        cache_dir=str(out / "cache"),
    )["tasks"][0]
    assert again["scores"] == entry["scores"]

    capsys.readouterr()
    assert probe.main(["table", str(out), str(tmp_path / "again"), "--names", "A", "B"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| task | A | B |"
    assert table[2].startswith("| tones (accuracy) | **") and table[2].count("**") == 4


def _write_wavs(root, names, seconds=0.3):
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, 0.1 * rng.normal(size=int(16_000 * seconds)), 16_000)


def _write_csv(path, rows, header=("path", "label", "split")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def test_warnings_are_printed_and_recorded(tmp_path, capsys):
    # 'solo' has one training clip, 'ghost' is only in test, and 3 epochs cannot trigger
    # early stopping (patience 20).
    rows = [(f"{i}.wav", "ab"[i % 2], "train") for i in range(12)]
    rows += [("12.wav", "solo", "train"), ("13.wav", "a", "test"), ("14.wav", "ghost", "test")]
    _write_wavs(tmp_path, [r[0] for r in rows])
    _write_csv(tmp_path / "odd.csv", rows)
    cfg = probe_lib.ProbeConfig(max_epochs=3, learning_rate=1e-3)
    report = probe.run(
        "logmel", [str(tmp_path / "odd.csv")], str(tmp_path / "out"), seeds=2, cfg=cfg
    )
    warnings = report["tasks"][0]["warnings"]
    assert (
        warnings
        == json.loads((tmp_path / "out" / "report.json").read_text())["tasks"][0]["warnings"]
    )
    assert warnings[:2] == [  # classes in their natural (here alphabetical) order
        "class 'ghost' is in the test rows but not in train: the classifier cannot learn it",
        "class 'solo' has 1 training clip: too few to learn from or to hold out for validation",
    ]
    assert [w.split(":")[0] for w in warnings[2:]] == ["seed 0", "seed 1"]
    assert all("hit the 3-epoch cap before early stopping" in w for w in warnings[2:])
    err = capsys.readouterr().err.splitlines()
    for w in warnings:
        assert f"{probe.PROG}: warning: odd: {w}" in err
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Warnings" in md and "- odd: class 'ghost'" in md

    # k-fold: each fold's training split is checked on its own.
    rows = [(f"{i}.wav", "ab"[i % 2], str(1 + i % 3)) for i in range(12)] + [("12.wav", "c", "2")]
    _write_csv(tmp_path / "folds.csv", rows, ("path", "label", "fold"))
    task = probe.read_task(str(tmp_path / "folds.csv"))
    few = "has 1 training clip ({}): too few to learn from or to hold out for validation"
    assert probe.data_warnings(task) == [
        "class 'c' " + few.format("fold 1"),
        "class 'c' is in the test rows but not in train (fold 2): the classifier cannot learn it",
        "class 'c' " + few.format("fold 3"),
    ]


# ---------------------------------------------------------------------------------------------
# The command as a user types it.


def _cli(cwd, *args, timeout=300):
    """`python -m matpac_jax.probe ARGS` from `cwd`: (exit status, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "matpac_jax.probe", *args],
        check=False,
        cwd=cwd,
        env=subprocess_env(devices=1),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_with_relative_paths_from_another_directory(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    _write_tone_corpus(tmp_path / "corpus")
    args = ["--task_csv", "corpus/tasks/tones.csv", "--seeds", "2", "--lr", "1e-2"]
    code, out, err = _cli(tmp_path, "--encoder", "logmel", *args, "--out", "runs/logmel")
    assert code == 0, err
    assert "Traceback" not in err and out.endswith("-> runs/logmel/report.md\n")
    report = json.loads((tmp_path / "runs/logmel/report.json").read_text())
    (entry,) = report["tasks"]
    assert report["encoder"] == "logmel" and report["protocol"]["learning_rate"] == 1e-2
    assert entry["embedding_dim"] == 160 and entry["mean"] > 0.6
    assert entry["csv"] == str(tmp_path / "corpus/tasks/tones.csv")
    assert (
        "![confusion matrix of tones](confusion_tones.png)"
        in (tmp_path / "runs/logmel/report.md").read_text()
    )
    assert image.imread(tmp_path / "runs/logmel/confusion_tones.png").ndim == 3

    code, out, err = _cli(
        tmp_path, "--encoder", "random:mu", *args, "--out", "runs/mu", "--seeds", "1"
    )
    assert code == 0, err
    code, out, err = _cli(tmp_path, "table", "runs/logmel", "runs/mu", "--out", "runs/table.md")
    assert code == 0, err
    assert out == (tmp_path / "runs/table.md").read_text()
    assert out.splitlines()[0] == "| task | logmel | random:mu |"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory of small inputs, good and bad; the bad-input cases run from it."""
    w = tmp_path_factory.mktemp("cwd")
    names = [f"clips/{i}.wav" for i in range(8)]
    _write_wavs(w, names, seconds=0.1)
    good = [(n, "ab"[i % 2], "train" if i < 6 else "test") for i, n in enumerate(names)]
    _write_csv(w / "good.csv", good)
    _write_csv(w / "columns.csv", good, header=("file", "label", "set"))
    _write_csv(w / "splits.csv", good[:3] + [(names[3], "b", "training")] + good[4:])
    _write_csv(w / "notest.csv", [(n, lab, "train") for n, lab, _ in good])
    _write_csv(w / "missing.csv", good + [(f"gone/{i}.wav", "a", "train") for i in range(5)])
    (w / "a_folder").mkdir()
    (w / "somefile.txt").write_text("a file, not a folder")
    (w / "empty_run").mkdir()
    return w


def _unwritable_out(w):
    """A path whose parent this user cannot write (root writes anywhere but /proc/sys)."""
    if os.geteuid() != 0:
        (w / "locked").mkdir(mode=0o555, exist_ok=True)
        return "locked/out", "locked is not writable"
    if os.access("/proc/sys", os.W_OK):
        pytest.skip("running as root with a writable /proc/sys: no unwritable folder to use")
    return "/proc/sys/matpac_probe_out", "/proc/sys is not writable"


LOGMEL = ["--encoder", "logmel", "--task_csv"]
BAD_INPUTS = {
    "missing CSV": (LOGMEL + ["nope.csv", "--out", "o"], "--task_csv nope.csv: no such task CSV"),
    "CSV is a folder": (LOGMEL + ["a_folder", "--out", "o"], "a_folder: is a folder, expected"),
    "wrong columns": (
        LOGMEL + ["columns.csv", "--out", "o"],
        "columns.csv: needs the columns path,label,split or path,label,fold; found: "
        + "file, label, set",
    ),
    "unknown split": (
        LOGMEL + ["splits.csv", "--out", "o"],
        "splits.csv: unknown split 'training' (first at line 5); allowed: train, valid, test",
    ),
    "no test rows": (LOGMEL + ["notest.csv", "--out", "o"], "notest.csv: no test rows"),
    "missing audio": (
        LOGMEL + ["missing.csv", "--out", "o"],
        "missing.csv: 5 of 13 audio files not found under . or ",
    ),
    "out under a file": (
        LOGMEL + ["good.csv", "--out", "somefile.txt/x"],
        "--out somefile.txt/x: cannot be created",
    ),
    "out not writable": (LOGMEL + ["good.csv", "--out", None], "cannot be created"),
    "nonsense encoder": (
        ["--encoder", "nonsense", "--task_csv", "good.csv", "--out", "o"],
        "encoder 'nonsense': no such path; an encoder is an export folder",
    ),
    "unknown variant": (
        ["--encoder", "random:XYZ", "--task_csv", "good.csv", "--out", "o"],
        "encoder 'random:XYZ': unknown variant 'XYZ'; known: Ti, S, B, mu",
    ),
    "no seeds": (LOGMEL + ["good.csv", "--out", "o", "--seeds", "0"], "--seeds 0: must be at"),
    "negative lr": (LOGMEL + ["good.csv", "--out", "o", "--lr", "-1"], "--lr -1: must be greater"),
    "zero clip": (LOGMEL + ["good.csv", "--out", "o", "--clip_seconds", "0"], "--clip_seconds 0"),
    "table without report": (["table", "empty_run"], "empty_run: no report.json in this folder"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(work, case):
    args, expected = BAD_INPUTS[case]
    if None in args:
        out, expected = _unwritable_out(work)
        args = [out if a is None else a for a in args]
    before = sorted(os.listdir(work))
    code, _, err = _cli(work, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{probe.PROG}: error: ") and expected in lines[0], lines[0]
    assert sorted(os.listdir(work)) == before  # no output folder, no cache left behind
