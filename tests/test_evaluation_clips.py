"""The published protocol's clips (matpac_jax/evaluation/tasks.py, suite.py's `--clips evar`):
each cut or zero-padded to its task's length, train and valid clips of a split task at an
offset drawn once per clip from the crop seed, test clips and k-fold clips from their start.

The clips are ramps (sample i holds i / length, float WAV), so the samples a featurizer
receives say where the clip was cut."""

import os

import numpy as np
import pytest
import soundfile as sf

from matpac_jax.evaluation import suite
from matpac_jax.evaluation import tasks as probe_data

RATE = 16_000


class Recorder:
    """A featurizer that keeps what it is given: where each clip starts, and its length."""

    def __init__(self):
        self.waves = []

    def embed(self, waves, sample_rate):
        assert sample_rate == RATE
        self.waves.extend(np.array(w) for w in waves)
        return np.ones((len(waves), 2), np.float32)


def _ramp(path, seconds):
    n = int(seconds * RATE)
    sf.write(path, np.arange(n) / n, RATE, subtype="FLOAT")
    return n


def _task(tmp_path, kfold=False):
    rows = [("long_train.wav", 3.0, "train"), ("long_valid.wav", 2.5, "valid"),
            ("long_test.wav", 3.0, "test"), ("short_train.wav", 0.5, "train"),
            ("short_test.wav", 0.25, "test")]  # fmt: skip
    lengths = {name: _ramp(tmp_path / name, s) for name, s, _ in rows}
    group = "fold" if kfold else "split"
    lines = [f"path,label,{group}"]
    for i, (name, _, split) in enumerate(rows):
        lines.append(f"{name},{'ab'[i % 2]},{(i % 2) + 1 if kfold else split}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    return probe_data.read_task(str(tmp_path / "t.csv")), lengths


def _cuts(task, lengths, seconds, crop_seed):
    """{file: (offset, padded samples)} of the clips the featurizer got, read off the ramps."""
    rec = Recorder()
    rows = task.crop_rows() if crop_seed is not None else None
    n = round(seconds * RATE)
    probe_data.embed_clips(rec, task.paths, n, random_rows=rows, crop_seed=crop_seed or 0)
    out = {}
    for path, wave in zip(task.paths, rec.waves):
        name, length = os.path.basename(path), lengths[os.path.basename(path)]
        assert len(wave) == n
        offset = round(float(wave[0]) * length)
        real = min(n, length - offset)
        np.testing.assert_allclose(wave[:real], (offset + np.arange(real)) / length, atol=1e-6)
        out[name] = (offset, int(np.sum(wave[real:] == 0)))
    return out


def test_train_crops_are_random_per_clip_and_seed_test_crops_start_at_zero(tmp_path):
    task, lengths = _task(tmp_path)
    assert task.crop_rows() == {0, 1, 3}
    first, again, other = (_cuts(task, lengths, 1.0, s) for s in (0, 0, 1))
    assert first == again  # drawn once per clip: the same at every run
    for name in ("long_train.wav", "long_valid.wav"):
        offset, pad = first[name]
        assert 0 <= offset < lengths[name] - RATE and pad == 0
        assert other[name][0] != offset  # another crop seed, another cut
    assert first["long_train.wav"][0] != first["long_valid.wav"][0]  # per clip
    assert first["long_test.wav"] == other["long_test.wav"] == (0, 0)  # test: from the start
    # Shorter than the length: whole, zero-padded at the end, whatever the split.
    assert first["short_train.wav"] == (0, RATE - lengths["short_train.wav"])
    assert first["short_test.wav"] == (0, RATE - lengths["short_test.wav"])
    # No crop seed: every clip from its start (the probe command, --clips whole with --crop).
    assert all(offset == 0 for offset, _ in _cuts(task, lengths, 1.0, None).values())


def test_kfold_clips_start_at_zero_they_are_test_clips_in_a_fold(tmp_path):
    task, lengths = _task(tmp_path, kfold=True)
    assert task.crop_rows() == set()
    assert all(offset == 0 for offset, _ in _cuts(task, lengths, 1.0, 0).values())


def test_the_crop_is_part_of_the_cache_key(tmp_path):
    task, _ = _task(tmp_path)
    key = lambda seconds, seed: probe_data.cache_file(task, "logmel", seconds, "c", seed)  # noqa: E731
    assert len({key(1.0, None), key(1.0, 0), key(1.0, 1), key(2.0, 0), key(None, 0)}) == 5
    assert key(None, 0) == key(None, None)  # whole clips are never cropped


def test_the_published_lengths_per_task():
    assert suite.EVAR_SECONDS == {
        "openmic": 10.0, "nsynth": 4.0, "gtzan": 30.0, "magnatagatune": None,
        "fsd50k": 7.6358, "esc50": 5.0, "urbansound8k": 4.0,
    }  # fmt: skip
    assert list(suite.EVAR_SECONDS) == [k for k, *_ in suite.TASKS]


@pytest.mark.parametrize("seconds, offset", [(1.0, 0), (2.0, 5)])
def test_fix_length_against_slicing(seconds, offset):
    wave = np.random.default_rng(0).normal(size=RATE + 100).astype(np.float32)
    n = int(seconds * RATE)
    got = probe_data.fix_length(wave, n, offset)
    want = np.zeros(n, np.float32)
    part = wave[offset:][:n]
    want[: len(part)] = part
    np.testing.assert_array_equal(got, want)
