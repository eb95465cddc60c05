r"""MATPAC++ pretraining (masked latent prediction + MCL with K = 5 heads + classification).

The paper's run: ViT-B, AudioSet clips >= 6 s, global batch 2048, 300 epochs (294,816 steps),
AdamW with peak lr 3e-4, 20 warm-up epochs, EMA teachers (docs/method.md, section 5):

  python -m matpac_jax.train --config=configs/matpac_pp.py:variant=B \
      --config.data.dir=/data/audioset_mels --workdir=/ckpt/matpac_pp_b

A few minutes on a laptop CPU, on the built-in demo corpus (made on first use):

  python -m matpac_jax.train --config=configs/matpac_pp.py:runlocal --workdir=runs/local

Arguments: `variant` (Ti, S, B; default B), `runlocal` (tiny model, a few minutes on a CPU),
`small` (the XS model, ~30 minutes on 2 CPU cores; docs/small_scale.md).
"""

from matpac_jax import config_lib


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, variant="B", runlocal=False, small=False)
    return config_lib.pretraining_config(
        variant=arg.variant, runlocal=arg.runlocal, small=arg.small, num_mcl_heads=5, mcl=True
    )
