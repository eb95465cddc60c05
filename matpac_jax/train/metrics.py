"""Metrics to `WORKDIR/metrics.jsonl` (one JSON object per logged step) and TensorBoard.

(`clu.metric_writers` would need TensorFlow; tensorboardX writes the same event files.)

A workdir on a bucket (gs://) has no append: metrics.jsonl is rewritten whole at each logged
step (its rows are kept here), and so is the TensorBoard event file (`_ObjectRecordWriter`,
through the same client as everything else; tensorboardX's own GCS writer uploads again when
garbage-collected, and then waits two minutes on a server that is gone). Both grow with the
run: at `log_every` 100 over 500,000 steps, ~5,000 rows of ~1 KB.
"""

from __future__ import annotations

import io
import json
import uuid

import numpy as np

from matpac_jax import storage

METRICS_NAME = "metrics.jsonl"  # in the workdir: one JSON object per logged step


class MetricWriter:
    """Appends scalars; only the writing process (process 0) touches the files.

    On a resume from step `s`, lines logged after `s` by the interrupted run are dropped first,
    so the file reads as one uninterrupted run; TensorBoard is told the same (`purge_step`: it
    discards the interrupted run's events after `s` when it reads the log).
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = storage.join(workdir, METRICS_NAME)
        self._tb = None
        self._lines: list[str] | None = None  # a bucket's whole file, rewritten at each write
        if not enabled:
            return
        storage.makedirs(workdir)
        self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

        suffix = ""
        if storage.is_url(workdir):
            from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top

            record_writer.register_writer_factory(workdir.split(":")[0], _ObjectRecords())
            # An event file is named by the second and the host: a resume within that second
            # would replace the earlier file on a bucket (a local one is appended to).
            suffix = f".{uuid.uuid4().hex[:8]}"
        self._tb = SummaryWriter(
            storage.join(workdir, "tensorboard"),
            purge_step=resume_step + 1 if resume_step else None,
            filename_suffix=suffix,
        )

    def _truncate_after(self, step: int) -> None:
        text = storage.read_text(self.path) if storage.exists(self.path) else ""
        lines = [l + "\n" for l in text.splitlines() if l.strip()]
        keep = [l for l in lines if json.loads(l)["step"] <= step]
        if storage.is_url(self.path):
            self._lines = keep
        if len(keep) != len(lines):
            storage.write_text(self.path, "".join(keep))

    def write(self, step: int, scalars: dict) -> None:
        """Logs a dict of scalars (numbers or 0-d arrays) for `step`."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        line = json.dumps(row) + "\n"
        if self._lines is not None:  # a bucket: no append
            self._lines.append(line)
            storage.write_text(self.path, "".join(self._lines))
        else:
            with open(self.path, "a") as f:
                f.write(line)
        for k, v in row.items():
            if k != "step":
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class _ObjectRecordWriter:
    """tensorboardX's record file as one object: kept here, uploaded whole when it changed."""

    def __init__(self, path: str):
        self.path = path
        self._buffer = io.BytesIO()
        self._uploaded = 0

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        if self._buffer.tell() != self._uploaded:
            storage.write_bytes(self.path, self._buffer.getvalue())
            self._uploaded = self._buffer.tell()

    def close(self) -> None:
        self.flush()


class _ObjectRecords:
    """tensorboardX's writer factory for a URL scheme (`register_writer_factory`)."""

    def open(self, path: str) -> _ObjectRecordWriter:
        return _ObjectRecordWriter(path)

    def directory_check(self, path: str) -> None:
        del path  # a bucket has no folders to make


def read_metrics(workdir: str) -> list[dict]:
    """The rows of WORKDIR/metrics.jsonl ([] when there is none)."""
    path = storage.join(workdir, METRICS_NAME)
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
