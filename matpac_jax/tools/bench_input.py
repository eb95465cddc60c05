r"""Input-side throughput: crops/s of the pretraining pipeline and log-mel preprocessing speed.

  python -m matpac_jax.tools.bench_input --data OUT [--batch_size 64] [--seconds 10]

`OUT` is a `matpac_jax.preprocess` output. Crops are (80, 608) float32 normalised batches, timed
after a warm-up (worker start-up excluded) with 0, 1 and 2 worker processes. Preprocessing speed
is measured by re-running the front end over up to `--preprocess_files` of the source files
(from `index.json`'s `input_dir`) into a temporary folder. Prints one JSON object per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from matpac_jax import input_pipeline, preprocess, shards


def crops_per_second(
    data_dir: str, num_workers: int, batch_size: int, seconds: float, crop_frames: int = 608
) -> dict:
    """Times the batched crop stream after a warm-up of a few batches."""
    ds = input_pipeline.pretraining_dataset(
        data_dir, batch_size=batch_size, crop_frames=crop_frames, seed=0
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m matpac_jax.tools.bench_input", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data", required=True, help="a matpac_jax.preprocess output directory")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0, help="timing window per setting")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--preprocess_files", type=int, default=400)
    p.add_argument("--preprocess_workers", type=int, default=2)
    args = p.parse_args(argv)
    for w in (int(x) for x in args.workers.split(",")):
        print(json.dumps(crops_per_second(args.data, w, args.batch_size, args.seconds)), flush=True)
    if args.preprocess_files > 0:
        print(
            json.dumps(
                preprocessing_speed(args.data, args.preprocess_workers, args.preprocess_files)
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    from absl import flags  # grain's worker processes read absl flags

    flags.FLAGS.mark_as_parsed()
    sys.exit(main())
