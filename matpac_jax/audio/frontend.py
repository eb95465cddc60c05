"""Audio front end: decode, mono, resample to 16 kHz, log-mel exactly as docs/method.md, section 1.

The STFT and the mel projection are two matrix products over all frames at once (a real DFT
matrix with the periodic Hann window folded in, then librosa's slaney filterbank), which is
faster on a CPU than a per-frame FFT and keeps the numbers those of the papers' front end.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct

import numpy as np

# float32 machine epsilon: the reference's log offset.
LOG_OFFSET = 1.1920929e-07


@dataclasses.dataclass(frozen=True)
class FrontEnd:
    """Front-end parameters; the defaults are the papers'."""

    sample_rate: int = 16_000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 50.0
    f_max: float = 8_000.0
    log_offset: float = LOG_OFFSET
    min_samples: int = 1_200  # clips shorter than this are skipped

    def num_frames(self, num_samples: int) -> int:
        """Frames of a clip of `num_samples` samples (`center=False`): 1 + (N - 400) // 160."""
        if num_samples < self.n_fft:
            return 0
        return 1 + (num_samples - self.n_fft) // self.hop_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class AudioError(ValueError):
    """A file that cannot become a log-mel; `reason` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def load_audio(path: str | os.PathLike, sample_rate: int = 16_000) -> np.ndarray:
    """Decodes `path` to mono float32 at `sample_rate`.

    Raises:
        AudioError: with reason `unreadable`, `empty`, `truncated` (fewer frames than the header
            declares: soundfile returns them without complaint) or `non_finite` (NaN/Inf samples in
            a float file, which soundfile passes through as they are).
    """
    import soundfile as sf  # pylint: disable=g-import-not-at-top

    if os.path.getsize(path) == 0:
        raise AudioError("empty", "0-byte file")
    try:
        with sf.SoundFile(str(path)) as f:
            declared, source_rate = f.frames, f.samplerate
            data = f.read(dtype="float32", always_2d=True)  # (N, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError("unreadable", str(e).strip() or type(e).__name__) from e
    if declared == 0 or data.shape[0] == 0:
        raise AudioError("empty", "the file holds no audio frames")
    # libsndfile sizes a truncated file by its bytes, so ask the header what was promised.
    declared = max(declared, header_frames(path) or 0)
    if data.shape[0] < declared:
        raise AudioError(
            "truncated", f"read {data.shape[0]} of {declared} frames the header declares"
        )
    if not np.isfinite(data).all():
        raise AudioError("non_finite", f"{int((~np.isfinite(data)).sum())} NaN/Inf samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if source_rate != sample_rate:
        import soxr  # pylint: disable=g-import-not-at-top

        wave = soxr.resample(wave, source_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def header_frames(path: str | os.PathLike) -> int | None:
    """Frames a WAV (data chunk) or FLAC (STREAMINFO) header declares; None if it does not say."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] == b"fLaC" and len(head) >= 26:
        # STREAMINFO: bytes 18..25 hold rate(20) channels(3) bits(5) total samples(36).
        total = int.from_bytes(head[21:26], "big") & ((1 << 36) - 1)
        return total or None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align, data_size = 12, None, None
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20 : pos + 22])[0]
        elif cid == b"data":
            data_size = size
            break
        pos += 8 + size + (size & 1)
    if not block_align or data_size in (None, 0, 0xFFFFFFFF):  # streaming writers leave these
        return None
    return data_size // block_align


# librosa's slaney filterbank for the papers' front end, stored (librosa 0.11,
# `librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, fmin=50, fmax=8000, htk=False,
# norm="slaney")`, float32; tests/test_audio_frontend.py recomputes it): the default front end
# then needs no librosa, whose numba and llvmlite (60 MB of wheels) a machine without network
# would otherwise have to carry (launch/accelerator_check.sh).
PAPER_MEL = os.path.join(
    os.path.dirname(os.path.dirname(__file__)),
    "assets",
    "mel_filterbank_sr16000_nfft400_mels80_50_8000hz.npy",
)
_PAPER_MEL_PARAMS = (16_000, 400, 80, 50.0, 8_000.0)  # sample rate, n_fft, n_mels, f_min, f_max


def mel_filterbank(fe: FrontEnd) -> np.ndarray:
    """librosa's slaney mel filterbank (n_mels, bins), float32: the stored one for the papers'
    parameters, else computed by librosa."""
    if (fe.sample_rate, fe.n_fft, fe.n_mels, fe.f_min, fe.f_max) == _PAPER_MEL_PARAMS:
        return np.load(PAPER_MEL)
    import librosa  # pylint: disable=g-import-not-at-top

    return librosa.filters.mel(
        sr=fe.sample_rate,
        n_fft=fe.n_fft,
        n_mels=fe.n_mels,
        fmin=fe.f_min,
        fmax=fe.f_max,
        htk=False,
        norm="slaney",
    )  # slaney scale and area normalisation


@functools.lru_cache(maxsize=8)
def _projections(fe: FrontEnd) -> tuple[np.ndarray, np.ndarray]:
    """Windowed real-DFT matrix (n_fft, 2 * bins) and mel filterbank (bins, n_mels), float32."""
    if fe.win_length != fe.n_fft:
        raise ValueError("win_length must equal n_fft (the papers' front end)")
    bins = fe.n_fft // 2 + 1
    n = np.arange(fe.n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / fe.n_fft)  # periodic Hann
    phase = 2 * np.pi * np.outer(n, np.arange(bins)) / fe.n_fft  # (n_fft, bins)
    dft = np.concatenate([np.cos(phase), -np.sin(phase)], axis=1) * window[:, None]
    mel = mel_filterbank(fe)  # (n_mels, bins)
    return dft.astype(np.float32), np.ascontiguousarray(mel.T, dtype=np.float32)


def log_mel(wave: np.ndarray, fe: FrontEnd = FrontEnd()) -> np.ndarray:
    """Log-mel spectrogram of a mono 16 kHz waveform, (n_mels, frames) float32, not normalised."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform (N,), got shape {wave.shape}")
    frames = fe.num_frames(wave.shape[0])
    if frames == 0:
        return np.zeros((fe.n_mels, 0), np.float32)
    dft, mel = _projections(fe)
    stride = wave.strides[0]
    framed = np.lib.stride_tricks.as_strided(
        wave, (frames, fe.n_fft), (stride * fe.hop_length, stride), writeable=False
    )
    spec = framed @ dft  # (frames, 2 * bins): real | imaginary
    bins = dft.shape[1] // 2
    power = np.square(spec[:, :bins]) + np.square(spec[:, bins:])
    return np.log(power @ mel + fe.log_offset).T  # (n_mels, frames)


def normalize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Standardises a log-mel with corpus statistics (the papers use AudioSet's -7.056, 4.193)."""
    return (x - mean) / std
