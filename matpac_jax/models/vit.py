"""ViT pieces shared by the student, the teacher and the predictor: patch embedding, block, encoder.

Precision: parameters are `param_dtype` (float32); matmuls run in `dtype` (e.g. bfloat16); the
residual stream and the layer norms stay float32, as they do in the reference under fp16
autocast; the attention logits and softmax are float32 too.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = Any

xavier_uniform = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()


def patchify(x: jax.Array, patch: int) -> jax.Array:
    """(B, F, T) -> (B, F/p * T/p, p * p), tokens frequency-major, pixels (freq, time) row-major.

    Equal to a stride-p conv over (B, 1, F, T) flattened as the reference does it.
    """
    b, f, t = x.shape
    if f % patch or t % patch:
        raise ValueError(f"input (F={f}, T={t}) is not a multiple of the {patch}x{patch} patch")
    x = x.reshape(b, f // patch, patch, t // patch, patch)
    x = x.transpose(0, 1, 3, 2, 4)  # (B, Fg, Tg, p_f, p_t)
    return x.reshape(b, (f // patch) * (t // patch), patch * patch)


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x (B, N, D), idx (B, M) int -> (B, M, D), row m of example b is x[b, idx[b, m]]."""
    return jnp.take_along_axis(x, idx[..., None].astype(jnp.int32), axis=1)


