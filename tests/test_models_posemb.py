"""Tests for matpac_jax/models/posemb.py against an independent float64 computation."""

import numpy as np
import pytest

from matpac_jax.models.posemb import cut_time, posemb_sincos_2d


def _reference_table(grid_f, grid_t, dim):
    """Element by element from docs/method.md, section 2.

    Channel c < D/2 codes time, the rest frequency; in each half the first D/4 channels are
    sin(p * w_i), the last D/4 cos(p * w_i), with w_i = 10000**(-i / (D/4)).
    """
    out = np.zeros((1 + grid_f * grid_t, dim), np.float64)
    quarter = dim // 4
    for f in range(grid_f):
        for t in range(grid_t):
            for c in range(dim):
                pos = t if c < dim // 2 else f
                within = c % (dim // 2)
                i = within % quarter
                angle = pos * 10000.0 ** (-i / quarter)
                out[1 + f * grid_t + t, c] = np.sin(angle) if within < quarter else np.cos(angle)
    return out


@pytest.mark.parametrize("grid_f,grid_t,dim", [(5, 38, 64), (2, 4, 32), (3, 7, 8)])
def test_posemb_matches_float64_reference(grid_f, grid_t, dim):
    table = posemb_sincos_2d(grid_f, grid_t, dim)
    assert table.shape == (1 + grid_f * grid_t, dim) and table.dtype == np.float32
    # float32 rounding of values in [-1, 1]: at most 2**-25 ~ 3e-8.
    np.testing.assert_allclose(table, _reference_table(grid_f, grid_t, dim), rtol=0, atol=6e-8)
    np.testing.assert_array_equal(table[0], 0.0)  # cls slot
    np.testing.assert_array_equal(posemb_sincos_2d(grid_f, grid_t, dim, with_cls=False), table[1:])


def test_first_half_codes_time_second_half_frequency():
    table = posemb_sincos_2d(5, 38, 64)[1:].reshape(5, 38, 64)
    # Time half constant along frequency, frequency half constant along time.
    np.testing.assert_array_equal(table[:, :, :32], np.broadcast_to(table[:1, :, :32], (5, 38, 32)))
    np.testing.assert_array_equal(table[:, :, 32:], np.broadcast_to(table[:, :1, 32:], (5, 38, 32)))


@pytest.mark.parametrize("t_keep", [1, 13, 38])
def test_cut_along_time(t_keep):
    full = posemb_sincos_2d(5, 38, 64)
    cut = cut_time(full, 5, t_keep)
    assert cut.shape == (1 + 5 * t_keep, 64)
    np.testing.assert_allclose(cut, _reference_table(5, t_keep, 64), rtol=0, atol=6e-8)
    # Positions only depend on the integer index, so the direct table is the same, bit for bit.
    np.testing.assert_array_equal(cut, posemb_sincos_2d(5, t_keep, 64))
    no_cls = cut_time(full[1:], 5, t_keep, with_cls=False)
    np.testing.assert_array_equal(no_cls, cut[1:])


def test_errors_and_constness():
    with pytest.raises(ValueError, match="multiple of 4"):
        posemb_sincos_2d(2, 4, 30)
    with pytest.raises(ValueError, match="cannot cut"):
        cut_time(posemb_sincos_2d(2, 4, 8), 2, 5)
    table = posemb_sincos_2d(2, 4, 8)
    assert not table.flags.writeable  # cached and shared: nobody may modify it in place
