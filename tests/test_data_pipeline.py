"""Input pipeline (matpac_jax/data/pipeline.py): determinism, the global batch on any number of
processes, crops, resume on another worker or process count, workers that outlive a SIGTERM.

Records are synthetic and self-describing: row 0 holds the record id, row 1 the frame index,
so every crop says where it came from (float16 holds these integers exactly).
"""

import os
import signal
import subprocess
import sys
import time

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


def _expected_global_batch(data_dir, step, batch, seed=0):
    """(record ids, crop starts) of global batch `step`, from the definition in the module's
    docstring, without the pipeline: epochs concatenated, each a seeded shuffle; each crop
    seeded by (seed, epoch, record)."""
    frames = [f for shard in shards.load_index(data_dir)["shards"] for f in shard["frames"]]
    ids, starts = [], []
    for g in range(step * batch, (step + 1) * batch):
        epoch, position = divmod(g, N_RECORDS)
        record = int(np.random.default_rng([seed, epoch]).permutation(N_RECORDS)[position])
        rng = np.random.default_rng([seed, epoch, record])
        ids.append(record)
        starts.append(int(rng.integers(0, frames[record] - CROP + 1)))
    return ids, starts


def test_global_batches_follow_the_seeded_epoch_order(data_dir):
    ds = _dataset(data_dir, batch_size=5, seed=3)
    for step in (0, 3, 4, 9):  # 4 and 9 straddle an epoch boundary (23 records)
        assert _ids_and_starts(ds[step]) == _expected_global_batch(data_dir, step, 5, seed=3)


# Blocks (CPU and GPU meshes) and interleaved rows (a TPU mesh follows the interconnect).
@pytest.mark.parametrize(
    "splits",
    [
        [[0, 1], [2, 3], [4, 5]],
        [[0, 1, 2], [3, 4, 5]],
        [[0, 1, 4, 5], [2, 3]],
        [[0, 2, 4], [1, 3, 5]],
    ],
)
def test_processes_load_their_rows_of_the_same_global_batch(data_dir, splits):
    whole = _dataset(data_dir, batch_size=6)
    parts = [_dataset(data_dir, batch_size=6, rows=rows) for rows in splits]
    for step in range(12):  # over three epochs
        got = np.full_like(whole[step], np.nan)
        for rows, part in zip(splits, parts):
            got[rows] = part[step]
        np.testing.assert_array_equal(got, whole[step])


@pytest.mark.parametrize("read_threads", [2, 8])
def test_parallel_reads_give_the_same_batches(data_dir, read_threads):
    """A batch's records read at once (network storage) or one after another: the same batch."""
    one = _dataset(data_dir, batch_size=6, rows=[0, 2, 3, 5])
    many = _dataset(data_dir, batch_size=6, rows=[0, 2, 3, 5], read_threads=read_threads)
    for step in range(10):  # over two epochs
        np.testing.assert_array_equal(many[step], one[step])


