"""Log-mel shards on disk: the record format, the index and a checked random-access source.

A record is one clip's log-mel, float16, (n_mels, frames) in C order, behind a 12-byte header
(magic `MEL1`, uint32 n_mels, uint32 frames, little endian) so that a record describes itself
and a damaged one is caught by its size. Shards are ArrayRecord files written uncompressed with
`group_size:1` (one record per chunk: random access reads one record; zstd halved the read
speed here for no gain, float16 mels barely compress).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

MAGIC = b"MEL1"
HEADER = np.dtype([("magic", "S4"), ("n_mels", "<u4"), ("frames", "<u4")])
WRITER_OPTIONS = "group_size:1,uncompressed"
INDEX_NAME = "index.json"
REPORT_NAME = "report.json"
FORMAT_VERSION = 1


class ShardError(RuntimeError):
    """A shard or record that cannot be read; the message names shard and record index."""


def encode(mel: np.ndarray) -> bytes:
    """Serialises a (n_mels, frames) log-mel as a float16 record."""
    mel = np.ascontiguousarray(mel, dtype=np.float16)
    if mel.ndim != 2:
        raise ValueError(f"expected (n_mels, frames), got shape {mel.shape}")
    header = np.array([(MAGIC, mel.shape[0], mel.shape[1])], HEADER)
    return header.tobytes() + mel.tobytes()


def decode(record: bytes) -> np.ndarray:
    """Parses a record into a read-only float16 (n_mels, frames) view; ValueError if damaged."""
    if len(record) < HEADER.itemsize:
        raise ValueError(f"record of {len(record)} bytes is shorter than its header")
    header = np.frombuffer(record, HEADER, count=1)[0]
    if header["magic"] != MAGIC:
        raise ValueError(f"bad magic {header['magic']!r} (not a matpac_jax log-mel record)")
    n_mels, frames = int(header["n_mels"]), int(header["frames"])
    expected = HEADER.itemsize + 2 * n_mels * frames
    if len(record) != expected:
        raise ValueError(f"record has {len(record)} bytes, its header says {expected}")
    return np.frombuffer(record, np.float16, offset=HEADER.itemsize).reshape(n_mels, frames)


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON under a temporary name, then renames: readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def load_index(data_dir: str) -> dict:
    """Reads `data_dir/index.json`, with an error that says how to make one."""
    path = os.path.join(data_dir, INDEX_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir!r} is not a preprocessed shard directory. Make one with "
            f"`python -m matpac_jax.audio.preprocess --input_dir AUDIO --output_dir {data_dir}`."
        )
    with open(path) as f:
        index = json.load(f)
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {index.get('format_version')}, this code "
            f"reads {FORMAT_VERSION}: preprocess the audio again."
        )
    return index


def shard_paths(data_dir: str, index: dict) -> list[str]:
    """Absolute paths of the non-empty shards listed in an index, in order."""
    return [os.path.join(data_dir, s["path"]) for s in index["shards"] if s["num_records"] > 0]


def _first_unreadable(paths: Sequence[str]) -> str:
    """The first shard Riegeli refuses to open (to name it in an error)."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    for p in paths:
        try:
            array_record_module.ArrayRecordReader(p).close()
        except RuntimeError:
            return p
    return "(unknown: each opens alone)"


class MelSource:
    """Random-access source of decoded log-mels over the shards of an index (a grain source).

    Every read error (Riegeli's `RuntimeError` on a corrupt chunk, a damaged header) becomes a
    `ShardError` naming the shard file and the record index inside it.
    """

    def __init__(self, data_dir: str):
        import grain  # pylint: disable=g-import-not-at-top

        self._index = load_index(data_dir)
        self._paths = shard_paths(data_dir, self._index)
        if not self._paths:
            raise ValueError(f"{data_dir} holds no records (see its {REPORT_NAME}).")
        missing = [p for p in self._paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"shards listed in the index are missing: {missing[:3]}")
        try:
            self._source = grain.sources.ArrayRecordDataSource(self._paths)
        except RuntimeError as e:
            raise ShardError(f"cannot open shard {_first_unreadable(self._paths)}: {e}") from e
        counts = [s["num_records"] for s in self._index["shards"] if s["num_records"] > 0]
        self._starts = np.cumsum([0] + counts[:-1])
        if len(self._source) != sum(counts):
            raise ShardError(
                f"the shards of {data_dir} hold {len(self._source)} records, "
                f"the index says {sum(counts)}: preprocess again."
            )

    def __len__(self) -> int:
        return len(self._source)

    @property
    def index(self) -> dict:
        return self._index

    def locate(self, i: int) -> tuple[str, int]:
        """(shard path, record index within it) of global record `i`."""
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self._paths[shard], int(i - self._starts[shard])

    def __getitem__(self, i: int) -> np.ndarray:
        try:
            return decode(self._source[i])
        except (RuntimeError, ValueError) as e:
            path, local = self.locate(i)
            raise ShardError(f"cannot read record {local} of shard {path}: {e}") from e

    def __getitems__(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"MelSource({len(self._paths)} shards, {len(self)} records)"
