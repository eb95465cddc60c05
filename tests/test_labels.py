"""Multi-label data: labels CSVs (matpac_jax/labels.py), the preprocessing's --labels, AudioSet's
segment lists (matpac_jax/datasets/audioset.py) and the demo corpus's tagging clips. CLIs run
as a user types them: subprocesses from another folder, relative paths."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from matpac_jax import labels
from matpac_jax.data import demo_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


def _cli(module, *args, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _write(path, seconds=0.5, freq=440.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, 0.2 * np.sin(2 * np.pi * freq * t), SR)


def test_audioset_classes_are_the_reference_order():
    rows = labels.audioset_classes()
    assert len(rows) == 527 and len({r["mid"] for r in rows}) == 527
    assert [r["mid"] for r in rows] == sorted(r["mid"] for r in rows)
    with open(labels.AUDIOSET_CSV, newline="") as f:
        by_index = list(csv.DictReader(f))
    assert by_index[0]["display_name"] == "Speech"  # the file's own order is by index
    assert rows[0]["mid"] != by_index[0]["mid"]


def test_read_labels_csv_and_its_mistakes(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("path,labels\na/x.wav, dog ; cat\ny.wav,\n")
    assert labels.read_labels_csv(str(p)) == {"a/x.wav": ["dog", "cat"], "y.wav": []}
    p.write_text("file,label\nx.wav,dog\n")
    with pytest.raises(labels.cli.UserError, match="no labels and path column"):
        labels.read_labels_csv(str(p))
    p.write_text("path,labels\nx.wav,dog\n./x.wav,cat\n")
    with pytest.raises(labels.cli.UserError, match="line 3 lists ./x.wav again"):
        labels.read_labels_csv(str(p))


def test_preprocess_keeps_the_labels_of_the_listed_files(tmp_path):
    audio = tmp_path / "audio"
    for i, name in enumerate(["a.wav", "sub/b.wav", "c.wav", "unlisted.wav"]):
        _write(str(audio / name), freq=300.0 + 100 * i)
    (tmp_path / "labels.csv").write_text("path,labels\nc.wav,dog\nsub/b.wav,cat;dog\na.wav,\n")
    work = tmp_path / "work"
    work.mkdir()
    args = ["--input_dir", "../audio", "--output_dir", "../mels", "--min_frames", "16"]
    r = _cli(
        "matpac_jax.audio.preprocess",
        *args,
        "--labels",
        "../labels.csv",
        "--num_workers",
        "0",
        "--records_per_shard",
        "2",
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    assert "1 audio files under --input_dir are not in" in r.stderr
    index = json.loads((tmp_path / "mels" / "index.json").read_text())
    assert index["classes"] == {"ids": ["cat", "dog"], "names": ["cat", "dog"]}
    got = {src: lab for s in index["shards"] for src, lab in zip(s["sources"], s["labels"])}
    assert got == {"a.wav": [], "c.wav": [1], os.path.join("sub", "b.wav"): [0, 1]}
    # Mistakes: a listed file that is not there; labels outside AudioSet's classes; --classes
    # without --labels. Each is one line, exit 2, and leaves no output folder.
    (tmp_path / "bad.csv").write_text("path,labels\nc.wav,dog\nnothere.wav,cat\n")
    for extra, message in [
        (["--labels", "../bad.csv"], "1 of its 2 paths are not audio files"),
        (["--labels", "../labels.csv", "--classes", "audioset"], "not AudioSet class ids"),
        (["--classes", "audioset"], "give --labels too"),
    ]:
        r = _cli(
            "matpac_jax.audio.preprocess",
            "--input_dir",
            "../audio",
            "--output_dir",
            "../mels2",
            *extra,
            cwd=work,
        )
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "mels2").exists()


SEGMENTS = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
-0RWZT-miFs, 420.000, 430.000, "/m/03v3yw"
_3l8k3Ghzkw, 0.000, 10.000, "/m/09x0r"
abcdefghijk, 10.000, 20.000, "/m/03v3yw,/m/09x0r"
"""


