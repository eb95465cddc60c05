"""FSD50K (Fonseca et al. 2022): 51,197 Freesound clips of 0.3-30 s, 200 AudioSet classes.

Layout (the Zenodo archives unpacked into manual_dir)::

    FSD50K.dev_audio/<fname>.wav       40,966 clips, 44.1 kHz mono
    FSD50K.eval_audio/<fname>.wav      10,231
    FSD50K.ground_truth/dev.csv        fname,labels,mids,split   (split: train / val)
    FSD50K.ground_truth/eval.csv       fname,labels,mids
    FSD50K.ground_truth/vocabulary.csv index,label,mid   (no header; 200 rows)

Labels: the `labels` column, comma-separated class names (leaf classes with their ancestors, as
released). The 200 label columns and their order come from vocabulary.csv, never from the
labels that one split happens to contain.

Splits: the official ones: dev/`train` -> `train` (36,796), dev/`val` -> `valid` (4,170),
eval -> `test` (10,231). Clips keep their full length (0.3-30 s): the probe's suite embeds
whole clips with the encoder's chunking.
"""

from __future__ import annotations

import csv
from pathlib import Path

from matpac_jax.datasets import base

INSTRUCTIONS = """\
FSD50K is read from a local copy. Download the FSD50K archives from
https://zenodo.org/record/4060432 (FSD50K.dev_audio.zip with its .z01-.z05 parts,
FSD50K.eval_audio.zip with .z01, FSD50K.ground_truth.zip), join and unzip them into manual_dir,
so that manual_dir/FSD50K.dev_audio/*.wav, manual_dir/FSD50K.eval_audio/*.wav and
manual_dir/FSD50K.ground_truth/{dev,eval,vocabulary}.csv exist."""

SPLIT_OF_DEV = {"train": "train", "val": "valid"}


class Fsd50k(base.MultiLabelAudioBuilder):
    """FSD50K sound-event tagging (200 classes), official train / val / eval."""

    name = "matpac_fsd50k"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://zenodo.org/record/4060432"
    CITATION = """@article{fonseca2022fsd50k,
  title={{FSD50K}: An Open Dataset of Human-Labeled Sound Events},
  author={Fonseca, Eduardo and Favory, Xavier and Pons, Jordi and Font, Frederic and
          Serra, Xavier},
  journal={IEEE/ACM Transactions on Audio, Speech, and Language Processing},
  volume={30},
  pages={829--852},
  year={2022}
}"""
    NUM_CLASSES = 200

    @classmethod
    def class_names(cls, config: str | None = None, manual_dir: Path | None = None):
        """The 200 names of vocabulary.csv, in its order, read from `manual_dir`."""
        if manual_dir is None:
            raise base.ManualDirError(f"FSD50K's classes come from vocabulary.csv.\n{INSTRUCTIONS}")
        return _vocabulary(Path(manual_dir) / "FSD50K.ground_truth" / "vocabulary.csv")

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        truth = manual_dir / "FSD50K.ground_truth"
        order = cls.class_names(config, manual_dir)
        names = set(order)
        clips = []
        columns = ("fname", "labels")
        dev = base.read_csv(truth / "dev.csv", (*columns, "split"), INSTRUCTIONS)
        for row in dev:
            if row["split"] not in SPLIT_OF_DEV:
                raise base.ManualDirError(
                    f"{truth / 'dev.csv'}: clip {row['fname']} has split {row['split']!r}, "
                    "expected train or val"
                )
        test = base.read_csv(truth / "eval.csv", columns, INSTRUCTIONS)
        for rows, folder, split_of in (
            (dev, "FSD50K.dev_audio", lambda r: SPLIT_OF_DEV[r["split"]]),
            (test, "FSD50K.eval_audio", lambda r: "test"),
        ):
            for row in rows:
                labels = [x for x in row["labels"].split(",") if x]
                unknown = sorted(set(labels) - names)
                if unknown:
                    raise base.ManualDirError(
                        f"{folder} clip {row['fname']}: label {unknown[0]!r} is not in "
                        "vocabulary.csv"
                    )
                labels.sort(key=order.index)  # the vocabulary's order
                path = manual_dir / folder / f"{row['fname']}.wav"
                clips.append(base.make_clip(manual_dir, path, "", split_of(row), labels=labels))
        return clips


def _vocabulary(path: Path) -> tuple[str, ...]:
    """vocabulary.csv's names in index order (rows `index,label,mid`, no header)."""
    with open(base.require(path, INSTRUCTIONS), newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    try:
        rows = sorted(rows, key=lambda r: int(r[0]))
    except (ValueError, IndexError) as e:
        raise base.ManualDirError(f"{path}: expected rows `index,label,mid`, no header") from e
    if [int(r[0]) for r in rows] != list(range(len(rows))):
        raise base.ManualDirError(f"{path}: the indices are not 0..{len(rows) - 1}")
    return tuple(r[1] for r in rows)
