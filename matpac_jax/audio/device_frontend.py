"""The log-mel front end in JAX, on the accelerator: the same numbers as `frontend.log_mel`.

`frontend.log_mel` runs on the host in numpy, one clip at a time. On an accelerator the host's
front end, not the encoder, then bounds the clips per second (64 clips of 10 s are ~20 ms of
GPU work for ViT-B). This module computes the same log-mel on the device: frames gathered from
the waveform, one product with the windowed real-DFT matrix, the power spectrum, one product
with librosa's slaney mel filterbank (both matrices are `frontend`'s own), and the log with the
same offset. The products run at full float32 precision (`Precision.HIGHEST`: no TF32 or bf16
passes), so the result matches librosa's under the suite's float32 rule (tests/numerics.py).

A clip's length is padded up to a whole number of `BUCKET_SECONDS` before the call and the
frames that only the padding reaches are dropped after it: one compile per bucket, not per
length, and the kept frames see only the clip's own samples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from matpac_jax.audio import frontend

BUCKET_SECONDS = 1.0


@functools.partial(jax.jit, static_argnames=("fe",))
def log_mels(waves: jax.Array, fe: frontend.FrontEnd = frontend.FrontEnd()) -> jax.Array:
    """(B, N) float32 16 kHz waveforms -> (B, n_mels, frames) float32 log-mels, not normalised,
    frames = `fe.num_frames(N)` (at least one: N >= n_fft)."""
    dft, mel = (jnp.asarray(m) for m in frontend._projections(fe))  # pylint: disable=protected-access
    frames = fe.num_frames(waves.shape[1])
    index = np.arange(frames)[:, None] * fe.hop_length + np.arange(fe.n_fft)[None, :]
    framed = waves.astype(jnp.float32)[:, index]  # (B, frames, n_fft)
    hi = jax.lax.Precision.HIGHEST
    spec = jnp.einsum("btn,nk->btk", framed, dft, precision=hi)  # real | imaginary
    bins = dft.shape[1] // 2
    power = jnp.square(spec[..., :bins]) + jnp.square(spec[..., bins:])
    out = jnp.log(jnp.einsum("btk,km->btm", power, mel, precision=hi) + fe.log_offset)
    return jnp.swapaxes(out, 1, 2)


def bucket_samples(num_samples: int, fe: frontend.FrontEnd = frontend.FrontEnd()) -> int:
    """The padded length a clip of `num_samples` is computed at (a multiple of the bucket)."""
    step = int(BUCKET_SECONDS * fe.sample_rate)
    return max(-(-num_samples // step), 1) * step


def log_mel(wave: np.ndarray, fe: frontend.FrontEnd = frontend.FrontEnd()) -> np.ndarray:
    """`frontend.log_mel` of one mono clip, computed on the default device: (n_mels, frames)."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform (N,), got shape {wave.shape}")
    frames = fe.num_frames(wave.shape[0])
    if frames == 0:
        return np.zeros((fe.n_mels, 0), np.float32)
    padded = np.zeros((1, bucket_samples(wave.shape[0], fe)), np.float32)
    padded[0, : wave.shape[0]] = wave
    return np.asarray(log_mels(padded, fe)[0, :, :frames])
