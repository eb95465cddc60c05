"""Tests for matpac_jax/evaluation/evaluators.py: the kNN vote, embeddings from cached log-mels equal to the
encoder's own, the log-mel cache, the offline command; and of matpac_jax/train/evals.py's task
specs, config checks and schedule.

The trainer side (in-training evaluation, resume, offline equality of a checkpoint) is in
tests/test_train_trainer.py.
"""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
from numerics import assert_close, encoder_depth

from matpac_jax import cli, config_lib, models
from matpac_jax.audio import frontend as audio
from matpac_jax.evaluation import evaluators
from matpac_jax.evaluation import tasks as probe_data
from matpac_jax.inference import encoder as inference
from matpac_jax.train import evals as train_evals
from matpac_jax.train import sharding

CFG = models.model_config("mu")


def write_tone_task(root, name="tones", seconds=1.0, per_class=(6, 2, 3)):
    """ROOT/clips/*.wav: tones at three frequencies; ROOT/NAME.csv (path,label,split).

    Args:
      per_class: train, valid and test clips of each class.
    """
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    rows = []
    for split, count in zip(("train", "valid", "test"), per_class):
        for i in range(count):
            for label, freq in (("low", 220.0), ("mid", 880.0), ("high", 3520.0)):
                t = np.arange(int(16_000 * seconds)) / 16_000
                f = freq * rng.uniform(0.97, 1.03)
                wave = 0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.normal(size=t.size)
                rel = f"clips/{split}-{label}-{i}.wav"
                sf.write(os.path.join(root, rel), wave, 16_000)
                rows.append((rel, label, split))
    path = os.path.join(root, f"{name}.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    return path


@pytest.fixture(scope="module")
def task_csv(tmp_path_factory):
    return write_tone_task(str(tmp_path_factory.mktemp("task")))


# ---------------------------------------------------------------------------------------------
# The kNN vote.


def test_knn_votes_weight_the_nearest_neighbours():
    memory = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.0]])
    y = np.array([0, 1, 0, 2])
    query = np.array([[2.0, 0.1]])  # scale does not matter: embeddings are L2-normalised
    votes = evaluators.knn_votes(memory, y, query, k=2, temperature=0.1, num_classes=3)
    sim = (
        np.array([2.0, 0.1])
        / np.linalg.norm([2.0, 0.1])
        @ (memory[[0, 2]] / np.linalg.norm(memory[[0, 2]], axis=1)[:, None]).T
    )
    np.testing.assert_allclose(votes[0], [np.exp((sim - 1) / 0.1).sum(), 0.0, 0.0])
    # k beyond the memory uses all of it; a far neighbour's vote is small but counted.
    votes = evaluators.knn_votes(memory, y, query, k=50, temperature=0.1, num_classes=3)
    assert votes[0, 0] > votes[0, 1] > votes[0, 2] > 0


def test_knn_votes_multilabel_and_ties_reproducible():
    memory = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    multi = np.array([[1, 0], [0, 1], [0, 1]], np.float32)
    votes = evaluators.knn_votes(
        memory, multi, np.array([[1.0, 0.0]]), k=1, temperature=1.0, num_classes=2
    )
    np.testing.assert_array_equal(votes, [[1.0, 0.0]])  # equal similarities: the first row


def test_knn_score_over_partitions():
    from matpac_jax.evaluation import protocol as probe_lib

    x = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    y = np.array([0, 0, 0, 1, 1, 1])
    task = evaluators.EvalTask(
        "t", y, [probe_lib.Partition(np.array([0, 1, 3, 4]), None, np.array([2, 5]))], 2, False, ""
    )
    assert evaluators.knn_score(x, task, evaluators.Protocol()) == (1.0, 0.0)  # no spread
    task.y = np.array([1, 1, 0, 0, 0, 1])  # the memory's labels swapped, the test's kept
    assert evaluators.knn_score(x, task, evaluators.Protocol()) == (0.0, 0.0)


