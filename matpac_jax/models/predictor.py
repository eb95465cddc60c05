"""The predictor g: from the student's visible tokens to one vector per masked patch."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models.posemb import posemb_sincos_2d
from matpac_jax.models.vit import Stack, gather_tokens, xavier_linear

Dtype = Any


class Predictor(nnx.Module):
    """Linear D -> Dp; mask tokens at the masked grid positions; + sin-cos pos; blocks; LN.

    Output rows follow `masked_idx`, the order the teacher saw, so prediction j and target j
    always refer to the same patch.
    """

    def __init__(
        self,
        in_width: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        dtype: Optional[Dtype] = None,
        param_dtype: Dtype = jnp.float32,
        attention_impl: Optional[str] = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.embed = xavier_linear(in_width, width, dtype, param_dtype, rngs)
        self.mask_token = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (1, 1, width), param_dtype)
        )
        self.body = Stack(
            width,
            depth,
            num_heads,
            mlp_ratio,
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl=attention_impl,
            remat=remat,
            rngs=rngs,
        )

    def __call__(
        self, z_v: jax.Array, visible_idx: jax.Array, masked_idx: jax.Array, grid: tuple[int, int]
    ):
        """Predicts the masked patches.

        Args:
          z_v: (B, 1 + Nv, D) student output, cls first, rows in `visible_idx` order.
          visible_idx: (B, Nv) grid index of each visible row.
          masked_idx: (B, Nm) grid indices to predict, in the teacher's order.
          grid: static (grid_f, grid_t); N = grid_f * grid_t.

        Returns:
          ((B, Nm, Dp) float32, aux with "grid_tokens": (B, 1 + N, Dp) after the final LN).
        """
        grid_f, grid_t = grid
        h = self.embed(z_v).astype(jnp.float32)  # (B, 1 + Nv, Dp)
        b, _, width = h.shape
        full = jnp.broadcast_to(self.mask_token[...].astype(h.dtype), (b, grid_f * grid_t, width))
        # Visible rows go back to their grid slots; every other slot keeps the mask token. One
        # scatter per example (vmap): the compiler splits it by examples like the batch; an
        # explicit example index would make it gather the whole batch's rows onto every device.
        full = jax.vmap(lambda f, i, u: f.at[i].set(u, unique_indices=True))(
            full, visible_idx, h[:, 1:]
        )
        x = jnp.concatenate([h[:, :1], full], axis=1) + posemb_sincos_2d(grid_f, grid_t, width)
        x, _ = self.body(x)
        return gather_tokens(x[:, 1:], masked_idx), {"grid_tokens": x}
