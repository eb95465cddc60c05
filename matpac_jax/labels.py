"""Multi-label annotations: labels CSVs, class lists and AudioSet's 527 classes.

A labels CSV has a header and two columns, `path,labels`: `path` relative to the audio folder
(as `python -m matpac_jax.audio.preprocess --input_dir` lists it), `labels` the clip's class
names separated by `;` (a clip may have none). The preprocessing stores, per record, the indices
of its labels in a class list: the sorted names of the CSV, or AudioSet's 527 classes
(`--classes audioset`).

AudioSet's classes: `matpac_jax/assets/audioset_class_labels_indices.csv` (index, mid,
display_name), the AudioSet ontology's label list (Google, CC BY 4.0), as shipped in the PyPI
package whisper-at 0.5 (BSD-2-Clause, `whisper_at/assets/class_labels_indices.csv`), byte for
byte the reference's `class_mappings/audioset_mapping.csv`. The reference numbers its head's
classes in the order of that file sorted by `mid`, not by `index`: `audioset_classes` does the
same.
"""

from __future__ import annotations

import csv
import os

from matpac_jax import cli

AUDIOSET_CSV = os.path.join(
    os.path.dirname(__file__), "assets", "audioset_class_labels_indices.csv"
)
SEPARATOR = ";"
AUDIOSET = "audioset"  # the class list named by `--classes audioset`


def audioset_classes(path: str = AUDIOSET_CSV) -> list[dict[str, str]]:
    """AudioSet's 527 classes, {"mid", "display_name"}, in the reference head's order (by mid)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    return [
        {"mid": r["mid"], "display_name": r["display_name"]}
        for r in sorted(rows, key=lambda r: r["mid"])
    ]


def read_labels_csv(path: str, flag: str = "--labels") -> dict[str, list[str]]:
    """{relative path: [label, ...]} of a labels CSV (see the module docstring).

    Raises:
      cli.UserError: the file is missing, has no `path` and `labels` columns, or lists a path
        twice.
    """
    path = cli.input_file(path, flag, what="labels CSV")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"path", "labels"} - set(reader.fieldnames or ())
        if missing:
            raise cli.UserError(
                f"{flag} {path}: no {' and '.join(sorted(missing))} column; a labels CSV has the "
                f"header path,labels and {SEPARATOR!r}-separated labels"
            )
        out: dict[str, list[str]] = {}
        for line, row in enumerate(reader, start=2):
            key = os.path.normpath(row["path"] or "")
            if key in out:
                raise cli.UserError(f"{flag} {path}: line {line} lists {row['path']} again")
            out[key] = [x.strip() for x in (row["labels"] or "").split(SEPARATOR) if x.strip()]
    return out


def write_labels_csv(path: str, rows: list[tuple[str, list[str]]]) -> None:
    """Writes (relative path, labels) rows as a labels CSV."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "labels"])
        for rel, names in rows:
            writer.writerow([rel, SEPARATOR.join(names)])


def class_list(labels: dict[str, list[str]], classes: str | None) -> tuple[list[str], list[str]]:
    """(class ids, display names) for a labels CSV: its sorted names, or AudioSet's mids.

    Raises:
      cli.UserError: `classes` is unknown, or the CSV uses a label outside AudioSet's classes.
    """
    if classes is None:
        names = sorted({x for row in labels.values() for x in row})
        return names, names
    if classes != AUDIOSET:
        raise cli.UserError(f"--classes {classes}: the one named class list is {AUDIOSET!r}")
    rows = audioset_classes()
    ids = [r["mid"] for r in rows]
    unknown = sorted({x for row in labels.values() for x in row} - set(ids))
    if unknown:
        raise cli.UserError(
            f"--classes audioset: {len(unknown)} labels are not AudioSet class ids (mids), e.g. "
            f"{unknown[:3]}"
        )
    return ids, [r["display_name"] for r in rows]