def test_knn_votes_with_unknown_labels_against_numpy():
    """An unknown label casts no vote: a class's votes are its known neighbours' votes scaled
    to all k weights (float64 by hand); all known: the plain votes."""
    rng = np.random.default_rng(3)
    memory, query = rng.normal(size=(12, 5)), rng.normal(size=(4, 5))
    y = (rng.random((12, 3)) < 0.5).astype(np.float32)
    known = (rng.random((12, 3)) < 0.7).astype(np.float32)
    known[:, 2] = 0  # nobody annotated class 2: no vote at all
    kw = {"k": 5, "temperature": 0.2, "num_classes": 3}
    votes = evaluators.knn_votes(memory, y, query, known=known, **kw)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sim = unit(query) @ unit(memory).T
    for q in range(4):
        near = np.argsort(-sim[q])[:5]
        w = np.exp((sim[q, near] - 1) / 0.2)
        for c in range(3):
            kc = known[near, c]
            want = 0.0 if not kc.any() else (w * y[near, c] * kc).sum() * w.sum() / (w * kc).sum()
            assert votes[q, c] == pytest.approx(want, rel=1e-12, abs=1e-300)
    ones = np.ones_like(known)
    np.testing.assert_array_equal(
        evaluators.knn_votes(memory, y, query, known=ones, **kw),
        evaluators.knn_votes(memory, y, query, **kw),
    )


