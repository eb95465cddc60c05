"""One rule for comparing two float32 computations of the same values.

Two compiled programs that compute the same function round differently: another batch size,
another chunking or bucketing, a sharding over more devices, jit against eager, cached inputs
against recomputed ones. XLA tiles, fuses and orders each sum by the shapes and by the CPU's
instruction set (an AVX2 machine and an AVX-512 one run other kernels), so the last bits differ
from machine to machine. The error of an output element is the rounding of the sums that made
it, and its size is that of the values accumulated, not of the element: a small element beside
large ones can be off by far more than its own relative precision (1.75e-6 on 0.0136, in an
array that reaches 2.7). A per-element `atol`/`rtol` therefore passes on one CPU and fails on
the next. The rule, for every comparison of two programs in this suite:

    max |actual - desired|  <=  rtol(depth) * max |desired|

measured over the whole array, with

    rtol(depth) = SAFETY * EPS32 * depth

EPS32 = 2**-23 is float32's unit roundoff (relative to the value), `depth` the number of
accumulating stages on the longest path from the inputs to the output (a matmul, a softmax, a
layer norm, a mean over time; see `encoder_depth`), each of which can add a few units of
roundoff of its output's scale, and SAFETY = 16 room for the error of a stage to be amplified
by the next ones. For the two-block test encoders that is 4e-5 of the array's scale: ~10-100x
the differences measured between programs, and ~1,000x below what a bug does (a wrong mask,
padding, normalisation or a shifted chunk moves outputs by 1e-2 of their scale and more).

Exact equality (`np.testing.assert_array_equal`) stays where it is the contract: the same
compiled program on the same inputs, a file or a cache read back.
"""

from __future__ import annotations

import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
SAFETY = 16


def rtol(depth: int) -> float:
    """The tolerance, relative to the array's scale, for `depth` accumulating stages."""
    if depth < 1:
        raise ValueError(f"depth {depth}: at least one stage")
    return SAFETY * EPS32 * depth


def encoder_depth(blocks: int) -> int:
    """Accumulating stages of a pre-norm transformer of `blocks` blocks, from patches to pooled
    features: the patch projection, per block 8 (layer norm, qkv, logits, softmax, the weighted
    sum, the projection, layer norm, the MLP's two products), the final norm and a mean."""
    return 8 * blocks + 3


def _error_and_scale(actual, desired, scale: float | None):
    a = np.asarray(actual, np.float64)
    d = np.asarray(desired, np.float64)
    if a.shape != d.shape:
        raise AssertionError(f"shapes differ: {a.shape} != {d.shape}")
    both_finite = np.isfinite(a) & np.isfinite(d)
    if scale is None:
        scale = float(np.abs(d[both_finite]).max(initial=0.0))
    if not np.array_equal(np.isfinite(a), np.isfinite(d)) or not np.array_equal(
        a[~both_finite], d[~both_finite], equal_nan=True
    ):
        return a, d, np.inf, scale  # a NaN or infinity where the other has none (or another)
    diff = np.abs(np.where(both_finite, a, 0.0) - np.where(both_finite, d, 0.0))
    return a, d, float(diff.max(initial=0.0)), scale


def is_close(actual, desired, *, depth: int, scale: float | None = None) -> bool:
    """Whether `assert_close` would pass: for a test's other half, "a real change is seen"."""
    _, _, error, scale = _error_and_scale(actual, desired, scale)
    return error <= rtol(depth) * scale


def assert_close(
    actual, desired, *, depth: int, scale: float | None = None, err_msg: str = ""
) -> None:
    """`actual` equals `desired` up to float32 rounding of `depth` stages, measured against the
    scale of the whole `desired` array (module docstring), or against `scale` when the array is
    part of a larger computed whole (`assert_trees_close(..., scale="tree")`)."""
    a, d, error, scale = _error_and_scale(actual, desired, scale)
    allowed = rtol(depth) * scale
    if not error <= allowed:
        if not np.isfinite(error):
            np.testing.assert_array_equal(a, d, err_msg=f"non-finite values {err_msg}".rstrip())
        worst = np.unravel_index(int(np.argmax(np.abs(a - d))), a.shape) if a.size else ()
        raise AssertionError(
            f"max |actual - desired| = {error:.3g} > {allowed:.3g} (rtol {rtol(depth):.2g} x "
            f"the array's scale {scale:.3g}); worst at {tuple(int(i) for i in worst)}: "
            f"{a[worst]!r} vs {d[worst]!r} {err_msg}".rstrip()
        )


def assert_trees_close(actual, desired, *, depth: int, scale: str = "leaf") -> None:
    """`assert_close` leaf by leaf, naming the leaf's path; integer leaves must be equal.

    scale="leaf" measures each leaf against its own scale. scale="tree" measures every leaf
    against the largest value of the whole tree: for parameters after an Adam step, where a
    gradient element that is 0 in exact arithmetic (the key bias of attention: softmax ignores
    a constant added to every key) is pure rounding noise, which Adam divides by its own root
    mean square and turns into a move of a fraction of the learning rate. Such a leaf has no
    scale of its own; the parameters as a whole do.
    """
    if scale not in ("leaf", "tree"):
        raise ValueError(f"scale={scale!r}: 'leaf' or 'tree'")
    paths = jax.tree_util.tree_flatten_with_path(desired)[0]
    got = jax.tree_util.tree_leaves(actual)
    if len(got) != len(paths):
        raise AssertionError(f"{len(got)} leaves against {len(paths)}")
    floats = [np.issubdtype(np.asarray(w).dtype, np.inexact) for _, w in paths]
    whole = None
    if scale == "tree":
        whole = max(
            (
                float(np.abs(np.asarray(w, np.float64)).max(initial=0.0))
                for (_, w), f in zip(paths, floats)
                if f
            ),
            default=0.0,
        )
    for (path, want), leaf, is_float in zip(paths, got, floats):
        where = jax.tree_util.keystr(path)
        if is_float:
            assert_close(leaf, want, depth=depth, scale=whole, err_msg=where)
        else:
            np.testing.assert_array_equal(leaf, want, err_msg=where)
