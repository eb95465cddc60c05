"""Checkpointing (matpac_jax/train/checkpoints.py): resume, retention, damage, shards, lock, converted steps."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import write_mel_dataset
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from matpac_jax.data import pipeline as input_pipeline
from matpac_jax.train import checkpoints as checkpointing

CROP = 16

# Reading a damaged checkpoint can make Orbax close its event loop before a sibling tensorstore
# read calls back; Python reports "Event loop is closed" as unraisable, at whichever later test
# the garbage collector runs in. Harmless: the failed restore itself is what the tests check.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mels")
    rng = np.random.default_rng(0)
    mels = [
        rng.normal(size=(4, int(rng.integers(CROP, 3 * CROP)))).astype(np.float16) for _ in range(9)
    ]
    write_mel_dataset(str(d), mels, records_per_shard=4)
    return str(d)


def _iterator(data_dir, num_workers=0):
    ds = input_pipeline.pretraining_dataset(
        data_dir, batch_size=2, crop_frames=CROP, seed=0, mean=0.0, std=1.0
    )
    return input_pipeline.InputIterator(ds, num_workers)


def _shardings(tree, mesh):
    """P("x") over the mesh for leaves whose leading axis divides evenly; the rest replicated."""

    def one(x):
        split = x.ndim and x.shape[0] % mesh.size == 0
        return NamedSharding(mesh, P("x") if split else P())

    return jax.tree.map(one, tree)


def _state(seed, mesh=None):
    """A small train-state-shaped pytree of fresh random arrays, sharded over `mesh` if given."""
    rng = np.random.default_rng(seed)
    tree = {
        "params": {
            "w": rng.normal(size=(8, 4)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float32),
        },
        "teacher": {"w": rng.normal(size=(8, 4)).astype(np.float32)},
        "opt": {"mu": rng.normal(size=(8, 4)).astype(np.float32)},
        "center": rng.normal(size=(1, 8)).astype(np.float32),
        "step": np.int32(rng.integers(100)),
    }
    if mesh is None:
        return jax.device_put(tree)
    return jax.device_put(tree, _shardings(tree, mesh))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _checkpointer(workdir, interval=1, keep=5, async_save=False):
    return checkpointing.Checkpointer(
        str(workdir), save_interval_steps=interval, max_to_keep=keep, async_save=async_save
    )


def _save_steps(workdir, data_dir, steps):
    """Saves `_state(step)` at each step; returns the states."""
    ckpt, it = _checkpointer(workdir), _iterator(data_dir)
    states = {s: _state(s) for s in steps}
    for s in steps:
        next(it)
        assert ckpt.save(s, states[s], it)
    ckpt.close()
    return states


def test_roundtrip_restores_state_and_data_position(tmp_path, data_dir):
    assert _checkpointer(tmp_path).restore_latest(_state(0), _iterator(data_dir)) is None
    ckpt, it = _checkpointer(tmp_path, async_save=True), _iterator(data_dir)
    for _ in range(3):
        next(it)
    state = _state(1)
    expected_state = jax.tree.map(np.asarray, state)
    assert ckpt.save(5, state, it)
    expected_batches = [next(it) for _ in range(6)]  # 12 more records of 9 per epoch
    for x in jax.tree.leaves(state):
        x.delete()  # as a donating train step would: the async save must not need them
    ckpt.wait()
    ckpt.close()

    resumed = _iterator(data_dir)
    ckpt = _checkpointer(tmp_path)
    restored, step = ckpt.restore_latest(_state(2), resumed)
    assert step == 5 and ckpt.latest_step() == 5
    _assert_trees_equal(restored, expected_state)
    for got, want in zip([next(resumed) for _ in range(6)], expected_batches):
        np.testing.assert_array_equal(got, want)


def test_interval_force_and_max_to_keep(tmp_path, data_dir):
    ckpt, it, state = _checkpointer(tmp_path, interval=10, keep=2), _iterator(data_dir), _state(0)
    saved = [s for s in range(36) if ckpt.save(s, state, it)]
    assert saved == [0, 10, 20, 30]
    assert ckpt.all_steps() == [20, 30]
    assert ckpt.save(33, state, it, force=True)
    assert not ckpt.save(33, state, it, force=True)  # that step exists already
    assert ckpt.all_steps() == [30, 33] and ckpt.latest_step() == 33
    ckpt.close()


def test_unfinished_save_is_removed_and_never_restored(tmp_path, data_dir, caplog):
    states = _save_steps(tmp_path, data_dir, [1])
    step_dir = tmp_path / "checkpoints" / "1"
    assert (step_dir / "commit_success.txt").exists()  # Orbax 0.12.8 writes it even locally
    # Orbax 0.12.8 names a step being written "<step>.orbax-checkpoint-tmp"; older ones added
    # "-<timestamp>".
    unfinished = [
        tmp_path / "checkpoints" / n
        for n in ("7.orbax-checkpoint-tmp", "9.orbax-checkpoint-tmp-1234567")
    ]
    for path in unfinished:
        shutil.copytree(step_dir, path)
        (path / "commit_success.txt").unlink()
    with caplog.at_level(logging.WARNING, logger=checkpointing.__name__):
        ckpt = _checkpointer(tmp_path)
    for path in unfinished:
        assert not path.exists()
        assert f"removing unfinished checkpoint {path}" in caplog.text
    assert ckpt.all_steps() == [1]
    restored, step = ckpt.restore_latest(_state(0), _iterator(data_dir))
    assert step == 1
    _assert_trees_equal(restored, states[1])


def _damage(path):
    """Overwrites every file under `path` with garbage, as a torn or bit-rotted write would."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")


