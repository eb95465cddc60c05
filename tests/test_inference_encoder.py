"""Tests for matpac_jax/inference/encoder.py: precise mode against a direct computation, batching,
timestamps, log-mels in and parameters swapped, resampling, loading (export, checkpoint-only
workdir, random) and the log-mel baseline (matpac_jax/inference/clips.py).

Tolerances: the encoder runs jitted (and batched) against an eager per-chunk reference, and
batched against alone: two programs each time, compared by tests/numerics.py's rule (rounding
measured against the whole array's scale). One program on the same inputs is compared exactly.
"""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import soxr
from flax import nnx
from numerics import assert_close, encoder_depth

from matpac_jax import cli, models
from matpac_jax.audio import frontend as audio
from matpac_jax.inference import export
from matpac_jax.inference.encoder import ENCODER_KEYS, Encoder, LogMelBaseline
from matpac_jax.train import checkpoints as checkpointing

CFG = models.model_config("mu")  # D = 32: 5 x 32 = 160 features per step
MEAN, STD = -7.056, 4.193
DEPTH = encoder_depth(CFG.depth)


def _params(student):
    return {k: v for k, v in nnx.to_pure_dict(nnx.state(student)).items() if k in ENCODER_KEYS}


def _noise(seconds_or_samples, seed=0, rate=16_000):
    n = (
        seconds_or_samples
        if isinstance(seconds_or_samples, int)
        else int(seconds_or_samples * rate)
    )
    return (0.1 * np.random.default_rng(seed).normal(size=n)).astype(np.float32)


@pytest.fixture(scope="module")
def student():
    return models.build(CFG, nnx.Rngs(1))[0]


@pytest.fixture(scope="module")
def encoder(student):
    return Encoder(CFG, _params(student), batch_size=4)


