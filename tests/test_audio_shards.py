"""Record format and the checked shard source (matpac_jax/audio/shards.py)."""

import os
import pickle
import resource

import numpy as np
import pytest
from conftest import write_mel_dataset

from matpac_jax.audio import shards


def test_record_roundtrip():
    mel = np.random.default_rng(0).normal(-5, 3, (80, 613)).astype(np.float32)
    back = shards.decode(shards.encode(mel))
    assert back.dtype == np.float16 and back.shape == (80, 613)
    np.testing.assert_array_equal(back, mel.astype(np.float16))


@pytest.mark.parametrize("damage", ["short", "magic", "size"])
def test_damaged_record_is_refused(damage):
    rec = shards.encode(np.ones((4, 5), np.float32))
    bad = {"short": rec[:7], "magic": b"XXXX" + rec[4:], "size": rec[:-2]}[damage]
    with pytest.raises(ValueError):
        shards.decode(bad)


def test_source_reads_every_record_in_order(tmp_path):
    rng = np.random.default_rng(1)
    mels = [rng.normal(size=(8, int(rng.integers(10, 30)))).astype(np.float16) for _ in range(11)]
    index = write_mel_dataset(str(tmp_path), mels, records_per_shard=4)
    src = shards.MelSource(str(tmp_path))
    assert len(src) == 11 == index["num_records"]
    for i, m in enumerate(mels):
        np.testing.assert_array_equal(src[i], m)
    assert src.locate(5) == (str(tmp_path / "shards" / "mels-00001-of-00003.array_record"), 1)


def _corrupt(path, offset, size, rng):
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = rng.bytes(size)
    path.write_bytes(bytes(data))


def test_corrupt_record_names_shard_and_record(tmp_path):
    rng = np.random.default_rng(2)
    mels = [rng.normal(size=(16, 200)).astype(np.float16) for _ in range(6)]
    write_mel_dataset(str(tmp_path), mels, records_per_shard=3)
    path = tmp_path / "shards" / "mels-00001-of-00002.array_record"
    _corrupt(path, 2000, 100, rng)  # inside the first record's chunk
    src = shards.MelSource(str(tmp_path))
    errors = []
    for i in range(len(src)):
        try:
            src[i]
        except shards.ShardError as e:
            errors.append(str(e))
    assert errors, "a corrupt chunk went unnoticed"
    assert all(str(path) in e and "cannot read record" in e for e in errors)
    assert any("record 0 of" in e for e in errors)


def test_corrupt_shard_structure_names_shard(tmp_path):
    rng = np.random.default_rng(3)
    mels = [rng.normal(size=(16, 2000)).astype(np.float16) for _ in range(6)]
    write_mel_dataset(str(tmp_path), mels, records_per_shard=3)
    path = tmp_path / "shards" / "mels-00001-of-00002.array_record"
    path.write_bytes(path.read_bytes()[:100_000])  # an interrupted copy: no footer left
    with pytest.raises(shards.ShardError, match="mels-00001-of-00002"):
        shards.MelSource(str(tmp_path))


def test_missing_index_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="matpac_jax.audio.preprocess"):
        shards.MelSource(str(tmp_path))


def _open_descriptors():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def many_shards(tmp_path):
    rng = np.random.default_rng(4)
    mels = [rng.normal(size=(8, 12 + i % 5)).astype(np.float16) for i in range(60)]
    write_mel_dataset(str(tmp_path), mels, records_per_shard=1)  # 60 shards
    return str(tmp_path), mels


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_reads_keep_at_most_max_open_shards_open(many_shards):
    data_dir, mels = many_shards
    before = _open_descriptors()
    src = shards.MelSource(data_dir, max_open=5)
    assert _open_descriptors() == before  # the start-up check closes what it opens
    order = np.random.default_rng(0).permutation(len(mels))
    for i in order:
        np.testing.assert_array_equal(src[int(i)], mels[i])
        assert src.open_readers <= 5 and _open_descriptors() <= before + 5
    got = src.__getitems__([7, 59, 7, 0])  # a batch over several shards, one read a shard
    for g, i in zip(got, [7, 59, 7, 0]):
        np.testing.assert_array_equal(g, mels[i])
    copy = pickle.loads(pickle.dumps(src))  # what a grain worker gets: no open file
    assert copy.open_readers == 0
    np.testing.assert_array_equal(copy[3], mels[3])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_reads_go_on_when_the_process_runs_out_of_files(many_shards):
    """No bound from the limit (max_open 1,000), a soft limit 20 descriptors above what is
    open: opening the 21st shard fails with EMFILE, half the readers are closed, reading goes
    on, and the bound stays at what fitted."""
    data_dir, mels = many_shards
    src = shards.MelSource(data_dir, max_open=1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_open_descriptors() + 20, hard))
    try:
        for i in range(len(mels)):
            np.testing.assert_array_equal(src[i], mels[i])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert 1 <= src.open_readers <= 20


def test_a_shard_holding_other_records_than_the_index_says(tmp_path):
    rng = np.random.default_rng(5)
    mels = [rng.normal(size=(8, 10)).astype(np.float16) for _ in range(6)]
    write_mel_dataset(str(tmp_path), mels, records_per_shard=3)
    other = tmp_path / "other"
    write_mel_dataset(str(other), mels[:2], records_per_shard=2)
    shard = tmp_path / "shards" / "mels-00001-of-00002.array_record"
    shard.write_bytes((other / "shards" / "mels-00000-of-00001.array_record").read_bytes())
    with pytest.raises(shards.ShardError, match=r"hold 5 records, the index says 6 \(shard .*"
                       r"mels-00001-of-00002.array_record: 2, not 3\)"):  # fmt: skip
        shards.MelSource(str(tmp_path))
