"""Builds a downstream dataset from its local copy and/or writes the probe's task CSV.

Usage::

    python -m matpac_jax.datasets.prepare --dataset esc50 --manual_dir DIR \\
        [--data_dir TFDS_DIR] [--task_csv OUT.csv]

`--data_dir` builds the tfds dataset (array_record, int16 16 kHz audio) under TFDS_DIR;
`--task_csv` writes `path,label,fold` or `path,label,split` with absolute paths, straight from
the official layout (no audio is decoded). Give one or both. Datasets: esc50, urbansound8k,
gtzan, nsynth, speech_commands, crema_d, demo/timbre, demo/pitch, demo/event; the layout each
expects under DIR is in its module docstring and in docs/datasets.md.
"""

from __future__ import annotations

import argparse
import sys

from matpac_jax import datasets


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=datasets.DATASETS)
    parser.add_argument("--manual_dir", required=True, help="local copy, official layout")
    parser.add_argument("--data_dir", help="build the tfds dataset under this folder")
    parser.add_argument("--task_csv", help="write the probe's task CSV here")
    args = parser.parse_args(argv)
    if not args.data_dir and not args.task_csv:
        parser.error("nothing to do: give --data_dir (build), --task_csv (CSV) or both")
    try:
        if args.task_csv:
            rows = datasets.write_task_csv(
                args.dataset, args.manual_dir, args.task_csv, progress=True
            )
            print(f"{args.dataset}: wrote {rows} rows to {args.task_csv}")
        if args.data_dir:
            # tfds draws its own progress bars, one per split.
            built = datasets.build(args.dataset, args.manual_dir, args.data_dir)
            counts = {name: split.num_examples for name, split in built.info.splits.items()}
            print(f"{args.dataset}: {counts} examples in {built.data_dir}")
    except datasets.ManualDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
