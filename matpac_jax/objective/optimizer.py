"""The optimiser: global-norm clipping, then AdamW on the student parameters only.

The teachers are a separate pytree that never reaches this optimiser (EMA only).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
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


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """`optax.clip_by_global_norm` (same empty state) that takes the norm from its caller.

    `tx.update(grads, state, params, grad_norm=NORM)` scales by min(1, max_norm / NORM) with
    the norm the train step already computed for its non-finite guard; without `grad_norm` it
    computes it. A second norm is a second pass over every gradient (~60 ms of the 2-core ViT-B
    step, docs/PERFORMANCE.md, issue 24); a multiply, unlike optax's select of a division, lets
    XLA fold the scaling into the moment updates.
    """

    def update(updates, state, params=None, *, grad_norm=None, **extra_args):
        del params, extra_args
        norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
        scale = jnp.minimum(1.0, max_norm / norm)  # 1 at norm 0 (max_norm / 0 = inf)
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def make_optimizer(optim_config, lr_schedule: Callable) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(lr_schedule) with the config's betas, eps and decay.

    Its `update` takes `grad_norm=` (the global norm of the gradients, if the caller has it).
    """
    c = optim_config
    return optax.chain(
        clip_by_global_norm(c.grad_clip),
        optax.adamw(
            lr_schedule,
            b1=c.b1,
            b2=c.b2,
            eps=c.eps,
            weight_decay=c.weight_decay,
            mask=lambda p: decay_mask(p, c.decay_all),
        ),
    )
