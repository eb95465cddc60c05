"""Tests for the procedural demo corpus (small counts, so the whole file runs in seconds)."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from matpac_jax.data import demo_corpus as dc

NUM_PRETRAIN = 12
NUM_LABELLED = dc.MIN_LABELLED  # 24 clips per split: the smallest corpus covering every class
TASK_CSVS = (
    "pretrain.csv",
    "labelled.csv",
    "tasks/timbre.csv",
    "tasks/pitch.csv",
    "tasks/event.csv",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One small corpus (seed 0, in-process) shared by the read-only tests."""
    out = tmp_path_factory.mktemp("corpus")
    return out, dc.generate(out, NUM_PRETRAIN, NUM_LABELLED, seed=0)


def _rows(path):
    """CSV rows as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _audio_paths(out):
    """Relative paths of every clip listed in pretrain.csv and labelled.csv."""
    return [r["path"] for name in ("pretrain.csv", "labelled.csv") for r in _rows(out / name)]


def _decoded(out):
    """Decoded int16 samples of every clip, keyed by relative path."""
    return {p: sf.read(out / p, dtype="int16")[0] for p in _audio_paths(out)}


def _assert_same_corpus(a, b):
    """CSVs equal byte for byte and every clip decodes to the same samples."""
    for name in TASK_CSVS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    audio_a, audio_b = _decoded(a), _decoded(b)
    assert audio_a.keys() == audio_b.keys()
    for path, samples in audio_a.items():
        np.testing.assert_array_equal(samples, audio_b[path], err_msg=path)


def test_same_seed_is_identical_with_and_without_workers(corpus, tmp_path):
    out, _ = corpus
    dc.generate(tmp_path, NUM_PRETRAIN, NUM_LABELLED, seed=0, num_workers=2)
    _assert_same_corpus(out, tmp_path)
    # Encoding is deterministic too, so the files themselves match.
    for path in _audio_paths(out):
        assert (out / path).read_bytes() == (tmp_path / path).read_bytes(), path


def test_different_seed_differs(corpus, tmp_path):
    out, _ = corpus
    dc.generate(tmp_path, 1, NUM_LABELLED, seed=1)
    for path in ("pretrain/00000.flac", "labelled/00000.flac", "labelled/00001.flac"):
        assert not np.array_equal(sf.read(out / path)[0], sf.read(tmp_path / path)[0]), path
    assert (out / "labelled.csv").read_text() != (tmp_path / "labelled.csv").read_text()


def test_audio_files_format_length_and_range(corpus):
    out, manifest = corpus
    paths = _audio_paths(out)
    assert len(paths) == NUM_PRETRAIN + NUM_LABELLED
    for path in paths:
        info = sf.info(out / path)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (
            16000,
            1,
            "FLAC",
            "PCM_16",
        )
        expected = dc.PRETRAIN_SAMPLES if path.startswith("pretrain/") else dc.LABELLED_SAMPLES
        assert info.frames == expected
        samples, _ = sf.read(out / path)
        assert np.isfinite(samples).all() and np.abs(samples).max() <= 0.9 + 1e-4
        assert np.abs(samples).max() > 1e-3  # not silent
    # 400-sample windows at a 160-sample hop: the pretraining crop needs 608 frames.
    assert 1 + (dc.PRETRAIN_SAMPLES - 400) // 160 >= 608
    assert manifest["pretrain"]["clip_samples"] == dc.PRETRAIN_SAMPLES == 97_600
    assert manifest["labelled"]["clip_samples"] == dc.LABELLED_SAMPLES == 48_000


def test_wav_format(tmp_path):
    dc.generate(tmp_path, 1, NUM_LABELLED, seed=0, fmt="wav")
    info = sf.info(tmp_path / "pretrain/00000.wav")
    assert (info.format, info.subtype, info.frames) == ("WAV", "PCM_16", dc.PRETRAIN_SAMPLES)
    assert all(r["path"].endswith(".wav") for r in _rows(tmp_path / "tasks/event.csv"))


def test_task_csvs_cover_every_class_in_every_split(corpus):
    out, manifest = corpus
    for task, spec in manifest["tasks"].items():
        with open(out / spec["csv"], newline="") as f:
            assert f.readline().strip() == "path,label,split"
        rows = _rows(out / spec["csv"])
        assert all((out / r["path"]).is_file() for r in rows)
        for split in dc.SPLITS:
            labels = {r["label"] for r in rows if r["split"] == split}
            assert labels == set(spec["classes"]), (task, split)
            assert spec["counts"][split] == sum(r["split"] == split for r in rows)
    assert len(manifest["tasks"]["timbre"]["classes"]) == 6
    assert len(manifest["tasks"]["pitch"]["classes"]) == 12
    assert len(manifest["tasks"]["event"]["classes"]) == 4


@pytest.mark.parametrize("num_labelled", [dc.MIN_LABELLED, 100, 1500, dc.DEFAULT_LABELLED])
def test_schedule_guarantees_coverage_and_proportions(num_labelled):
    slots = dc.labelled_schedule(num_labelled)
    assert len(slots) == num_labelled
    for split in dc.SPLITS:
        in_split = [s for s in slots if s[0] == split]
        notes = [s for s in in_split if s[1] == "harmonic_note"]
        assert {s[2] for s in notes} == set(dc.TIMBRES)
        assert {s[3] for s in notes} == set(range(12))
        assert {s[1] for s in in_split if s[4]} == set(dc.EVENT_TYPES)
    if num_labelled == 1500:
        assert [sum(s[0] == split for s in slots) for split in dc.SPLITS] == [1050, 225, 225]
        # The event task's notes (a third of all notes) still span every pitch class.
        assert {s[3] for s in slots if s[4] and s[3] is not None} == set(range(12))


def test_too_few_labelled_clips_or_bad_format_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_labelled"):
        dc.generate(tmp_path, 1, dc.MIN_LABELLED - 1)
    with pytest.raises(ValueError, match="fmt"):
        dc.generate(tmp_path, 1, dc.MIN_LABELLED, fmt="mp3")


def test_splits_are_disjoint_in_source_parameters(corpus):
    out, manifest = corpus
    rules = manifest["split_rules"]
    for event in dc.EVENT_TYPES:
        intervals = [(s, lo, hi) for s in dc.SPLITS for lo, hi in rules[event][s]]
        for i, (split_a, lo_a, hi_a) in enumerate(intervals):
            for split_b, lo_b, hi_b in intervals[i + 1 :]:
                assert hi_a < lo_b or hi_b < lo_a, (event, split_a, split_b)
    labelled = _rows(out / "labelled.csv")
    assert {r["event"] for r in labelled} == set(dc.EVENT_TYPES)
    for r in labelled:
        rule, value = rules[r["event"]], float(r["value"])
        assert r["param"] == rule["param"]
        assert any(lo <= value <= hi for lo, hi in rule[r["split"]]), r
        if r["event"] == "harmonic_note":  # the pitch label is the MIDI note's pitch class
            assert r["pitch"] == dc.PITCH_CLASSES[int(value) % 12]


def test_flute_notes_peak_at_their_labelled_pitch(corpus):
    out, _ = corpus
    flutes = [r for r in _rows(out / "labelled.csv") if r["timbre"] == "flute"]
    assert len(flutes) >= 3
    for r in flutes:
        samples, sr = sf.read(out / r["path"])
        freqs = np.fft.rfftfreq(len(samples), 1.0 / sr)
        peak = freqs[np.argmax(np.abs(np.fft.rfft(samples)) * (freqs > 40))]
        f0 = 440.0 * 2.0 ** ((int(r["value"]) - 69) / 12)
        assert abs(peak / f0 - 1) < 0.02, (r, peak, f0)


def test_pretrain_clips_mix_several_events_at_varied_loudness(corpus):
    out, _ = corpus
    rows = _rows(out / "pretrain.csv")
    assert len(rows) == NUM_PRETRAIN
    events = [int(r["num_events"]) for r in rows]
    assert min(events) >= 2 and max(events) <= 6 and len(set(events)) > 1
    assert all(float(r["duration_s"]) == pytest.approx(6.1) for r in rows)
    rms_db = [20 * np.log10(np.sqrt(np.mean(sf.read(out / r["path"])[0] ** 2))) for r in rows]
    assert max(rms_db) - min(rms_db) > 6.0
    assert np.std([float(r["snr_db"]) for r in rows]) > 3.0


def test_manifest_matches_file_and_parameters(corpus):
    out, manifest = corpus
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["params"] == {
        "generator_version": dc.GENERATOR_VERSION,
        "seed": 0,
        "num_pretrain": NUM_PRETRAIN,
        "num_labelled": NUM_LABELLED,
        "num_tagging": 0,
        "format": "flac",
    }
    assert manifest["sample_rate"] == 16000
    assert manifest["pretrain"]["count"] == NUM_PRETRAIN
    assert manifest["labelled"]["count"] == NUM_LABELLED
    assert set(manifest["split_rules"]) == set(dc.EVENT_TYPES)


def test_cli_is_idempotent_and_force_regenerates(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--num_pretrain", "1", "--num_labelled", str(NUM_LABELLED)]
    argv += ["--num_tagging", str(dc.MIN_TAGGING)]
    clip, manifest = tmp_path / "pretrain/00000.flac", tmp_path / "manifest.json"
    dc.main(argv)
    assert "written to" in capsys.readouterr().out
    stamps = (os.stat(clip).st_mtime_ns, os.stat(manifest).st_mtime_ns)
    before = clip.read_bytes()

    dc.main(argv)
    assert "skipping" in capsys.readouterr().out
    assert (os.stat(clip).st_mtime_ns, os.stat(manifest).st_mtime_ns) == stamps

    os.utime(clip, ns=(0, 0))  # a rewrite must be visible whatever the clock resolution
    dc.main(argv + ["--force"])
    assert "written to" in capsys.readouterr().out
    assert os.stat(clip).st_mtime_ns != 0 and clip.read_bytes() == before

    dc.main(argv + ["--seed", "3"])  # different parameters also regenerate
    assert "written to" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["params"]["seed"] == 3
