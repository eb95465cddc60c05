"""Tiny fake copies of each dataset's official layout, for tests/test_datasets.py.

Each writer fills `root` (the manual_dir) with a handful of short seeded noise clips under the
official file names, at the real data's sample rates and channel counts, plus the official
metadata files, and returns the expected `(path relative to root, label, split)` of every clip
the protocol keeps. Split names are tfds's: `train` / `valid` / `test` or `fold1` ... .
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from matpac_jax.data import demo_corpus
from matpac_jax.datasets import crema_d, esc50, gtzan, nsynth, speech_commands, urbansound8k

Rows = list[tuple[str, str, str]]


def write_noise(path: Path, rate: int, seconds: float, channels=1, subtype="PCM_16", fmt=None):
    """Seeded (by file name) noise at -12 dBFS peak-ish, written with soundfile."""
    rng = np.random.default_rng(list(path.name.encode()))
    wave = 0.25 * rng.standard_normal((int(rate * seconds), channels)).clip(-4, 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave if channels > 1 else wave[:, 0], rate, subtype=subtype, format=fmt)


def _write_csv(path: Path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def esc50_layout(root: Path) -> Rows:
    """ESC-50-master/: 44.1 kHz mono 5-s clips in reality; 2 per fold here."""
    rows, expected = [], []
    for i in range(10):
        fold, target = i % 5 + 1, (7 * i) % 50
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


def urbansound8k_layout(root: Path) -> Rows:
    """UrbanSound8K/: one clip per fold in mixed formats; slices of one recording share a fold."""
    rows, expected = [], []
    for i in range(10):
        fold, class_id = i + 1, (3 * i) % 10
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
