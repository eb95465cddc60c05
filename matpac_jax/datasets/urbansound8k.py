"""UrbanSound8K (Salamon et al. 2014): 8,732 urban sound excerpts (<= 4 s), 10 classes, 10 folds.

Layout (`UrbanSound8K.tar.gz` unpacked into manual_dir)::

    UrbanSound8K/audio/fold1/100032-3-0-0.wav ... fold10/...   mixed rates, mono and stereo
    UrbanSound8K/metadata/UrbanSound8K.csv
        slice_file_name,fsID,start,end,salience,fold,classID,class

Splits: `fold1` ... `fold10`, the `fold` column; the protocol is 10-fold cross-validation on
these predefined folds (never re-split: slices of one recording share a fold).
"""

from __future__ import annotations

from pathlib import Path

from matpac_jax.datasets import base

# Class-index (`classID`) order of UrbanSound8K.csv.
CLASS_NAMES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)

INSTRUCTIONS = """\
UrbanSound8K is read from a local copy. Download UrbanSound8K.tar.gz from the official page
https://urbansounddataset.weebly.com/urbansound8k.html (Zenodo record 1203745) and unpack it
into manual_dir, so that manual_dir/UrbanSound8K/metadata/UrbanSound8K.csv and
manual_dir/UrbanSound8K/audio/fold1 ... fold10 exist."""


class UrbanSound8k(base.AudioClassificationBuilder):
    """UrbanSound8K urban sound classification, 10 official folds."""

    name = "matpac_urbansound8k"
    CLASS_NAMES = CLASS_NAMES
    NUM_FOLDS = 10
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://urbansounddataset.weebly.com/urbansound8k.html"
    CITATION = """@inproceedings{salamon2014dataset,
  title={A Dataset and Taxonomy for Urban Sound Research},
  author={Salamon, Justin and Jacoby, Christopher and Bello, Juan Pablo},
  booktitle={Proceedings of the 22nd ACM International Conference on Multimedia},
  pages={1041--1044},
  year={2014}
}"""

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        root = manual_dir / "UrbanSound8K"
        rows = base.read_csv(
            root / "metadata" / "UrbanSound8K.csv",
            ("slice_file_name", "fold", "classID", "class"),
            INSTRUCTIONS,
        )
        clips = []
        for row in rows:
            class_id = int(row["classID"])
            if row["class"] not in CLASS_NAMES or CLASS_NAMES.index(row["class"]) != class_id:
                raise base.ManualDirError(
                    f"UrbanSound8K.csv row {row['slice_file_name']}: classID {class_id} / class "
                    f"{row['class']!r} do not match the official class list"
                )
            fold = f"fold{int(row['fold'])}"
            path = root / "audio" / fold / row["slice_file_name"]
            clips.append(base.make_clip(manual_dir, path, row["class"], fold))
        return clips