@pytest.mark.parametrize("item", ["state/d", "data"])  # array bytes; iterator JSON
def test_damaged_newest_falls_back_to_previous(tmp_path, data_dir, caplog, item):
    states = _save_steps(tmp_path, data_dir, [1, 2])
    _damage(tmp_path / "checkpoints" / "2" / item)
    ckpt = _checkpointer(tmp_path)
    with caplog.at_level(logging.WARNING, logger=checkpointing.__name__):
        restored, step = ckpt.restore_latest(_state(0), _iterator(data_dir))
    assert step == 1
    _assert_trees_equal(restored, states[1])
    assert "checkpoint step 2 in" in caplog.text and "cannot be restored" in caplog.text
    assert "trying step 1" in caplog.text
    # Set aside, so the resumed run can checkpoint step 2 again.
    assert [p.name.split("-")[0] for p in (tmp_path / "damaged_checkpoints").iterdir()] == ["2"]
    assert ckpt.all_steps() == [1]
    assert ckpt.save(2, states[2], _iterator(data_dir))
    ckpt.close()


def test_all_damaged_is_a_clear_error(tmp_path, data_dir):
    _save_steps(tmp_path, data_dir, [1, 2])
    for step in (1, 2):
        _damage(tmp_path / "checkpoints" / str(step) / "state" / "d")
    ckpt = _checkpointer(tmp_path)
    with pytest.raises(RuntimeError, match=r"none of the 2 checkpoints .*step 2: .*step 1: "):
        ckpt.restore_latest(_state(0), _iterator(data_dir))
    assert ckpt.all_steps() == [1, 2]  # nothing moved when nothing restored


def test_data_position_restores_onto_another_worker_count(tmp_path, data_dir):
    """The position is batches read, not a grain state: 0 workers -> 1 worker continues."""
    ckpt, it = _checkpointer(tmp_path), _iterator(data_dir)
    for _ in range(4):
        next(it)
    assert ckpt.save(4, _state(4), it)
    expected = [next(it) for _ in range(3)]
    ckpt.close()
    resumed = _iterator(data_dir, num_workers=1)
    _, step = _checkpointer(tmp_path).restore_latest(_state(0), resumed)
    assert step == 4 and resumed.position == 4
    for want in expected:
        np.testing.assert_array_equal(next(resumed), want)
    resumed.close()


def test_per_process_data_of_an_older_version_is_a_clear_error(tmp_path, data_dir):
    _save_steps(tmp_path, data_dir, [1, 2])
    data = tmp_path / "checkpoints" / "2" / "data"
    (data / "process_0-of-2.json").write_text('{"num_workers": 0, "grain": {}}')  # as grain did
    ckpt, it = _checkpointer(tmp_path), _iterator(data_dir)
    with pytest.raises(ValueError, match="written by an older matpac_jax"):
        ckpt.restore_latest(_state(0), it)
    it.close()
    assert ckpt.all_steps() == [1, 2]  # not treated as damage


def test_restore_onto_other_shardings(tmp_path, data_dir):
    devices = jax.devices()
    assert len(devices) == 8
    saved = _state(3, Mesh(np.array(devices), ("x",)))
    assert saved["params"]["w"].sharding.spec == P("x")
    ckpt = _checkpointer(tmp_path)
    assert ckpt.save(4, saved, _iterator(data_dir))
    for shardings in (
        _shardings(saved, Mesh(np.array(devices[:2]), ("x",))),
        jax.tree.map(lambda _: SingleDeviceSharding(devices[0]), saved),
    ):
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), saved, shardings
        )
        restored, step = ckpt.restore_latest(abstract, _iterator(data_dir))
        assert step == 4
        _assert_trees_equal(restored, saved)
        assert all(jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding == s, restored, shardings)))
    no_sharding = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), saved)
    with pytest.raises(ValueError, match=r"abstract_state\['center'\] has no sharding"):
        ckpt.restore_latest(no_sharding, _iterator(data_dir))
    ckpt.close()


def test_converted_step_without_input_position_restores_its_state(tmp_path, data_dir, caplog):
    state = _state(3)
    checkpointing.write_state_only(str(tmp_path), 4, state, {"source": "x.pt"})
    assert not (tmp_path / "checkpoints" / "4" / "data").exists()
    ckpt, it = _checkpointer(tmp_path), _iterator(data_dir)
    with caplog.at_level(logging.WARNING, logger=checkpointing.__name__):
        restored, step = ckpt.restore_latest(_state(0), it)
    assert step == 4 and "no input-pipeline position" in caplog.text
    _assert_trees_equal(restored, jax.tree.map(np.asarray, state))
    np.testing.assert_array_equal(next(it), next(_iterator(data_dir)))  # from the beginning
    assert ckpt.save(5, restored, it)  # the next save writes both items
    ckpt.close()
    # Any other step without data/ is damage, not a converted checkpoint.
    shutil.rmtree(tmp_path / "checkpoints" / "5" / "data")
    (tmp_path / "converted.json").unlink()
    with pytest.raises(RuntimeError, match="none of the 2 checkpoints"):
        _checkpointer(tmp_path).restore_latest(_state(0), _iterator(data_dir))
