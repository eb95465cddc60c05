"""Embeddings from a MATPAC student encoder in the papers' "precise" mode (docs/method.md, section 7).

  enc = Encoder.load("runs/b/export")       # an export, a training workdir, "random[:VARIANT]"
  emb = enc.embed(wave, 16_000)             # (3840,) for one clip, (n, 3840) for a list of clips
  out = enc.embed(waves, 44_100, layers=True, timestamps=True)   # an `Embeddings`
  pred = Encoder.load("exports/as").classify(wave, 16_000)       # with a head: `Predictions`

Per clip: resample to 16 kHz (soxr HQ) -> log-mel -> normalise -> pad the frame axis with zeros to
a multiple of 16 -> chunks of `max_frames` (608) frames -> each chunk through the student encoder,
no masking, cls dropped -> each layer's tokens rearranged `(f t) d -> t (f d)`, one
(F/16 * D = 3,840)-vector per 16-frame (160 ms) step -> chunks concatenated along time -> clip
embedding = mean over the steps.

Padding: the zeros are added after normalisation, i.e. the padded frames hold the corpus mean, as
the reference does (it pads the normalised log-mel). The last, partly padded step is part of the
mean, as in the reference. A short last chunk runs at its own length (the positional table is cut
along time): padding it to 608 frames would change every token's attention context.

Batching: the chunks of all clips in a call are grouped by length; each group runs in batches of
at most `batch_size` chunks, the batch padded with zero rows to the next power of two. The jitted
function so compiles once per (chunk length, bucket, output kind), not once per clip, and a clip's
embedding does not depend on which clips share its call (up to float32 summation order, ~1e-6).

Precision: float32 by default, whatever dtype the run trained in (`dtype` to choose).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from matpac_jax import cli, models
from matpac_jax.audio import device_frontend
from matpac_jax.audio import frontend as audio
from matpac_jax.inference import classifier, export
from matpac_jax.inference.clips import (  # the first three and resample: re-exported
    DEFAULT_NORMALIZATION,
    ENCODER_KEYS,
    LogMelBaseline,
    as_clips,
    normalized_log_mel,
    resample,  # noqa: F401
    restore_checkpoint_params,
)

DEFAULT_VARIANT = "B"
ENCODER_FORMS = (
    "an encoder is an export folder (config.json + params/), a training workdir (with export/ "
    "or checkpoints/), random[:VARIANT] (untrained) or logmel (log-mel statistics baseline)"
)


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """What `Encoder.embed(..., timestamps=True)` returns.

    Attributes:
      clip: clip embeddings, (n, E), or (n, L, E) with `layers=True`.
      steps: one embedding per 160 ms step: (S, E) or (L, S, E) per clip.
      times: centre time of each step in seconds, (S,) per clip.

    For a single 1-D clip the leading n is dropped and `steps`, `times` are arrays; for a batch
    they are lists over the clips (clips of different lengths have different S).
    """

    clip: np.ndarray
    steps: np.ndarray | list[np.ndarray]
    times: np.ndarray | list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What `Encoder.classify` returns.

    Attributes:
      probs: class probabilities, (n, C) float32 ((C,) for a single clip).
      top: per clip, the `top_k` most probable (label, probability) pairs.
      labels: the C class names, in the order of `probs`.
    """

    probs: np.ndarray
    top: list
    labels: list[str]


def encoder_model(cfg: models.ModelConfig, rngs: nnx.Rngs) -> models.MatpacModel:
    """A MatpacModel without the parts inference never calls (predictor and heads)."""
    model = models.MatpacModel(cfg, rngs=rngs)
    del model.predictor, model.mcl_heads, model.cls_head
    return model


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    # Orbax gives list indices back as string keys ('0'), nnx as ints: compare by their text.
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(np.shape(x))
        for path, x in flat
    }


