r"""MATPAC pretraining (ICASSP 2025): one prediction head, plain prediction loss, no MCL.

  python -m matpac_jax.train --config=configs/matpac.py:variant=B \
      --config.data.dir=/data/audioset_mels --workdir=/ckpt/matpac_b
  python -m matpac_jax.train --config=configs/matpac.py:runlocal --workdir=runs/local_matpac

Arguments: `variant` (Ti, S, B; default B), `runlocal` (tiny model, a few minutes on a CPU),
`small` (the XS model, ~30 minutes on 2 CPU cores; docs/small_scale.md).
"""

from matpac_jax import config_lib


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="B", runlocal=False, small=False)
    return config_lib.pretraining_config(
        variant=arg.variant, runlocal=arg.runlocal, small=arg.small, num_mcl_heads=1, mcl=False
    )
