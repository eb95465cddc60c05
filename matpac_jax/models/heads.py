"""Output heads: the K MCL prediction heads and the DINO-style classification head."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models.vit import xavier_linear

Dtype = Any


class MclHeads(nnx.Module):
    """K linear heads Dp -> D held as one (K, Dp, D) kernel; each head xavier-init like a Linear."""

    def __init__(
        self,
        in_width: int,
        out_width: int,
        num_heads: int,
        *,
        dtype: Optional[Dtype] = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        init = nnx.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
        self.dtype = dtype
        self.kernel = nnx.Param(init(rngs.params(), (num_heads, in_width, out_width), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_heads, out_width), param_dtype))

    def __call__(self, y: jax.Array) -> jax.Array:
        """(B, Nm, Dp) -> (B, Nm, K, D) float32."""
        dtype = self.dtype or y.dtype
        out = jnp.einsum(
            "bnp,kpd->bnkd",
            y.astype(dtype),
            self.kernel[...].astype(dtype),
            preferred_element_type=jnp.float32,
        )
        return out + self.bias[...]


class WeightNormLinear(nnx.Module):
    """Linear without bias, `w = g * v / ||v||` with the norm per output unit; float32 compute.

    quirk: the reference trains g (DINO freezes it at 1); `trainable_gain=False` drops g.
    v starts like torch's default Linear init, U(+-1/sqrt(in)): the reference's xavier pass cannot
    reach a weight-normalised layer, whose `weight` is recomputed from (g, v) on every call.
    """

    def __init__(
        self,
        in_width: int,
        out_width: int,
        *,
        trainable_gain: bool = True,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.v = nnx.Param(init(rngs.params(), (in_width, out_width), param_dtype))
        self.g = nnx.Param(jnp.ones((out_width,), param_dtype)) if trainable_gain else None

    def weight(self) -> jax.Array:
        """The effective (in, out) kernel; column j has norm g_j (1 when g is frozen)."""
        v = self.v[...].astype(jnp.float32)
        w = v / jnp.linalg.norm(v, axis=0, keepdims=True)
        return w if self.g is None else w * self.g[...].astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(jnp.float32), self.weight())


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


class ClsHead(nnx.Module):
    """DINO head: Linear-GELU-Linear-GELU-Linear to the bottleneck, L2-normalise, weight-norm linear.

    Args:
      in_width: D.
      hidden: hidden width (2048).
      bottleneck: bottleneck width (256).
      out_width: number of classes (2048).
      freeze_wn_gain: DINO's frozen g = 1 instead of the reference's trainable g.
      mlp_init_std: None for xavier-uniform MLP weights (the student head in the reference); a
        float for normal(std) ones (what the reference's teacher head starts from, see build()).
        The reference's trunc_normal_(std=0.02) truncates at +-2 absolute, i.e. +-100 std: the
        same distribution as normal(0.02) for any sample we could draw.
    """

    def __init__(
        self,
        in_width: int,
        hidden: int = 2048,
        bottleneck: int = 256,
        out_width: int = 2048,
        *,
        freeze_wn_gain: bool = False,
        mlp_init_std: Optional[float] = None,
        dtype: Optional[Dtype] = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {} if mlp_init_std is None else {"kernel_init": nnx.initializers.normal(mlp_init_std)}
        self.mlp = nnx.List(
            [
                xavier_linear(in_width, hidden, dtype, param_dtype, rngs, **kw),
                xavier_linear(hidden, hidden, dtype, param_dtype, rngs, **kw),
                xavier_linear(hidden, bottleneck, dtype, param_dtype, rngs, **kw),
            ]
        )
        self.last_layer = WeightNormLinear(
            bottleneck,
            out_width,
            trainable_gain=not freeze_wn_gain,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, z: jax.Array) -> jax.Array:
        """(..., D) -> (..., out_width) float32 logits."""
        x = z
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                x = jax.nn.gelu(x, approximate=False)
        # Normalise and score in float32: the teacher divides these logits by tau = 0.04.
        return self.last_layer(l2_normalize(x.astype(jnp.float32)))
