"""Per-example random masking of the patch grid (docs/method.md, section 3).

Each example draws uniform noise over its patches and argsorts it; the first
`int(num_patches * (1 - mask_ratio))` patches of that shuffled order are visible to the student,
the rest are masked and seen by the teacher (57 visible and 133 masked of 190 at ratio 0.7).
Both index sets stay in shuffled order: the predictor must emit its predictions in exactly the
order of `masked_idx`, which is the order the teacher sees its tokens in.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Mask(NamedTuple):
    """Indices (into the frequency-major patch grid) of the visible and masked patches."""

    visible_idx: jax.Array  # (B, Nv) int32, shuffled order
    masked_idx: jax.Array  # (B, Nm) int32, shuffled order


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Number of visible patches, with the reference's formula `int(num_patches * (1 - ratio))`.

    Raises:
      ValueError: if the ratio leaves no visible or no masked patch.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    # The float product is deliberate: 190 * (1 - 0.7) = 57.00000000000001 -> 57, as in the reference.
    n_visible = int(num_patches * (1 - mask_ratio))
    if not 0 < n_visible < num_patches:
        raise ValueError(
            f"mask_ratio={mask_ratio} on {num_patches} patches leaves {n_visible} visible; "
            "need at least one visible and one masked patch."
        )
    return n_visible


def random_masking(
    key: jax.Array, batch_size: int, num_patches: int, mask_ratio: float = 0.7
) -> Mask:
    """Draws an independent random mask per example.

    Args:
      key: PRNG key; the noise is `jax.random.uniform(key, (batch_size, num_patches))`.
      batch_size: B (static).
      num_patches: patches per example, 190 for an 80 x 608 input (static).
      mask_ratio: share of masked patches (static).

    Returns:
      Mask with visible_idx (B, Nv) and masked_idx (B, Nm), both int32 in shuffled order.
    """
    n_visible = num_visible(num_patches, mask_ratio)
    noise = jax.random.uniform(key, (batch_size, num_patches))  # (B, N)
    order = jnp.argsort(noise, axis=-1).astype(jnp.int32)  # (B, N): ascending noise is kept first
    return Mask(visible_idx=order[:, :n_visible], masked_idx=order[:, n_visible:])


def take_tokens(tokens: jax.Array, idx: jax.Array) -> jax.Array:
    """Gathers tokens (B, N, D) at per-example indices idx (B, n) -> (B, n, D)."""
    return jnp.take_along_axis(tokens, idx[..., None], axis=1)


def restore_order(mask: Mask) -> jax.Array:
    """Indices that put tokens laid out as [visible..., masked...] back into grid order.

    `take_tokens(jnp.concatenate([visible, masked], 1), restore_order(mask))` is in grid order;
    `take_tokens(grid_tokens, mask.masked_idx)` goes back to the teacher's order.

    Returns:
      (B, N) int32.
    """
    order = jnp.concatenate([mask.visible_idx, mask.masked_idx], axis=1)  # (B, N) shuffled -> grid
    return jnp.argsort(order, axis=1).astype(jnp.int32)
