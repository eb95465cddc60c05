"""Log-mel shards on disk: the record format, the index and a checked random-access source.

A record is one clip's log-mel, float16, (n_mels, frames) in C order, behind a 12-byte header
(magic `MEL1`, uint32 n_mels, uint32 frames, little endian) so that a record describes itself
and a damaged one is caught by its size. Shards are ArrayRecord files written uncompressed with
`group_size:1` (one record per chunk: random access reads one record; zstd halved the read
speed here for no gain, float16 mels barely compress).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import threading
from concurrent import futures
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


def temp_name(path: str) -> str:
    """`path` with a suffix no other process writes: `.tmp-HOST-PID` (machines that share a
    folder may run the same pid)."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON under a temporary name, then renames: readers never see half a file."""
    tmp = temp_name(path)
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


def max_open_shards() -> int:
    """How many shard readers a process keeps open: half its open-file limit (the rest stays
    for checkpoints, sockets and libraries), at least 4. `cli.raise_open_file_limit` lifts the
    limit to the hard one at start-up, so this is usually every shard."""
    import resource  # pylint: disable=g-import-not-at-top (POSIX only)

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(4, soft // 2)


_OPEN_CHECK_THREADS = 8  # shards opened at once by the start-up check


class MelSource:
    """Random-access source of decoded log-mels over the shards of an index (a grain source).

    At construction every shard is opened once (a few at a time, each closed at once) to check
    that it opens and holds the records the index says. Reads then keep at most
    `max_open_shards()` readers open, the least recently used closed first, so a corpus of
    thousands of shards reads under any open-file limit; if opening still fails for lack of
    file descriptors, half the open readers are closed and the open is retried once.

    `__getitems__` (a batch's records) reads them `read_threads` at a time, each record its own
    read: on network storage a read answers after tens of ms, and only reads in flight together
    keep a host fed (docs/PERFORMANCE.md). With 1 (a local disk), the records of one shard are
    read in one call.

    Every read error (Riegeli's `RuntimeError` on a corrupt chunk, a damaged header) becomes a
    `ShardError` naming the shard file and the record index inside it.
    """

    def __init__(self, data_dir: str, max_open: int | None = None, read_threads: int = 1):
        self._index = load_index(data_dir)
        self._paths = shard_paths(data_dir, self._index)
        if not self._paths:
            raise ValueError(f"{data_dir} holds no records (see its {REPORT_NAME}).")
        missing = [p for p in self._paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"shards listed in the index are missing: {missing[:3]}")
        self._counts = [s["num_records"] for s in self._index["shards"] if s["num_records"] > 0]
        self._starts = np.cumsum([0] + self._counts[:-1])
        self._max_open = max_open
        self.read_threads = read_threads
        self._readers: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._pool: futures.ThreadPoolExecutor | None = None
        with futures.ThreadPoolExecutor(min(_OPEN_CHECK_THREADS, len(self._paths))) as pool:
            held = list(pool.map(self._count, range(len(self._paths))))
        if held != self._counts:
            wrong = next(i for i, (a, b) in enumerate(zip(held, self._counts)) if a != b)
            raise ShardError(
                f"the shards of {data_dir} hold {sum(held)} records, the index says "
                f"{sum(self._counts)} (shard {self._paths[wrong]}: {held[wrong]}, not "
                f"{self._counts[wrong]}): preprocess again."
            )

    def _open(self, shard: int):
        from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

        return array_record_module.ArrayRecordReader(
            self._paths[shard], "readahead_buffer_size:0", file_reader_buffer_size=32768
        )

    def _count(self, shard: int) -> int:
        try:
            reader = self._open(shard)
            try:
                return reader.num_records()
            finally:
                reader.close()
        except RuntimeError as e:
            raise ShardError(f"cannot open shard {self._paths[shard]}: {e}") from e

    def _reader(self, shard: int):
        """The shard's open reader (opened, and the least recent closed, as needed)."""
        with self._lock:
            reader = self._readers.get(shard)
            if reader is not None:
                self._readers.move_to_end(shard)
                return reader
            if self._max_open is None:
                self._max_open = max_open_shards()
            while len(self._readers) >= self._max_open:
                self._readers.popitem(last=False)  # closed when no read holds it any more
            reader = self._readers[shard] = self._open(shard)
            return reader

    def _shed(self, failed: int) -> bool:
        """Out of file descriptors: drops the `failed` shard's reader (a Riegeli reader stays
        failed), closes the older half of the others and keeps the bound at what is left; False
        when no other is open (nothing to give back)."""
        with self._lock:
            self._readers.pop(failed, None)
            if not self._readers:
                return False
            for _ in range((len(self._readers) + 1) // 2):
                self._readers.popitem(last=False)
            self._max_open = max(1, len(self._readers))
            return True

    def _read(self, shard: int, positions: list[int]) -> list[np.ndarray]:
        path = self._paths[shard]
        for attempt in range(2):
            try:
                records = self._reader(shard).read(positions)
                break
            except RuntimeError as e:
                if attempt == 0 and "Too many open files" in str(e) and self._shed(shard):
                    continue
                if len(positions) == 1:
                    raise ShardError(
                        f"cannot read record {positions[0]} of shard {path}: {e}"
                    ) from e
                for p in positions:  # the record that fails, named
                    self._read(shard, [p])
                raise ShardError(f"cannot read records {positions} of shard {path}: {e}") from e
        out = []
        for p, record in zip(positions, records):
            try:
                out.append(decode(record))
            except ValueError as e:
                raise ShardError(f"cannot read record {p} of shard {path}: {e}") from e
        return out

    def __len__(self) -> int:
        return int(sum(self._counts))

    @property
    def index(self) -> dict:
        return self._index

    @property
    def open_readers(self) -> int:
        """Shard readers held open now."""
        return len(self._readers)

    def locate(self, i: int) -> tuple[str, int]:
        """(shard path, record index within it) of global record `i`."""
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self._paths[shard], int(i - self._starts[shard])

    def __getitem__(self, i: int) -> np.ndarray:
        return self.__getitems__([i])[0]

    def _thread_pool(self) -> futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = futures.ThreadPoolExecutor(self.read_threads, "shard-read")
            return self._pool

    def __getitems__(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The records at `indices`: `read_threads` reads at a time, or shard by shard (one
        read call a shard) with one thread."""
        total = len(self)
        located = []
        for i in indices:
            i = int(i)
            if not 0 <= i < total:
                raise IndexError(f"record {i} of {total}")
            shard = int(np.searchsorted(self._starts, i, side="right") - 1)
            located.append((shard, i - int(self._starts[shard])))
        if self.read_threads > 1 and len(located) > 1:
            reads = [self._thread_pool().submit(self._read, s, [p]) for s, p in located]
            return [r.result()[0] for r in reads]
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for k, (shard, position) in enumerate(located):
            by_shard.setdefault(shard, []).append((k, position))
        out: list[Any] = [None] * len(indices)
        for shard, items in by_shard.items():
            for (k, _), mel in zip(items, self._read(shard, [p for _, p in items])):
                out[k] = mel
        return out

    def __getstate__(self) -> dict:  # grain's worker processes get a copy without open files
        state = self.__dict__.copy()
        state["_readers"], state["_lock"], state["_pool"] = collections.OrderedDict(), None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MelSource({len(self._paths)} shards, {len(self)} records)"
