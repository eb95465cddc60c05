"""Tiny fake copies of each dataset's official layout, for tests/test_datasets.py.

Each writer fills `root` (the manual_dir) with a handful of short seeded noise clips under the
official file names, at the real data's sample rates and channel counts, plus the official
metadata files, and returns the expected `(path relative to root, label, split)` of every clip
the protocol keeps. Split names are tfds's: `train` / `valid` / `test` or `fold1` ... .

The multi-label writers (OpenMIC-2018, MagnaTagATune, FSD50K) return `(path, labels, unknown,
split)` instead, with the labels worked out by hand from the metadata they write, and each
writes one corrupt audio file, as the real releases hold.
"""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from matpac_jax.data import demo_corpus
from matpac_jax.datasets import (
    crema_d,
    esc50,
    gtzan,
    magnatagatune,
    nsynth,
    openmic,
    speech_commands,
    urbansound8k,
)

Rows = list[tuple[str, str, str]]
MultiRows = list[tuple[str, tuple[str, ...], tuple[str, ...], str]]


def write_noise(path: Path, rate: int, seconds: float, channels=1, subtype="PCM_16", fmt=None):
    """Seeded (by file name) noise at -12 dBFS peak-ish, written with soundfile."""
    rng = np.random.default_rng(list(path.name.encode()))
    wave = 0.25 * rng.standard_normal((int(rate * seconds), channels)).clip(-4, 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave if channels > 1 else wave[:, 0], rate, subtype=subtype, format=fmt)


def _write_csv(path: Path, header, rows, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        csv.writer(f).writerows([header, *rows])


def esc50_layout(root: Path, n: int = 10, classes: int = 50) -> Rows:
    """ESC-50-master/: 44.1 kHz mono 5-s clips in reality; n // 5 per fold here, over the
    first `classes` classes in steps of 7."""
    rows, expected = [], []
    for i in range(n):
        fold, target = i % 5 + 1, (7 * i) % classes
        name = f"{fold}-{1000 + i}-A-{target}.wav"
        write_noise(root / "ESC-50-master" / "audio" / name, 44_100, 1.0)
        category = esc50.CLASS_NAMES[target]
        rows.append([name, fold, target, category, "False", str(1000 + i), "A"])
        expected.append((f"ESC-50-master/audio/{name}", category, f"fold{fold}"))
    header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    _write_csv(root / "ESC-50-master" / "meta" / "esc50.csv", header, rows)
    return expected


# (rate, channels, subtype): UrbanSound8K mixes all of these.
_US8K_FORMATS = (
    (44_100, 2, "PCM_16"),
    (48_000, 1, "PCM_24"),
    (22_050, 2, "PCM_U8"),
    (96_000, 1, "FLOAT"),
    (11_025, 1, "PCM_16"),
)


def urbansound8k_layout(root: Path, n: int = 10, classes: int = 10) -> Rows:
    """UrbanSound8K/: n // 10 clips per fold in mixed formats; slices of one recording share a
    fold."""
    rows, expected = [], []
    for i in range(n):
        fold, class_id = i % 10 + 1, (3 * i) % classes
        name = f"{2000 + i}-{class_id}-0-{i % 3}.wav"
        rate, channels, subtype = _US8K_FORMATS[i % len(_US8K_FORMATS)]
        write_noise(
            root / "UrbanSound8K" / "audio" / f"fold{fold}" / name, rate, 0.8, channels, subtype
        )
        label = urbansound8k.CLASS_NAMES[class_id]
        rows.append([name, 2000 + i, 0.0, 0.8, 1, fold, class_id, label])
        expected.append((f"UrbanSound8K/audio/fold{fold}/{name}", label, f"fold{fold}"))
    header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    _write_csv(root / "UrbanSound8K" / "metadata" / "UrbanSound8K.csv", header, rows)
    return expected


def gtzan_layout(root: Path, ext: str = "au") -> Rows:
    """genres/<genre>/<genre>.000NN.<ext> at 22.05 kHz; lists name .wav even for .au files."""
    expected, lists = [], {s: [] for s in ("train", "valid", "test")}
    for g, genre in enumerate(gtzan.CLASS_NAMES):
        for n in range(3):
            name = f"{genre}.{n:05d}"
            write_noise(
                root / "genres" / genre / f"{name}.{ext}",
                22_050,
                1.0,
                fmt="AU" if ext == "au" else "WAV",
            )
            split = ("train", "valid", "test", None)[(g + n) % 4]
            if split:  # the rest are "faulty": in no list, so left out
                lists[split].append(f"{genre}/{name}.wav")
                expected.append((f"genres/{genre}/{name}.{ext}", genre, split))
    for split, lines in lists.items():
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / f"{split}_filtered.txt").write_text("\n".join(lines) + "\n")
    return expected