def test_batches_prepared_at_once_in_threads_are_the_batches(data_dir):
    """Threads prepare batches at once (InputIterator) and share the epochs' orders: around
    every epoch boundary (23 records, batches of 5), each batch is the one made alone."""
    from concurrent import futures  # pylint: disable=g-import-not-at-top

    alone = [_dataset(data_dir, batch_size=5)[k] for k in range(40)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between almost any two lines
    try:
        for _ in range(20):
            ds = _dataset(data_dir, batch_size=5)  # a fresh cache each round
            with futures.ThreadPoolExecutor(8) as pool:
                got = list(pool.map(ds.__getitem__, range(40)))
            for g, a in zip(got, alone):
                np.testing.assert_array_equal(g, a)
    finally:
        sys.setswitchinterval(interval)


def test_rows_must_be_ascending_rows_of_the_batch(data_dir):
    for bad in ([], [2, 1], [0, 0], [-1, 2], [3, 6], [[0, 1]]):
        with pytest.raises(ValueError, match="not ascending rows of a batch of 6"):
            _dataset(data_dir, batch_size=6, rows=bad)


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


def test_state_continues_on_other_workers_and_processes(data_dir):
    """Saved by one process with no worker; resumed by two processes holding interleaved rows
    (0, 2 and 1, 3: a TPU mesh's order), one with 2 workers: together they read the global
    batches the one process would have read."""
    it = input_pipeline.InputIterator(_dataset(data_dir), 0)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    it.close()
    halves = [
        input_pipeline.InputIterator(_dataset(data_dir, rows=[0, 2]), 2),
        input_pipeline.InputIterator(_dataset(data_dir, rows=[1, 3]), 0),
    ]
    for half in halves:
        half.set_state(state)
    for e in expected:
        got = np.stack([next(h) for h in halves], axis=1).reshape(e.shape)  # rows 0, 1, 2, 3
        np.testing.assert_array_equal(got, e)
    for half in halves:
        assert half.get_state() == {"version": input_pipeline.STATE_VERSION, "batches": 11}
        half.close()


def test_state_of_an_older_version_is_refused(data_dir):
    it = input_pipeline.InputIterator(_dataset(data_dir), 0)
    with pytest.raises(ValueError, match="older matpac_jax"):
        it.set_state({"num_workers": 0, "grain": {"next_index": 4}})
    it.close()


def test_short_record_is_a_clear_error(data_dir):
    with pytest.raises(ValueError, match="--min_frames"):
        _dataset(data_dir, crop_frames=10 * CROP)[0]


def _children(parent=None):
    """The child processes of `parent` (default: this one), from /proc (Linux)."""
    parent, kids = parent or os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            kids.append(int(pid))
    return kids


def _started_worker(pid):
    """Whether `pid` is a grain worker past its start-up (its signal handlers set)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"spawn_main" not in f.read():
                return False  # multiprocessing's resource tracker ignores SIGTERM too
        with open(f"/proc/{pid}/status") as f:
            ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn"))
    except (OSError, StopIteration):
        return False
    return bool(ignored & (1 << (signal.SIGTERM - 1)))


def _workers_ready(before, count, timeout=60):
    """This process's new grain workers, once `count` of them have started (handlers set)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        workers = [p for p in set(_children()) - before if _started_worker(p)]
        if len(workers) >= count:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"{count} workers did not start")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers in /proc (Linux)")
def test_workers_leave_sigterm_to_the_trainer(data_dir):
    """srun, a TPU VM's shutdown and Ctrl-C signal the whole process group. The trainer saves
    its step on SIGTERM, then closes the workers; a worker that died of the signal instead
    ended the stream ("Worker process was terminated unexpectedly with exit code -15")."""
    ds = _dataset(data_dir)
    before = set(_children())
    it = input_pipeline.InputIterator(ds, 2)
    try:
        expected = [ds[i] for i in range(12)]
        np.testing.assert_array_equal(next(it), expected[0])
        workers = _workers_ready(before, 2)
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        for e in expected[1:]:
            np.testing.assert_array_equal(next(it), e)
        assert all(os.path.exists(f"/proc/{pid}") for pid in workers)
    finally:
        it.close()


_HOLDER = """
import sys
from absl import flags
from matpac_jax.data import pipeline
flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags
ds = pipeline.pretraining_dataset(sys.argv[1], batch_size=4, crop_frames=16, mean=0.0, std=1.0)
it = pipeline.InputIterator(ds, 2, prefetch_buffer_size=1)
next(it)
print("reading", flush=True)
sys.stdin.readline()  # never comes: the test kills this process
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers in /proc (Linux)")
def test_workers_end_with_a_trainer_killed_outright(data_dir):
    """The OOM killer or kill -9 ends the trainer without closing its workers, which wait on
    their full queues: they notice their parent is gone and exit."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, data_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "reading"
        deadline = time.time() + 60
        while len(workers := [p for p in _children(holder.pid) if _started_worker(p)]) < 2:
            assert time.time() < deadline, "the workers did not start"
            time.sleep(0.05)
        holder.kill()
        holder.wait(timeout=30)
        deadline = time.time() + 10 * input_pipeline.PARENT_CHECK_S
        while any(os.path.exists(f"/proc/{p}") for p in workers) and time.time() < deadline:
            time.sleep(0.1)
        left = [p for p in workers if os.path.exists(f"/proc/{p}")]
        for p in left:
            os.kill(p, signal.SIGKILL)
        assert not left, "workers outlived their trainer"
    finally:
        holder.kill()
