"""MagnaTagATune (Law et al. 2009): 25,863 29-s mp3 clips, the standard top-50 tags.

Layout (`mp3.zip.001`-`.003` joined and unzipped into manual_dir, with the annotations)::

    0/ 1/ ... f/<artist-album-track>-<start>-<end>.mp3      16 kHz mono mp3
    annotations_final.csv          tab-separated: clip_id, 188 tag columns (0/1), mp3_path

Tags: the standard top-50 (the 50 most frequent), in the order of `top50_tags.txt` of the
published split lists (jongpillee's MTAT_split, which minzwon's tagging models use): "female
voice" before "metal" (before 1.1.0 of this builder, the other way round).

Splits: by folder, the common protocol: `0`-`b` -> `train`, `c` -> `valid`, `d`-`f` -> `test`.
A song's clips share a folder, so no song is in two splits.

Configs: the default keeps only the clips with at least one top-50 tag (21,111: 15,250 /
1,529 / 4,332 by folder, the variant most papers report; the published split lists count
15,244 / 1,529 / 4,332, as they also leave out clips with less than 29.1 s of audio, their
README says); `all` keeps every clip (25,863), a clip with
no top-50 tag being a negative for all 50. The three clips known not to decode (clip ids 35644,
55753, 57881: empty files in the official archive) are left out with a warning.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import tensorflow_datasets as tfds

from matpac_jax.datasets import base

TOP50 = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "female voice", "metal", "choral",
)  # fmt: skip
SPLIT_OF_FOLDER = {**{f: "train" for f in "0123456789ab"}, "c": "valid"}
SPLIT_OF_FOLDER.update({f: "test" for f in "def"})
UNDECODABLE = ("35644", "55753", "57881")  # clip ids whose mp3 files are empty

INSTRUCTIONS = """\
MagnaTagATune is read from a local copy. Download mp3.zip.001, mp3.zip.002, mp3.zip.003 and
annotations_final.csv from https://mirg.city.ac.uk/codeapps/the-magnatagatune-dataset, join the
parts (cat mp3.zip.* > mp3.zip) and unzip into manual_dir, so that manual_dir/0/ ... manual_dir/f/
hold the mp3 files and manual_dir/annotations_final.csv is beside them."""


class MagnaTagATune(base.MultiLabelAudioBuilder):
    """MagnaTagATune top-50 tagging, split by folder (0-b / c / d-f)."""

    name = "matpac_magnatagatune"
    CLASS_NAMES = TOP50
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {  # noqa: RUF012 (tfds reads it from the class)
        "1.0.0": "First release.",
        "1.1.0": "The class order of top50_tags.txt: 'female voice' before 'metal'.",
    }
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="tagged", description="clips with a top-50 tag (21,111)"),
        tfds.core.BuilderConfig(name="all", description="every clip (25,863)"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://mirg.city.ac.uk/codeapps/the-magnatagatune-dataset"
    CITATION = """@inproceedings{law2009evaluation,
  title={Evaluation of Algorithms Using Games: The Case of Music Tagging},
  author={Law, Edith and West, Kris and Mandel, Michael I. and Bay, Mert and Downie, J. Stephen},
  booktitle={Proceedings of the 10th International Society for Music Information Retrieval
             Conference (ISMIR)},
  pages={387--392},
  year={2009}
}"""

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        path = base.require(manual_dir / "annotations_final.csv", INSTRUCTIONS)
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
            header = list(rows[0]) if rows else []
        lacking = [c for c in ("clip_id", "mp3_path", *TOP50) if c not in header]
        if lacking:
            raise base.ManualDirError(
                f"{path} lacks the columns {lacking[:5]}: not the official tab-separated "
                f"annotations_final.csv.\n{INSTRUCTIONS}"
            )
        keep_untagged = config == "all"
        clips, known_bad = [], []
        for row in rows:
            folder = row["mp3_path"].split("/")[0]
            if folder not in SPLIT_OF_FOLDER:
                raise base.ManualDirError(f"{path}: clip {row['clip_id']} is in folder {folder!r}")
            if row["clip_id"] in UNDECODABLE:
                known_bad.append(row["mp3_path"])
                continue
            tags = [t for t in TOP50 if row[t].strip() == "1"]
            if tags or keep_untagged:
                clips.append(
                    base.make_clip(
                        manual_dir,
                        manual_dir / row["mp3_path"],
                        "",
                        SPLIT_OF_FOLDER[folder],
                        labels=tags,
                    )
                )
        if known_bad:
            logging.warning(
                "%s: left out %d clip(s) known not to decode: %s",
                cls.name,
                len(known_bad),
                ", ".join(known_bad),
            )
        return clips
