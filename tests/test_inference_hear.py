"""Tests for matpac_jax/inference/hear.py: the HEAR 2021 API's shapes, units and agreement with Encoder."""

import numpy as np
import pytest

from matpac_jax.inference import hear
from matpac_jax.inference.encoder import Encoder


def test_hear_api_matches_encoder():
    model = hear.load_model("random:mu")
    assert model.sample_rate == 16_000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 160
    sounds = (0.1 * np.random.default_rng(0).normal(size=(3, 16_000))).astype(np.float32)

    scene = hear.get_scene_embeddings(sounds, model)
    assert scene.shape == (3, 160) and scene.dtype == np.float32
    encoder = Encoder.load("random:mu")
    np.testing.assert_allclose(scene[2], encoder.embed(sounds[2], 16_000), rtol=0, atol=1e-5)

    emb, ts = hear.get_timestamp_embeddings(sounds.tolist(), model)  # any array-like
    steps = -(-(1 + (16_000 - 400) // 160) // 16)  # 98 frames -> padded to 112 -> 7 steps
    assert emb.shape == (3, steps, 160) and ts.shape == (3, steps)
    np.testing.assert_allclose(ts[1], 87.5 + 160 * np.arange(steps))  # centres, milliseconds
    np.testing.assert_allclose(emb.mean(axis=1), scene, rtol=0, atol=1e-5)
    alone = encoder.embed(sounds[0], 16_000, timestamps=True)
    np.testing.assert_allclose(emb[0], alone.steps, rtol=0, atol=1e-5)

    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(sounds[0], model)
