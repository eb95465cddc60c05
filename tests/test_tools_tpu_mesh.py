"""TPU slices without a TPU (matpac_jax/tools/tpu_mesh.py): stand-in chips with coordinates,
hosts and process indices, the trainer's meshes over them (`jax.make_mesh` orders them along the
interconnect), and the rows each process loads (`sharding.process_rows`).

The rows are checked against an independent reading of the batch sharding: P(("data", "fsdp"))
gives the device at flat position k of the mesh the k-th block of the batch.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from matpac_jax.tools import tpu_mesh
from matpac_jax.train import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 2048

# The documented meshes (docs/launching.md) on v5p 4x4x8, v4-32 and v5e-64, and whether a
# process's rows come in several spans there (every one the trainer refused before, and one
# where they happen to be blocks).
SLICES = [
    ("v5p-256", (128, 1), True),
    ("v5p-256", (32, 4), True),
    ("v5p-256", (16, 8), True),
    ("v4-32", (16, 1), True),
    ("v4-32", (4, 4), False),
    ("v5litepod-64", (16, 4), True),
    ("v5litepod-64", (64, 1), True),
]


@pytest.mark.parametrize("name, dims, hosts", [
    ("v4-8", (2, 2, 1), 1),
    ("v4-32", (2, 2, 4), 4),
    ("v5p-256", (4, 4, 8), 32),
    ("v5p-1024", (8, 8, 8), 128),
    ("v5litepod-8", (2, 4, 1), 1),
    ("v5litepod-64", (8, 8, 1), 16),
    ("v6e-256", (16, 16, 1), 64),
])  # fmt: skip
def test_slices_have_cloud_tpus_topologies_and_hosts(name, dims, hosts):
    devices = tpu_mesh.slice_devices(name)
    assert len(devices) == np.prod(dims)
    assert sorted(d.coords for d in devices) == sorted(np.ndindex(*dims))
    assert [d.id for d in devices] == list(range(len(devices)))
    processes = [d.process_index for d in devices]
    assert processes == sorted(processes)  # jax.devices() comes process by process
    assert len(set(processes)) == hosts
    for p in set(processes):  # a host's chips are one block of the grid
        coords = np.array([d.coords for d in devices if d.process_index == p])
        extent = coords.max(0) - coords.min(0) + 1
        assert np.prod(extent) == len(coords) == len(devices) // hosts


@pytest.mark.parametrize("name, shape, scattered", SLICES)
def test_every_process_loads_exactly_the_rows_its_chips_hold(name, shape, scattered):
    devices = tpu_mesh.slice_devices(name)
    mesh = sharding.make_mesh(shape, devices)
    block = BATCH // mesh.size
    # Independently: the device at flat position k of the mesh holds rows [k * block, ...).
    want = {}
    for k, device in enumerate(mesh.devices.flat):
        want.setdefault(device.process_index, []).extend(range(k * block, (k + 1) * block))
    rows = {p: sharding.process_rows(mesh, BATCH, p) for p in want}
    for p, got in rows.items():
        np.testing.assert_array_equal(got, sorted(want[p]))
    every = np.sort(np.concatenate(list(rows.values())))
    np.testing.assert_array_equal(every, np.arange(BATCH))  # each row loaded once, somewhere
    assert any(np.any(np.diff(r) != 1) for r in rows.values()) == scattered


def test_process_rows_of_a_process_without_devices():
    mesh = sharding.make_mesh((4, 1), tpu_mesh.slice_devices("v4-8"))
    with pytest.raises(ValueError, match="process 3 holds no device"):
        sharding.process_rows(mesh, 8, 3)


def test_describe_rows():
    assert sharding.describe_rows(np.array([0, 1, 2, 3])) == "[0, 4)"
    assert sharding.describe_rows(np.array([0, 1, 8, 9, 20])) == "[0, 2) [8, 10) [20, 21)"
    rows = np.concatenate([np.arange(s, s + 2) for s in range(0, 40, 4)])
    assert sharding.describe_rows(rows, shown=2) == "[0, 2) [4, 6) ... (20 rows in 10 spans)"


def test_the_tool_from_another_folder(tmp_path):
    def tool(*args):
        return subprocess.run(
            [sys.executable, "-m", "matpac_jax.tools.tpu_mesh", *args],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": ROOT},
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = tool("--slice", "v5p-256", "--mesh", "32,4", "--processes", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("v5p-256: TPU v5p, 128 chips on a 4x4x8 grid (a torus), 32 hosts")
    assert lines[1] == "  process 0 loads rows [0, 32) [512, 544)", out.stdout
    assert "neighbour hops, the trainer's order (jax.make_mesh): data mean" in out.stdout
    assert "neighbour hops, process-major: data mean" in out.stdout
    out = tool("--slice", "v5p-256", "--mesh", "16,8")
    assert "process-major: cannot be built (data size 16 does not divide by 32" in out.stdout
    for args, message in [
        (("--slice", "v9-8", "--mesh", "4,1"), "expected v4-N, v5p-N"),
        (("--slice", "v5p-255", "--mesh", "4,1"), "counts 2 cores a chip"),
        (("--slice", "v4-32", "--mesh", "3,1"), "--mesh 3,1: config.mesh (3, 1) needs 3"),
        (("--slice", "v4-32", "--mesh", "16,1", "--topology", "4x4x4"), "not a 3-D grid of 16"),
    ]:
        out = tool(*args)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
