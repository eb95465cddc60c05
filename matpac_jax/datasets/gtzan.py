"""GTZAN (Tzanetakis & Cook 2002), 10 genres, with the fault-filtered split.

Layout (the original `genres.tar.gz`, or the common WAV re-encodings of it, in manual_dir)::

    genres/blues/blues.00000.au ... genres/rock/rock.00099.au    22.05 kHz mono; .wav also read
    splits/train_filtered.txt  valid_filtered.txt  test_filtered.txt

`genres_original/` and `Data/genres_original/` (the Kaggle copy) are accepted for `genres/`.

Splits: `train` / `valid` / `test`, the fault-filtered, artist-disjoint split of Kereliuk,
Sturm & Larsen (2015) with 443 / 197 / 290 tracks, the one used by Jukebox probing, MARBLE and
EVAR. The three lists are not in the GTZAN archive and are not shipped here: copy them
into manual_dir/splits/ (one track a line, `blues/blues.00029.wav`; `.au` or a bare track name
also work). Tracks in no list are the faulty ones (repeats, mislabels, distortions): left out.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath

from matpac_jax.datasets import base

CLASS_NAMES = (
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
)
# Track counts of the published fault-filtered lists.
FILTERED_SIZES = {"train": 443, "valid": 197, "test": 290}
_ROOTS = ("genres", "genres_original", "Data/genres_original")
_TRACK = re.compile(r"([a-z]+)\.(\d{5})(\.wav|\.au)?")

INSTRUCTIONS = """\
GTZAN is read from a local copy. Put the official genres.tar.gz (http://marsyas.info/index.html,
http://opihi.cs.uvic.ca/sound/genres.tar.gz) unpacked into manual_dir, so that
manual_dir/genres/blues/blues.00000.au (or .wav) exists; genres_original/ or
Data/genres_original/ (the Kaggle WAV copy) also work. The fault-filtered split lists are not
part of the archive: copy train_filtered.txt, valid_filtered.txt and test_filtered.txt (443 /
197 / 290 tracks, Kereliuk et al. 2015; published at https://github.com/coreyker/dnn-mgr
folder gtzan/ and https://github.com/jongpillee/music_dataset_split folder GTZAN_split/)
into manual_dir/splits/, one track a line, e.g. blues/blues.00029.wav."""


def read_split_list(path: Path) -> list[str]:
    """Track names (`blues.00029`) of one split list file."""
    names = []
    with open(base.require(path, INSTRUCTIONS), encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            match = _TRACK.fullmatch(PurePosixPath(line).name)
            if not match or match.group(1) not in CLASS_NAMES:
                raise base.ManualDirError(
                    f"{path} line {number}: {line!r} is not a GTZAN track such as "
                    f"blues/blues.00029.wav.\n{INSTRUCTIONS}"
                )
            names.append(f"{match.group(1)}.{match.group(2)}")
    return names


class Gtzan(base.AudioClassificationBuilder):
    """GTZAN music genre classification, fault-filtered train / valid / test."""

    name = "matpac_gtzan"
    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "http://marsyas.info/index.html"
    CITATION = """@article{tzanetakis2002musical,
  title={Musical genre classification of audio signals},
  author={Tzanetakis, George and Cook, Perry},
  journal={IEEE Transactions on Speech and Audio Processing},
  volume={10},
  number={5},
  pages={293--302},
  year={2002}
}
@article{kereliuk2015deep,
  title={Deep Learning and Music Adversaries},
  author={Kereliuk, Corey and Sturm, Bob L. and Larsen, Jan},
  journal={IEEE Transactions on Multimedia},
  volume={17},
  number={11},
  pages={2059--2071},
  year={2015}
}"""

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        root = base.find_root(manual_dir, _ROOTS, "blues", INSTRUCTIONS)
        clips, seen = [], {}
        for split in base.SPLITS:
            names = read_split_list(manual_dir / "splits" / f"{split}_filtered.txt")
            if len(names) != FILTERED_SIZES[split]:
                logging.warning(
                    "GTZAN %s_filtered.txt lists %d tracks, the published list %d: is it the "
                    "fault-filtered split?",
                    split,
                    len(names),
                    FILTERED_SIZES[split],
                )
            for name in names:
                if name in seen:
                    raise base.ManualDirError(
                        f"GTZAN track {name} is in both the {seen[name]} and the {split} list"
                    )
                seen[name] = split
                genre = name.split(".")[0]
                wav, au = root / genre / f"{name}.wav", root / genre / f"{name}.au"
                path = au if au.exists() and not wav.exists() else wav
                clips.append(base.make_clip(manual_dir, path, genre, split))
        return clips
