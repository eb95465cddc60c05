"""The built-in demo corpus (`matpac_jax.data.demo_corpus`): one builder config per probe task.

Layout (what `python -m matpac_jax.data.demo_corpus --out DIR` writes; manual_dir is DIR)::

    labelled/00000.flac ...                 16 kHz mono
    tasks/{timbre,pitch,event}.csv          path,label,split (paths relative to DIR)
    manifest.json                           written last: marks a complete corpus

Configs: `timbre` (6 classes), `pitch` (12 pitch classes), `event` (4 event types). Splits: the
corpus's own `train` / `valid` / `test`, disjoint in source parameters.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from matpac_jax.data import demo_corpus
from matpac_jax.datasets import base

TASK_CLASSES = {
    "timbre": demo_corpus.TIMBRES,
    "pitch": demo_corpus.PITCH_CLASSES,
    "event": demo_corpus.EVENT_TYPES,
}

INSTRUCTIONS = """\
The demo corpus is generated, not downloaded: run
`python -m matpac_jax.data.demo_corpus --out DIR` and pass DIR as manual_dir (it then holds
manifest.json, tasks/{timbre,pitch,event}.csv and labelled/)."""


class Demo(base.AudioClassificationBuilder):
    """Demo corpus probe tasks: timbre, pitch and event classification."""

    name = "matpac_demo"
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=task, description=f"{task} classification")
        for task in TASK_CLASSES
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    @classmethod
    def class_names(
        cls, config: str | None = None, manual_dir: Path | None = None
    ) -> tuple[str, ...]:
        return tuple(TASK_CLASSES[_task(config)])

    @classmethod
    def list_clips(cls, manual_dir: Path, config: str | None = None) -> list[base.Clip]:
        base.require(manual_dir / "manifest.json", INSTRUCTIONS)
        task = _task(config)
        rows = base.read_csv(
            manual_dir / "tasks" / f"{task}.csv", ("path", "label", "split"), INSTRUCTIONS
        )
        return [
            base.make_clip(manual_dir, manual_dir / row["path"], row["label"], row["split"])
            for row in rows
        ]


def _task(config: str | None) -> str:
    """The task a config names; the demo builder has no default."""
    if config not in TASK_CLASSES:
        raise ValueError(
            f"the demo dataset needs a task config, one of {list(TASK_CLASSES)}; "
            f"got {config!r} (use e.g. demo/timbre)"
        )
    return config
