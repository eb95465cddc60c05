"""Meshes and shardings (matpac_jax/train/sharding.py) on the 8 fake CPU devices of conftest.

The key property: a train step of the tiny model on any (data, fsdp) mesh computes the same
step as on one device for the same global batch: the same loss and monitors (means over the
GLOBAL batch), the same centre (a mean over every masked token of the global batch), the same
updated parameters, teachers and optimiser state. Sharding changes only the order of the
cross-device reductions, hence tolerances instead of equality.
"""

import jax
import numpy as np
import optax
import pytest
from conftest import tiny_step_parts, write_mel_dataset
from jax.sharding import PartitionSpec as P
from numerics import assert_close, assert_trees_close, encoder_depth

from matpac_jax import models
from matpac_jax.data import pipeline as input_pipeline
from matpac_jax.train import checkpoints as checkpointing
from matpac_jax.train import sharding
from matpac_jax.train import step as ts

B, F, T = 8, 32, 64  # the global batch: one example per device on 8 devices
SEED = 5
# float32 reductions split over devices: two programs, compared by tests/numerics.py's rule,
# along a step's longest path (the "mu" encoders and predictor, forward and backward).
# Observed on meshes (4, 2) and (1, 8), two steps, against the array's (leaf's) scale: metrics
# <= 4.4e-7, centre <= 2.8e-7, optimiser moments <= 1.2e-6. Parameters: <= 8e-3 of a leaf's
# scale, 4e-6 of the whole tree's: the key part of a qkv bias has a gradient that is 0 in exact
# arithmetic (softmax ignores a constant added to every key), so it is pure rounding noise,
# which Adam turns into a move of up to ~1% of the lr (5e-4); parameters compare against the
# scale of the whole tree (numerics.assert_trees_close).
STEP_DEPTH = 2 * encoder_depth(2 + 2 + 1)


def _setup():
    model_cfg = models.model_config(
        {"variant": "mu", "num_mcl_heads": 3, "n_mels": F, "max_frames": T}
    )
    step_cfg, sched = tiny_step_parts(lr_warmup_steps=2)
    # The trainer's eps (1e-6): with optax's 1e-8, Adam's first steps are ~sign(g), and a
    # gradient element near 0 could flip with the reduction order.
    tx = optax.adamw(sched.lr, eps=1e-6, weight_decay=0.05)
    init = lambda key: ts.init_state(key, model_cfg, tx)  # noqa: E731
    step = ts.make_train_step(model_cfg, step_cfg, sched, tx, SEED)
    return init, step


def _batches():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(B, F, T)).astype(np.float32) for _ in range(2)]


