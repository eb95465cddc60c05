"""Tests for matpac_jax/embed.py: the CLI on a tiny folder with a bad file -> the .npz contents."""

import numpy as np
import soundfile as sf

from matpac_jax import audio, embed
from matpac_jax.inference import Encoder, LogMelBaseline


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "a.wav", 0.1 * rng.normal(size=24_000), 16_000)  # 1.5 s
    sf.write(d / "sub" / "b.flac", 0.1 * rng.normal(size=2 * 22_050), 22_050)  # resampled
    sf.write(d / "c.wav", 0.1 * rng.normal(size=11_000), 16_000)
    (d / "garbage.wav").write_bytes(rng.bytes(3_000))  # not a WAV at all
    sf.write(d / "tiny.wav", 0.1 * rng.normal(size=800), 16_000)  # < 1,200 samples
    return d


def test_cli_writes_embeddings_and_skips_bad_files(tmp_path, capsys):
    d = _folder(tmp_path)
    out = tmp_path / "emb.npz"
    argv = ["--encoder", "random:mu", "--input_dir", str(d), "--out", str(out)]
    assert embed.main([*argv, "--batch_size", "2", "--no_progress"]) == 0
    printed = capsys.readouterr()
    assert "skipped garbage.wav: unreadable" in printed.err
    assert "skipped tiny.wav: too_short" in printed.err
    assert "5 files: 3 embedded (160-d), 2 skipped" in printed.out

    npz = np.load(out)
    assert list(npz["paths"]) == ["a.wav", "c.wav", "sub/b.flac"]
    assert list(npz["skipped"]) == ["garbage.wav", "tiny.wav"]
    assert list(npz["skip_reasons"]) == ["unreadable", "too_short"]
    assert npz["embeddings"].shape == (3, 160) and npz["embeddings"].dtype == np.float32
    encoder = Encoder.load("random:mu")
    for row, path in zip(npz["embeddings"], npz["paths"]):
        want = encoder.embed(audio.load_audio(d / path), 16_000)
        np.testing.assert_allclose(row, want, rtol=0, atol=1e-5)  # batched with other files

    assert embed.main(["--encoder", "logmel", "--input_dir", str(d), "--out", str(out)]) == 0
    npz = np.load(out)
    assert npz["embeddings"].shape == (3, 160)
    want = LogMelBaseline().embed(audio.load_audio(d / "c.wav"), 16_000)
    np.testing.assert_allclose(npz["embeddings"][1], want, rtol=1e-6, atol=1e-6)
