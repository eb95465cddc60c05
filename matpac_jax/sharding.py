"""Device mesh and shardings: batch over (data, fsdp), state replicated over data.

Parameters, teacher and optimiser state are sharded along `fsdp` (largest divisible dimension
of each leaf; leaves too small to be worth it stay replicated) and replicated along `data`.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
MIN_FSDP_SIZE = 2**14  # smaller leaves are replicated: sharding them costs more than it saves


def make_mesh(shape: Sequence[int] = (-1, 1), devices=None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default all); one -1 entry takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != 2 or shape.count(-1) > 1:
        raise ValueError(f"mesh shape must be (data, fsdp) with at most one -1, got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into a mesh of {shape}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh {tuple(shape)} needs {math.prod(shape)} devices, {len(devices)} are available"
        )
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Examples split over every device of the mesh."""
    return NamedSharding(mesh, P(AXES))


def leaf_spec(shape: Sequence[int], fsdp_size: int) -> P:
    """Shards the largest dimension divisible by the fsdp size; small leaves replicated."""
    if fsdp_size == 1 or math.prod(shape) < MIN_FSDP_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh):
    """NamedShardings for every leaf of a (possibly abstract) state pytree."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, fsdp)), abstract_state)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global jax.Array from this process's slice of the batch."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)
