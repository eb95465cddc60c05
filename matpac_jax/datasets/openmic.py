"""OpenMIC-2018 (Humphrey, Durand & McFee 2018): 20,000 10-s clips, 20 instruments, partial labels.

Layout (`openmic-2018-v1.0.0.tgz` unpacked into manual_dir; an `openmic-2018/` folder above it
is also accepted)::

    audio/<3-char prefix>/<sample_key>.ogg         e.g. audio/000/000046_3840.ogg
    openmic-2018-aggregated-labels.csv             sample_key,instrument,relevance,num_responses
      (or openmic-2018.npz with the arrays Y_true, Y_mask, sample_key)
    class-map.json                                 {"accordion": 0, ..., "voice": 19}
    partitions/split01_train.csv                   14,915 sample keys, one a line
    partitions/split01_test.csv                    5,085
    openmic-2018-metadata.csv                      optional: sample_key,...,artist_id,...

Labels are partial: each clip was annotated for some instruments only. An instrument is
positive when its aggregated relevance (`Y_true`) is >= 0.5, negative when annotated below
that, and *unknown* when nobody annotated it (no row in the aggregated CSV; `Y_mask` 0 in the
npz). Unknown labels are stored in `label_mask` (0) and written to the task CSV's `unknown`
column; the probe leaves them out of its loss and of average precision.

Splits: the official artist-disjoint `split01`: `test` is split01_test; `train` and `valid`
share split01_train. There is no official validation split: `valid` holds the training clips of
every artist whose id, as a number, is 0 modulo 10 (`openmic-2018-metadata.csv`; about a tenth
of split01_train, artist-disjoint from the rest), or, without the metadata file, the clips whose
sample key hashes (CRC-32) to 0 modulo 10. Clips that do not decode (the dataset's README names
a few) are skipped with a warning when built, and reported by the probe's suite.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from matpac_jax.datasets import base

POSITIVE = 0.5  # relevance >= this: the instrument is present
VALID_MODULUS = 10  # 1 in 10 artists (or sample keys) of split01_train is held out as `valid`

# class-map.json's order.
CLASS_NAMES = (
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
)  # fmt: skip

INSTRUCTIONS = """\
OpenMIC-2018 is read from a local copy. Download openmic-2018-v1.0.0.tgz from
https://zenodo.org/record/1432913 (the official release, https://github.com/cosmir/openmic-2018)
and unpack it into manual_dir, so that manual_dir/class-map.json,
manual_dir/openmic-2018-aggregated-labels.csv (or openmic-2018.npz),
manual_dir/partitions/split01_train.csv and manual_dir/audio/000/*.ogg exist."""


class OpenMic(base.MultiLabelAudioBuilder):
    """OpenMIC-2018 instrument tagging (20 classes, partial labels), official split01."""

    name = "matpac_openmic"
    CLASS_NAMES = CLASS_NAMES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    HOMEPAGE = "https://github.com/cosmir/openmic-2018"
    CITATION = """@inproceedings{humphrey2018openmic,
  title={{OpenMIC-2018}: An Open Data-set for Multiple Instrument Recognition},
  author={Humphrey, Eric J. and Durand, Simon and McFee, Brian},
  booktitle={Proceedings of the 19th International Society for Music Information Retrieval
             Conference (ISMIR)},
  pages={438--444},
  year={2018}
}"""

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        root = base.find_root(manual_dir, (".", "openmic-2018"), "class-map.json", INSTRUCTIONS)
        with open(root / "class-map.json", encoding="utf-8") as f:
            class_map = json.load(f)
        if sorted(class_map, key=class_map.get) != list(CLASS_NAMES):
            raise base.ManualDirError(
                f"{root / 'class-map.json'} does not hold the official 20 instruments in order"
            )
        relevance = _relevance(root)
        train = _keys(root / "partitions" / "split01_train.csv")
        test = _keys(root / "partitions" / "split01_test.csv")
        both = sorted(set(train) & set(test))
        if both:
            raise base.ManualDirError(f"sample key {both[0]} is in both split01 partitions")
        held_out = _validation_keys(root, train)
        clips = []
        for split, keys in (("train", train), ("test", test)):
            for key in keys:
                if key not in relevance:
                    raise base.ManualDirError(
                        f"sample key {key} of the split01 partitions has no labels in "
                        f"{root}: not the official release?"
                    )
                known = relevance[key]
                clips.append(
                    base.make_clip(
                        manual_dir,
                        root / "audio" / key[:3] / f"{key}.ogg",
                        "",
                        "valid" if key in held_out else split,
                        labels=[c for c in CLASS_NAMES if known.get(c, 0.0) >= POSITIVE],
                        unknown=[c for c in CLASS_NAMES if c not in known],
                    )
                )
        return clips


def _keys(path: Path) -> list[str]:
    """The sample keys of a partition file (one a line; a header line is skipped)."""
    lines = base.require(path, INSTRUCTIONS).read_text(encoding="utf-8-sig").split()
    return [k.strip().split(",")[0] for k in lines if k.strip() and k.strip() != "sample_key"]


def _relevance(root: Path) -> dict[str, dict[str, float]]:
    """{sample_key: {instrument: aggregated relevance}} for the annotated (key, instrument)
    pairs, from the aggregated-labels CSV or, without it, the npz's Y_true and Y_mask."""
    csv_path = root / "openmic-2018-aggregated-labels.csv"
    out: dict[str, dict[str, float]] = {}
    if csv_path.exists():
        for row in base.read_csv(csv_path, ("sample_key", "instrument", "relevance"), INSTRUCTIONS):
            if row["instrument"] not in CLASS_NAMES:
                raise base.ManualDirError(
                    f"{csv_path}: unknown instrument {row['instrument']!r} (sample "
                    f"{row['sample_key']}); expected one of class-map.json's"
                )
            out.setdefault(row["sample_key"], {})[row["instrument"]] = float(row["relevance"])
        return out
    npz_path = root / "openmic-2018.npz"
    if not npz_path.exists():
        raise base.ManualDirError(
            f"neither {csv_path} nor {npz_path} exists: no labels.\n{INSTRUCTIONS}"
        )
    with np.load(npz_path, allow_pickle=False) as z:
        y_true, y_mask = z["Y_true"], z["Y_mask"].astype(bool)
        try:
            keys = z["sample_key"]
        except ValueError:  # an object array: how the official scripts/helper_numpy.py saves it
            keys = None
    if keys is None:  # pickled str objects; unpickled for this one array of the official file
        with np.load(npz_path, allow_pickle=True) as z:
            keys = z["sample_key"]
    if not all(isinstance(k, str) for k in keys.tolist()):
        raise base.ManualDirError(f"{npz_path}: sample_key holds other than strings")
    for key, values, known in zip(keys.tolist(), y_true, y_mask):
        out[key] = {c: float(v) for c, v, k in zip(CLASS_NAMES, values, known) if k}
    return out


def _validation_keys(root: Path, train: list[str]) -> set[str]:
    """The training keys held out as `valid` (module docstring): by artist when the metadata
    is there, else by a hash of the sample key."""
    meta = root / "openmic-2018-metadata.csv"
    if meta.exists():
        artist = {
            row["sample_key"]: row["artist_id"]
            for row in base.read_csv(meta, ("sample_key", "artist_id"), INSTRUCTIONS)
        }
        return {k for k in train if k in artist and _bucket(artist[k]) == 0}
    return {k for k in train if _bucket(k) == 0}


def _bucket(text: str) -> int:
    """An id's bucket among VALID_MODULUS: the number itself when it is one, else CRC-32."""
    text = text.strip()
    value = int(text) if text.isdigit() else zlib.crc32(text.encode())
    return value % VALID_MODULUS