def _direct(student, wave, pad_value=0.0):
    """The precise mode written out: (L, S, E) steps of every layer, by hand."""
    mel = (audio.log_mel(wave) - MEAN) / STD
    mel = np.pad(mel, ((0, 0), (0, -mel.shape[1] % 16)), constant_values=pad_value)
    parts = []
    for start in range(0, mel.shape[1], 608):
        _, aux = student.features(
            jnp.asarray(mel[None, :, start : start + 608]), return_layers=True
        )
        z = np.stack([np.asarray(layer[0, 1:]) for layer in aux["layers"]])  # (L, N, D), no cls
        num_layers, n, d = z.shape
        grid_f = 80 // 16
        # (f t) d -> t (f d)
        z = z.reshape(num_layers, grid_f, n // grid_f, d).transpose(0, 2, 1, 3)
        parts.append(z.reshape(num_layers, n // grid_f, grid_f * d))
    return np.concatenate(parts, axis=1)


def test_precise_mode_matches_direct_computation(student, encoder):
    wave = _noise(400 + 699 * 160)  # 700 frames -> 704 -> chunks of 608 and 96 frames
    want_steps = _direct(student, wave)
    assert want_steps.shape == (2, 44, 160)
    got = encoder.embed(wave, 16_000, layers=True, timestamps=True)
    assert_close(got.steps, want_steps, depth=DEPTH)
    assert_close(got.clip, want_steps.mean(axis=1), depth=DEPTH)
    # Step k spans frames 16k..16k+15; frame i is centred on sample 160 i + 200.
    centres = (160 * (16 * np.arange(44)[:, None] + np.arange(16)) + 200).mean(axis=1) / 16_000
    np.testing.assert_allclose(got.times, centres, rtol=0, atol=1e-12)
    assert got.times[0] == 0.0875 and np.allclose(np.diff(got.times), 0.16)

    plain = encoder.embed(wave, 16_000)  # last layer, summed on the device
    assert plain.shape == (160,)
    assert_close(plain, got.clip[-1], depth=DEPTH)
    last = encoder.embed(wave, 16_000, timestamps=True)
    assert_close(last.steps, got.steps[-1], depth=DEPTH)
    # The pad value matters (the 4 padded frames reach every token of the last chunk).
    assert not np.allclose(_direct(student, wave, pad_value=-1.0)[-1, 38:], got.steps[-1, 38:])


def test_clip_embedding_does_not_depend_on_its_batch(encoder):
    short = _noise(400 + 127 * 160, seed=1)  # 128 frames: one chunk of 128
    alone = encoder.embed(short, 16_000)
    batch = [_noise(400 + 735 * 160, seed=2), short] + [
        _noise(400 + 127 * 160, seed=s) for s in (3, 4, 5, 6)
    ]  # the long clip's last chunk is 128 frames too: 6 chunks of 128 -> buckets of 4 and 2
    together = encoder.embed(batch, 16_000)
    assert together.shape == (6, 160)
    assert_close(together[1], alone, depth=DEPTH)
    assert_close(encoder.embed(batch[0], 16_000), together[0], depth=DEPTH)
    stacked = encoder.embed(np.stack([short, batch[2]]), 16_000)  # (n, samples) array input
    assert_close(stacked, together[[1, 2]], depth=DEPTH)
    ts = encoder.embed(batch, 16_000, timestamps=True)
    assert [s.shape[0] for s in ts.steps] == [46, 8, 8, 8, 8, 8]
    assert_close(ts.clip, together, depth=DEPTH)


def test_the_device_front_end_gives_the_host_s_embeddings(student, encoder):
    # On a CPU the default is the host's front end; asked for, the device's gives the same
    # embeddings (clips of several lengths and buckets), up to float32 rounding.
    assert encoder._log_mel is audio.log_mel  # pylint: disable=protected-access
    device = Encoder(CFG, _params(student), batch_size=4, device_front_end=True)
    clips = [_noise(400 + 735 * 160, seed=2), _noise(400 + 127 * 160, seed=1), _noise(1.3)]
    assert_close(device.embed(clips, 16_000), encoder.embed(clips, 16_000), depth=DEPTH + 3)


def test_embed_log_mels_and_load_params(student, encoder):
    clips = [_noise(400 + 735 * 160, seed=2), _noise(400 + 100 * 160, seed=3)]  # 100: padded
    mels = [audio.normalize(audio.log_mel(c), MEAN, STD) for c in clips]
    got = encoder.embed_log_mels(mels, layers=True)
    assert got.shape == (2, CFG.depth, 160) and got.dtype == np.float32
    # Exact: `embed` runs these clips as one window of the same batches, so the same compiled
    # program gets the same inputs (the front end is the same numpy code).
    np.testing.assert_array_equal(got, encoder.embed(clips, 16_000, layers=True))
    last = encoder.embed_log_mels(mels)
    np.testing.assert_array_equal(last, encoder.embed(clips, 16_000))
    other = Encoder.random(CFG, seed=7, batch_size=4)
    other.load_params(encoder.params())  # in place: the same numbers as `encoder`
    # Exact: the same config and batch size as `encoder`, so the same compiled program.
    np.testing.assert_array_equal(other.embed_log_mels(mels), last)
    with pytest.raises(ValueError, match="do not match the model config"):
        other.load_params(Encoder.random("Ti").params())


def test_resampling_to_16k(encoder):
    def tones(rate):
        t = np.arange(int(2.0 * rate)) / rate
        return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t + 1)).astype(
            np.float32
        )

    at_44k = encoder.embed(tones(44_100), 44_100)
    pre = soxr.resample(tones(44_100), 44_100, 16_000, quality="HQ")
    assert_close(at_44k, encoder.embed(pre, 16_000), depth=DEPTH)
    # The same continuous signal synthesised at 16 kHz: only the resampler's error remains.
    np.testing.assert_allclose(at_44k, encoder.embed(tones(16_000), 16_000), rtol=0, atol=1e-4)
    assert not np.allclose(at_44k, encoder.embed(tones(44_100), 16_000), atol=1e-2)


def test_load_export_workdir_and_checkpoint_only_workdir(tmp_path, student, encoder):
    wave = _noise(1.5, seed=7)
    want = encoder.embed(wave, 16_000)
    config = {
        "model": dataclasses.asdict(CFG),
        "front_end": audio.FrontEnd().to_dict(),
        "normalization": {"mean": MEAN, "std": STD},
        "crop_frames": 608,
    }
    path = export.export_encoder(str(tmp_path / "run"), _params(student), config)
    # Exact below: a file round trip, and one chunk is a batch of one whatever the batch size,
    # so the same compiled program.
    for spec in (path, str(tmp_path / "run")):
        np.testing.assert_array_equal(Encoder.load(spec).embed(wave, 16_000), want)

    # A workdir with only checkpoints: the newest step's student encoder, config from run.json.
    workdir = tmp_path / "ckpt_run"
    ckpt = checkpointing.Checkpointer(str(workdir), save_interval_steps=1, max_to_keep=3)
    other, teacher = models.build(CFG, nnx.Rngs(2))
    for step, model in ((3, other), (7, student)):
        state = {
            "params": nnx.to_pure_dict(nnx.state(model)),
            "teacher": nnx.to_pure_dict(nnx.state(teacher)),
            "step": jnp.int32(step),
        }
        ckpt.save(step, state, _FakeDataIterator(), force=True)
    ckpt.close()
    run = {"model": dataclasses.asdict(CFG), "config": {"data": {"mean": MEAN, "std": STD}}}
    (workdir / "run.json").write_text(json.dumps(run))
    np.testing.assert_array_equal(Encoder.load(str(workdir)).embed(wave, 16_000), want)

    with pytest.raises(cli.UserError, match="no such path; an encoder is an export folder"):
        Encoder.load(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="do not match the model config"):
        Encoder("Ti", _params(student))


def test_embeddings_are_float32_whatever_the_run_trained_in(student, encoder):
    wave = _noise(1.0, seed=11)
    bf16 = dataclasses.replace(CFG, dtype="bfloat16")  # an accelerator run's export
    default = Encoder(bf16, _params(student))
    assert default.model_config.dtype == "float32"
    # Exact: float32 by default makes the bf16 run's encoder the same program as `encoder`'s.
    np.testing.assert_array_equal(default.embed(wave, 16_000), encoder.embed(wave, 16_000))
    as_trained = Encoder(bf16, _params(student), dtype=None)
    assert as_trained.model_config.dtype == "bfloat16"
    assert not np.allclose(as_trained.embed(wave, 16_000), encoder.embed(wave, 16_000), atol=1e-5)


class _FakeDataIterator:
    """Stands in for the input iterator the checkpointer saves beside the state."""

    def get_state(self) -> dict:
        return {"version": 2, "batches": 0}


def test_random_is_seeded_and_is_the_build_init():
    wave = _noise(1.0, seed=8)
    a = Encoder.load("random:mu").embed(wave, 16_000)
    # Exact: every spelling builds with the same eager `models.build` and embeds alike.
    np.testing.assert_array_equal(Encoder.random("mu", seed=0).embed(wave, 16_000), a)
    np.testing.assert_array_equal(Encoder.load("random", model_config="mu").embed(wave, 16_000), a)
    built = Encoder(CFG, _params(models.build(CFG, nnx.Rngs(0))[0]))
    np.testing.assert_array_equal(built.embed(wave, 16_000), a)
    assert not np.allclose(Encoder.load("random:mu", seed=1).embed(wave, 16_000), a, atol=1e-3)
    assert Encoder.random("mu").embedding_size == 160


def test_input_errors(encoder):
    with pytest.raises(ValueError, match="clip 1 has 300 samples"):
        encoder.embed([_noise(0.5), _noise(300)], 16_000)
    with pytest.raises(ValueError, match="clip 0 has shape"):
        encoder.embed([np.zeros((2, 800))], 16_000)
    with pytest.raises(ValueError, match="NaN"):
        encoder.embed(np.full(800, np.nan), 16_000)


def test_log_mel_baseline_against_numpy():
    clips = [_noise(1.0, seed=9), _noise(0.3, seed=10)]
    got = LogMelBaseline().embed(clips, 16_000)
    assert got.shape == (2, 160) and got.dtype == np.float32
    for row, wave in zip(got, clips):
        mel = (audio.log_mel(wave).astype(np.float64) + 7.056) / 4.193
        np.testing.assert_allclose(row[:80], mel.mean(axis=1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(row[80:], mel.std(axis=1), rtol=1e-5, atol=1e-5)
    one = LogMelBaseline().embed(soxr.resample(clips[0], 16_000, 22_050), 22_050)
    assert one.shape == (160,)
    # A round trip through 22.05 kHz; the top band (7.8-8 kHz) meets the resampler's cut-off.
    keep = np.r_[0:79, 80:159]
    np.testing.assert_allclose(one[keep], got[0, keep], atol=0.05)


def test_chunk_flops_counts_the_models_products(encoder):
    # Independent count, the matmuls alone: per token 2 x the block weights (4 D^2 attention
    # + 8 D^2 MLP per block) and the patch projection (256 x D); attention's two products add
    # 4 N D per token per block. XLA also counts the element-wise work, a few percent more.
    d, depth, n = CFG.width, CFG.depth, 5 * 64 // 16  # 80 mel bins x 64 frames: 20 patches
    tokens = n + 1
    matmuls = 2 * (depth * 12 * d * d * tokens + 256 * d * n) + depth * 4 * tokens * tokens * d
    one = encoder.chunk_flops(64)
    assert matmuls <= one <= 1.5 * matmuls, (one, matmuls)
    assert encoder.chunk_flops(64, batch=4) == pytest.approx(4 * one, rel=0.01)
    assert encoder.chunk_flops(128) > 1.9 * one  # twice the tokens, a little more attention
