"""The cost tool (matpac_jax/tools/cost.py) on the runlocal model."""

import importlib.util
import os

import pytest

from matpac_jax.tools import cost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    spec = importlib.util.spec_from_file_location("c", os.path.join(ROOT, "configs/matpac_pp.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    with config.unlocked():
        config.data.crop_frames = 64
    return config


@pytest.mark.slow
def test_flops_scale_with_batch_and_memory_is_reported():
    small = cost.analyse(_config(), 4, (1, 1), None)
    large = cost.analyse(_config(), 8, (1, 1), None)
    # The per-example cost is a property of the model: batch size must not change it (the
    # optimiser and EMA, paid once per step, are a small share even for this tiny model).
    assert large["flops_per_step"] > 1.8 * small["flops_per_step"]
    assert large["gflop_per_example"] == pytest.approx(small["gflop_per_example"], rel=0.1)
    mem = large["memory_per_device_gib"]
    assert mem["arguments"] > 0 and mem["peak_estimate"] >= mem["arguments"]
    assert large["params"]["params"] > large["params"]["teacher"] > 0


@pytest.mark.slow
def test_data_parallel_mesh_splits_activations():
    one = cost.analyse(_config(), 8, (1, 1), None)
    four = cost.analyse(_config(), 8, (4, 1), None)
    assert four["mesh"] == {"data": 4, "fsdp": 1}
    # Summed over devices, the step's work is the same model work plus the replicated optimiser
    # and EMA update, repeated on each device (a visible share only for this tiny model).
    assert one["gflop_per_example"] < four["gflop_per_example"] < 1.2 * one["gflop_per_example"]
    # Each device now holds a quarter of the batch: fewer temporaries, the same state.
    assert (
        four["memory_per_device_gib"]["temporaries"] < one["memory_per_device_gib"]["temporaries"]
    )


def test_mesh_larger_than_host_is_refused():
    with pytest.raises(ValueError, match="devices"):
        cost.analyse(_config(), 8, (16, 1), None)


def test_collective_bytes_of_hlo_lines():
    text = "\n".join(
        [
            "  %ag = f32[768,768]{1,0} all-gather(f32[96,768]{1,0} %p), dimensions={0}",
            "  %ar = (f32[3]{0}, bf16[2,5]{1,0}) all-reduce(f32[3]{0} %a, bf16[2,5]{1,0} %b)",
            "  %a2a = f32[8,4]{1,0} all-to-all(f32[8,4]{1,0} %x), dimensions={0}",
            "  %ags = (f32[2,4]{1,0}, f32[16,4]{1,0}) all-gather-start(f32[2,4]{1,0} %y)",
            "  %agd = f32[16,4]{1,0} all-gather-done((f32[2,4]{1,0}, f32[16,4]{1,0}) %ags)",
            "  %add = f32[8,4]{1,0} add(f32[8,4]{1,0} %x, f32[8,4]{1,0} %x)",
        ]
    )
    assert cost.collective_bytes(text) == {
        "all-gather": {"count": 2, "bytes": 768 * 768 * 4 + 16 * 4 * 4},
        "all-reduce": {"count": 1, "bytes": 3 * 4 + 2 * 5 * 2},
        "all-to-all": {"count": 1, "bytes": 8 * 4 * 4},
    }


def test_collective_bytes_of_a_compiled_program():
    """A psum and an all-gather over the 8 test devices: one device's share of each."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

    mesh = jax.make_mesh((8,), ("x",))

    def body(a, b):
        return jax.lax.psum(a, "x"), jax.lax.all_gather(b, "x", tiled=True)

    specs = dict(mesh=mesh, in_specs=P("x"), out_specs=(P(), P()), check_vma=False)
    fn = jax.jit(jax.shard_map(body, **specs))
    rows = jax.sharding.NamedSharding(mesh, P("x"))
    x = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=rows)
    y = jax.ShapeDtypeStruct((8 * 3, 5), jnp.float32, sharding=rows)
    found = cost.collective_bytes(fn.lower(x, y).compile().as_text())
    assert found["all-reduce"]["bytes"] == 1 * 16 * 4  # each device's (1, 16) block
    assert found["all-gather"]["bytes"] == 24 * 5 * 4  # the gathered (24, 5)
