"""Device mesh and shardings: batch over (data, fsdp), state sharded over fsdp.

  mesh (data, fsdp)   config.mesh; -1 takes the devices left over (default (-1, 1): pure
                      data parallelism, every device holds the whole state)
  batch               split over every device: P(("data", "fsdp"))
  params, teacher,    each leaf split along `fsdp` on its largest dimension that the fsdp size
  optimiser state     divides, replicated along `data`; leaves under `min_size` elements (norms,
                      biases, scalars, the centre) are replicated everywhere

Everything else follows from jit over global arrays: the compiler inserts the gradient
reduce-scatter / all-reduce and the parameter all-gathers, and any mean in the step (loss,
centre, monitors) is over the GLOBAL batch, whatever the mesh and the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
MIN_FSDP_SIZE = 2**14  # smaller leaves are replicated: sharding them costs more than it saves


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int]:
    """Resolves a (data, fsdp) shape with at most one -1 against `num_devices`."""
    shape = [int(s) for s in shape]
    if len(shape) != 2 or shape.count(-1) > 1 or any(s < 1 and s != -1 for s in shape):
        raise ValueError(
            f"config.mesh must be (data, fsdp): positive sizes, at most one -1 for 'the rest', "
            f"got {tuple(shape)}"
        )
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(
                f"config.mesh {tuple(shape)}: {num_devices} devices do not divide by {known}; "
                f"choose sizes whose product divides {num_devices}"
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"config.mesh {tuple(shape)} needs {math.prod(shape)} devices, {num_devices} are "
            f"available: make data x fsdp = {num_devices}, or use -1 for one of them"
        )
    return shape[0], shape[1]


def make_mesh(shape: Sequence[int] = (-1, 1), devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: every device of every process).

    `jax.make_mesh` orders the devices along the physical interconnect on TPUs (rings for the
    collectives), which scatters each process's devices over the mesh (`process_rows` follows
    them); on GPUs by device id, on CPUs in the given order.
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        mesh_shape(shape, len(devices)), AXES, (AxisType.Auto,) * len(AXES), devices=devices
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Examples split over every device of the mesh."""
    return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The whole array on every device (metrics, scalars)."""
    return NamedSharding(mesh, P())


def leaf_spec(shape: Sequence[int], fsdp_size: int, min_size: int = MIN_FSDP_SIZE) -> P:
    """Shards the largest dimension divisible by the fsdp size; small leaves replicated."""
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh, min_size: int = MIN_FSDP_SIZE):
    """NamedShardings for every leaf of a (possibly abstract) state pytree.

    Args:
      abstract_state: arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`).
      mesh: a `make_mesh` mesh.
      min_size: leaves with fewer elements stay replicated (0 shards every divisible leaf).
    """
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, leaf_spec(x.shape, fsdp, min_size)), abstract_state
    )


def process_rows(mesh: Mesh, batch_size: int, process_index: int | None = None) -> np.ndarray:
    """The rows of a global batch that a process's devices hold, ascending (int64).

    They need not be one block: `jax.make_mesh` orders TPU devices along the interconnect, so a
    process's chips sit at several places of the (data, fsdp) grid (docs/launching.md, "Device
    order"). A process that loads exactly these rows of every global batch, in this order, makes
    the same global array (`global_batch`) on any mesh and any number of processes.

    Args:
      mesh: the run's mesh (its devices may be stand-ins with `process_index`, as in the tests).
      batch_size: the global batch.
      process_index: whose rows (default: this process's).
    """
    process = jax.process_index() if process_index is None else process_index
    rows = [
        np.arange(*index[0].indices(batch_size)[:2])
        for device, index in batch_sharding(mesh).devices_indices_map((batch_size,)).items()
        if device.process_index == process
    ]
    if not rows:
        raise ValueError(f"process {process} holds no device of the mesh")
    return np.unique(np.concatenate(rows)).astype(np.int64)


def describe_rows(rows: np.ndarray, shown: int = 4) -> str:
    """Rows as spans: "[0, 4) [8, 12) ... (16 rows in 4 spans)"."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    spans = [(int(r[0]), int(r[-1]) + 1) for r in np.split(rows, breaks)]
    text = " ".join(f"[{a}, {b})" for a, b in spans[:shown])
    if len(spans) > shown:
        text += f" ... ({len(rows)} rows in {len(spans)} spans)"
    return text


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global jax.Array from this process's rows of the batch (`process_rows`, in that order):
    JAX places the k-th local row on the device that holds the k-th of those rows."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def state_bytes(abstract_state, shardings) -> tuple[int, int]:
    """(bytes of the whole state, bytes on the busiest device) under `shardings`."""
    leaves = jax.tree.leaves(abstract_state)
    specs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    total = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
    per_device = sum(
        math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
        for x, s in zip(leaves, specs, strict=True)
    )
    return total, per_device
