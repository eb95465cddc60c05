"""NSynth (Engel et al. 2017): 4-s 16 kHz musical notes; task: instrument family (11 classes).

Layout (the three `nsynth-{train,valid,test}.jsonwav.tar.gz` archives unpacked into manual_dir)::

    nsynth-train/examples.json        {note_str: {"instrument_family_str": ..., ...}, ...}
    nsynth-train/audio/<note_str>.wav
    nsynth-valid/...  nsynth-test/...

Splits: the official `train` / `valid` / `test` (289,205 / 12,678 / 4,096 notes; the valid and
test instruments are absent from train).
"""

from __future__ import annotations

import json
from pathlib import Path

from matpac_jax.datasets import base

# `instrument_family` index order of examples.json.
CLASS_NAMES = (
    "bass",
    "brass",
    "flute",
    "guitar",
    "keyboard",
    "mallet",
    "organ",
    "reed",
    "string",
    "synth_lead",
    "vocal",
)

INSTRUCTIONS = """\
NSynth is read from a local copy. Download nsynth-train.jsonwav.tar.gz,
nsynth-valid.jsonwav.tar.gz and nsynth-test.jsonwav.tar.gz from the official page
https://magenta.tensorflow.org/datasets/nsynth (http://download.magenta.tensorflow.org/datasets/
nsynth/) and unpack all three into manual_dir, so that manual_dir/nsynth-train/examples.json and
manual_dir/nsynth-train/audio/*.wav exist (likewise nsynth-valid and nsynth-test)."""


class Nsynth(base.AudioClassificationBuilder):
    """NSynth instrument family classification, official train / valid / test."""

    name = "matpac_nsynth"
    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://magenta.tensorflow.org/datasets/nsynth"
    CITATION = """@inproceedings{engel2017neural,
  title={Neural Audio Synthesis of Musical Notes with {WaveNet} Autoencoders},
  author={Engel, Jesse and Resnick, Cinjon and Roberts, Adam and Dieleman, Sander and
          Norouzi, Mohammad and Eck, Douglas and Simonyan, Karen},
  booktitle={Proceedings of the 34th International Conference on Machine Learning},
  pages={1068--1077},
  year={2017}
}"""

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        clips = []
        for split in base.SPLITS:
            root = manual_dir / f"nsynth-{split}"
            with open(base.require(root / "examples.json", INSTRUCTIONS), encoding="utf-8") as f:
                notes = json.load(f)
            for note_str, note in sorted(notes.items()):
                family = note.get("instrument_family_str")
                index = note.get("instrument_family")
                if family not in CLASS_NAMES or CLASS_NAMES.index(family) != index:
                    raise base.ManualDirError(
                        f"{root / 'examples.json'} note {note_str}: instrument_family {index} / "
                        f"instrument_family_str {family!r} do not match the official family list"
                    )
                path = root / "audio" / f"{note_str}.wav"
                clips.append(base.make_clip(manual_dir, path, family, split))
        return clips
