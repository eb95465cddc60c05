"""Tests for tests/numerics.py, the suite's rule for comparing two float32 programs."""

import numpy as np
import pytest
from numerics import EPS32, assert_close, assert_trees_close, encoder_depth, is_close, rtol


def _embeddings(seed=0):
    """Layer-normed features of a random two-block encoder's scale: most O(1), some near 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(33, 160)) * rng.uniform(0.01, 2.7, size=160)
    return x.astype(np.float32)


def test_a_rounding_difference_on_a_small_element_passes_where_a_per_element_tolerance_fails():
    # The AVX2 failure that started the rule: 1.75e-6 on an element of 0.0136, in an array that
    # reaches 2.7, after two compiled programs.
    want = _embeddings()
    got = want.copy()
    want[1, 3], got[1, 3] = 0.013566783629357815, 0.013565046712756157
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert_close(got, want, depth=encoder_depth(2))
    # Rounding of a few units in the last place everywhere, against the array's scale.
    noise = np.random.default_rng(1).uniform(-4, 4, size=want.shape) * EPS32 * np.abs(want).max()
    assert_close(want + noise, want, depth=encoder_depth(2))


@pytest.mark.parametrize(
    "bug",
    [
        lambda x: x * 1.01,  # a normalisation off by 1%
        lambda x: np.roll(x, 1, axis=1),  # a shifted chunk
        lambda x: np.where(np.arange(x.shape[1]) == 7, 0.0, x),  # one masked column
        lambda x: x + 1e-3 * np.abs(x).max(),  # a small offset on everything
    ],
)
def test_what_a_bug_does_fails(bug):
    want = _embeddings(2)
    got = bug(want.astype(np.float64)).astype(np.float32)
    with pytest.raises(AssertionError, match="max \\|actual - desired\\|"):
        assert_close(got, want, depth=encoder_depth(2))
    assert not is_close(got, want, depth=encoder_depth(2))


def test_rtol_grows_with_depth_from_float32s_roundoff():
    assert rtol(1) == 16 * 2.0**-23
    assert rtol(10) == pytest.approx(10 * rtol(1))
    assert encoder_depth(2) == 19
    with pytest.raises(ValueError):
        rtol(0)


def test_non_finite_values_and_shapes_must_match():
    a = np.array([1.0, np.nan, np.inf])
    assert_close(a, a.copy(), depth=1)
    with pytest.raises(AssertionError):
        assert_close(np.array([1.0, np.nan, 1.0]), np.array([1.0, 2.0, 1.0]), depth=1)
    with pytest.raises(AssertionError):
        assert_close(np.array([1.0, -np.inf]), np.array([1.0, np.inf]), depth=1)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close(np.zeros(3), np.zeros((3, 1)), depth=1)
    with pytest.raises(AssertionError):  # an all-zero array has no scale: exact
        assert_close(np.array([0.0, 1e-30]), np.zeros(2), depth=1)


def test_trees_leaf_by_leaf_or_against_the_whole_tree():
    want = {"w": np.ones((4, 4), np.float32), "b": np.array([1e-3, 0.0], np.float32), "n": 3}
    # An update of rounding noise on a leaf with no scale of its own (Adam on a zero gradient).
    got = {"w": want["w"], "b": want["b"] + np.float32(4e-6), "n": 3}
    with pytest.raises(AssertionError, match="'b'"):
        assert_trees_close(got, want, depth=10)
    assert_trees_close(got, want, depth=10, scale="tree")
    with pytest.raises(AssertionError, match="'n'"):  # integers: equal
        assert_trees_close({**got, "n": 4}, want, depth=10, scale="tree")
