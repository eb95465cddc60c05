"""Tests of matpac_jax/objective/ema.py against float64 numpy.

Tolerance: one EMA step in float32 is within a couple of float32 roundings of the float64 value,
rtol 1e-6 with atol 1e-7 for values of order 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matpac_jax.objective import ema


def random_tree(rng):
    return {
        "encoder": {
            "block_0": {
                "kernel": rng.normal(size=(3, 4)).astype(np.float32),
                "bias": rng.normal(size=(4,)).astype(np.float32),
            }
        },
        "norm": {"scale": rng.uniform(0.5, 1.5, size=(4,)).astype(np.float32)},
    }


def np_ema(teacher, student, m):
    return jax.tree.map(lambda t, s: m * np.float64(t) + (1 - m) * np.float64(s), teacher, student)


@pytest.mark.parametrize("momentum", [0.73, 0.99995])
def test_matches_float64(momentum):
    rng = np.random.default_rng(0)
    teacher, student = random_tree(rng), random_tree(rng)
    m32 = np.float32(momentum)  # the momentum arrives as float32
    new = jax.jit(ema.ema_update)(teacher, student, jnp.float32(momentum), jnp.int32(5))
    ref = np_ema(teacher, student, np.float64(m32))
    assert jax.tree.structure(new) == jax.tree.structure(teacher)
    for got, want, t in zip(jax.tree.leaves(new), jax.tree.leaves(ref), jax.tree.leaves(teacher)):
        assert got.dtype == np.float32 and got.shape == t.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_no_update_at_step_zero_under_jit():
    rng = np.random.default_rng(1)
    teacher, student = random_tree(rng), random_tree(rng)
    fn = jax.jit(ema.ema_update)
    same = fn(teacher, student, jnp.float32(0.5), jnp.int32(0))
    moved = fn(teacher, student, jnp.float32(0.5), jnp.int32(1))
    for s, t, mv in zip(jax.tree.leaves(same), jax.tree.leaves(teacher), jax.tree.leaves(moved)):
        np.testing.assert_array_equal(s, t)
        assert not np.array_equal(mv, t)


def test_momentum_one_keeps_the_teacher():
    rng = np.random.default_rng(2)
    teacher, student = random_tree(rng), random_tree(rng)
    new = ema.ema_update(teacher, student, 1.0, 10)  # exact: 1 * t + 0 * s
    for got, t in zip(jax.tree.leaves(new), jax.tree.leaves(teacher)):
        np.testing.assert_array_equal(got, t)


def test_bf16_student_updates_a_float32_teacher():
    rng = np.random.default_rng(3)
    teacher, student = random_tree(rng), random_tree(rng)
    student16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), student)
    new = ema.ema_update(teacher, student16, 0.9, 3)
    ref = np_ema(
        teacher,
        jax.tree.map(lambda x: np.asarray(x, np.float32), student16),
        np.float64(np.float32(0.9)),
    )
    for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_mismatched_trees_are_a_clear_error():
    rng = np.random.default_rng(4)
    teacher, student = random_tree(rng), random_tree(rng)
    del student["norm"]
    with pytest.raises(ValueError, match="pytrees differ"):
        ema.ema_update(teacher, student, 0.9, 1)