def nsynth_layout(root: Path) -> Rows:
    """nsynth-{split}/examples.json + audio/<note_str>.wav, 16 kHz mono."""
    expected = []
    for s, split in enumerate(("train", "valid", "test")):
        notes = {}
        for index in range(s, len(nsynth.CLASS_NAMES), 2):
            family = nsynth.CLASS_NAMES[index]
            note_str = f"{family}_acoustic_{s:03d}-0{60 + index}-100"
            write_noise(root / f"nsynth-{split}" / "audio" / f"{note_str}.wav", 16_000, 1.0)
            notes[note_str] = {
                "note": 1000 * s + index,
                "sample_rate": 16000,
                "pitch": 60 + index,
                "velocity": 100,
                "instrument": index,
                "instrument_str": f"{family}_acoustic_{s:03d}",
                "instrument_family": index,
                "instrument_family_str": family,
                "instrument_source": 0,
                "instrument_source_str": "acoustic",
                "note_str": note_str,
                "qualities": [0] * 10,
                "qualities_str": [],
            }
            expected.append((f"nsynth-{split}/audio/{note_str}.wav", family, split))
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(notes))
    return expected


def speech_commands_layout(root: Path, folder: str = "speech_commands_v0.02") -> Rows:
    """35 word folders of 16 kHz 1-s clips (two speakers each), lists, background noise."""
    base, expected, lists = root / folder, [], {"valid": [], "test": []}
    for w, word in enumerate(speech_commands.CLASS_NAMES):
        for speaker in (f"{w:04x}aaaa", f"{w:04x}bbbb"):
            rel = f"{word}/{speaker}_nohash_0.wav"
            write_noise(base / rel, 16_000, 0.5)
            split = ("train", "valid", "test")[(w + speaker.endswith("b")) % 3]
            if split != "train":
                lists[split].append(rel)
            expected.append(((Path(folder) / rel).as_posix(), word, split))
    write_noise(base / "_background_noise_" / "white_noise.wav", 16_000, 2.0)
    (base / "validation_list.txt").write_text("\n".join(lists["valid"]) + "\n")
    (base / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    (base / "README.md").write_text("fake\n")
    return expected


def crema_d_layout(root: Path) -> Rows:
    """CREMA-D/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, 16 kHz mono."""
    expected = []
    for i, actor in enumerate((1001, 1007, 1008, 1009, 1010, 1018, 1091)):
        for e, emotion in enumerate(crema_d.CLASS_NAMES[i % 3 :: 3]):
            name = (
                f"{actor}_{('DFA', 'IEO', 'TIE')[e % 3]}_{emotion}_{('XX', 'LO', 'HI')[i % 3]}.wav"
            )
            write_noise(root / "CREMA-D" / "AudioWAV" / name, 16_000, 0.7)
            split = {1008: "valid", 1018: "valid", 1009: "test", 1010: "test"}.get(actor, "train")
            expected.append((f"CREMA-D/AudioWAV/{name}", emotion, split))
    return expected


def demo_layout(root: Path, task: str) -> Rows:
    """The real generator at its smallest size (72 labelled clips, no pretraining clips)."""
    if not (root / "manifest.json").exists():
        demo_corpus.generate(root, num_pretrain=0, num_labelled=demo_corpus.MIN_LABELLED)
    with open(root / "tasks" / f"{task}.csv", newline="") as f:
        return [(r["path"], r["label"], r["split"]) for r in csv.DictReader(f)]


def _corrupt(path: Path) -> None:
    """Bytes that no decoder takes, under an audio file's name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).bytes(3000))


# OpenMIC-2018: (sample_key, artist_id, partition, {instrument: relevance}). Worked out by hand:
# positive is relevance >= 0.5 (piano at exactly 0.5 is one), an instrument with no row is
# unknown, artist 10 is 0 modulo 10 and so `valid`, accordion is annotated in test only, and
# 000167_3840 does not decode.
OPENMIC = (
    ("000046_3840", "10", "train", {"guitar": 0.9, "voice": 0.2}),
    ("000135_483840", "11", "train", {"piano": 0.5, "drums": 0.49}),
    ("000139_119040", "12", "train", {"voice": 1.0, "guitar": 0.0}),
    ("000167_3840", "13", "train", {"guitar": 0.7}),
    ("000178_0", "20", "train", {"drums": 0.8}),
    ("002345_30720", "14", "test", {"accordion": 0.8, "guitar": 0.1}),
    ("003456_61440", "15", "test", {"voice": 0.75, "piano": 0.6}),
)
OPENMIC_CORRUPT = "000167_3840"


def openmic_layout(root: Path, npz: bool = False) -> MultiRows:
    """audio/<prefix>/<key>.ogg (44.1 kHz stereo Vorbis), the aggregated labels (or the npz),
    class-map.json, partitions/split01_*.csv (a key a line) and the metadata's artist ids."""
    expected, labels, meta = [], [], []
    for key, artist, split, relevance in OPENMIC:
        path = root / "audio" / key[:3] / f"{key}.ogg"
        if key == OPENMIC_CORRUPT:
            _corrupt(path)
        else:
            write_noise(path, 44_100, 1.0, channels=2, subtype="VORBIS", fmt="OGG")
        for instrument, value in relevance.items():
            labels.append([key, instrument, value, 3])
        # Non-ASCII names, as the real metadata has them (UTF-8).
        meta.append([key, f"{artist}{key[-3:]}", artist, "Sigur Rós", "Ágætis byrjun – ½"])
        positive = tuple(c for c in openmic.CLASS_NAMES if relevance.get(c, 0) >= 0.5)
        unknown = tuple(c for c in openmic.CLASS_NAMES if c not in relevance)
        split = "valid" if artist in ("10", "20") else split
        expected.append((f"audio/{key[:3]}/{key}.ogg", positive, unknown, split))
    if npz:
        keys = [k for k, *_ in OPENMIC]
        y_true = np.full((len(keys), 20), 0.5, np.float32)
        y_mask = np.zeros((len(keys), 20), bool)
        for r, (_, _, _, relevance) in enumerate(OPENMIC):
            for instrument, value in relevance.items():
                c = openmic.CLASS_NAMES.index(instrument)
                y_true[r, c], y_mask[r, c] = value, True
        x = np.zeros((len(keys), 10, 128), np.uint8)
        # As the official scripts/helper_numpy.py saves them: the keys an object array.
        keys = np.array(keys, dtype=object)
        np.savez(root / "openmic-2018.npz", X=x, Y_true=y_true, Y_mask=y_mask, sample_key=keys)
    else:
        header = ["sample_key", "instrument", "relevance", "num_responses"]
        _write_csv(root / "openmic-2018-aggregated-labels.csv", header, labels)
    header = ["sample_key", "track_id", "artist_id", "artist_name", "track_title"]
    # With a byte-order mark, as a spreadsheet saving "CSV UTF-8" writes it.
    _write_csv(root / "openmic-2018-metadata.csv", header, meta, encoding="utf-8-sig")
    (root / "class-map.json").write_text(
        json.dumps({c: i for i, c in enumerate(openmic.CLASS_NAMES)})
    )
    for part in ("train", "test"):
        keys = [k for k, _, split, _ in OPENMIC if split == part]
        (root / "partitions").mkdir(exist_ok=True)
        (root / "partitions" / f"split01_{part}.csv").write_text("\n".join(keys) + "\n")
    return expected


# MagnaTagATune: (clip_id, mp3_path, tags). "jazz" and "singer" are not top-50 tags; clip 24
# has none of the top 50 (kept by the `all` config only); 35644 is a known-undecodable id.
MTT = (
    ("2", "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3",
     ("classical", "violin", "strings")),
    ("6", "0/artist_a-album-01-track-0-29.mp3", ("guitar", "slow", "jazz")),
    ("10", "b/artist_b-album-02-song-30-59.mp3", ("female vocal", "pop")),
    ("24", "1/artist_c-album-03-song-0-29.mp3", ("singer",)),
    ("30", "c/artist_d-album-04-song-0-29.mp3", ("techno", "beat", "beats")),
    ("41", "d/artist_e-album-05-song-59-88.mp3", ("no vocals", "choral")),
    ("35644", "3/artist_f-album-06-song-0-29.mp3", ("rock",)),
)  # fmt: skip
MTT_EXTRA_TAGS = ("jazz", "singer", "synthesizer")


def magnatagatune_layout(root: Path, all_clips: bool = False) -> MultiRows:
    """<folder 0-f>/<name>.mp3 (16 kHz mono mp3) and the tab-separated annotations_final.csv,
    every field quoted as in the release; the known-undecodable clip is an empty file."""
    tags = list(magnatagatune.TOP50[::-1]) + list(MTT_EXTRA_TAGS)  # not the top-50's order
    rows, expected = [], []
    for clip_id, mp3_path, clip_tags in MTT:
        path = root / mp3_path
        if clip_id == "35644":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        else:
            write_noise(path, 16_000, 1.0, fmt="MP3", subtype="MPEG_LAYER_III")
        rows.append([clip_id, *("1" if t in clip_tags else "0" for t in tags), mp3_path])
        top = tuple(t for t in magnatagatune.TOP50 if t in clip_tags)
        if clip_id != "35644" and (top or all_clips):
            split = {"c": "valid", "d": "test", "e": "test", "f": "test"}.get(mp3_path[0], "train")
            expected.append((mp3_path, top, (), split))
    with open(root / "annotations_final.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)
        writer.writerows([["clip_id", *tags, "mp3_path"], *rows])
    return expected


# FSD50K: 200 vocabulary classes, 4 of them named as in the release; "Accordion" is labelled in
# eval only, and most classes in no clip at all. (fname, labels, dev split or None for eval).
FSD_NAMES = ("Accelerating_and_revving_and_vroom", "Accordion", "Bark", "Dog")
FSD = (
    ("64760", "Bark,Dog", "train"),
    ("16399", "Dog", "train"),
    ("21011", "Accelerating_and_revving_and_vroom", "val"),
    ("378", "Bark", "train"),
    ("37199", "Accordion,Dog", None),
    ("86", "Bark", None),
)
FSD_CORRUPT = "378"


def fsd50k_vocabulary() -> list[str]:
    """The fake's 200 class names in vocabulary order."""
    return list(FSD_NAMES) + [f"Class_{i:03d}" for i in range(len(FSD_NAMES), 200)]


def fsd50k_layout(root: Path) -> MultiRows:
    """FSD50K.{dev,eval}_audio/<fname>.wav (44.1 kHz mono, 0.3 s to 2 s here) and the ground
    truth CSVs; vocabulary.csv has no header."""
    expected, dev, test = [], [], []
    for i, (fname, labels, split) in enumerate(FSD):
        folder = "FSD50K.dev_audio" if split else "FSD50K.eval_audio"
        path = root / folder / f"{fname}.wav"
        if fname == FSD_CORRUPT:
            _corrupt(path)
        else:
            write_noise(path, 44_100, (0.3, 2.0, 1.0, 1.0, 1.5, 0.7)[i])
        mids = ",".join(f"/m/{zlib.crc32(x.encode()) % 10**5}" for x in labels.split(","))
        (dev if split else test).append([fname, labels, mids] + ([split] if split else []))
        order = fsd50k_vocabulary()
        ordered = tuple(sorted(labels.split(","), key=order.index))
        expected.append(
            (f"{folder}/{fname}.wav", ordered, (), {"val": "valid", None: "test"}.get(split, split))
        )
    truth = root / "FSD50K.ground_truth"
    _write_csv(truth / "dev.csv", ["fname", "labels", "mids", "split"], dev)
    _write_csv(truth / "eval.csv", ["fname", "labels", "mids"], test)
    with open(truth / "vocabulary.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [i, name, f"/m/{i:05d}"] for i, name in enumerate(fsd50k_vocabulary())
        )
    return expected


def papers_data_root(root: Path) -> dict[str, Path]:
    """The seven tasks of the papers' table laid out under `root` as the probe's suite finds
    them (root/openmic, root/nsynth, ...), ESC-50 and UrbanSound8K with enough clips per class
    for the probe's hold-out. Returns {task: its folder}."""
    writers = {
        "openmic": openmic_layout,
        "nsynth": nsynth_layout,
        "gtzan": gtzan_layout,
        "magnatagatune": magnatagatune_layout,
        "fsd50k": fsd50k_layout,
        "esc50": lambda r: esc50_layout(r, n=40, classes=4),
        "urbansound8k": lambda r: urbansound8k_layout(r, n=60, classes=3),
    }
    folders = {}
    for task, write in writers.items():
        folders[task] = root / task
        write(folders[task])
    return folders


MULTILABEL_LAYOUTS = {
    "openmic": openmic_layout,
    "magnatagatune": magnatagatune_layout,
    "magnatagatune/all": lambda root: magnatagatune_layout(root, all_clips=True),
    "fsd50k": fsd50k_layout,
}

LAYOUTS = {
    "esc50": esc50_layout,
    "urbansound8k": urbansound8k_layout,
    "gtzan": gtzan_layout,
    "nsynth": nsynth_layout,
    "speech_commands": speech_commands_layout,
    "crema_d": crema_d_layout,
    "demo/timbre": lambda root: demo_layout(root, "timbre"),
    "demo/pitch": lambda root: demo_layout(root, "pitch"),
    "demo/event": lambda root: demo_layout(root, "event"),
}
