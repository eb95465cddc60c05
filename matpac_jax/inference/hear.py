"""The HEAR 2021 API (hearbenchmark.com) over `matpac_jax.inference.encoder.Encoder`.

  from matpac_jax.inference import hear
  model = hear.load_model("runs/b/export")           # any `Encoder.load` spec
  scene = hear.get_scene_embeddings(audio, model)    # (n_sounds, 3840)
  emb, ts = hear.get_timestamp_embeddings(audio, model)   # (n, S, 3840), (n, S) milliseconds

`audio` is (n_sounds, n_samples) float at 16 kHz: a numpy array or anything `np.asarray` reads (a
CPU torch tensor, a jax array). Outputs are numpy float32. Scene embeddings are the papers' clip
embeddings (precise mode, mean over time); timestamp embeddings are one per 160 ms step, at the
step's centre (87.5 ms, 247.5 ms, ...).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from matpac_jax.inference import encoder as inference

logger = logging.getLogger(__name__)


class HearModel:
    """What `load_model` returns: the encoder and the attributes the HEAR API requires."""

    def __init__(self, encoder: inference.Encoder):
        if encoder.sample_rate != 16_000:
            raise ValueError(
                f"HEAR models here run at 16 kHz; the encoder's front end is at "
                f"{encoder.sample_rate} Hz"
            )
        self.encoder = encoder
        self.sample_rate = encoder.sample_rate
        self.scene_embedding_size = encoder.embedding_size
        self.timestamp_embedding_size = encoder.embedding_size


def load_model(model_file_path: str = "", **kwargs) -> HearModel:
    """Loads an encoder for the HEAR API.

    Args:
      model_file_path: an export directory, a training workdir or "random[:VARIANT]"; empty gives
        a random ViT-B (seed 0), as the HEAR baseline does without weights.
      **kwargs: for `Encoder.load` (batch_size, dtype, seed).
    """
    if not model_file_path:
        logger.warning("no model_file_path: using a randomly initialised ViT-B encoder")
        model_file_path = "random"
    return HearModel(inference.Encoder.load(model_file_path, **kwargs))


def _batch(audio: Any, model: HearModel) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2:
        raise ValueError(
            f"audio has shape {audio.shape}; the HEAR API takes (n_sounds, n_samples) at "
            f"{model.sample_rate} Hz"
        )
    return audio


def get_scene_embeddings(audio: Any, model: HearModel) -> np.ndarray:
    """(n_sounds, n_samples) at 16 kHz -> (n_sounds, scene_embedding_size) float32."""
    return model.encoder.embed(_batch(audio, model), model.sample_rate)


def get_timestamp_embeddings(audio: Any, model: HearModel) -> tuple[np.ndarray, np.ndarray]:
    """(n_sounds, n_samples) at 16 kHz -> embeddings (n_sounds, n_steps, E) float32 and the
    steps' centre times (n_sounds, n_steps) in milliseconds."""
    audio = _batch(audio, model)
    out = model.encoder.embed(audio, model.sample_rate, timestamps=True)
    size = model.timestamp_embedding_size
    if not out.steps:  # no sounds
        return np.zeros((0, 0, size), np.float32), np.zeros((0, 0), np.float64)
    times = np.broadcast_to(out.times[0] * 1000.0, (len(out.steps), len(out.times[0])))
    return np.stack(out.steps), np.ascontiguousarray(times)
