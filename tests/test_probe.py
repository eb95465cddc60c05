"""Tests for matpac_jax/probe.py and matpac_jax/probe_lib.py: protocol numerics and the CLI."""

import csv
import json
import math
import os
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf

from matpac_jax import probe, probe_lib

FAST = probe_lib.ProbeConfig(learning_rate=1e-2, max_epochs=40, patience=5)


def test_scaler_matches_numpy_and_sees_only_training_rows(monkeypatch):
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, size=(50, 6))
    x_train[:, 4] = 1.5  # constant feature: scale 1, as sklearn
    x_other = rng.normal(-1.0, 5.0, size=(20, 6))
    scaler = probe_lib.fit_scaler(x_train)
    mean, std = x_train.mean(0), x_train.std(0)
    std[4] = 1.0
    np.testing.assert_allclose(scaler.transform(x_other), (x_other - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(scaler.transform(x_train)[:, 4], 0.0)

    # Inside the protocol the scaler sees the training split (hold-out included), nothing else.
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    seen = []
    monkeypatch.setattr(
        probe_lib, "fit_scaler", lambda rows: seen.append(rows) or probe_lib.Scaler(0.0, 1.0)
    )
    part = probe_lib.Partition(np.arange(0, 40), None, np.arange(40, 60))
    probe_lib.evaluate(x, y, [part], num_classes=3, seeds=(7,), cfg=FAST)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], x[:40])


def test_stratified_holdout_keeps_every_class():
    y = np.concatenate([np.full(n, c) for c, n in enumerate([2, 3, 10, 25, 1, 40])])
    train, valid = probe_lib.stratified_holdout(y, 0.1, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(np.r_[train, valid]), np.arange(len(y)))
    for c in (0, 1, 2, 3, 5):
        assert (y[valid] == c).any() and (y[train] == c).any(), c
    assert not (y[valid] == 4).any()  # a single example cannot be on both sides
    assert [int((y[valid] == c).sum()) for c in range(6)] == [1, 1, 1, 2, 0, 4]
    _, other = probe_lib.stratified_holdout(y, 0.1, np.random.default_rng(1))
    assert not np.array_equal(valid, other)

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
    assert stop.history == curve[:10]
    state, stop = fit(patience=5)
    assert (state, stop.best_epoch, stop.epochs_run) == (12, 12, 12)


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
    """Mean over positives of the precision among the rows scored at least as high."""
    precisions = [
        positive[scores >= s].sum() / (scores >= s).sum() for s in scores[positive.astype(bool)]
    ]
    return float(np.mean(precisions))


def test_macro_map_against_brute_force():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 6)) < 0.3).astype(np.float32)
    y[:, 2] = 0.0  # no positive: left out of the macro average
    scores = rng.normal(size=(60, 6)) + 1.5 * y
    expected = np.mean([_brute_force_ap(y[:, c], scores[:, c]) for c in (0, 1, 3, 4, 5)])
    np.testing.assert_allclose(probe_lib.mean_average_precision(y, scores), expected, rtol=1e-12)
    # Tied scores form one threshold: 0.5 * 1 + 0.5 * (2 / 3).
    ap = probe_lib.average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.5, 0.5, 0.1]))
    np.testing.assert_allclose(ap, 5 / 6, rtol=1e-12)


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
                scaler.transform(x[train]),
                y[train],
                scaler.transform(x[valid]),
                y[valid],
                num_classes=3,
                seed=seed,
                cfg=FAST,
            )
            logits = np.asarray(probe_lib.predict(params, scaler.transform(x[part.test])))
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


def test_png_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    png = probe_lib.encode_png(rgb)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            kind + data
        )
        chunks[kind] = data
        pos += 12 + length
    assert struct.unpack(">II", chunks[b"IHDR"][:8]) == (7, 5)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(5, 1 + 7 * 3)
    np.testing.assert_array_equal(raw[:, 1:].reshape(5, 7, 3), rgb)


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


def test_cli_end_to_end(tmp_path, monkeypatch, capsys):
    task_csv = _write_tone_corpus(tmp_path / "corpus")
    fake = BandEnergies()
    monkeypatch.setattr(probe, "load_featurizer", lambda spec: fake)
    out = tmp_path / "out"
    argv = ["--encoder", "fake", "--task_csv", str(task_csv), "--out", str(out)]
    assert probe.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    (entry,) = report["tasks"]
    assert entry["task"] == "tones" and entry["metric"] == "accuracy" and entry["mean"] >= 0.9
    assert (entry["n_train"], entry["n_valid"], entry["n_test"]) == ([24], [9], [9])
    assert entry["clip_seconds"] == 0.5 and entry["embedding_dim"] == 4096
    assert len(entry["scores"]) == 3 and entry["ci95"] is not None
    for best, run in zip(entry["best_epoch"], entry["epochs_run"]):
        assert run == [min(200, best[0] + 20)]
    assert np.array(entry["confusion"]).sum() == 27 and fake.calls == 1
    assert "| tones | accuracy |" in (out / "report.md").read_text()
    png = (out / entry["confusion_png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (255, 255)

    # Same encoder, task and clip length: the embeddings come from the cache.
    monkeypatch.setattr(probe, "load_featurizer", lambda spec: Broken())
    assert probe.main(argv[:-1] + [str(tmp_path / "again"), "--cache", str(out / "cache")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())["tasks"][0]
    assert again["scores"] == entry["scores"]

    capsys.readouterr()
    assert probe.main(["table", str(out), str(tmp_path / "again"), "--names", "A", "B"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| task | A | B |"
    assert table[2].startswith("| tones (accuracy) | **") and table[2].count("**") == 4


def test_missing_audio_names_the_file(tmp_path):
    with open(tmp_path / "t.csv", "w") as f:
        f.write("path,label,split\nnope.wav,a,train\nnope2.wav,a,test\n")
    with pytest.raises(FileNotFoundError, match="nope.wav.*--audio_root"):
        probe.read_task(str(tmp_path / "t.csv"))
