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