def xavier_linear(
    d_in: int,
    d_out: int,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
    kernel_init=xavier_uniform,
    bias_init=zeros,
) -> nnx.Linear:
    """nnx.Linear with the reference init: xavier-uniform kernel, zero bias."""
    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def layer_norm(width: int, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm eps 1e-6, scale 1, bias 0, two-pass variance.

    No compute dtype: it normalises the float32 residual stream in float32 (rounding x to bf16
    first would cost precision when |mean| >> std); the next Linear casts its output.
    """
    return nnx.LayerNorm(
        width, epsilon=1e-6, use_fast_variance=False, param_dtype=param_dtype, rngs=rngs
    )


class PatchEmbed(nnx.Module):
    """16x16 non-overlapping patches -> width, as a linear layer on flattened patches."""

    def __init__(
        self,
        width: int,
        patch: int = 16,
        *,
        dtype: Optional[Dtype] = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.patch = patch
        # Xavier on the (256, D) kernel == xavier on the conv weight viewed as (D, 256).
        # quirk: the reference's xavier pass skips the conv bias, which keeps PyTorch's Conv2d
        # default U(+-1/sqrt(fan_in)) = U(+-1/16).
        bound = 1.0 / patch
        self.proj = xavier_linear(
            patch * patch,
            width,
            dtype,
            param_dtype,
            rngs,
            bias_init=lambda key, shape, dtype: jax.random.uniform(
                key, shape, dtype, -bound, bound
            ),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, F, T) -> (B, N, D)."""
        return self.proj(patchify(x, self.patch))


class Attention(nnx.Module):
    """Multi-head self-attention: one qkv projection with bias (timm layout), output projection."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        dtype: Optional[Dtype] = None,
        param_dtype: Dtype = jnp.float32,
        attention_impl: Optional[str] = None,
        rngs: nnx.Rngs,
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.qkv = xavier_linear(width, 3 * width, dtype, param_dtype, rngs)
        self.proj = xavier_linear(width, width, dtype, param_dtype, rngs)

    def __call__(self, x: jax.Array, batch: int) -> jax.Array:
        """(B * N, D) tokens of `batch` sequences -> (B * N, D)."""
        bn, d = x.shape
        qkv = self.qkv(x).reshape(batch, bn // batch, 3, self.num_heads, d // self.num_heads)
        if self.attention_impl is None:
            out = _attention(qkv)
        else:
            out = jax.nn.dot_product_attention(
                qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation=self.attention_impl
            )
        return self.proj(out.reshape(bn, d))


def _attention(qkv: jax.Array) -> jax.Array:
    """softmax((q / sqrt(dh)) k^T) v of (B, N, 3, H, dh) -> (B, N, H, dh), on head-major
    operands: one transpose in, one out. Logits and softmax in float32, probabilities cast back
    to v's dtype, as in `jax.nn.dot_product_attention`'s XLA path; q is scaled before the
    product, as in the reference (timm's `q = q * scale`), rather than the (B, H, N, N) logits
    after it. On XLA's CPU backend it is ~30% faster than that function forward and 8-20% faster
    forward and backward (docs/PERFORMANCE.md, issue 24).
    """
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (B, H, N, dh)
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3)


class Mlp(nnx.Module):
    """Linear -> exact (erf) GELU -> Linear."""

    def __init__(
        self,
        width: int,
        hidden: int,
        *,
        dtype: Optional[Dtype] = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.fc1 = xavier_linear(width, hidden, dtype, param_dtype, rngs)
        self.fc2 = xavier_linear(hidden, width, dtype, param_dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + mlp(LN(x)). LN eps 1e-6, no dropout."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        dtype: Optional[Dtype] = None,
        param_dtype: Dtype = jnp.float32,
        attention_impl: Optional[str] = None,
        rngs: nnx.Rngs,
    ):
        self.norm1 = layer_norm(width, param_dtype, rngs)
        self.attn = Attention(
            width,
            num_heads,
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl=attention_impl,
            rngs=rngs,
        )
        self.norm2 = layer_norm(width, param_dtype, rngs)
        self.mlp = Mlp(
            width, int(width * mlp_ratio), dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, N, D) -> (B, N, D), in x's dtype (the residual stream).

        The tokens go through the norms, projections and MLP as one (B * N, D) matrix, back to
        (B, N, ...) for attention alone: on (B, N, D) arrays XLA's CPU backend copied every
        weight gradient's input into a transposed layout (docs/PERFORMANCE.md, issue 24).
        """
        b, n, d = x.shape
        x = x.reshape(b * n, d)
        x = x + self.attn(self.norm1(x), b).astype(x.dtype)
        x = x + self.mlp(self.norm2(x)).astype(x.dtype)
        return x.reshape(b, n, d)


def _run_block(block: Block, x: jax.Array) -> jax.Array:
    return block(x)


class Stack(nnx.Module):
    """`depth` blocks followed by a final layer norm (float32 output)."""

    def __init__(
        self,
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
        self.remat = remat
        self.blocks = nnx.List(
            [
                Block(
                    width,
                    num_heads,
                    mlp_ratio,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    attention_impl=attention_impl,
                    rngs=rngs,
                )
                for _ in range(depth)
            ]
        )
        self.norm = layer_norm(width, param_dtype, rngs)

    def __call__(self, x: jax.Array, *, return_layers: bool = False):
        """x (B, L, D) -> (LN(blocks(x)) float32, aux); aux["layers"]: every block's output if asked.

        The last entry of aux["layers"] is taken after the final layer norm (the reference's rule).
        """
        run = nnx.remat(_run_block) if self.remat else _run_block
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        layers = []
        for block in self.blocks:
            x = run(block, x)
            layers.append(x)
        x = self.norm(x)
        aux = {}
        if return_layers:
            aux["layers"] = tuple(layers[:-1]) + (x,)
        return x, aux


class Encoder(Stack):
    """ViT encoder body (student or teacher): [cls] + selected tokens -> blocks -> LN.

    The patch embedding, positional table and cls token live outside (the teacher uses the
    student's), so one class serves both sides.
    """

    def __call__(
        self,
        tokens: jax.Array,
        idx: Optional[jax.Array] = None,
        *,
        cls: jax.Array,
        return_layers: bool = False,
    ):
        """Encodes the tokens selected by `idx`, in that order, behind the cls token.

        Args:
          tokens: (B, N, D) patch embeddings with positions already added.
          idx: (B, M) token indices to keep (visible for the student, masked for the teacher);
            None keeps all N in grid order (inference).
          cls: (1, 1, D) cls token; its position is all zeros, so nothing is added to it.
          return_layers: also return every block's output in aux["layers"].

        Returns:
          ((B, 1 + M, D) float32 with the cls token first, aux).
        """
        x = tokens if idx is None else gather_tokens(tokens, idx)
        cls = jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        return super().__call__(jnp.concatenate([cls, x], axis=1), return_layers=return_layers)
