"""The HEAR 2021 API (hearbenchmark.com) over `matpac_jax.inference.encoder.Encoder`.

  from matpac_jax.inference import hear
  model = hear.load_model("runs/b/export")           # any `Encoder.load` spec
  scene = hear.get_scene_embeddings(audio, model)    # (n_sounds, 3840)
  emb, ts = hear.get_timestamp_embeddings(audio, model)   # (n, S, 3840), (n, S) milliseconds

`audio` is (n_sounds, n_samples) float at 16 kHz: a torch tensor (any device), a numpy array or
anything `np.asarray` reads. Scene embeddings are the papers' clip embeddings (precise mode,
mean over time).

The benchmark's own tools (the `hear-validator` submission check, heareval's embedding runner)
take only a `torch.nn.Module` from `load_model` and torch tensors back. So with torch installed
(`pip install .[hear]`), `load_model` returns a `torch.nn.Module` (`HearModule`, without
parameters: `.to(device)` is accepted and the work stays in JAX), and a torch tensor in gives
`torch.float32` embeddings (timestamps `torch.float64`) on its device. Numpy in gives numpy
out, with or without torch; torch is imported only when `load_model` finds it installed.

Timestamps: the encoder makes one embedding per 160 ms step. `hop_ms` (default 40) gives a
finer grid, regular to the microsecond: the sound is embedded `160 / hop_ms` times, copy j
shifted left by j * hop_ms (zeros appended to keep its length), and the copies' steps are
interleaved, centre times 87.5 + hop_ms * i milliseconds. It costs `160 / hop_ms` times the
compute of the 160 ms grid (docs/inference.md, measured). 40 ms is the coarsest grid under the
HEAR validator's 50 ms bound (music transcription scores onsets within 50 ms); `hop_ms=160`
is the encoder's own grid at no extra cost.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from typing import Any

import numpy as np

from matpac_jax.inference import encoder as inference

logger = logging.getLogger(__name__)

STEP_MS = 160  # one encoder step: 16 frames of 10 ms
DEFAULT_HOP_MS = 40
HOPS_MS = tuple(h for h in (160, 80, 40, 32, 20, 16, 10) if STEP_MS % h == 0)


class HearModel:
    """The encoder and the attributes the HEAR API requires (what `load_model` returns without
    torch; `HearModule` carries the same attributes)."""

    def __init__(self, encoder: inference.Encoder, hop_ms: float = DEFAULT_HOP_MS):
        _setup(self, encoder, hop_ms)


def _setup(model, encoder: inference.Encoder, hop_ms: float) -> None:
    if encoder.sample_rate != 16_000:
        raise ValueError(
            f"HEAR models here run at 16 kHz; the encoder's front end is at "
            f"{encoder.sample_rate} Hz"
        )
    if hop_ms not in HOPS_MS:
        raise ValueError(f"hop_ms={hop_ms}: one of {HOPS_MS} (160 ms divided by a whole number)")
    model.encoder = encoder
    model.hop_ms = int(hop_ms)
    model.sample_rate = int(encoder.sample_rate)
    model.scene_embedding_size = int(encoder.embedding_size)
    model.timestamp_embedding_size = int(encoder.embedding_size)


@functools.cache
def _module_class():
    """`HearModule`, a `torch.nn.Module` (built on first use: torch is imported only then)."""
    import torch  # pylint: disable=g-import-not-at-top

    class HearModule(torch.nn.Module):
        """The HEAR model as a torch module: no parameters, the encoder runs in JAX."""

        def __init__(self, encoder: inference.Encoder, hop_ms: float = DEFAULT_HOP_MS):
            super().__init__()
            _setup(self, encoder, hop_ms)

        def forward(self, audio):
            return get_scene_embeddings(audio, self)

    return HearModule


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def load_model(model_file_path: str = "", *, hop_ms: float = DEFAULT_HOP_MS, **kwargs):
    """Loads an encoder for the HEAR API.

    Args:
      model_file_path: an export directory, a training workdir or "random[:VARIANT]"; empty gives
        a random ViT-B (seed 0), as the HEAR baseline does without weights.
      hop_ms: the timestamp grid, one of HOPS_MS (see the module docstring).
      **kwargs: for `Encoder.load` (batch_size, dtype, seed).

    Returns:
      A `torch.nn.Module` (`HearModule`) when torch is installed, else a `HearModel`.
    """
    if not model_file_path:
        logger.warning("no model_file_path: using a randomly initialised ViT-B encoder")
        model_file_path = "random"
    encoder = inference.Encoder.load(model_file_path, **kwargs)
    if torch_available():
        return _module_class()(encoder, hop_ms)
    return HearModel(encoder, hop_ms)


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a torch tensor means torch is imported already
    return torch is not None and isinstance(x, torch.Tensor)


def _batch(audio: Any, model) -> tuple[np.ndarray, Any]:
    """(audio as float32 numpy, a function that turns numpy results back into audio's kind)."""
    if _is_torch(audio):
        import torch  # pylint: disable=g-import-not-at-top (imported: audio is a tensor)

        device = audio.device
        array = audio.detach().to("cpu", torch.float32).numpy()
        back = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(device)  # noqa: E731
    else:
        array, back = np.asarray(audio, dtype=np.float32), lambda x: x
    if array.ndim != 2:
        raise ValueError(
            f"audio has shape {array.shape}; the HEAR API takes (n_sounds, n_samples) at "
            f"{model.sample_rate} Hz"
        )
    return array, back


def get_scene_embeddings(audio: Any, model) -> Any:
    """(n_sounds, n_samples) at 16 kHz -> (n_sounds, scene_embedding_size) float32."""
    audio, back = _batch(audio, model)
    return back(model.encoder.embed(audio, model.sample_rate))


def get_timestamp_embeddings(audio: Any, model) -> tuple[Any, Any]:
    """(n_sounds, n_samples) at 16 kHz -> embeddings (n_sounds, n_steps, E) float32 and their
    centre times (n_sounds, n_steps) in milliseconds, every `model.hop_ms`."""
    audio, back = _batch(audio, model)
    size = model.timestamp_embedding_size
    if not len(audio):  # no sounds
        return back(np.zeros((0, 0, size), np.float32)), back(np.zeros((0, 0), np.float64))
    copies = STEP_MS // model.hop_ms
    shift = model.sample_rate * model.hop_ms // 1000  # samples per hop
    shifted = [
        np.concatenate([audio[:, j * shift :], np.zeros((len(audio), j * shift), np.float32)], 1)
        for j in range(copies)
    ]
    out = model.encoder.embed(np.concatenate(shifted), model.sample_rate, timestamps=True)
    steps = np.stack(out.steps).reshape(copies, len(audio), -1, size)  # (copies, n, S, E)
    emb = steps.transpose(1, 2, 0, 3).reshape(len(audio), -1, size)  # step-major, copy-minor
    first = out.times[0][0] * 1000.0  # the first step's centre, ms
    times = first + model.hop_ms * np.arange(emb.shape[1], dtype=np.float64)
    return back(emb), back(np.broadcast_to(times, emb.shape[:2]).copy())
