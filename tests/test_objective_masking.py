"""Tests of matpac_jax/objective/masking.py against numpy."""

import jax
import numpy as np
import pytest

from matpac_jax.objective import masking


def test_counts_of_the_paper_grid():
    # 190 * (1 - 0.7) is 57.00000000000001 in float64: the reference's int() gives 57.
    assert masking.num_visible(190, 0.7) == 57
    mask = masking.random_masking(jax.random.key(0), 3, 190, 0.7)
    assert mask.visible_idx.shape == (3, 57) and mask.masked_idx.shape == (3, 133)
    assert mask.visible_idx.dtype == np.int32 and mask.masked_idx.dtype == np.int32


@pytest.mark.parametrize(
    "num_patches,ratio,expected", [(190, 0.7, 57), (16, 0.75, 4), (10, 0.5, 5)]
)
def test_num_visible_matches_the_reference_formula(num_patches, ratio, expected):
    assert masking.num_visible(num_patches, ratio) == expected == int(num_patches * (1 - ratio))


def test_disjoint_and_complete():
    mask = masking.random_masking(jax.random.key(1), 6, 190)
    both = np.concatenate([np.asarray(mask.visible_idx), np.asarray(mask.masked_idx)], axis=1)
    np.testing.assert_array_equal(np.sort(both, axis=1), np.tile(np.arange(190), (6, 1)))


def test_is_the_argsort_of_uniform_noise_in_shuffled_order():
    key = jax.random.key(2)
    mask = masking.random_masking(key, 4, 40, 0.7)
    noise = np.asarray(jax.random.uniform(key, (4, 40)), np.float64)
    order = np.argsort(noise, axis=1, kind="stable")
    np.testing.assert_array_equal(mask.visible_idx, order[:, :12])
    np.testing.assert_array_equal(mask.masked_idx, order[:, 12:])
    # Shuffled, not sorted: the teacher and the predictor both use this order.
    assert not all(np.all(np.diff(row) > 0) for row in np.asarray(mask.masked_idx))


def test_different_per_example_reproducible_per_key_different_across_keys():
    a = masking.random_masking(jax.random.key(3), 8, 190)
    b = masking.random_masking(jax.random.key(3), 8, 190)
    c = masking.random_masking(jax.random.key(4), 8, 190)
    np.testing.assert_array_equal(a.visible_idx, b.visible_idx)
    np.testing.assert_array_equal(a.masked_idx, b.masked_idx)
    assert not np.array_equal(a.masked_idx, c.masked_idx)
    visible_sets = {tuple(sorted(row)) for row in np.asarray(a.visible_idx)}
    assert len(visible_sets) == 8


def test_every_patch_is_visible_about_as_often():
    mask = masking.random_masking(jax.random.key(5), 4000, 10, 0.7)  # 3 visible of 10
    counts = np.bincount(np.asarray(mask.visible_idx).ravel(), minlength=10) / 4000
    # Binomial std of a share 0.3 over 4000 draws is 0.0072: 5 sigma.
    np.testing.assert_allclose(counts, 0.3, atol=0.036)


def test_jit_with_a_traced_key():
    fn = jax.jit(masking.random_masking, static_argnums=(1, 2, 3))
    key = jax.random.key(6)
    np.testing.assert_array_equal(
        fn(key, 2, 20, 0.7).masked_idx, masking.random_masking(key, 2, 20, 0.7).masked_idx
    )


@pytest.mark.parametrize("ratio", [1.0, -0.1, 0.99, 0.0])
def test_bad_ratio_is_a_clear_error(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        masking.random_masking(jax.random.key(0), 1, 10, ratio)


def test_take_tokens_and_restore_order():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 20, 4)).astype(np.float32)
    mask = masking.random_masking(jax.random.key(7), 3, 20, 0.7)
    vis, msk = np.asarray(mask.visible_idx), np.asarray(mask.masked_idx)
    visible = masking.take_tokens(tokens, mask.visible_idx)
    masked = masking.take_tokens(tokens, mask.masked_idx)
    for b in range(3):
        np.testing.assert_array_equal(visible[b], tokens[b, vis[b]])
        np.testing.assert_array_equal(masked[b], tokens[b, msk[b]])
    shuffled = np.concatenate([np.asarray(visible), np.asarray(masked)], axis=1)
    grid = masking.take_tokens(shuffled, masking.restore_order(mask))
    np.testing.assert_array_equal(grid, tokens)
    np.testing.assert_array_equal(masking.take_tokens(grid, mask.masked_idx), masked)
