"""Metrics to `WORKDIR/metrics.jsonl` (one JSON object per logged step) and TensorBoard.

(`clu.metric_writers` would need TensorFlow; tensorboardX writes the same event files.)
"""

from __future__ import annotations

import json
import os

import numpy as np

METRICS_NAME = "metrics.jsonl"  # in the workdir: one JSON object per logged step


class MetricWriter:
    """Appends scalars; only the writing process (process 0) touches the files.

    On a resume from step `s`, lines logged after `s` by the interrupted run are dropped first,
    so the file reads as one uninterrupted run; TensorBoard is told the same (`purge_step`: it
    discards the interrupted run's events after `s` when it reads the log).
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_NAME)
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

        self._tb = SummaryWriter(
            os.path.join(workdir, "tensorboard"),
            purge_step=resume_step + 1 if resume_step else None,
        )

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [l for l in f if l.strip()]
        keep = [l for l in lines if json.loads(l)["step"] <= step]
        if len(keep) != len(lines):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)

    def write(self, step: int, scalars: dict) -> None:
        """Logs a dict of scalars (numbers or 0-d arrays) for `step`."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step":
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """The rows of WORKDIR/metrics.jsonl ([] when there is none)."""
    path = os.path.join(workdir, METRICS_NAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