@pytest.mark.parametrize("scorer", ["knn", "linear"])
def test_a_masked_label_changes_no_in_training_score(scorer):
    """OpenMIC-like partial labels: flipping a label nobody annotated (in the memory or
    training rows, and in the test rows) changes neither the score nor its interval; the same
    flip on a known label does."""
    from matpac_jax.evaluation import protocol as probe_lib

    rng = np.random.default_rng(4)
    n, c = 60, 4
    y = (rng.random((n, c)) < 0.4).astype(np.float32)
    x = (y @ rng.normal(size=(c, 8)) + 0.8 * rng.normal(size=(n, 8))).astype(np.float32)
    known = (rng.random((n, c)) < 0.75).astype(np.float32)
    y[:, 0] = np.tile([1, 0], n // 2)  # every split holds both values of class 0
    part = probe_lib.Partition(np.arange(0, 36), np.arange(36, 44), np.arange(44, 60))
    protocol = evaluators.Protocol(protocols=(scorer,))

    def score(labels, mask):
        task = evaluators.EvalTask("t", labels, [part], c, True, "", mask)
        return evaluators.SCORERS[scorer](x, task, protocol)

    base = score(y, known)
    flipped = y.copy()
    masked = known == 0
    flipped[masked] = 1 - flipped[masked]
    assert masked[:36].any() and masked[44:].any()
    assert score(flipped, known) == base
    assert score(flipped, np.ones_like(known)) != score(y, np.ones_like(known))


def test_interval_is_the_spread_of_the_score_over_resampled_test_clips():
    rng = np.random.default_rng(0)
    ys = [rng.integers(0, 3, 150), rng.integers(0, 3, 90)]
    votes = [np.eye(3)[np.where(rng.random(len(y)) < 0.6, y, (y + 1) % 3)] for y in ys]
    value, half = evaluators.score_with_interval(ys, votes, resamples=4000)
    correct = [np.argmax(v, 1) == y for y, v in zip(ys, votes)]
    assert value == pytest.approx(np.mean([c.mean() for c in correct]))
    # Independent: the binomial standard error of each partition's accuracy, then of their mean.
    se = np.sqrt(sum(c.mean() * (1 - c.mean()) / len(c) for c in correct)) / 2
    assert half == pytest.approx(1.96 * se, rel=0.05)
    # Multi-label: the spread of the macro mAP, with the protocol's own mAP as its centre.
    from matpac_jax.evaluation import protocol as probe_lib

    y = (rng.random((120, 4)) < 0.3).astype(np.float32)
    scores = y + rng.normal(size=y.shape)
    value, half = evaluators.score_with_interval([y], [scores])
    assert value == probe_lib.mean_average_precision(y, scores) and 0.01 < half < 0.3


# ---------------------------------------------------------------------------------------------
# Embeddings and the cache.


def test_embeddings_of_cached_log_mels_equal_the_encoders(task_csv, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    ev = evaluators.Evaluator([task_csv], audio.FrontEnd(), cache, "")
    (key,) = ev.mels
    assert os.path.dirname(key) == cache and os.path.exists(key)
    assert ev.mels[key].shape == (33, 80, 98) and ev.mels[key].dtype == np.float32
    waves = [audio.load_audio(p) for p in probe_data.read_task(task_csv).paths]
    encoder = inference.Encoder.random(CFG, seed=3, normalization={"mean": -6.0, "std": 3.0})
    # Two paths (one (n, F, T) array against a list of clips) are two compiled programs: equal
    # up to float32 rounding (tests/numerics.py), against a wrong padding or normalisation.
    assert_close(
        evaluators.embed_mels(encoder, ev.mels[key]),
        encoder.embed(waves, 16_000),
        depth=encoder_depth(CFG.depth),
    )
    logmel = inference.LogMelBaseline()
    assert_close(evaluators.embed_mels(logmel, ev.mels[key]), logmel.embed(waves, 16_000), depth=2)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the log-mels should have come from the cache")

    monkeypatch.setattr(audio, "load_audio", no_decoding)
    again = evaluators.Evaluator([task_csv], audio.FrontEnd(), cache, "")
    np.testing.assert_array_equal(again.mels[key], ev.mels[key])  # a cache read back
    # Another front end is another cache file.
    with pytest.raises(AssertionError, match="from the cache"):
        evaluators.Evaluator([task_csv], audio.FrontEnd(f_max=7000.0), cache, "")


def test_load_params_gives_the_scores_of_a_fresh_encoder(task_csv, tmp_path):
    ev = evaluators.Evaluator([task_csv], audio.FrontEnd(), str(tmp_path), "")
    a, b = inference.Encoder.random(CFG, seed=1), inference.Encoder.random(CFG, seed=2)
    expected = ev.evaluate(b)
    a.load_params(b.params())
    assert ev.evaluate(a) == expected
    assert set(expected) == {"eval/tones/knn_acc", "eval/tones/knn_acc_ci95"}
    assert 0.0 <= expected["eval/tones/knn_acc"] <= 1.0 and expected["eval/tones/knn_acc_ci95"] >= 0


def test_linear_protocol_separates_tones(task_csv, tmp_path):
    protocol = evaluators.Protocol(("knn", "linear"), linear_max_train=12)
    ev = evaluators.Evaluator([task_csv], audio.FrontEnd(), str(tmp_path), "", protocol)
    scores = ev.evaluate(inference.LogMelBaseline())
    assert {k for k in scores if not k.endswith("_ci95")} == {
        "eval/tones/knn_acc",
        "eval/tones/linear_acc",
    }
    assert scores["eval/tones/knn_acc"] == 1.0 and scores["eval/tones/linear_acc"] >= 0.6
    assert ev.evaluate(inference.LogMelBaseline()) == scores  # a fixed subsample and seed


def test_subsample_takes_the_classes_in_turn():
    y = np.array([0] * 10 + [1] * 10 + [2] * 2)
    rows = np.arange(22)
    picked = evaluators.subsample(rows, y, 8, np.random.default_rng(0))
    assert len(picked) == 8 and np.all(np.diff(picked) > 0)
    assert sorted(np.bincount(y[picked]).tolist()) == [2, 3, 3]
    np.testing.assert_array_equal(evaluators.subsample(rows, y, 50, np.random.default_rng(0)), rows)


# ---------------------------------------------------------------------------------------------
# Specs and the config.


def _config(**overrides):
    config = config_lib.pretraining_config(variant="mu", runlocal=True, num_mcl_heads=5, mcl=True)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


def test_runlocal_evaluates_the_demo_tasks_only_on_the_demo_corpus():
    assert train_evals.task_specs(_config()) == ("demo:timbre", "demo:pitch", "demo:event")
    assert train_evals.task_specs(_config(**{"data.dir": "/some/mels"})) == ()
    assert train_evals.task_specs(_config(evals=" a.csv, demo:pitch,")) == ("a.csv", "demo:pitch")
    base = config_lib.pretraining_config(variant="B", runlocal=False, num_mcl_heads=5, mcl=True)
    assert train_evals.task_specs(base) == ()
    assert (base.eval_knn_k, base.eval_knn_temperature) == (
        config_lib.EVAL_KNN_K,
        config_lib.EVAL_KNN_TEMPERATURE,
    )


def test_demo_tasks_resolve_to_the_demo_corpus(tmp_path, monkeypatch):
    from matpac_jax.data import demo_corpus

    made = []

    def generate(out_dir, **kwargs):
        made.append(out_dir)
        os.makedirs(os.path.join(out_dir, "tasks"), exist_ok=True)

    monkeypatch.setattr(demo_corpus, "generate", generate)
    path = evaluators.resolve_task("demo:pitch", str(tmp_path))
    assert path == str(tmp_path / "audio" / "tasks" / "pitch.csv")
    evaluators.resolve_task("demo:event", str(tmp_path))
    assert made == [str(tmp_path / "audio")]  # made once per process and folder


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"evals": "demo:nope"}, "unknown demo task"),
        ({"evals": "/no/such.csv"}, "no such task CSV"),
        ({"eval_every": -1}, "must be at least 0"),
        ({"eval_protocols": "knn,svm"}, "choose among knn, linear"),
        ({"eval_knn_k": 0}, "need k >= 1"),
    ],
)
def test_config_mistakes_are_one_line_errors(overrides, message):
    with pytest.raises(cli.UserError, match=message):
        train_evals.check_config(_config(**{"data.dir": "/x", **overrides}))


