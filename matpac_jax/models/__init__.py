"""MATPAC++ model modules (Flax NNX)."""

from matpac_jax.models.heads import ClsHead, MclHeads, WeightNormLinear, l2_normalize
from matpac_jax.models.matpac import (
    VARIANTS,
    MatpacModel,
    ModelConfig,
    Teacher,
    build,
    decode_variant,
    forward,
    model_config,
)
from matpac_jax.models.posemb import cut_time, posemb_sincos_2d, sincos_1d
from matpac_jax.models.predictor import Predictor
from matpac_jax.models.vit import (
    Attention,
    Block,
    Encoder,
    Mlp,
    PatchEmbed,
    Stack,
    gather_tokens,
    patchify,
)

__all__ = [
    "VARIANTS",
    "Attention",
    "Block",
    "ClsHead",
    "Encoder",
    "MatpacModel",
    "MclHeads",
    "Mlp",
    "ModelConfig",
    "PatchEmbed",
    "Predictor",
    "Stack",
    "Teacher",
    "WeightNormLinear",
    "build",
    "cut_time",
    "decode_variant",
    "forward",
    "gather_tokens",
    "l2_normalize",
    "model_config",
    "patchify",
    "posemb_sincos_2d",
    "sincos_1d",
]
