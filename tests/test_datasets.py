"""Tests for matpac_jax/datasets: every builder on a tiny fake copy of its official layout."""

import csv
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import fake_layouts
import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from matpac_jax import datasets
from matpac_jax.audio import frontend as audio
from matpac_jax.datasets import base, prepare


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """One fake manual_dir per dataset, written on first use: {dataset: (manual_dir, rows)}."""
    roots, made = {}, {}

    def get(dataset):
        if dataset not in made:
            # The demo configs share one generated corpus, as they do in real use.
            name = dataset.split("/")[0]
            if name not in roots:
                roots[name] = tmp_path_factory.mktemp(name)
            root = roots[name]
            made[dataset] = (root, fake_layouts.LAYOUTS[dataset](root))
        return made[dataset]

    return get


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


SINGLE_LABEL = tuple(d for d in datasets.DATASETS if d not in fake_layouts.MULTILABEL_LAYOUTS)


@pytest.mark.parametrize("dataset", SINGLE_LABEL)
def test_build_stores_every_clip_in_its_official_split(dataset, layouts, data_dir):
    manual_dir, rows = layouts(dataset)
    built = datasets.build(dataset, manual_dir, data_dir)
    assert "tensorflow" not in sys.modules  # tfds runs without TensorFlow for these builders
    assert built.info.metadata["sample_rate"] == 16_000
    label_feature = built.info.features["label"]
    folds = bool(type(built).NUM_FOLDS)
    expected = {rel: (label, split) for rel, label, split in rows}
    seen = {}
    for split, source in built.as_data_source().items():
        for i in range(len(source)):
            ex = source[i]
            rel = ex["path"].decode()
            assert rel not in seen, f"{rel} stored twice"
            seen[rel] = (label_feature.int2str(ex["label"]), split)
            if folds:
                assert ex["fold"] == int(split[4:])
            else:
                assert ex["split"].decode() == split
            src = manual_dir / rel
            assert ex["audio"].dtype == np.int16
            np.testing.assert_array_equal(ex["audio"], base.encode(audio.load_audio(src)))
            info = sf.info(src)
            assert abs(len(ex["audio"]) - info.duration * 16_000) <= 1
            if info.samplerate == 16_000 and info.subtype == "PCM_16" and info.channels == 1:
                # 16-bit 16 kHz sources are stored bit for bit.
                np.testing.assert_array_equal(ex["audio"], sf.read(src, dtype="int16")[0])
    assert seen == expected


@pytest.mark.parametrize("dataset", SINGLE_LABEL)
def test_task_csv_lists_every_clip_with_its_label_and_split(dataset, layouts, tmp_path):
    manual_dir, rows = layouts(dataset)
    out = tmp_path / "task.csv"
    assert datasets.write_task_csv(dataset, manual_dir, out) == len(rows)
    with open(out, newline="") as f:
        reader = csv.reader(f)
        header, written = next(reader), list(reader)
    folds = dataset in ("esc50", "urbansound8k")
    assert header == ["path", "label", "fold" if folds else "split"]
    want = {
        (str(manual_dir.absolute() / rel), label, split[4:] if folds else split)
        for rel, label, split in rows
    }
    assert len(written) == len(want) and set(map(tuple, written)) == want
    assert all(Path(p).is_absolute() and Path(p).is_file() for p, _, _ in written)


def test_built_dataset_opens_by_name_through_tfds(layouts, data_dir):
    manual_dir, rows = layouts("esc50")
    datasets.build("esc50", manual_dir, data_dir)
    source = tfds.data_source("matpac_esc50", data_dir=str(data_dir))
    assert sorted(source) == [f"fold{k}" for k in range(1, 6)]
    assert sum(len(s) for s in source.values()) == len(rows)
    assert datasets.to_float(source["fold1"][0]["audio"]).dtype == np.float32