def _chunk_steps(graphdef, state, x, *, all_layers: bool, per_step: bool) -> jax.Array:
    """(B, F, Tc) normalised chunks -> per-step features (B, L, Tc/16, F/16 * D) float32.

    With per_step=False the steps are summed: (B, L, F/16 * D). L = 1 (the output after the
    final LN) unless all_layers.
    """
    model = nnx.merge(graphdef, state)
    z, aux = model.features(x, return_layers=all_layers)
    z = jnp.stack(aux["layers"], axis=1) if all_layers else z[:, None]  # (B, L, 1 + N, D)
    b, num_layers, _, d = z.shape
    grid_f, grid_t = model.grid(x.shape)
    steps = z[:, :, 1:].reshape(b, num_layers, grid_f, grid_t, d)  # tokens are frequency-major
    steps = steps.transpose(0, 1, 3, 2, 4).reshape(b, num_layers, grid_t, grid_f * d)
    return steps if per_step else steps.sum(axis=2)


def _bucket(n: int, max_batch: int) -> int:
    """The padded batch size for n chunks: the next power of two, at most max_batch."""
    return min(1 << (n - 1).bit_length(), max_batch)


class Encoder:
    """A MATPAC student encoder that embeds audio in the papers' precise mode.

    Args:
      model_config: a `ModelConfig`, a variant name or a mapping (see `models.model_config`).
      params: the encoder's parameters {"patch_embed", "cls_token", "student"} (pure dicts, as
        `export.load_export` returns them); other entries are ignored.
      head: a `classifier.Head` for `classify` (an export's AudioSet head or probe), or None.
      front_end: log-mel parameters; the papers' by default.
      normalization: {"mean", "std"} of the log-mels; AudioSet's by default.
      batch_size: most chunks (of up to 608 frames) per model call.
      dtype: compute dtype of the matmuls: float32 by default, whatever the run trained in (the
        reference embeds in float32); "bfloat16" is faster on accelerators; None keeps the
        training config's.
      device_front_end: compute the log-mels on the default device (`audio.device_frontend`,
        the same numbers) instead of the host; None: on an accelerator, not on a CPU.
    """

    def __init__(
        self,
        model_config: Any,
        params: Mapping[str, Any],
        *,
        front_end: audio.FrontEnd | None = None,
        normalization: Mapping[str, float] | None = None,
        batch_size: int = 32,
        dtype: str | None = "float32",
        head: Any = None,
        device_front_end: bool | None = None,
    ):
        cfg = dataclasses.replace(models.model_config(model_config), remat=False)
        if dtype is not None:
            cfg = dataclasses.replace(cfg, dtype=dtype)
        self.model_config = cfg
        self.head = head
        self.front_end = front_end or audio.FrontEnd(n_mels=cfg.n_mels)
        if self.front_end.n_mels != cfg.n_mels:
            raise ValueError(
                f"front end has n_mels={self.front_end.n_mels} but the model expects "
                f"{cfg.n_mels}: use the front end the encoder was trained with"
            )
        norm = {**DEFAULT_NORMALIZATION, **(normalization or {})}
        self.mean, self.std = float(norm["mean"]), float(norm["std"])
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; it must be at least 1")
        self.batch_size = batch_size
        if device_front_end is None:
            device_front_end = jax.default_backend() != "cpu"
        self._log_mel = device_frontend.log_mel if device_front_end else audio.log_mel
        self.sample_rate = self.front_end.sample_rate
        self.chunk_frames = cfg.max_frames  # 608: the pretraining crop
        self.step_frames = cfg.patch  # 16 frames = 160 ms per embedding step
        self.num_layers = cfg.depth
        self.embedding_size = cfg.n_mels // cfg.patch * cfg.width  # 5 x 768 = 3,840 for ViT-B

        abstract = nnx.eval_shape(lambda: encoder_model(cfg, nnx.Rngs(0)))
        self._graphdef, self._state = nnx.split(abstract)
        self.load_params(params)
        self._run = jax.jit(
            functools.partial(_chunk_steps, self._graphdef),
            static_argnames=("all_layers", "per_step"),
        )

    def load_params(self, params: Mapping[str, Any]) -> None:
        """Replaces the encoder's parameters in place, as the constructor takes them.

        The jitted function is kept: swapping parameters of the same shapes does not compile
        again (a new Encoder does, ~2 s on a CPU), e.g. to score each evaluation of a run.

        Raises:
          ValueError: the parameters' shapes do not match the model config.
        """
        cfg = self.model_config
        params = {k: params[k] for k in ENCODER_KEYS if k in params}
        want, got = _flat_shapes(nnx.to_pure_dict(self._state)), _flat_shapes(params)
        if want != got:
            bad = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
            raise ValueError(
                f"encoder parameters do not match the model config (width {cfg.width}, depth "
                f"{cfg.depth}): first differences {bad[:5]}; load them with the config they "
                "were saved with"
            )
        nnx.replace_by_pure_dict(self._state, jax.tree.map(jnp.asarray, params))

    def params(self) -> dict:
        """The encoder's parameters {"patch_embed", "cls_token", "student"}, as pure dicts."""
        return nnx.to_pure_dict(self._state)

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, spec: str, *, model_config: Any = None, seed: int = 0, **kwargs) -> Encoder:
        """An encoder from an export dir, a training workdir or "random" / "random:VARIANT".

        A workdir gives its export if it has one, else the newest checkpoint's student encoder.
        "random" is the untrained baseline: variant B (or `model_config`), init seeded by `seed`.
        Relative paths and `~` are resolved against the current directory. Other keyword
        arguments go to the constructor (batch_size, dtype).

        Raises:
          cli.UserError: `spec` is none of these (the message lists the forms), or an unknown
            variant.
        """
        spec = str(spec)
        if spec == "random" or spec.startswith("random:"):
            variant = spec.partition(":")[2]
            if variant and model_config is not None:
                raise ValueError(f"{spec!r} names a variant and model_config is set: give one")
            if variant and variant not in models.VARIANTS:
                raise cli.UserError(
                    f"encoder {spec!r}: unknown variant {variant!r}; known: "
                    f"{', '.join(models.VARIANTS)}"
                )
            return cls.random(model_config or variant or DEFAULT_VARIANT, seed=seed, **kwargs)
        if model_config is not None:
            raise ValueError(
                "model_config is only for 'random' encoders: an export or workdir brings its own"
            )
        path = epath.Path(cli.abspath(spec))
        if (path / "config.json").exists():
            return cls.from_export(str(path), **kwargs)
        if (path / "export" / "config.json").exists():
            return cls.from_export(str(path / "export"), **kwargs)
        if (path / "checkpoints").exists():
            return cls.from_checkpoint(str(path), **kwargs)
        where = "no such path" if not path.exists() else "not an encoder"
        raise cli.UserError(f"encoder {spec!r}: {where}; {ENCODER_FORMS}")

    @classmethod
    def random(cls, model_config: Any = DEFAULT_VARIANT, seed: int = 0, **kwargs) -> Encoder:
        """A randomly initialised encoder (the reference init; equal to the student of
        `models.build(model_config, nnx.Rngs(seed))`): the probe's untrained baseline."""
        cfg = models.model_config(model_config)
        params = nnx.to_pure_dict(nnx.state(encoder_model(cfg, nnx.Rngs(seed))))
        return cls(cfg, params, **kwargs)

    @classmethod
    def from_export(cls, path: str, **kwargs) -> Encoder:
        """An encoder from an export folder (matpac_jax/inference/export.py): its front end and head too."""
        params, config = export.load_export(path)
        head = None
        if config.get("head") and "head" in params:
            head = classifier.Head.from_export(params["head"], config["head"])
        return cls(
            config["model"],
            params,
            front_end=audio.FrontEnd(**config["front_end"]),
            normalization=config.get("normalization"),
            head=head,
            **kwargs,
        )

    @classmethod
    def from_checkpoint(cls, workdir: str, **kwargs) -> Encoder:
        """The student encoder of the newest checkpoint of a training workdir that restores.

        The model config and normalisation come from WORKDIR/run.json; the front end is the
        papers' (run.json does not record it: export the encoder when the front end differs).
        """
        workdir = epath.Path(workdir)
        run_path = workdir / "run.json"
        if not run_path.exists():
            raise FileNotFoundError(
                f"{run_path} not found: it holds the model config the checkpoints need"
            )
        run = json.loads(run_path.read_text())
        cfg = models.model_config(run["model"])
        data = run.get("config", {}).get("data", {})
        normalization = {k: data[k] for k in ("mean", "std") if k in data}
        params = restore_checkpoint_params(workdir / "checkpoints")
        return cls(cfg, params, normalization=normalization, **kwargs)

    # ------------------------------------------------------------------ embedding

    def chunk_flops(self, frames: int, batch: int = 1) -> float:
        """FLOPs of one model call on `batch` chunks of `frames` frames (a multiple of 16, at
        most `chunk_frames`), as XLA's cost analysis counts the compiled program."""
        x = jax.ShapeDtypeStruct((batch, self.model_config.n_mels, frames), jnp.float32)
        lowered = self._run.lower(self._state, x, all_layers=False, per_step=False)
        cost = lowered.compile().cost_analysis()
        return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

    def step_times(self, num_steps: int) -> np.ndarray:
        """Centre time (s) of each step: the middle of its first and last frame's samples."""
        fe, p = self.front_end, self.step_frames
        start = np.arange(num_steps) * p * fe.hop_length
        return (start + ((p - 1) * fe.hop_length + fe.n_fft) / 2) / fe.sample_rate

    def embed(
        self,
        audio_in: Any,
        sample_rate: int,
        *,
        layers: bool = False,
        timestamps: bool = False,
        progress: bool = False,
    ) -> np.ndarray | Embeddings:
        """Embeds one clip or a batch of clips of any lengths (precise mode).

        Args:
          audio_in: a mono clip (samples,), a batch (n, samples) or a list of mono clips.
          sample_rate: their sample rate; resampled to 16 kHz when it differs.
          layers: return every layer (L = depth; the last is after the final LN).
          timestamps: also return per-step embeddings and their times.
          progress: a bar over the clips on a terminal, log lines otherwise (`cli.progress`).

        Returns:
          float32 clip embeddings (n, E), (n, L, E) with `layers`, without the n for a single
          clip; an `Embeddings` if `timestamps`.
        """
        clips, single = as_clips(audio_in)
        clip, steps, window = [], [], []
        bar = cli.progress(len(clips), desc="embed", unit="clip", enabled=progress)
        try:
            for i, wave in enumerate(clips):
                mel = normalized_log_mel(
                    wave, sample_rate, self.front_end, self.mean, self.std, i, self._log_mel
                )
                pad = -mel.shape[1] % self.step_frames
                window.append(np.pad(mel, ((0, 0), (0, pad))))  # zeros in the normalised domain
                # A window at a time: a long list never holds all its log-mels at once.
                chunks = sum(-(-m.shape[1] // self.chunk_frames) for m in window)
                if chunks >= 4 * self.batch_size or i == len(clips) - 1:
                    self._run_window(window, layers, timestamps, clip, steps)
                    bar.update(len(window))
                    window = []
        finally:
            bar.close()
        shape = (-1, self.num_layers, self.embedding_size) if layers else (-1, self.embedding_size)
        clip = np.stack(clip).reshape(shape) if clip else np.zeros((0, *shape[1:]), np.float32)
        if timestamps:
            steps = [s if layers else s[0] for s in steps]  # (L, S, E) or (S, E)
            times = [self.step_times(s.shape[-2]) for s in steps]
            if single:
                return Embeddings(clip[0], steps[0], times[0])
            return Embeddings(clip, steps, times)
        return clip[0] if single else clip

    def classify(
        self, audio_in: Any, sample_rate: int, *, top_k: int = 5, activation: str | None = None
    ) -> Predictions:
        """Class probabilities and top labels from the export's head (AudioSet or a probe).

        Args:
          audio_in: as for `embed`.
          sample_rate: their sample rate.
          top_k: labels kept per clip, most probable first.
          activation: "softmax" (the reference's, the default) or "sigmoid" (independent
            per-class probabilities, e.g. for AudioSet's multi-label classes).

        Returns:
          `Predictions`; for a single 1-D clip, `probs` is (C,) and `top` one list.

        Raises:
          ValueError: the encoder has no head.
        """
        if self.head is None:
            raise ValueError(
                "this encoder has no classification head: convert the published AudioSet model "
                "or add a probe (python -m matpac_jax.interop.convert from-torch ... --probe P)"
            )
        clip = self.embed(audio_in, sample_rate)
        single = clip.ndim == 1
        bands = self.model_config.n_mels // self.model_config.patch
        probs = self.head.probabilities(np.atleast_2d(clip), bands, activation)
        top = self.head.top(probs, top_k)
        if single:
            return Predictions(probs[0], top[0], self.head.labels)
        return Predictions(probs, top, self.head.labels)

    def embed_log_mels(self, mels: Any, *, layers: bool = False) -> np.ndarray:
        """Clip embeddings of already normalised log-mels: `embed` without the front end.

        Args:
          mels: normalised log-mels, (n, F, T) or a list of (F, T) of any lengths T.
          layers: return every layer, as for `embed`.

        Returns:
          float32 (n, E), or (n, L, E) with `layers`: what `embed` gives for the clips whose
          normalised log-mels these are, when `embed` runs them in the same call (one batch).
        """
        # Zeros after normalisation, as `embed` pads (docs/method.md, section 7).
        mels = [np.pad(m, ((0, 0), (0, -m.shape[1] % self.step_frames))) for m in mels]
        clip = []
        self._run_window(mels, layers, False, clip, [])
        shape = (-1, self.num_layers, self.embedding_size) if layers else (-1, self.embedding_size)
        return np.stack(clip).reshape(shape) if clip else np.zeros((0, *shape[1:]), np.float32)

    def _run_window(self, mels, all_layers, per_step, clip_out, steps_out) -> None:
        """Runs the chunks of padded normalised log-mels; appends (L, E) means (and steps)."""
        groups = collections.defaultdict(list)  # chunk length -> [(clip, chunk index, chunk)]
        for i, mel in enumerate(mels):
            for j, start in enumerate(range(0, mel.shape[1], self.chunk_frames)):
                chunk = mel[:, start : start + self.chunk_frames]
                groups[chunk.shape[1]].append((i, j, chunk))
        outputs = [{} for _ in mels]
        for length, items in groups.items():
            for k in range(0, len(items), self.batch_size):
                batch = items[k : k + self.batch_size]
                size = _bucket(len(batch), self.batch_size)
                x = np.zeros((size, mels[0].shape[0], length), np.float32)  # zero rows: padding
                for row, (_, _, chunk) in enumerate(batch):
                    x[row] = chunk
                y = np.asarray(self._run(self._state, x, all_layers=all_layers, per_step=per_step))
                for row, (i, j, _) in enumerate(batch):
                    outputs[i][j] = y[row]
        for mel, out in zip(mels, outputs):
            num_steps = mel.shape[1] // self.step_frames
            parts = [out[j] for j in range(len(out))]
            if per_step:
                steps = np.concatenate(parts, axis=1)  # (L, S, E)
                steps_out.append(steps)
                clip_out.append(steps.mean(axis=1, dtype=np.float64).astype(np.float32))
            else:
                total = np.sum(parts, axis=0, dtype=np.float64)  # (L, E) summed over steps
                clip_out.append((total / num_steps).astype(np.float32))


def load_encoder(spec: str, **kwargs) -> Encoder | LogMelBaseline:
    """What every command's `--encoder` takes: `logmel` (the `LogMelBaseline`), or anything
    `Encoder.load` takes (keyword arguments go there)."""
    if str(spec) == "logmel":
        return LogMelBaseline()
    return Encoder.load(spec, **kwargs)