def test_audioset_segments_to_labels_csv_then_preprocess(tmp_path):
    audio = tmp_path / "as"
    # Three naming schemes of the downloaders; the fourth segment has no file.
    _write(str(audio / "--PJHxphWEs_30.000_40.000.wav"))
    _write(str(audio / "x" / "Y-0RWZT-miFs.flac"), freq=600)
    _write(str(audio / "_3l8k3Ghzkw_0.wav"), freq=900)
    (tmp_path / "eval_segments.csv").write_text(SEGMENTS)
    work = tmp_path / "work"
    work.mkdir()
    r = _cli(
        "matpac_jax.datasets.audioset",
        *("--segments", "../eval_segments.csv", "--audio_dir", "../as", "--out", "../eval.csv"),
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    assert "4 segments: 3 with a file" in r.stderr and "1 without" in r.stderr
    assert (tmp_path / "eval.csv.missing.txt").read_text() == "abcdefghijk\n"
    table = labels.read_labels_csv(str(tmp_path / "eval.csv"))
    assert table == {
        "--PJHxphWEs_30.000_40.000.wav": ["/m/09x0r", "/t/dd00088"],
        os.path.join("x", "Y-0RWZT-miFs.flac"): ["/m/03v3yw"],
        "_3l8k3Ghzkw_0.wav": ["/m/09x0r"],
    }
    r = _cli(
        "matpac_jax.audio.preprocess",
        *("--input_dir", "../as", "--output_dir", "../mels", "--labels", "../eval.csv"),
        *("--classes", "audioset", "--min_frames", "16", "--num_workers", "0"),
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    index = json.loads((tmp_path / "mels" / "index.json").read_text())
    mids = index["classes"]["ids"]
    assert len(mids) == 527 and index["classes"]["names"][mids.index("/m/09x0r")] == "Speech"
    got = {src: lab for s in index["shards"] for src, lab in zip(s["sources"], s["labels"])}
    assert got["_3l8k3Ghzkw_0.wav"] == [mids.index("/m/09x0r")]
    assert got["--PJHxphWEs_30.000_40.000.wav"] == sorted(
        [mids.index("/m/09x0r"), mids.index("/t/dd00088")]
    )
    # A file that is not a segment list, and a label that is not an AudioSet class.
    (tmp_path / "bad.csv").write_text("YTID,start\nabc,1\n")
    (tmp_path / "unknown.csv").write_text('abc, 0.000, 10.000, "/m/nope"\n')
    for name, message in [("bad.csv", "has 2 fields"), ("unknown.csv", "not AudioSet class")]:
        r = _cli(
            "matpac_jax.datasets.audioset",
            *("--segments", f"../{name}", "--audio_dir", "../as", "--out", "../o.csv"),
            cwd=work,
        )
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_demo_tagging_clips_hold_the_events_their_labels_name(tmp_path):
    manifest = demo_corpus.generate(
        str(tmp_path), num_pretrain=2, num_labelled=demo_corpus.MIN_LABELLED, num_tagging=12
    )
    assert manifest["tagging"]["classes"] == list(demo_corpus.TAGGING_CLASSES)
    train = labels.read_labels_csv(str(tmp_path / "tagging" / "train.csv"))
    evals = labels.read_labels_csv(str(tmp_path / "tagging" / "eval.csv"))
    assert (len(train), len(evals)) == (9, 3)
    for split, table in (("train", train), ("eval", evals)):
        for rel, names in table.items():
            assert sf.info(str(tmp_path / "tagging" / split / rel)).frames == (
                demo_corpus.PRETRAIN_SAMPLES
            )
            assert names and set(names) <= set(demo_corpus.TAGGING_CLASSES)
    # The labels are the classes of the events the generator mixed in, clip by clip.
    for i in range(12):
        rng = np.random.default_rng([0, 2, i])
        _, row, classes = demo_corpus._mixture(rng)
        split = demo_corpus.tagging_split(i, 12)
        table = train if split == "train" else evals
        assert table[f"{i:05d}.flac"] == classes
        assert len(classes) <= row["num_events"]
    assert len({tuple(v) for v in train.values()}) > 3  # distinct label sets
