"""Fixed 2-D sin-cos positional tables (MAE convention). Constants, never parameters.

The tables are numpy arrays computed from static shapes, so under `jax.jit` they are baked into
the program as constants: the optimiser, the EMA and the checkpoint never see them.
"""

import functools

import numpy as np


def sincos_1d(pos: np.ndarray, dim: int) -> np.ndarray:
    """Sin-cos code of integer positions, float64.

    Args:
      pos: (M,) positions.
      dim: even output width.

    Returns:
      (M, dim): `[sin(p * w_i), cos(p * w_i)]`, `w_i = 1 / 10000**(i / (dim / 2))`, i < dim / 2.
    """
    if dim % 2:
        raise ValueError(f"sin-cos width must be even, got {dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


@functools.lru_cache(maxsize=64)
def posemb_sincos_2d(grid_f: int, grid_t: int, dim: int, with_cls: bool = True) -> np.ndarray:
    """The positional table of a (grid_f, grid_t) patch grid, tokens frequency-major.

    The first dim/2 channels encode the TIME index, the last dim/2 the FREQUENCY index (MAE's
    meshgrid puts the second grid axis first). Values depend only on the integer positions, so the
    table of a shorter input equals the full table cut along time (`cut_time`).

    Args:
      grid_f: patches along frequency (5 for 80 mel bins).
      grid_t: patches along time (38 for 608 frames).
      dim: table width, a multiple of 4.
      with_cls: prepend the cls slot (all zeros).

    Returns:
      Read-only float32 array (with_cls + grid_f * grid_t, dim); row f * grid_t + t (+1 with cls).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos width must be a multiple of 4, got {dim}")
    t_idx, f_idx = np.meshgrid(np.arange(grid_t), np.arange(grid_f))  # each (grid_f, grid_t)
    table = np.concatenate([sincos_1d(t_idx, dim // 2), sincos_1d(f_idx, dim // 2)], axis=1)
    if with_cls:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    table = table.astype(np.float32)
    table.flags.writeable = False  # shared through the cache
    return table


def cut_time(table: np.ndarray, grid_f: int, grid_t: int, with_cls: bool = True) -> np.ndarray:
    """Cuts a full-length table to the first `grid_t` time columns (the reference's short-input rule).

    Args:
      table: (with_cls + grid_f * T_full, dim) table from `posemb_sincos_2d`.
      grid_f: patches along frequency.
      grid_t: time columns to keep (<= T_full).
      with_cls: whether `table` has the cls slot first (it is kept).

    Returns:
      (with_cls + grid_f * grid_t, dim).
    """
    head, body = (table[:1], table[1:]) if with_cls else (table[:0], table)
    dim = table.shape[-1]
    if body.shape[0] % grid_f:
        raise ValueError(
            f"table with {body.shape[0]} patch rows does not split into {grid_f} bands"
        )
    full_t = body.shape[0] // grid_f
    if grid_t > full_t:
        raise ValueError(f"cannot cut {grid_t} time columns from a table of {full_t}")
    body = body.reshape(grid_f, full_t, dim)[:, :grid_t].reshape(grid_f * grid_t, dim)
    return np.concatenate([head, body], axis=0)