def _run(mesh, min_size=0):
    """Two steps on `mesh`, state created sharded; returns (state, [metrics], shardings)."""
    init, step = _setup()
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.state_shardings(abstract, mesh, min_size=min_size)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step_fn = jax.jit(
        step,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    metrics = []
    for x in _batches():
        state, m = step_fn(state, sharding.global_batch(x, mesh))
        metrics.append(jax.device_get(m))
    return state, metrics, shardings


@pytest.fixture(scope="module")
def one_device():
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    state, metrics, _ = _run(mesh)
    return jax.device_get(state), metrics


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(8, 1), (4, 2), (1, 8)])
def test_step_on_mesh_matches_one_device(one_device, shape):
    want_state, want_metrics = one_device
    mesh = sharding.make_mesh(shape)
    state, metrics, shardings = _run(mesh)
    for got, want in zip(metrics, want_metrics):
        assert got.keys() == want.keys()
        for k in want:
            assert_close(got[k], want[k], depth=STEP_DEPTH, err_msg=k)
    got_state = jax.device_get(state)
    for part in ("params", "teacher", "opt", "center", "step", "skips"):
        scale = "tree" if part == "params" else "leaf"
        assert_trees_close(got_state[part], want_state[part], depth=STEP_DEPTH, scale=scale)
    # The step kept the layout it was given: each device holds its 1/fsdp of a sharded leaf.
    fsdp = shape[1]
    for leaf, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
        assert leaf.sharding == s
        spec = s.spec
        want = tuple(d // fsdp if ax == "fsdp" else d for d, ax in zip(leaf.shape, spec))
        want += leaf.shape[len(spec) :]
        assert all(sh.data.shape == want for sh in leaf.addressable_shards)
    if fsdp > 1:
        sharded = [s for s in jax.tree.leaves(shardings) if "fsdp" in s.spec]
        assert len(sharded) > len(jax.tree.leaves(shardings)) // 2, "FSDP sharded too little"


def test_state_is_created_sharded():
    """jit(init, out_shardings) allocates only each device's shards: no whole copy anywhere."""
    init, _ = _setup()
    mesh = sharding.make_mesh((1, 8))
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.state_shardings(abstract, mesh, min_size=0)
    total, per_device = sharding.state_bytes(abstract, shardings)
    assert per_device < total / 4
    compiled = jax.jit(init, out_shardings=shardings).lower(jax.random.key(0)).compile()
    # The output buffer per device: the shards plus the tuple's table of 8-byte pointers.
    num_leaves = len(jax.tree.leaves(abstract))
    assert compiled.memory_analysis().output_size_in_bytes == per_device + 8 * num_leaves


def test_batch_is_split_over_every_device():
    mesh = sharding.make_mesh((4, 2))
    x = sharding.global_batch(_batches()[0], mesh)
    assert x.shape == (B, F, T)
    assert x.sharding.spec == P(("data", "fsdp"))
    assert sorted(sh.index[0].start for sh in x.addressable_shards) == list(range(B))
    assert all(sh.data.shape == (1, F, T) for sh in x.addressable_shards)


def test_leaf_spec_rules():
    # Largest dimension that the fsdp size divides; ties go to the earlier dimension.
    assert sharding.leaf_spec((256, 1024), 4) == P(None, "fsdp")
    assert sharding.leaf_spec((1024, 1026), 4) == P("fsdp", None)  # 1026 % 4 != 0
    assert sharding.leaf_spec((3, 5, 7), 4, min_size=0) == P()  # nothing divides
    assert sharding.leaf_spec((512, 512), 1) == P()  # no fsdp axis
    assert sharding.leaf_spec((768,), 8) == P()  # under MIN_FSDP_SIZE: replicated
    assert sharding.leaf_spec((768,), 8, min_size=0) == P("fsdp")
    assert sharding.leaf_spec((), 8, min_size=0) == P()


def test_mesh_shapes_and_errors():
    assert dict(sharding.make_mesh((-1, 1)).shape) == {"data": 8, "fsdp": 1}
    assert dict(sharding.make_mesh((2, -1)).shape) == {"data": 2, "fsdp": 4}
    assert dict(sharding.make_mesh((-1, 2), jax.devices()[:2]).shape) == {"data": 1, "fsdp": 2}
    with pytest.raises(ValueError, match=r"8 devices do not divide by 3"):
        sharding.make_mesh((3, -1))
    with pytest.raises(ValueError, match=r"needs 4 devices, 8 are available"):
        sharding.make_mesh((2, 2))
    for bad in [(8,), (-1, -1), (0, 8), (2, 2, 2)]:
        with pytest.raises(ValueError, match=r"must be \(data, fsdp\)"):
            sharding.make_mesh(bad)


@pytest.mark.slow
def test_checkpoint_from_8_devices_restores_on_1_and_2(tmp_path):
    init, _ = _setup()
    mesh = sharding.make_mesh((2, 4))
    state, _, _ = _run(mesh)
    want = jax.device_get(state)
    data = tmp_path / "mels"
    rng = np.random.default_rng(1)
    write_mel_dataset(str(data), [rng.normal(size=(F, T)).astype(np.float16) for _ in range(4)])

    def data_iter():
        ds = input_pipeline.pretraining_dataset(str(data), batch_size=2, crop_frames=T)
        return input_pipeline.InputIterator(ds)

    ckpt = checkpointing.Checkpointer(
        str(tmp_path / "run"), save_interval_steps=1, max_to_keep=1, async_save=False
    )
    ckpt.save(2, state, data_iter())
    ckpt.close()
    abstract = jax.eval_shape(init, jax.random.key(0))
    for devices, shape in ((jax.devices()[:1], (1, 1)), (jax.devices()[6:8], (1, 2))):
        target_mesh = sharding.make_mesh(shape, devices)
        shardings = sharding.state_shardings(abstract, target_mesh, min_size=0)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        ckpt = checkpointing.Checkpointer(
            str(tmp_path / "run"), save_interval_steps=1, max_to_keep=1, async_save=False
        )
        restored, restored_step = ckpt.restore_latest(target, data_iter())
        ckpt.close()
        assert restored_step == 2
        for got, s in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
            assert got.sharding == s and {d for d in got.devices()} == set(devices)
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), want)
