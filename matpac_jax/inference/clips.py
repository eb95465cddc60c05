"""What matpac_jax/inference/encoder.py reads, and the log-mel baseline, which needs nothing else.

`inference.Encoder` and `LogMelBaseline` take the same audio (`as_clips`), resample it as
`audio.load_audio` does (`resample`) and normalise its log-mel with the corpus statistics
(`normalized_log_mel`; docs/method.md, section 7). `restore_checkpoint_params` reads the student
encoder of a training checkpoint. matpac_jax/inference/encoder.py re-exports `LogMelBaseline`,
`DEFAULT_NORMALIZATION`, `ENCODER_KEYS` and `resample`: import them from there
(docs/inference.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from matpac_jax import cli
from matpac_jax.audio import frontend as audio

logger = logging.getLogger(__name__)

# AudioSet log-mel statistics: the papers' normalisation (docs/method.md, section 1).
DEFAULT_NORMALIZATION = {"mean": -7.056, "std": 4.193}
ENCODER_KEYS = ("patch_embed", "cls_token", "student")  # the parameters an encoder needs


def as_clips(waves: Any) -> tuple[list[np.ndarray], bool]:
    """One 1-D clip, a 2-D (n, samples) array or a sequence of 1-D clips -> (clips, single)."""
    if isinstance(waves, (list, tuple)):
        clips, single = [np.asarray(w, np.float32) for w in waves], False
    else:
        waves = np.asarray(waves, np.float32)
        if waves.ndim not in (1, 2):
            raise ValueError(
                f"audio has shape {waves.shape}: pass one mono clip (samples,), a batch "
                "(n, samples) or a list of mono clips"
            )
        clips, single = ([waves], True) if waves.ndim == 1 else (list(waves), False)
    for i, clip in enumerate(clips):
        if clip.ndim != 1:
            raise ValueError(f"clip {i} has shape {clip.shape}; every clip must be mono (samples,)")
        if not np.isfinite(clip).all():
            raise ValueError(f"clip {i} holds NaN or Inf samples")
    return clips, single


def resample(wave: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resamples a mono clip with soxr HQ, as `audio.load_audio` does; float32."""
    if sample_rate != target_rate:
        import soxr  # pylint: disable=g-import-not-at-top

        wave = soxr.resample(wave, sample_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def normalized_log_mel(
    wave: np.ndarray,
    sample_rate: int,
    fe: audio.FrontEnd,
    mean: float,
    std: float,
    index: int,
    log_mel=audio.log_mel,
) -> np.ndarray:
    """A clip at any rate -> its normalised log-mel (F, T) at the front end's rate; `log_mel`:
    the host's (`audio.log_mel`) or the device's (`device_frontend.log_mel`)."""
    wave = resample(wave, sample_rate, fe.sample_rate)
    if fe.num_frames(wave.shape[0]) == 0:
        raise ValueError(
            f"clip {index} has {wave.shape[0]} samples at {fe.sample_rate} Hz, fewer than the "
            f"n_fft={fe.n_fft} one log-mel frame needs: pad it or leave it out"
        )
    return audio.normalize(log_mel(wave, fe), mean, std)


def restore_checkpoint_params(directory: epath.Path) -> dict:
    """The encoder params of the newest finished checkpoint under `directory` that restores."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    steps = sorted(ocp.utils.checkpoint_steps(directory), reverse=True)  # finished saves only
    if not steps:
        raise FileNotFoundError(f"no finished checkpoint in {directory}")
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    failures = []
    for step in steps:
        path = directory / str(step) / "state"
        try:
            with ocp.StandardCheckpointer() as ckptr:
                tree = ckptr.metadata(path).item_metadata.tree
            encoder = {k: tree["params"][k] for k in ENCODER_KEYS}
            target = {
                "params": jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), encoder
                )
            }
            # Only the encoder is read: the teacher and optimiser state are left on disk.
            args = ocp.args.PyTreeRestore(
                item=target,
                restore_args=jax.tree.map(
                    lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target
                ),
                partial_restore=True,
            )
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
                restored = ckptr.restore(path, args=args)
        except Exception as e:  # pylint: disable=broad-except
            logger.warning("checkpoint step %d in %s does not restore: %s", step, directory, e)
            failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        logger.info("loaded the student encoder of checkpoint step %d from %s", step, directory)
        return restored["params"]
    raise RuntimeError(f"no checkpoint in {directory} restores: {'; '.join(failures)}")


class LogMelBaseline:
    """The probe's log-mel baseline: per-band mean and std over time of the normalised log-mel.

    Embedding: [mean over frames (F), std over frames (F)], 2 * 80 = 160 features.
    """

    def __init__(
        self,
        front_end: audio.FrontEnd | None = None,
        normalization: Mapping[str, float] | None = None,
    ):
        self.front_end = front_end or audio.FrontEnd()
        norm = {**DEFAULT_NORMALIZATION, **(normalization or {})}
        self.mean, self.std = float(norm["mean"]), float(norm["std"])

    @property
    def sample_rate(self) -> int:
        return self.front_end.sample_rate

    @property
    def embedding_size(self) -> int:
        return 2 * self.front_end.n_mels

    def embed(self, audio_in: Any, sample_rate: int, *, progress: bool = False) -> np.ndarray:
        """Same inputs as `Encoder.embed`; (n, 2F) float32, or (2F,) for a single clip."""
        clips, single = as_clips(audio_in)
        out = np.zeros((len(clips), self.embedding_size), np.float32)
        bar = cli.progress(len(clips), desc="log-mel", unit="clip", enabled=progress)
        for i, clip in enumerate(clips):
            mel = normalized_log_mel(clip, sample_rate, self.front_end, self.mean, self.std, i)
            out[i] = np.concatenate([mel.mean(axis=1), mel.std(axis=1)])
            bar.update(1)
        bar.close()
        return out[0] if single else out