def test_gtzan_reads_wav_copies_and_the_kaggle_folder(tmp_path):
    rows = fake_layouts.gtzan_layout(tmp_path, ext="wav")
    (tmp_path / "Data").mkdir()
    (tmp_path / "genres").rename(tmp_path / "Data" / "genres_original")
    clips = datasets.BUILDERS["gtzan"].checked_clips(tmp_path)
    got = {(c.rel, c.label, c.split) for c in clips}
    moved = {(rel.replace("genres/", "Data/genres_original/"), lab, s) for rel, lab, s in rows}
    assert got == moved


def test_speech_commands_archive_unpacked_without_its_folder(tmp_path):
    rows = fake_layouts.speech_commands_layout(tmp_path, folder=".")
    clips = datasets.BUILDERS["speech_commands"].checked_clips(tmp_path)
    assert {(c.rel, c.label, c.split) for c in clips} == set(rows)


def test_crema_d_split_is_speaker_disjoint_70_10_20():
    splits = {a: datasets.crema_d.split_of(a) for a in range(1001, 1092)}
    counts = {s: sum(v == s for v in splits.values()) for s in base.SPLITS}
    assert counts == {"train": 64, "valid": 9, "test": 18}


def test_unreadable_file_is_skipped_and_named(tmp_path, caplog):
    rows = fake_layouts.crema_d_layout(tmp_path)
    bad = tmp_path / rows[0][0]
    bad.write_bytes(bad.read_bytes()[:60])  # header survives, audio does not: truncated
    with caplog.at_level(logging.WARNING):
        built = datasets.build("crema_d", tmp_path, tmp_path / "tfds")
    assert sum(s.num_examples for s in built.info.splits.values()) == len(rows) - 1
    assert rows[0][0] in caplog.text and "truncated" in caplog.text


def _break(dataset, root):
    """Removes one piece of a fresh fake layout; returns what the error must mention."""
    if dataset == "esc50":
        fake_layouts.esc50_layout(root)
        next((root / "ESC-50-master" / "audio").glob("*.wav")).unlink()
        return "files the metadata lists are missing"
    if dataset == "urbansound8k":
        fake_layouts.urbansound8k_layout(root)
        (root / "UrbanSound8K" / "metadata" / "UrbanSound8K.csv").unlink()
        return "UrbanSound8K.csv does not exist"
    if dataset == "gtzan":
        fake_layouts.gtzan_layout(root)
        (root / "splits" / "valid_filtered.txt").unlink()
        return "valid_filtered.txt"
    if dataset == "nsynth":
        fake_layouts.nsynth_layout(root)
        (root / "nsynth-test" / "examples.json").unlink()
        return "nsynth-test/examples.json does not exist"
    if dataset == "speech_commands":
        fake_layouts.speech_commands_layout(root)
        for wav in (root / "speech_commands_v0.02" / "visual").glob("*.wav"):
            wav.unlink()
        (root / "speech_commands_v0.02" / "visual").rmdir()
        return "lacks the word folders ['visual']"
    rows = fake_layouts.crema_d_layout(root)
    (root / rows[0][0]).write_text("version https://git-lfs.github.com/spec/v1\n")
    return "Git LFS pointer"


@pytest.mark.parametrize(
    "dataset", ("esc50", "urbansound8k", "gtzan", "nsynth", "speech_commands", "crema_d")
)
def test_incomplete_manual_dir_is_a_clear_error(dataset, tmp_path):
    mention = _break(dataset, tmp_path / "copy")
    with pytest.raises(datasets.ManualDirError, match=re.escape(mention)):
        datasets.write_task_csv(dataset, tmp_path / "copy", tmp_path / "task.csv")
    with pytest.raises(datasets.ManualDirError, match=re.escape(mention)):
        datasets.build(dataset, tmp_path / "copy", tmp_path / "tfds")
    assert not (tmp_path / "task.csv").exists()


