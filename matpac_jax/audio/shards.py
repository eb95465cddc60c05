"""Log-mel shards on disk: the record format, the index and a checked random-access source.

A record is one clip's log-mel, float16, (n_mels, frames) in C order, behind a 12-byte header
(magic `MEL1`, uint32 n_mels, uint32 frames, little endian) so that a record describes itself
and a damaged one is caught by its size. Shards are ArrayRecord files written uncompressed with
`group_size:1` (one record per chunk: random access reads one record; zstd halved the read
speed here for no gain, float16 mels barely compress).
"""

from __future__ import annotations

import collections
import io
import json
import os
import threading
from concurrent import futures
from typing import Any, Sequence

import numpy as np

from matpac_jax import storage

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
    """Writes JSON (a local path or a URL) so that readers never see half a file."""
    storage.write_text(path, json.dumps(obj, indent=1) + "\n")


def load_index(data_dir: str) -> dict:
    """Reads `data_dir/index.json`, with an error that says how to make one."""
    path = storage.join(data_dir, INDEX_NAME)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir!r} is not a preprocessed shard directory. Make one with "
            f"`python -m matpac_jax.audio.preprocess --input_dir AUDIO --output_dir {data_dir}`."
        )
    index = json.loads(storage.read_text(path))
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {index.get('format_version')}, this code "
            f"reads {FORMAT_VERSION}: preprocess the audio again."
        )
    return index


def shard_paths(data_dir: str, index: dict) -> list[str]:
    """Absolute paths (or URLs) of the non-empty shards listed in an index, in order."""
    return [storage.join(data_dir, s["path"]) for s in index["shards"] if s["num_records"] > 0]


# ---------------------------------------------------------------- byte ranges of the records
# An ArrayRecord file is a Riegeli file: 64 KiB blocks, each opening with a 24-byte block
# header, over a stream of chunks (a 40-byte header, then its data). Written with
# WRITER_OPTIONS, chunk 0 is the file signature and chunk k (k >= 1) holds record k - 1 alone:
# data = [compression 0][varint length of the sizes][varint record size][the record]. So a
# record is one byte range of the file, block headers aside: what a read from a bucket fetches
# (`RangeReader`), one request a record. Preprocessing writes each shard's ranges beside it.
_BLOCK, _BLOCK_HEADER, _CHUNK_HEADER = 1 << 16, 24, 40
_BLOCK_DATA = _BLOCK - _BLOCK_HEADER
RANGES_SUFFIX = ".ranges.npy"  # beside SHARD.array_record: (records, 2) int64 [start, end)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _physical(logical: int) -> int:
    """Where logical stream byte `logical` sits in the file (block headers counted)."""
    return logical // _BLOCK_DATA * _BLOCK + _BLOCK_HEADER + logical % _BLOCK_DATA


def record_ranges(data: bytes, num_records: int) -> np.ndarray:
    """(num_records, 2) int64: the file bytes [start, end) of each record of an ArrayRecord
    file's contents `data` (written with WRITER_OPTIONS), block headers in between included.

    Raises:
      ValueError: the file is not one record a chunk, uncompressed (other writer options).
    """
    stream = b"".join(
        data[b + _BLOCK_HEADER : b + _BLOCK] for b in range(0, len(data), _BLOCK)
    )  # the chunks without the block headers
    out = np.zeros((num_records, 2), np.int64)
    pos = _CHUNK_HEADER + int.from_bytes(stream[8:16], "little")  # after the signature chunk
    for k in range(num_records):
        size = int.from_bytes(stream[pos + 8 : pos + 16], "little")
        kind, count = stream[pos + 24], int.from_bytes(stream[pos + 25 : pos + 32], "little")
        body = pos + _CHUNK_HEADER
        if kind != ord("r") or count != 1 or stream[body] != 0:
            raise ValueError(
                f"record {k}: a chunk of type {chr(kind)!r} with {count} records and compression "
                f"{stream[body]}, not one uncompressed record ({WRITER_OPTIONS})"
            )
        sizes_len, at = _varint(stream, body + 1)
        length, _ = _varint(stream, at)
        start = at + sizes_len
        out[k] = _physical(start), _physical(start + length - 1) + 1
        pos = body + size
    return out


def strip_block_headers(raw: bytes, start: int) -> bytes:
    """File bytes read from offset `start`, less the block headers among them."""
    first = -start % _BLOCK  # where the first block header in `raw` begins
    if first >= len(raw):
        return raw
    parts, at = [raw[:first]], first
    while at < len(raw):
        parts.append(raw[at + _BLOCK_HEADER : at + _BLOCK])
        at += _BLOCK
    return b"".join(parts)


def write_ranges(shard_file: str, num_records: int, written: str | None = None) -> None:
    """Writes SHARD.ranges.npy beside the shard `shard_file` (a path or URL; atomically), from
    the shard's bytes there or in the local file `written`."""
    ranges = record_ranges(storage.read_bytes(written or shard_file), num_records)
    buffer = io.BytesIO()
    np.save(buffer, ranges)
    storage.write_bytes(shard_file.removesuffix(".array_record") + RANGES_SUFFIX, buffer.getvalue())


class RangeReader:
    """A shard on any file system fsspec reaches (gs://, s3://, ...): each record one byte-range
    read, by the ranges preprocessing wrote beside it. Thread-safe, as its file system is."""

    def __init__(self, fs, path: str):
        self._fs, self._path = fs, path
        ranges_path = path.removesuffix(".array_record") + RANGES_SUFFIX
        try:
            self._ranges = np.load(io.BytesIO(fs.cat_file(ranges_path)))
        except FileNotFoundError:
            raise ShardError(
                f"{ranges_path} not found: shards read from {path.split('://')[0]}:// need the "
                "byte ranges preprocessing writes beside them; run python -m "
                "matpac_jax.audio.preprocess --finalize on the local copy, then copy again"
            ) from None

    def num_records(self) -> int:
        return len(self._ranges)

    def read(self, positions: Sequence[int]) -> list[bytes]:
        out = []
        for p in positions:
            start, end = (int(x) for x in self._ranges[p])
            out.append(strip_block_headers(self._fs.cat_file(self._path, start, end), start))
        return out

    def close(self) -> None:
        pass


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
        self._fs = None  # a URL's file system: readers are RangeReaders
        if storage.is_url(data_dir):
            self._fs, _ = storage.filesystem(data_dir)
            max_open = max_open or len(self._paths)  # no descriptor a shard: keep them all
        missing = [p for p in self._paths if not self._exists(p)]
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

    def _exists(self, path: str) -> bool:
        return self._fs.exists(path) if self._fs is not None else os.path.exists(path)

    def _open(self, shard: int):
        if self._fs is not None:
            return RangeReader(self._fs, self._paths[shard])
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
