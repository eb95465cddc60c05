"""Front end (matpac_jax/audio/frontend.py) against an independent float64 computation.

The reference here builds its own complex DFT and its own slaney mel filterbank from the
formulas (no librosa), in float64. The implementation computes in float32 with librosa's
filterbank; on random signals they agree to 2e-3 in log-mel (observed ~1e-4: float32 rounding
in the DFT matmul of near-silent bins dominates).
"""

import numpy as np
import pytest
import soundfile as sf
from numerics import assert_close

from matpac_jax.audio import frontend as audio

TOL = 2e-3


def _hz_to_mel_slaney(f):
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    lin = f / f_sp
    return np.where(
        f >= min_log_hz,
        min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
        lin,
    )


def _mel_to_hz_slaney(m):
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def _slaney_filterbank(sr, n_fft, n_mels, fmin, fmax):
    """Triangular filters equally spaced on the slaney mel scale, area-normalised (n_mels, bins)."""
    fft_freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = _mel_to_hz_slaney(
        np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2)
    )
    fb = np.zeros((n_mels, fft_freqs.size))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (fft_freqs - lo) / (mid - lo)
        falling = (hi - fft_freqs) / (hi - mid)
        fb[m] = np.maximum(0, np.minimum(rising, falling)) * 2.0 / (hi - lo)
    return fb


def _reference_log_mel(x, sr=16000, n_fft=400, hop=160, n_mels=80, fmin=50.0, fmax=8000.0):
    x = np.asarray(x, np.float64)
    n_frames = 1 + (len(x) - n_fft) // hop
    n = np.arange(n_fft)
    window = 0.5 * (1 - np.cos(2 * np.pi * n / n_fft))  # periodic Hann
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(n, k) / n_fft)  # (n_fft, bins)
    frames = np.stack([x[i * hop : i * hop + n_fft] for i in range(n_frames)])
    power = np.abs((frames * window) @ dft) ** 2
    mel = power @ _slaney_filterbank(sr, n_fft, n_mels, fmin, fmax).T
    return np.log(mel + 1.1920929e-07).T  # (n_mels, frames)


