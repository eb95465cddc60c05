"""Builds a downstream dataset from its local copy and/or writes the probe's task CSV.

Usage::

    python -m matpac_jax.datasets.prepare --dataset esc50 --manual_dir DIR \\
        [--data_dir TFDS_DIR] [--task_csv OUT.csv]

`--data_dir` builds the tfds dataset (array_record, int16 16 kHz audio) under TFDS_DIR;
`--task_csv` writes `path,label,fold` or `path,label,split` with absolute paths, straight from
the official layout (no audio is decoded). Give one or both. Datasets: esc50, urbansound8k,
gtzan, nsynth, speech_commands, crema_d, demo/timbre, demo/pitch, demo/event; the layout each
expects under DIR is in its module docstring and in docs/datasets.md.

Relative paths are resolved against the current directory. A mistake in the command (an unknown
dataset, a missing or unreadable --manual_dir, one without the dataset's layout, an output that
cannot be written) prints one `error:` line naming what is missing and exits 2; a failed start
leaves no new --data_dir folder behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

from matpac_jax import cli, datasets

PROG = "python -m matpac_jax.datasets.prepare"


def _parser(known: tuple[str, ...]) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(PROG, __doc__)
    parser.add_argument("--dataset", required=True, choices=known)
    parser.add_argument("--manual_dir", required=True, help="local copy, official layout")
    parser.add_argument("--data_dir", help="build the tfds dataset under this folder")
    parser.add_argument("--task_csv", help="write the probe's task CSV here")
    return parser


def _layout_error(dataset: str, manual_dir: str, error: Exception) -> cli.UserError:
    """The first line of a ManualDirError (it names the missing file or folder) as one line;
    the multi-line instructions it carries are in docs/datasets.md."""
    return cli.UserError(
        f"--manual_dir {manual_dir}: not a complete {dataset} copy: "
        f"{cli.one_line(error).rstrip('.')} (the layout each dataset expects: docs/datasets.md)"
    )


def _check_layout(datasets, dataset: str, manual_dir: str) -> None:
    """Lists the clips from the layout's metadata (no audio is read), so that a wrong folder is
    refused before tfds creates anything under --data_dir.

    Raises:
      datasets.ManualDirError: the layout is missing or incomplete.
    """
    name, _, config = dataset.partition("/")
    datasets.BUILDERS[name].list_clips(Path(manual_dir), config or None)


def _main(argv) -> int:
    parser = _parser(datasets.DATASETS)
    args = parser.parse_args(argv)
    if not args.data_dir and not args.task_csv:
        parser.error("nothing to do: give --data_dir (build), --task_csv (CSV) or both")
    manual_dir = cli.input_dir(args.manual_dir, "--manual_dir")
    task_csv = args.task_csv and cli.output_file(args.task_csv, "--task_csv")
    data_dir = args.data_dir and cli.output_dir(args.data_dir, "--data_dir")
    try:
        if task_csv:
            rows = datasets.write_task_csv(args.dataset, manual_dir, task_csv, progress=True)
            print(f"{args.dataset}: wrote {rows} rows to {task_csv}")
        if data_dir:
            if not task_csv:  # write_task_csv has checked it, files included
                _check_layout(datasets, args.dataset, manual_dir)
            with cli.removed_on_failure(data_dir):
                # tfds draws its own progress bars, one per split.
                built = datasets.build(args.dataset, manual_dir, data_dir)
            counts = {name: split.num_examples for name, split in built.info.splits.items()}
            print(f"{args.dataset}: {counts} examples in {built.data_dir}")
    except datasets.ManualDirError as e:
        raise _layout_error(args.dataset, args.manual_dir, e) from e
    return 0


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
