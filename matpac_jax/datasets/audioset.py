r"""AudioSet's segment lists with local audio -> a labels CSV for the preprocessing.

  python -m matpac_jax.datasets.audioset --segments balanced_train_segments.csv \
      --audio_dir ~/data/audioset/balanced_train --out balanced_train.csv

AudioSet ships no audio: its segment files (`balanced_train_segments.csv`,
`unbalanced_train_segments.csv`, `eval_segments.csv`) list `YTID, start_seconds, end_seconds,
"positive_labels"` (comma-separated class ids, mids) after three `#` comment lines, and each
group keeps its own download of the clips. A segment's file is found under `--audio_dir`
(recursively, any audio extension) by its name without the extension, any of:
`YTID`, `YYTID` (the PANNs downloads), `YTID_START`, `YTID_START_END` (with the segment file's
numbers as written, e.g. `--PJHxphWEs_30.000_40.000`, or as integers).

The output is a labels CSV (`path,labels`, paths relative to `--audio_dir`, labels the mids
joined by `;`) listing the segments that have a file; the segments without one are counted on
stderr and listed in `OUT.missing.txt` (one YTID a line). Then:

  python -m matpac_jax.audio.preprocess --input_dir ~/data/audioset/balanced_train \
      --labels balanced_train.csv --classes audioset --output_dir mels/balanced_train

A mistake in the command (a missing file or folder, a segment file that is not AudioSet's, a
label that is not one of the 527 classes) prints one `error:` line and exits 2.
"""

from __future__ import annotations

import csv
import os
import sys

from matpac_jax import cli
from matpac_jax import labels as labels_lib
from matpac_jax.audio import preprocess

PROG = "python -m matpac_jax.datasets.audioset"


def read_segments(path: str) -> list[tuple[str, str, str, list[str]]]:
    """(YTID, start, end, [mid, ...]) per segment of an AudioSet segment CSV, in file order.

    Raises:
      cli.UserError: a line that is not `YTID, start, end, "labels"`.
    """
    path = cli.input_file(path, "--segments", what="segment list")
    out = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, skipinitialspace=True)
        for line, row in enumerate(reader, start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 4:
                raise cli.UserError(
                    f"--segments {path}: line {line} has {len(row)} fields, an AudioSet segment "
                    'list has 4: YTID, start_seconds, end_seconds, "positive_labels"'
                )
            ytid, start, end, mids = row
            try:
                float(start), float(end)
            except ValueError:
                raise cli.UserError(
                    f"--segments {path}: line {line}: start/end {start!r}, {end!r} are not seconds"
                ) from None
            out.append((ytid, start, end, [m.strip() for m in mids.split(",") if m.strip()]))
    return out


def _candidates(ytid: str, start: str, end: str) -> list[str]:
    names = [ytid, "Y" + ytid]
    for s, e in ((start, end), (str(int(float(start))), str(int(float(end))))):
        names += [f"{ytid}_{s}", f"{ytid}_{s}_{e}", f"Y{ytid}_{s}_{e}"]
    return names


def match_files(
    segments: list[tuple[str, str, str, list[str]]], audio_dir: str
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """([(relative path, mids)] of the segments with a file, [YTID] of those without)."""
    files = {}
    try:
        found = preprocess.list_inputs(audio_dir)
    except cli.UserError:
        found = []  # an empty folder: every segment is missing, which the report says
    for rel in found:
        files.setdefault(os.path.splitext(os.path.basename(rel))[0], rel)
    rows, missing = [], []
    for ytid, start, end, mids in segments:
        rel = next((files[n] for n in _candidates(ytid, start, end) if n in files), None)
        if rel is None:
            missing.append(ytid)
        else:
            rows.append((rel, mids))
    return rows, missing


def _main(argv) -> int:
    parser = cli.ArgumentParser(PROG, __doc__)
    parser.add_argument("--segments", required=True, help="an AudioSet *_segments.csv")
    parser.add_argument("--audio_dir", required=True, help="the local clips of that list")
    parser.add_argument("--out", required=True, help="the labels CSV to write")
    args = parser.parse_args(argv)
    audio_dir = cli.input_dir(args.audio_dir, "--audio_dir")
    out = cli.output_file(args.out, "--out")
    segments = read_segments(args.segments)
    known = {c["mid"] for c in labels_lib.audioset_classes()}
    unknown = sorted({m for *_, mids in segments for m in mids} - known)
    if unknown:
        raise cli.UserError(
            f"--segments {args.segments}: {len(unknown)} labels are not AudioSet class ids, e.g. "
            f"{unknown[:3]}"
        )
    rows, missing = match_files(segments, audio_dir)
    labels_lib.write_labels_csv(out, rows)
    with open(out + ".missing.txt", "w", encoding="utf-8") as f:
        f.writelines(f"{ytid}\n" for ytid in missing)
    print(
        f"{len(segments)} segments: {len(rows)} with a file under {audio_dir} -> {out}; "
        f"{len(missing)} without (listed in {out}.missing.txt)",
        file=sys.stderr,
    )
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
