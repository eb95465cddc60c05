"""`python -m matpac_jax.train` whose mesh interleaves the processes' devices, as a TPU slice's does.

On CPUs (and GPUs) `jax.devices()` comes process by process, so each process's devices hold one
block of the batch's rows; on a TPU slice `jax.make_mesh` follows the interconnect and scatters
them (tools/tpu_mesh.py). This runs the real trainer with the mesh built over the devices in
the order p0d0, p1d0, p0d1, p1d1, ...: each process then holds every other row.

  python tests/interleaved_trainer.py <the trainer's flags>
"""

import sys

import jax
from absl import app

from matpac_jax.train import __main__ as train_main  # noqa: F401 (the trainer's flags)
from matpac_jax.train import sharding, trainer

_make_mesh = sharding.make_mesh


def interleaved_mesh(shape=(-1, 1), devices=None):
    if devices is None:
        by_process = {}
        for d in jax.devices():
            by_process.setdefault(d.process_index, []).append(d)
        devices = [d for group in zip(*by_process.values()) for d in group]
    return _make_mesh(shape, devices)


if __name__ == "__main__":
    sharding.make_mesh = interleaved_mesh
    sys.argv[0] = "python -m matpac_jax.train"
    app.run(trainer.main, flags_parser=trainer.parse_flags)
