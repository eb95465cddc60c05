"""Shards read from a bucket (matpac_jax/storage.py, audio/shards.py's byte ranges), against a
GCS emulator started by the tests (conftest.py's `gcs`): the same records and batches as from
the local copy.

An ArrayRecord file's records are byte ranges between 64 KiB block headers; the ranges that
preprocessing writes beside each shard are checked against the C++ reader on records that
cross zero, one and several block boundaries."""

import os

import fsspec
import numpy as np
import pytest
from array_record.python import array_record_module
from conftest import write_mel_dataset

from matpac_jax import storage
from matpac_jax.audio import shards
from matpac_jax.data import pipeline


def test_byte_ranges_give_the_records_of_the_cpp_reader(tmp_path):
    rng = np.random.default_rng(0)
    # 65,512 bytes fill a block's data exactly; the others straddle 0, 1, 2 or 3 boundaries.
    sizes = [10, 70_000, 5, 65_512, 65_513, 200_000, 1, 131_000, 3, 65_490]
    records = [rng.bytes(n) for n in sizes]
    path = str(tmp_path / "s.array_record")
    writer = array_record_module.ArrayRecordWriter(path, shards.WRITER_OPTIONS)
    for r in records:
        writer.write(r)
    writer.close()
    shards.write_ranges(path, len(records))
    reader = shards.RangeReader(fsspec.filesystem("file"), path)
    assert reader.num_records() == len(records)
    got = reader.read(list(range(len(records)))[::-1])
    assert got == records[::-1]
    cpp = array_record_module.ArrayRecordReader(path)
    assert cpp.read(list(range(len(records)))) == got[::-1]
    cpp.close()


def test_byte_ranges_refuse_other_writer_options(tmp_path):
    path = str(tmp_path / "grouped.array_record")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:4,uncompressed")
    for i in range(8):
        writer.write(bytes([i]) * 100)
    writer.close()
    with pytest.raises(ValueError, match="not one uncompressed record"):
        shards.write_ranges(path, 8)


def test_paths_and_urls():
    assert storage.is_url("gs://b/x") and storage.is_url("s3://b/x")
    assert not storage.is_url("/data/x") and not storage.is_url("file:///data/x")
    assert not storage.is_url("runs/gs:/x")
    assert storage.join("gs://b/mels/", "shards", "a.json") == "gs://b/mels/shards/a.json"
    assert storage.join("/data", "shards") == os.path.join("/data", "shards")


@pytest.fixture(scope="module")
def local_and_bucket(tmp_path_factory, gcs):
    d = tmp_path_factory.mktemp("mels")
    rng = np.random.default_rng(1)
    mels = [(rng.normal(size=(80, 600 + 17 * i)) - 7).astype(np.float16) for i in range(9)]
    write_mel_dataset(str(d), mels, records_per_shard=4)
    return str(d), gcs.upload(str(d), "mels"), mels


def test_shards_read_from_the_bucket(local_and_bucket):
    local, url, mels = local_and_bucket
    source = shards.MelSource(url)
    assert len(source) == len(mels) and source.index == shards.load_index(local)
    for i in (8, 0, 5, 3):  # records of every shard, out of order
        np.testing.assert_array_equal(source[i], mels[i])
    for threads in (1, 4):
        remote = pipeline.pretraining_dataset(
            url, batch_size=4, crop_frames=64, read_threads=threads, seed=3
        )
        near = pipeline.pretraining_dataset(local, batch_size=4, crop_frames=64, seed=3)
        for step in range(5):
            np.testing.assert_array_equal(remote[step], near[step])


def test_a_bucket_without_the_byte_ranges_says_what_to_do(local_and_bucket, gcs):
    local, _, _ = local_and_bucket
    url = gcs.upload(local, "mels_without_ranges")
    fs, _ = storage.filesystem(url)
    for path in fs.glob(url.removeprefix("gs://") + "/shards/*" + shards.RANGES_SUFFIX):
        fs.rm(path)
    with pytest.raises(shards.ShardError, match="need the byte ranges preprocessing writes"):
        shards.MelSource(url)
    with pytest.raises(FileNotFoundError, match="not a preprocessed shard directory"):
        shards.MelSource(gcs.url("nothing_here"))


def _train(data_dir, workdir, env):
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [
            sys.executable, "-m", "matpac_jax.train", "--config=configs/matpac_pp.py:runlocal",
            f"--workdir={workdir}", f"--config.data.dir={data_dir}",
            "--config.data.crop_frames=64", "--config.batch_size=4", "--config.total_steps=4",
            "--config.log_every=1", "--config.checkpoint_every=4", "--config.evals=",
            "--config.data.read_threads=4",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_trainer_reads_its_shards_from_the_bucket(local_and_bucket, gcs, tmp_path):
    """The same program on the same batches: the losses of a run on the bucket's shards are
    those of a run on the local copy, exactly."""
    from conftest import logged_losses, subprocess_env  # pylint: disable=g-import-not-at-top

    local, url, _ = local_and_bucket
    env = {**subprocess_env(1), **gcs.env}
    _train(local, tmp_path / "near", env)
    out = _train(url, tmp_path / "far", env)
    assert f"data: {url} (9 records)" in out.stderr
    near, far = logged_losses(str(tmp_path / "near")), logged_losses(str(tmp_path / "far"))
    assert sorted(far) == [1, 2, 3, 4] and far == near


@pytest.mark.parametrize(
    "module, args, message",
    [
        (
            "matpac_jax.train",
            ["--config=CONFIG", "--workdir=gs://matpac-test/runs/b"],
            "--workdir gs://matpac-test/runs/b: writing to gs:// is not supported here yet",
        ),
        (
            "matpac_jax.audio.preprocess",
            ["--input_dir", "gs://matpac-test/audio", "--output_dir", "mels"],
            "--input_dir gs://matpac-test/audio: reading from gs:// is not supported here yet",
        ),
        (
            "matpac_jax.audio.preprocess",
            ["--input_dir", "audio", "--output_dir", "gs://matpac-test/mels"],
            "--output_dir gs://matpac-test/mels: writing to gs:// is not supported here yet",
        ),
    ],
)
def test_what_cannot_use_a_bucket_yet_says_so(gcs, tmp_path, module, args, message):
    """Before, a gs:// workdir or output became a local folder named `gs:`."""
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").write_bytes(b"")
    args = [a.replace("CONFIG", f"{root}/configs/matpac_pp.py:runlocal") for a in args]
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path,
        env={**os.environ, **gcs.env, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert sorted(os.listdir(tmp_path)) == ["audio"]  # no local gs: folder, no output
