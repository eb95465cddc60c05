"""Tests for matpac_jax/inference/embed.py: the CLI on a tiny folder with a bad file -> the .npz contents;
checks that run before any clip is embedded; a folder of unusable files writes nothing."""

import numpy as np
import pytest
import soundfile as sf
from numerics import assert_close, encoder_depth

from matpac_jax.audio import frontend as audio
from matpac_jax.inference import embed
from matpac_jax.inference import encoder as inference
from matpac_jax.inference.encoder import Encoder, LogMelBaseline


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


@pytest.mark.slow
def test_cli_writes_embeddings_and_skips_bad_files(tmp_path, capsys):
    d = _folder(tmp_path)
    out = tmp_path / "emb.npz"
    argv = ["--encoder", "random:mu", "--input_dir", str(d), "--out", str(out)]
    assert embed.main([*argv, "--batch_size", "2", "--no_progress"]) == 0
    printed = capsys.readouterr()
    assert "skipped garbage.wav: unreadable" in printed.err
    assert "skipped tiny.wav: too_short" in printed.err
    assert "5 files: 3 embedded (160-d), 2 skipped" in printed.out
    assert "  1 unreadable (e.g. garbage.wav)" in printed.out
    assert "  1 too_short: 800 samples < the front end's min_samples 1200 (e.g. tiny.wav)" in (
        printed.out
    )

    npz = np.load(out)
    assert list(npz["paths"]) == ["a.wav", "c.wav", "sub/b.flac"]
    assert list(npz["skipped"]) == ["garbage.wav", "tiny.wav"]
    assert list(npz["skip_reasons"]) == ["unreadable", "too_short"]
    assert npz["embeddings"].shape == (3, 160) and npz["embeddings"].dtype == np.float32
    encoder = Encoder.load("random:mu")
    for row, path in zip(npz["embeddings"], npz["paths"]):
        want = encoder.embed(audio.load_audio(d / path), 16_000)
        assert_close(row, want, depth=encoder_depth(2))  # batched with other files: 2 programs

    assert embed.main(["--encoder", "logmel", "--input_dir", str(d), "--out", str(out)]) == 0
    npz = np.load(out)
    assert npz["embeddings"].shape == (3, 160)
    want = LogMelBaseline().embed(audio.load_audio(d / "c.wav"), 16_000)
    assert_close(npz["embeddings"][1], want, depth=2)


@pytest.fixture
def no_encoder(monkeypatch):
    """Fails the test if an encoder is loaded: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the command was checked")

    monkeypatch.setattr(inference, "load_encoder", refuse)


@pytest.mark.parametrize(
    "out, message",
    [
        ("{tmp}", "is a folder, expected a file"),
        ("/proc/1/emb.npz", "folder /proc/1 is not writable"),
        ("{tmp}/a_file/emb.npz", "is a file, not a folder"),
    ],
)
def test_bad_out_is_refused_before_any_clip(tmp_path, capsys, no_encoder, out, message):
    d = _folder(tmp_path)
    (tmp_path / "a_file").write_text("x")
    out = out.format(tmp=tmp_path)
    assert embed.main(["--encoder", "logmel", "--input_dir", str(d), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m matpac_jax.inference.embed: error: --out ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_no_usable_file_writes_nothing_and_exits_1(tmp_path, capsys):
    d = tmp_path / "audio"
    d.mkdir()
    (d / "garbage.wav").write_bytes(b"RIFF nonsense")
    sf.write(d / "tiny.wav", np.zeros(800), 16_000)
    out = tmp_path / "emb.npz"
    argv = ["--encoder", "logmel", "--input_dir", str(d), "--out", str(out), "--no_progress"]
    assert embed.main(argv) == 1
    printed = capsys.readouterr()
    assert "skipped 2 of 2 files:" in printed.out
    assert "nothing written: all 2 files were skipped" in printed.err
    assert not list(tmp_path.glob("emb.npz*"))
