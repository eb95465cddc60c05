# `python -m matpac_jax.train`: the trainer's command line (matpac_jax/train/trainer.py).
# absl's --help shows the main module's docstring and key flags: the trainer's.

from absl import app, flags

from matpac_jax.train import trainer

__doc__ = trainer.__doc__  # pylint: disable=redefined-builtin
flags.adopt_module_key_flags(trainer)

if __name__ == "__main__":  # spawned worker processes re-import this module: only the parent runs
    app.run(trainer.main, flags_parser=trainer.parse_flags)