def _random_signal(rng, n):
    """Noise of random colour and level, a few random tones, a silent stretch."""
    t = np.arange(n) / 16000
    x = rng.standard_normal(n) * 10 ** rng.uniform(-3, -0.5)
    x = np.cumsum(x) * rng.uniform(0, 0.05) + x  # some low-frequency tilt
    for _ in range(3):
        x += rng.uniform(0.01, 0.3) * np.sin(
            2 * np.pi * rng.uniform(50, 7900) * t + rng.uniform(0, 6)
        )
    x[n // 3 : n // 3 + 800] *= 1e-4
    return x.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_mel_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4000, 20000))
    x = _random_signal(rng, n)
    got = audio.log_mel(x)
    want = _reference_log_mel(x)
    assert got.shape == (80, 1 + (n - 400) // 160) == want.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_filterbank_matches_own_slaney():
    _, mel = audio._projections(audio.FrontEnd())
    np.testing.assert_allclose(
        mel.T, _slaney_filterbank(16000, 400, 80, 50.0, 8000.0), rtol=1e-5, atol=1e-9
    )


def test_the_stored_filterbank_is_librosas():
    # The papers' parameters read the stored filterbank (no librosa import); librosa recomputes
    # it here, and other parameters still go to librosa.
    import librosa

    want = librosa.filters.mel(
        sr=16000, n_fft=400, n_mels=80, fmin=50.0, fmax=8000.0, htk=False, norm="slaney"
    )
    stored = audio.mel_filterbank(audio.FrontEnd())
    assert stored.dtype == np.float32 and stored.shape == (80, 201)
    assert_close(stored, want, depth=1)
    other = audio.FrontEnd(n_mels=64, f_max=7_000.0)
    assert_close(
        audio.mel_filterbank(other),
        librosa.filters.mel(sr=16000, n_fft=400, n_mels=64, fmin=50.0, fmax=7000.0, norm="slaney"),
        depth=1,
    )


@pytest.mark.parametrize(
    "n,frames", [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (97_520, 608)]
)
def test_frame_count(n, frames):
    fe = audio.FrontEnd()
    assert fe.num_frames(n) == frames
    assert audio.log_mel(np.zeros(n, np.float32) + 0.1).shape == (80, frames)


def _tone(sr, seconds, freq, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([x, 0.2 * x], axis=1) if channels == 2 else x


@pytest.mark.parametrize("sr,channels", [(44100, 2), (8000, 1), (16000, 1), (22050, 2)])
def test_load_audio_mono_resampled(tmp_path, sr, channels):
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(path, _tone(sr, 1.0, 440.0, channels).astype(np.float32), sr, subtype="FLOAT")
    wave = audio.load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.shape[0] - 16000) <= 1
    # Mono = mean over channels: (1 + 0.2) / 2 of the left channel's amplitude for stereo.
    amp = 0.5 * (0.6 if channels == 2 else 1.0)
    want = amp * np.sin(2 * np.pi * 440.0 * np.arange(wave.shape[0]) / 16000)
    np.testing.assert_allclose(wave[200:-200], want[200:-200], atol=2e-3)


def test_load_audio_errors(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.full(8000, 0.1, np.float32), 16000)
    data = good.read_bytes()
    cases = {
        "empty.wav": b"",
        "garbage.wav": np.random.default_rng(0).bytes(3000),
        "header_only.wav": data[:44],
        "half.wav": data[: 44 + (len(data) - 44) // 2],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    nan = np.full(8000, 0.1, np.float32)
    nan[10] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    reasons = {}
    for name in [*cases, "nan.wav"]:
        with pytest.raises(audio.AudioError) as e:
            audio.load_audio(tmp_path / name)
        reasons[name] = e.value.reason
    assert reasons == {
        "empty.wav": "empty",
        "garbage.wav": "unreadable",
        "header_only.wav": "empty",
        "half.wav": "truncated",
        "nan.wav": "non_finite",
    }
    assert audio.header_frames(good) == 8000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_device_front_end_matches_librosa(seed):
    """The JAX front end (audio/device_frontend.py) against librosa's own melspectrogram, under
    the suite's float32 rule, in the power domain the two compute: three accumulating stages
    (the DFT product, the power sum, the mel product). The log of a near-silent bin turns the
    same absolute rounding into a large relative one, so the log is compared through it."""
    import librosa

    from matpac_jax.audio import device_frontend

    rng = np.random.default_rng(seed)
    x = _random_signal(rng, 16000 * int(rng.integers(1, 4)) + int(rng.integers(0, 16000)))
    want = librosa.feature.melspectrogram(
        y=x, sr=16000, n_fft=400, hop_length=160, win_length=400, window="hann", center=False,
        power=2.0, n_mels=80, fmin=50.0, fmax=8000.0, htk=False, norm="slaney",
    )  # fmt: skip
    got = device_frontend.log_mel(x)
    assert got.shape == want.shape and got.dtype == np.float32
    assert_close(np.exp(got.astype(np.float64)) - audio.LOG_OFFSET, want, depth=3)
    # A clip padded to its bucket: the padding reaches no kept frame.
    padded = device_frontend.bucket_samples(len(x))
    assert padded % 16000 == 0 and 0 <= padded - len(x) < 16000
    # A batch of equal-length clips: each row is its clip's log-mel.
    batch = np.stack([x[:32000], _random_signal(rng, 32000)])
    rows = np.asarray(device_frontend.log_mels(batch))
    for row, clip in zip(rows, batch):
        single = device_frontend.log_mel(clip).astype(np.float64)
        assert_close(np.exp(row.astype(np.float64)), np.exp(single), depth=3)
