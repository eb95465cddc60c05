"""tfds builders for local copies of the downstream datasets, and the probe's task CSVs.

Each builder reads the dataset's official folder layout from a manual_dir (nothing is
downloaded), stores int16 16 kHz mono audio in array_record files and needs no TensorFlow::

    from matpac_jax import datasets
    builder = datasets.build("esc50", manual_dir="~/data/esc50", data_dir="~/tfds")
    source = builder.as_data_source()["fold1"]   # source[i]: {"audio", "label", "path", "fold"}
    datasets.write_task_csv("esc50", "~/data/esc50", "esc50.csv")   # path,label,fold

Importing this package registers the builders, so `tfds.data_source("matpac_esc50",
data_dir=...)` also works. Command line: `python -m matpac_jax.datasets.prepare`.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds

from matpac_jax.datasets import (
    base,
    crema_d,
    demo,
    esc50,
    fsd50k,
    gtzan,
    magnatagatune,
    nsynth,
    openmic,
    speech_commands,
    urbansound8k,
)
from matpac_jax.datasets.base import ManualDirError, to_float

# Names accepted by `--dataset`; `demo` needs a task: demo/timbre, demo/pitch or demo/event;
# `magnatagatune/all` keeps the clips without a top-50 tag.
BUILDERS = {
    "esc50": esc50.Esc50,
    "urbansound8k": urbansound8k.UrbanSound8k,
    "gtzan": gtzan.Gtzan,
    "nsynth": nsynth.Nsynth,
    "openmic": openmic.OpenMic,
    "magnatagatune": magnatagatune.MagnaTagATune,
    "fsd50k": fsd50k.Fsd50k,
    "speech_commands": speech_commands.SpeechCommands,
    "crema_d": crema_d.CremaD,
    "demo": demo.Demo,
}
DATASETS = (
    tuple(n for n in BUILDERS if n != "demo")
    + ("magnatagatune/all",)
    + tuple(f"demo/{task}" for task in demo.TASK_CLASSES)
)

__all__ = [
    "BUILDERS",
    "DATASETS",
    "ManualDirError",
    "build",
    "builder",
    "to_float",
    "write_task_csv",
]


def _resolve(dataset: str) -> tuple[type, str | None]:
    """Builder class and config of a dataset name such as `esc50` or `demo/timbre`."""
    name, _, config = dataset.partition("/")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    return BUILDERS[name], config or None


def builder(dataset: str, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """The tfds builder of `dataset` (e.g. `esc50`, `demo/pitch`) storing under `data_dir`."""
    cls, config = _resolve(dataset)
    return cls(data_dir=os.path.expanduser(data_dir), config=config, file_format="array_record")


def build(
    dataset: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike
) -> tfds.core.DatasetBuilder:
    """Builds `dataset` from its official layout in `manual_dir` (a no-op if already built).

    Raises:
        ManualDirError: `manual_dir` does not hold the official layout, or is incomplete.
    """
    built = builder(dataset, data_dir)
    if built.is_prepared():
        return built
    manual_dir = Path(manual_dir).expanduser()
    if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
        # tfds would raise a bare AssertionError here; say what belongs in the folder instead.
        raise ManualDirError(
            f"manual_dir {manual_dir} is missing or empty.\n{built.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    built.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return built


def write_task_csv(
    dataset: str,
    manual_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    progress: bool = False,
) -> int:
    """Writes the probe's task CSV from the official layout, without building the tfds dataset.

    Columns: `path,label,fold` (k-fold datasets, folds 1..K) or `path,label,split`
    (train / valid / test); for the multi-label datasets (openmic, magnatagatune, fsd50k)
    `path,labels,unknown,split`, classes joined by `;`. Paths are absolute. Returns the number
    of rows.

    Raises:
        ManualDirError: `manual_dir` does not hold the official layout, or is incomplete.
    """
    cls, config = _resolve(dataset)
    clips = cls.checked_clips(Path(manual_dir).expanduser(), config, progress)
    return base.write_task_csv(clips, out_csv, folds=bool(cls.NUM_FOLDS), multilabel=cls.MULTILABEL)
