r"""Input-side throughput: crops/s of the pretraining pipeline and log-mel preprocessing speed.

  python -m matpac_jax.tools.bench_input --data OUT [--batch_size 64] [--seconds 10]
  python -m matpac_jax.tools.bench_input --data OUT --read_latency_ms 20 --read_threads 1,32

`OUT` is a `matpac_jax.audio.preprocess` output. Crops are (80, 608) float32 normalised batches, timed
after a warm-up (worker start-up excluded) with 0, 1 and 2 worker processes, and each
`--read_threads` count (records of a batch read at once, `config.data.read_threads`).
`--read_latency_ms` makes every record read wait that long first, as a read from network
storage does (GCS, gcsfuse: 20-50 ms), so a local copy measures what a host would sustain
reading from a bucket. Preprocessing speed
is measured by re-running the front end over up to `--preprocess_files` of the source files
(from `index.json`'s `input_dir`) into a temporary folder. Prints one JSON object per figure.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from matpac_jax import cli, storage
from matpac_jax.audio import preprocess, shards
from matpac_jax.data import pipeline as input_pipeline


class DelayedSource(shards.MelSource):
    """The shards, each record read `latency_s` late (sleeping, as a thread waiting on storage)."""

    def __init__(self, data_dir: str, latency_s: float, read_threads: int = 1):
        super().__init__(data_dir, read_threads=read_threads)
        self.latency_s = latency_s

    def _read(self, shard: int, positions: list[int]):
        time.sleep(self.latency_s * len(positions))  # one request a record, one after another
        return super()._read(shard, positions)


def crops_per_second(
    data_dir: str,
    num_workers: int,
    batch_size: int,
    seconds: float,
    crop_frames: int = 608,
    read_threads: int = 1,
    read_latency_s: float = 0.0,
) -> dict:
    """Times the batched crop stream after a warm-up of a few batches."""
    source = DelayedSource(data_dir, read_latency_s, read_threads) if read_latency_s else None
    ds = input_pipeline.pretraining_dataset(
        data_dir,
        batch_size=batch_size,
        crop_frames=crop_frames,
        seed=0,
        read_threads=read_threads,
        source=source,
    )
    it = input_pipeline.InputIterator(ds, num_workers)
    shape = None
    for _ in range(3 + 2 * num_workers):
        shape = next(it).shape
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += next(it).shape[0]
    elapsed = time.perf_counter() - start
    it.close()
    return {
        "bench": "crops",
        "num_workers": num_workers,
        "read_threads": read_threads,
        "read_latency_ms": round(1e3 * read_latency_s, 3),
        "batch_shape": list(shape),
        "dtype": "float32",
        "crops_per_s": round(n / elapsed, 1),
        "crops": n,
    }


def preprocessing_speed(data_dir: str, num_workers: int, max_files: int) -> dict:
    """Re-runs the front end on up to `max_files` of the corpus's source files."""
    index = shards.load_index(data_dir)
    input_dir = index.get("input_dir")
    if not input_dir or not os.path.isdir(input_dir):
        raise FileNotFoundError(f"the audio behind {data_dir} ({input_dir}) is not reachable")
    files = [s for sh in index["shards"] for s in sh["sources"]][:max_files]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "audio")
        for rel in files:  # symlinks: the benchmark reads the real files, copies nothing
            os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
            os.symlink(os.path.join(input_dir, rel), os.path.join(src, rel))
        start = time.perf_counter()
        out = preprocess.preprocess(
            src, os.path.join(tmp, "out"), num_workers=num_workers, min_frames=0, progress=False
        )
        elapsed = time.perf_counter() - start
    fe = index["front_end"]
    audio_s = out["total_frames"] * fe["hop_length"] / fe["sample_rate"]
    return {
        "bench": "preprocess",
        "num_workers": num_workers,
        "files": len(files),
        "seconds": round(elapsed, 2),
        "clips_per_s": round(len(files) / elapsed, 1),
        "x_real_time": round(audio_s / elapsed, 1),
    }


PROG = "python -m matpac_jax.tools.bench_input"


def _counts(text: str, flag: str, low: int) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        counts = [low - 1]
    if min(counts) < low:
        raise cli.UserError(f"{flag} {text}: comma-separated counts >= {low}, e.g. {low},{low + 2}")
    return counts


def _main(argv=None) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--data", required=True, help="a matpac_jax.audio.preprocess output directory")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--crop_frames", type=int, default=608, help="the training crop")
    p.add_argument("--seconds", type=float, default=10.0, help="timing window per setting")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument(
        "--read_threads", default="1", help="comma-separated counts of records read at once"
    )
    p.add_argument(
        "--read_latency_ms",
        type=float,
        default=0.0,
        help="wait this long before every record read (network storage's latency)",
    )
    p.add_argument("--preprocess_files", type=int, default=400)
    p.add_argument("--preprocess_workers", type=int, default=2)
    args = p.parse_args(argv)
    data = cli.input_dir(args.data, "--data", url=True)
    if not storage.exists(storage.join(data, shards.INDEX_NAME)):
        raise cli.UserError(
            f"--data {args.data}: no {shards.INDEX_NAME}, not a folder of log-mel shards; make "
            "one with python -m matpac_jax.audio.preprocess"
        )
    input_pipeline.check_crop(shards.load_index(data), args.crop_frames)
    workers = _counts(args.workers, "--workers", 0)
    threads = _counts(args.read_threads, "--read_threads", 1)
    if args.batch_size < 1 or args.seconds <= 0 or args.preprocess_workers < 0:
        raise cli.UserError("--batch_size must be at least 1, --seconds above 0")
    if args.read_latency_ms < 0:
        raise cli.UserError(f"--read_latency_ms {args.read_latency_ms}: must be at least 0")
    for w in workers:
        for t in threads:
            speed = crops_per_second(
                data,
                w,
                args.batch_size,
                args.seconds,
                args.crop_frames,
                t,
                args.read_latency_ms / 1e3,
            )
            print(json.dumps(speed), flush=True)
    if args.preprocess_files > 0:
        speed = preprocessing_speed(data, args.preprocess_workers, args.preprocess_files)
        print(json.dumps(speed), flush=True)
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    from absl import flags  # grain's worker processes read absl flags

    flags.FLAGS.mark_as_parsed()
    sys.exit(main())
