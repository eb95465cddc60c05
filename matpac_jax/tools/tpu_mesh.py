r"""A Cloud TPU slice's mesh, checked on a machine without one.

  python -m matpac_jax.tools.tpu_mesh --slice v5p-256 --mesh 32,4 --batch_size 2048

Builds stand-ins for the slice's chips (coordinates, host, process index and device kind as a
TPU VM reports them, in `jax.devices()`'s process-by-process order), lays the trainer's
(data, fsdp) mesh over them with `sharding.make_mesh` (`jax.make_mesh`, which follows the
interconnect) and prints:

- the rows of the global batch that each process loads (`sharding.process_rows`): on a TPU
  slice a process's chips sit at several places of the mesh, so its rows are several spans;
- the interconnect (ICI) distance between neighbours along each mesh axis, in chip-to-chip hops
  on the slice's grid (a torus where the slice has wraparound links: v4 and v5p slices made of
  whole 4x4x4 cubes, a whole 16x16 v5e/v6e pod), for this order and for the alternative:
  a process-major mesh (`mesh_utils.create_hybrid_device_mesh(..., process_is_granule=True)`),
  in which each process's chips are one block of the mesh, hence one span of rows.

The trainer keeps JAX's order; docs/launching.md ("Device order") gives the figures and why.
Slices: `v4-N` and `v5p-N` (N TensorCores, two a chip; hosts of 2x2x1 chips) and `v5litepod-N`
or `v6e-N` (N chips; hosts of 2x2 chips, one host up to 8 chips), in Cloud TPU's default
topology for their size, or `--topology 4x4x8` for another.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys

from matpac_jax import cli

PROG = "python -m matpac_jax.tools.tpu_mesh"
# (device_kind as the TPU runtime names it, TensorCores a slice's name counts per chip, the
# number of grid dimensions, the chips of one host in a multi-host slice)
GENERATIONS = {
    "v4": ("TPU v4", 2, 3, (2, 2, 1)),
    "v5p": ("TPU v5p", 2, 3, (2, 2, 1)),
    "v5litepod": ("TPU v5 lite", 1, 2, (2, 2, 1)),
    "v5e": ("TPU v5 lite", 1, 2, (2, 2, 1)),
    "v6e": ("TPU v6 lite", 1, 2, (2, 2, 1)),
}
SINGLE_HOST_CHIPS = {2: 8, 3: 4}  # the largest slice one host holds, by grid dimensions


@dataclasses.dataclass(frozen=True)
class TpuChip:
    """What `jax.sharding` and `jax.make_mesh` read of a TPU device."""

    id: int
    process_index: int
    coords: tuple[int, int, int]
    device_kind: str
    core_on_chip: int = 0
    slice_index: int = 0
    platform: str = "tpu"

    def __repr__(self) -> str:
        return f"TpuChip(id={self.id}, process={self.process_index}, coords={self.coords})"


def default_topology(chips: int, ndim: int) -> tuple[int, int, int]:
    """Cloud TPU's default grid for `chips` chips: from 2x2x1 (3-D) or 1x1 (2-D), double the
    smallest dimension, the last on a tie (v4-32 -> 2x2x4, v5p-256 -> 4x4x8, v5e-64 -> 8x8)."""
    dims = [2, 2, 1] if ndim == 3 else [1, 1]
    while math.prod(dims) < chips:
        smallest = min(dims)
        dims[max(i for i, d in enumerate(dims) if d == smallest)] *= 2
    if math.prod(dims) != chips:
        raise ValueError(f"no default topology for {chips} chips: give --topology")
    return tuple(dims + [1] * (3 - ndim))


def parse_slice(name: str, topology: str | None = None):
    """(device_kind, grid dims (x, y, z), host dims) of an accelerator type like "v5p-256"."""
    m = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name)
    if not m:
        raise ValueError(
            f"--slice {name!r}: expected v4-N, v5p-N, v5litepod-N, v5e-N or v6e-N (an "
            "accelerator type)"
        )
    kind, cores_per_chip, ndim, host = GENERATIONS[m.group(1)]
    count = int(m.group(2))
    if count % cores_per_chip:
        raise ValueError(f"--slice {name}: {m.group(1)} counts {cores_per_chip} cores a chip")
    chips = count // cores_per_chip
    if topology:
        dims = tuple(int(d) for d in topology.lower().split("x"))
        if len(dims) != ndim or math.prod(dims) != chips:
            raise ValueError(f"--topology {topology}: not a {ndim}-D grid of {chips} chips")
        dims = dims + (1,) * (3 - ndim)
    else:
        dims = default_topology(chips, ndim)
    if chips <= SINGLE_HOST_CHIPS[ndim]:
        host = dims  # one host holds the whole slice
    if any(d % h for d, h in zip(dims, host)):
        raise ValueError(f"a {dims} grid does not split into hosts of {host} chips")
    return kind, dims, host


def slice_devices(name: str, topology: str | None = None) -> list[TpuChip]:
    """Stand-ins for a slice's chips, in `jax.devices()`'s order: process by process, and
    within a host by z, y, x."""
    kind, dims, host = parse_slice(name, topology)
    per_axis = [d // h for d, h in zip(dims, host)]

    def process(c):
        return (c[2] // host[2] * per_axis[1] + c[1] // host[1]) * per_axis[0] + c[0] // host[0]

    grid = [(x, y, z) for z in range(dims[2]) for y in range(dims[1]) for x in range(dims[0])]
    grid.sort(key=lambda c: (process(c), c[2], c[1], c[0]))
    return [TpuChip(i, process(c), c, kind) for i, c in enumerate(grid)]


def process_major_mesh(shape: tuple[int, int], devices: list[TpuChip]):
    """The alternative: each process's chips one block of the mesh (JAX's hybrid mesh with the
    process as the outer unit); ValueError where the mesh cannot be laid out so."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

    processes = len({d.process_index for d in devices})
    if shape[0] % processes:
        raise ValueError(f"data size {shape[0]} does not divide by {processes} processes")
    local = (shape[0] // processes, shape[1])
    if math.prod(local) != len(devices) // processes:
        raise ValueError(f"{local} is not one process's {len(devices) // processes} chips")
    grid = mesh_utils.create_hybrid_device_mesh(
        local, (processes, 1), devices, process_is_granule=True
    )
    return np.asarray(grid)


def wraparound(kind: str, dims: tuple[int, int, int]) -> tuple[bool, bool, bool]:
    """Which grid dimensions close into rings: on v4 and v5p, every one of a slice made of whole
    4x4x4 cubes (optical links join their faces); on v5e and v6e, both of a whole 16x16 pod."""
    if kind in ("TPU v4", "TPU v5p"):
        return (all(d % 4 == 0 for d in dims),) * 3
    return (dims[:2] == (16, 16),) * 2 + (False,)


def neighbour_hops(grid, dims, wrap) -> list[tuple[float, int] | None]:
    """Per mesh axis: (mean, max) chip-to-chip hops between neighbours along it, the ring's
    closing pair included (None for an axis of size 1), on a grid of `dims` whose dimensions
    `wrap` are rings."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    def hops(a, b):
        return sum(
            min(abs(x - y), d - abs(x - y)) if w else abs(x - y)
            for x, y, d, w in zip(a, b, dims, wrap)
        )

    out = []
    for axis in range(grid.ndim):
        if grid.shape[axis] == 1:
            out.append(None)
            continue
        rings = np.moveaxis(grid, axis, -1).reshape(-1, grid.shape[axis])
        pairs = [
            hops(r[i].coords, r[(i + 1) % len(r)].coords) for r in rings for i in range(len(r))
        ]
        out.append((float(np.mean(pairs)), int(max(pairs))))
    return out


def _hops_text(hops) -> str:
    names = ("data", "fsdp")
    parts = [f"{n} mean {h[0]:.2f} max {h[1]}" for n, h in zip(names, hops) if h is not None]
    return ", ".join(parts) or "one device"


def main(argv=None) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--slice", required=True, help="accelerator type, e.g. v5p-256, v4-32")
    p.add_argument("--mesh", required=True, help="the trainer's config.mesh: data,fsdp")
    p.add_argument("--batch_size", type=cli.int_at_least(1), default=2048)
    p.add_argument("--topology", default=None, help="the slice's grid, e.g. 4x4x8")
    p.add_argument("--processes", type=cli.int_at_least(1), default=3, help="rows shown for")
    args = p.parse_args(argv)
    try:
        devices = slice_devices(args.slice, args.topology)
        shape = tuple(int(s) for s in args.mesh.split(","))
    except ValueError as e:
        raise cli.UserError(str(e)) from None

    from matpac_jax.train import sharding  # pylint: disable=g-import-not-at-top (jax)

    try:
        mesh = sharding.make_mesh(shape, devices)
    except ValueError as e:
        raise cli.UserError(f"--mesh {args.mesh}: {e}") from None
    if args.batch_size % mesh.size:
        raise cli.UserError(f"--batch_size {args.batch_size}: not divisible by {mesh.size} chips")
    processes = sorted({d.process_index for d in devices})
    kind, dims, host = parse_slice(args.slice, args.topology)
    wrap = wraparound(kind, dims)
    torus = " (a torus)" if any(wrap) else ""
    print(
        f"{args.slice}: {kind}, {len(devices)} chips on a {'x'.join(map(str, dims))} grid"
        f"{torus}, {len(processes)} hosts of {math.prod(host)} chips; mesh {dict(mesh.shape)}"
    )
    for process in processes[: args.processes]:
        rows = sharding.process_rows(mesh, args.batch_size, process)
        print(f"  process {process} loads rows {sharding.describe_rows(rows)}")
    ours = _hops_text(neighbour_hops(mesh.devices, dims, wrap))
    print(f"neighbour hops, the trainer's order (jax.make_mesh): {ours}")
    try:
        alt = _hops_text(
            neighbour_hops(process_major_mesh(mesh.devices.shape, devices), dims, wrap)
        )
    except ValueError as e:
        alt = f"cannot be built ({cli.one_line(e)})"
    print(f"neighbour hops, process-major: {alt}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
