"""CREMA-D (Cao et al. 2014): 7,442 acted sentences by 91 actors, 6 emotion classes.

Layout (the official GitHub repository cloned with Git LFS, or its AudioWAV folder alone, in
manual_dir)::

    CREMA-D/AudioWAV/1001_DFA_ANG_XX.wav ...    <actor>_<sentence>_<emotion>_<level>.wav, 16 kHz
    (or AudioWAV/... directly under manual_dir)

Labels: the emotion code, ANG DIS FEA HAP NEU SAD.

Splits: CREMA-D has no official split. This builder's is fixed and speaker-disjoint, by actor
id: `(actor - 1001) % 10` in 0-6 -> `train`, 7 -> `valid`, 8-9 -> `test`, i.e. 70/10/20 of
the actors 1001-1091 (64 / 9 / 18 actors), interleaved so that no block of ids (recording
order) lands in one split. It depends on the actor id only, never on which files are present.
"""

from __future__ import annotations

import re
from pathlib import Path

from matpac_jax.datasets import base

CLASS_NAMES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
_NAME = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})\.wav")
_LFS_POINTER = b"version https://git-lfs"

INSTRUCTIONS = """\
CREMA-D is read from a local copy of the official repository
https://github.com/CheyneyComputerScience/CREMA-D: `git lfs install && git clone` it into
manual_dir (the audio is stored with Git LFS: without it the .wav files are small text
pointers), so that manual_dir/CREMA-D/AudioWAV/1001_DFA_ANG_XX.wav exists; a folder
manual_dir/AudioWAV/ holding the same files also works."""


def split_of(actor: int) -> str:
    """The fixed speaker-disjoint split of an actor id (see the module docstring)."""
    slot = (actor - 1001) % 10
    return "train" if slot < 7 else "valid" if slot == 7 else "test"


class CremaD(base.AudioClassificationBuilder):
    """CREMA-D emotion recognition, fixed speaker-disjoint train / valid / test."""

    name = "matpac_crema_d"
    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
    CITATION = """@article{cao2014crema,
  title={{CREMA-D}: Crowd-sourced Emotional Multimodal Actors Dataset},
  author={Cao, Houwei and Cooper, David G. and Keutmann, Michael K. and Gur, Ruben C. and
          Nenkova, Ani and Verma, Ragini},
  journal={IEEE Transactions on Affective Computing},
  volume={5},
  number={4},
  pages={377--390},
  year={2014}
}"""

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        folder = base.find_root(manual_dir, ("CREMA-D", "."), "AudioWAV", INSTRUCTIONS) / "AudioWAV"
        paths = sorted(folder.glob("*.wav"))
        if paths:
            with open(paths[0], "rb") as f:
                if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
                    raise base.ManualDirError(
                        f"{paths[0]} is a Git LFS pointer, not audio: run `git lfs pull` in the "
                        f"clone.\n{INSTRUCTIONS}"
                    )
        clips = []
        for path in paths:
            match = _NAME.fullmatch(path.name)
            if not match:
                raise base.ManualDirError(
                    f"{path}: not a CREMA-D file name such as 1001_DFA_ANG_XX.wav "
                    "(actor_sentence_emotion_level)"
                )
            actor, emotion = int(match.group(1)), match.group(3)
            clips.append(base.make_clip(manual_dir, path, emotion, split_of(actor)))
        return clips