def test_schedule_and_summary():
    mesh = sharding.make_mesh((-1, 1))
    config = _config(evals="a.csv", eval_every=250)
    evals = train_evals.TrainingEvals(config, CFG, audio.FrontEnd(), mesh, 600, write=False)
    assert [s for s in range(601) if evals.due(s)] == [0, 250, 500, 600]
    config.eval_every = 0
    evals = train_evals.TrainingEvals(config, CFG, audio.FrontEnd(), mesh, 600, write=False)
    assert [s for s in range(601) if evals.due(s)] == [0, 600]
    assert (
        train_evals.summary({"eval/a/knn_acc": 0.5, "eval/seconds": 1.25})
        == "a/knn_acc 0.500, 1.2 s"
    )


# ---------------------------------------------------------------------------------------------
# The command line.


def test_command_prints_the_scores(task_csv, tmp_path, capsys):
    args = ["--encoder", "logmel", "--task", task_csv, "--cache", str(tmp_path)]
    assert evaluators.main(args) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["eval/tones/knn_acc"] == 1.0 and scores["eval/seconds"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--encoder", "logmel", "--task", "demo:nope"], "--task demo:nope: unknown demo task"),
        (["--encoder", "logmel", "--task", "missing.csv"], "--task missing.csv: no such task CSV"),
        (["--encoder", "nowhere", "--task", "TASK"], "encoder 'nowhere': no such path"),
        (["--encoder", "logmel", "--task", "TASK", "--knn_k", "0"], "need k >= 1"),
    ],
)
def test_command_errors_are_one_line(args, message, task_csv, tmp_path, capsys):
    args = [task_csv if a == "TASK" else a for a in args] + ["--cache", str(tmp_path)]
    assert evaluators.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
