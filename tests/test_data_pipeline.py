"""Input pipeline (matpac_jax/data/pipeline.py): determinism, disjointness, crops, resume.

Records are synthetic and self-describing: row 0 holds the record id, row 1 the frame index,
so every crop says where it came from (float16 holds these integers exactly).
"""

import numpy as np
import pytest
from conftest import write_mel_dataset

from matpac_jax.audio import shards
from matpac_jax.data import pipeline as input_pipeline

N_RECORDS, CROP, MELS = 23, 16, 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mels")
    rng = np.random.default_rng(0)
    mels = []
    for i in range(N_RECORDS):
        frames = int(rng.integers(CROP, 3 * CROP))
        m = rng.normal(size=(MELS, frames))
        m[0], m[1] = i, np.arange(frames)
        mels.append(m.astype(np.float16))
    write_mel_dataset(str(d), mels, records_per_shard=5)
    return str(d)


def _dataset(data_dir, **kw):
    kw = {"batch_size": 4, "crop_frames": CROP, "seed": 0, "mean": 0.0, "std": 1.0, **kw}
    return input_pipeline.pretraining_dataset(data_dir, **kw)


def _ids_and_starts(batch):
    return batch[:, 0, 0].astype(int).tolist(), batch[:, 1, 0].astype(int).tolist()


def test_batches_are_normalised_crops(data_dir):
    src = shards.MelSource(data_dir)
    ds = _dataset(data_dir, mean=-1.5, std=2.5)
    for b in range(6):
        batch = ds[b]
        assert batch.shape == (4, MELS, CROP) and batch.dtype == np.float32
        raw = batch * 2.5 - 1.5
        for row in raw:
            rid, start = int(round(row[0, 0])), int(round(row[1, 0]))
            rec = src[rid].astype(np.float32)
            assert 0 <= start <= rec.shape[1] - CROP  # the crop lies inside the record
            np.testing.assert_allclose(row, rec[:, start : start + CROP], atol=1e-5)


def test_deterministic_per_seed(data_dir):
    a = [_dataset(data_dir)[i] for i in range(8)]
    b = [_dataset(data_dir)[i] for i in range(8)]
    c = [_dataset(data_dir, seed=1)[i] for i in range(8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_epochs_cover_corpus_with_new_order_and_crops(data_dir):
    ds = _dataset(data_dir, batch_size=1)
    epochs = [[_ids_and_starts(ds[e * N_RECORDS + i]) for i in range(N_RECORDS)] for e in range(2)]
    ids = [[x[0][0] for x in ep] for ep in epochs]
    assert sorted(ids[0]) == sorted(ids[1]) == list(range(N_RECORDS))
    assert ids[0] != ids[1]
    starts = [dict((x[0][0], x[1][0]) for x in ep) for ep in epochs]
    assert starts[0] != starts[1]


def test_processes_read_disjoint_slices(data_dir):
    count = 3
    per_process = []
    for p in range(count):
        ds = _dataset(data_dir, batch_size=1, process_index=p, process_count=count)
        n = len(range(p, N_RECORDS, count))
        per_process.append([_ids_and_starts(ds[i])[0][0] for i in range(n)])
    seen = [i for ids in per_process for i in ids]
    assert sorted(seen) == list(range(N_RECORDS))  # disjoint and complete within an epoch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_restores_exact_continuation(data_dir, num_workers):
    ds = _dataset(data_dir)
    it = input_pipeline.InputIterator(ds, num_workers)
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(9)]  # crosses an epoch boundary
    it.close()
    resumed = input_pipeline.InputIterator(ds, num_workers)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(9)]
    resumed.close()
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    assert np.array_equal(expected[0], ds[7])  # the stream is the indexable dataset itself


def test_state_from_other_worker_count_is_refused(data_dir):
    it = input_pipeline.InputIterator(_dataset(data_dir), 0)
    next(it)
    other = input_pipeline.InputIterator(_dataset(data_dir), 1)
    with pytest.raises(ValueError, match="same number of data workers"):
        other.set_state(it.get_state())
    other.close()


def test_short_record_is_a_clear_error(data_dir):
    with pytest.raises(ValueError, match="--min_frames"):
        _dataset(data_dir, crop_frames=10 * CROP)[0]