@pytest.mark.parametrize("dataset", datasets.DATASETS)
def test_missing_manual_dir_says_where_to_get_the_data(dataset, tmp_path):
    cls = datasets.BUILDERS[dataset.split("/")[0]]
    how = cls.MANUAL_DOWNLOAD_INSTRUCTIONS.splitlines()[0]
    with pytest.raises(datasets.ManualDirError, match=re.escape(how)):
        datasets.write_task_csv(dataset, tmp_path / "nowhere", tmp_path / "task.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(datasets.ManualDirError, match=re.escape(how)):
        datasets.build(dataset, tmp_path / "empty", tmp_path / "tfds")


def test_metadata_that_contradicts_the_official_classes_is_refused(tmp_path):
    fake_layouts.esc50_layout(tmp_path)
    meta = tmp_path / "ESC-50-master" / "meta" / "esc50.csv"
    meta.write_text(meta.read_text().replace(",dog,", ",wolf,", 1))
    with pytest.raises(datasets.ManualDirError, match="official class list"):
        datasets.write_task_csv("esc50", tmp_path, tmp_path / "task.csv")


def test_gtzan_track_in_two_split_lists_is_refused(tmp_path):
    fake_layouts.gtzan_layout(tmp_path)
    train = (tmp_path / "splits" / "train_filtered.txt").read_text().splitlines()
    with open(tmp_path / "splits" / "test_filtered.txt", "a") as f:
        f.write(train[0] + "\n")
    with pytest.raises(datasets.ManualDirError, match="in both the train and the test list"):
        datasets.write_task_csv("gtzan", tmp_path, tmp_path / "task.csv")


def test_cli_writes_the_csv_and_builds(layouts, tmp_path, capsys):
    manual_dir, rows = layouts("nsynth")
    out = tmp_path / "nsynth.csv"
    argv = ["--dataset", "nsynth", "--manual_dir", str(manual_dir), "--task_csv", str(out)]
    assert prepare.main(argv + ["--data_dir", str(tmp_path / "tfds")]) == 0
    assert len(out.read_text().splitlines()) == len(rows) + 1
    assert f"wrote {len(rows)} rows" in capsys.readouterr().out
    assert (
        prepare.main(
            ["--dataset", "nsynth", "--manual_dir", str(tmp_path / "x"), "--task_csv", str(out)]
        )
        == 2
    )
    assert f"--manual_dir {tmp_path / 'x'}: no such folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Multi-label datasets: OpenMIC-2018 (partial labels), MagnaTagATune, FSD50K.

VOCABULARY = {
    "openmic": datasets.openmic.CLASS_NAMES,
    "magnatagatune": datasets.magnatagatune.TOP50,
    "magnatagatune/all": datasets.magnatagatune.TOP50,
    "fsd50k": tuple(fake_layouts.fsd50k_vocabulary()),
}
CORRUPT = {
    "openmic": f"audio/000/{fake_layouts.OPENMIC_CORRUPT}.ogg",
    "fsd50k": f"FSD50K.dev_audio/{fake_layouts.FSD_CORRUPT}.wav",
}


@pytest.mark.parametrize("dataset", list(fake_layouts.MULTILABEL_LAYOUTS))
def test_multilabel_build_stores_labels_masks_and_skips_the_corrupt_file(dataset, tmp_path, caplog):
    rows = fake_layouts.MULTILABEL_LAYOUTS[dataset](tmp_path / "copy")
    with caplog.at_level(logging.WARNING):
        built = datasets.build(dataset, tmp_path / "copy", tmp_path / "tfds")
    assert "tensorflow" not in sys.modules
    names = VOCABULARY[dataset]
    assert built.info.metadata["class_names"] == list(names)  # the official vocabulary's order
    assert built.info.features["labels"].shape == (len(names),)
    bad = CORRUPT.get(dataset)
    want = {rel: (labels, unknown, split) for rel, labels, unknown, split in rows if rel != bad}
    seen = {}
    for split, source in built.as_data_source().items():
        for i in range(len(source)):
            ex = source[i]
            rel = ex["path"].decode()
            assert ex["split"].decode() == split and ex["labels"].dtype == np.int8
            positive = tuple(names[c] for c in np.flatnonzero(ex["labels"]))
            unknown = tuple(names[c] for c in np.flatnonzero(ex["label_mask"] == 0))
            seen[rel] = (positive, unknown, split)
            decoded = audio.load_audio(tmp_path / "copy" / rel)
            np.testing.assert_array_equal(ex["audio"], base.encode(decoded))
    assert seen == want
    if bad:  # skipped with a warning that names it; the build went on
        assert bad in caplog.text and "skipped 1 unreadable" in caplog.text


@pytest.mark.parametrize("dataset", list(fake_layouts.MULTILABEL_LAYOUTS))
def test_multilabel_task_csv_has_labels_and_unknown_columns(dataset, tmp_path):
    rows = fake_layouts.MULTILABEL_LAYOUTS[dataset](tmp_path / "copy")
    out = tmp_path / "task.csv"
    assert datasets.write_task_csv(dataset, tmp_path / "copy", out) == len(rows)
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == ["path", "labels", "unknown", "split"]
    got = {(r["path"], r["labels"], r["unknown"], r["split"]) for r in written}
    root = (tmp_path / "copy").absolute()
    assert got == {(str(root / p), ";".join(l), ";".join(u), s) for p, l, u, s in rows}


def test_openmic_labels_by_hand_and_from_the_npz(tmp_path):
    rows = {r[0]: r[1:] for r in fake_layouts.openmic_layout(tmp_path / "csv")}
    # Worked out by hand from fake_layouts.OPENMIC: relevance 0.5 is positive, 0.49 negative,
    # an instrument with no row unknown; artists 10 and 20 (0 modulo 10) are held out.
    labels, unknown, split = rows["audio/000/000135_483840.ogg"]
    assert labels == ("piano",) and split == "train"
    assert "drums" not in unknown and "piano" not in unknown and len(unknown) == 18
    assert rows["audio/000/000046_3840.ogg"][::2] == (("guitar",), "valid")
    assert rows["audio/000/000178_0.ogg"][2] == "valid"
    assert rows["audio/003/003456_61440.ogg"][0] == ("piano", "voice")
    assert rows["audio/002/002345_30720.ogg"][0] == ("accordion",)  # a class of test only
    from_npz = fake_layouts.openmic_layout(tmp_path / "npz", npz=True)
    assert not (tmp_path / "npz" / "openmic-2018-aggregated-labels.csv").exists()
    clips = datasets.BUILDERS["openmic"].checked_clips(tmp_path / "npz")
    assert {(c.rel, c.labels, c.unknown, c.split) for c in clips} == set(from_npz)
    assert {r[0]: r[1:] for r in from_npz} == rows


def test_the_official_openmic_files_load_under_a_non_utf8_locale(tmp_path):
    """The official npz holds `sample_key` as an object array (scripts/helper_numpy.py), the
    metadata is UTF-8 with non-ASCII names (here with a BOM): both read where the locale's
    encoding is ASCII (LC_ALL=C without Python's UTF-8 mode)."""
    expected = sorted(fake_layouts.openmic_layout(tmp_path, npz=True))
    with np.load(tmp_path / "openmic-2018.npz", allow_pickle=True) as z:
        assert z["sample_key"].dtype == object  # the file is written as the official one
    code = (
        "import json, locale, sys\n"
        "from matpac_jax import datasets\n"
        "clips = datasets.BUILDERS['openmic'].checked_clips(__import__('pathlib').Path(sys.argv[1]))\n"
        "print(locale.getpreferredencoding(False))\n"
        "print(json.dumps(sorted([c.rel, list(c.labels), list(c.unknown), c.split] for c in clips)))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONPATH": root}
    env["PYTHONCOERCECLOCALE"] = "0"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    encoding, clips = out.stdout.splitlines()[-2:]
    assert "utf" not in encoding.lower()
    assert json.loads(clips) == [[r, list(p), list(u), s] for r, p, u, s in expected]


def test_magnatagatune_tags_in_the_order_of_the_published_top50_tags_txt():
    # top50_tags.txt of the published split lists (jongpillee's MTAT_split), as it is written.
    published = (
        "guitar classical slow techno strings drums electronic rock fast piano ambient beat "
        "violin vocal synth female indian opera male singing vocals noVocals harpsichord loud "
        "quiet flute woman maleVocal noVocal pop soft sitar solo man classic choir voice newAge "
        "dance maleVoice femaleVocal beats harp cello noVoice weird country femaleVoice metal "
        "choral"
    ).split()
    spaced = [re.sub(r"([a-z])([A-Z])", r"\1 \2", t).lower() for t in published]
    assert list(datasets.magnatagatune.TOP50) == spaced


def test_openmic_without_artists_holds_out_by_sample_key(tmp_path):
    fake_layouts.openmic_layout(tmp_path)
    (tmp_path / "openmic-2018-metadata.csv").unlink()
    clips = datasets.BUILDERS["openmic"].checked_clips(tmp_path)
    train_keys = {k for k, _, part, _ in fake_layouts.OPENMIC if part == "train"}
    held = {c.rel.split("/")[-1][:-4] for c in clips if c.split == "valid"}
    import zlib  # pylint: disable=g-import-not-at-top

    assert held == {k for k in train_keys if zlib.crc32(k.encode()) % 10 == 0}
    assert all(c.split == "test" for c in clips if c.rel.split("/")[-1][:-4] not in train_keys)


def test_magnatagatune_variants_and_the_known_undecodable_clips(tmp_path, caplog):
    fake_layouts.magnatagatune_layout(tmp_path)
    cls = datasets.BUILDERS["magnatagatune"]
    with caplog.at_level(logging.WARNING):
        tagged = cls.checked_clips(tmp_path)
    assert "3/artist_f-album-06-song-0-29.mp3" in caplog.text  # id 35644: reported, left out
    everything = cls.checked_clips(tmp_path, "all")
    untagged = {c.rel for c in everything} - {c.rel for c in tagged}
    assert untagged == {"1/artist_c-album-03-song-0-29.mp3"}  # only "singer": no top-50 tag
    by_rel = {c.rel: c for c in everything}
    assert by_rel["1/artist_c-album-03-song-0-29.mp3"].labels == ()
    # The top-50 order, whatever the CSV's column order; other tags (jazz) ignored.
    assert by_rel["0/artist_a-album-01-track-0-29.mp3"].labels == ("guitar", "slow")
    assert by_rel["c/artist_d-album-04-song-0-29.mp3"].split == "valid"
    assert {c.split for c in everything if c.rel[0] in "def"} == {"test"}


def test_fsd50k_columns_come_from_the_vocabulary(tmp_path):
    fake_layouts.fsd50k_layout(tmp_path)
    clips = datasets.BUILDERS["fsd50k"].checked_clips(tmp_path)
    assert {c.split for c in clips} == {"train", "valid", "test"}
    # Accordion is labelled in eval only; its column is the vocabulary's second all the same.
    assert all("Accordion" not in c.labels for c in clips if c.split != "test")
    by_name = {c.rel.split("/")[-1]: c for c in clips}
    assert by_name["37199.wav"].labels == ("Accordion", "Dog")
    vocabulary = tmp_path / "FSD50K.ground_truth" / "vocabulary.csv"
    text = vocabulary.read_text()
    vocabulary.write_text(text.replace("Bark", "Woof"))
    with pytest.raises(datasets.ManualDirError, match="'Bark' is not in vocabulary.csv"):
        datasets.write_task_csv("fsd50k", tmp_path, tmp_path / "t.csv")
    vocabulary.write_text("\n".join(text.splitlines()[:150]) + "\n")
    with pytest.raises(datasets.ManualDirError, match="150 classes, expected 200"):
        datasets.build("fsd50k", tmp_path, tmp_path / "tfds")
