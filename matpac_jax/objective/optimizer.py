"""The optimiser: global-norm clipping, then AdamW on the student parameters only.

The teachers are a separate pytree that never reaches this optimiser (EMA only).
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

# Leaves exempt from weight decay in the textbook form: tokens, biases, norm scales, gains.
_NO_DECAY_NAMES = frozenset({"cls_token", "mask_token", "bias", "scale", "g"})


def decay_mask(params, decay_all: bool):
    """True where weight decay applies: everywhere (quirk of the reference) or weights only."""

    def rule(path, leaf):
        if decay_all:
            return True
        name = getattr(path[-1], "key", str(path[-1]))
        return leaf.ndim >= 2 and name not in _NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(rule, params)


def make_optimizer(optim_config, lr_schedule: Callable) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(lr_schedule) with the config's betas, eps and decay."""
    c = optim_config
    return optax.chain(
        optax.clip_by_global_norm(c.grad_clip),
        optax.adamw(
            lr_schedule,
            b1=c.b1,
            b2=c.b2,
            eps=c.eps,
            weight_decay=c.weight_decay,
            mask=lambda p: decay_mask(p, c.decay_all),
        ),
    )
