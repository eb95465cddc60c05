"""Classification heads on clip embeddings: the published AudioSet head and downstream probes.

An export may carry one head (`python -m matpac_jax.interop.convert from-torch ... [--probe P]`), in
`params["head"]` and `config["head"]`; `inference.Encoder.classify` applies it. As the reference's
`probe_forward` does it:

- AudioSet (527 classes): the clip embedding averaged over the F/16 frequency bands (D wide),
  BatchNorm with the running statistics (eps 1e-5, no affine), a linear layer, softmax.
- probe: a linear layer on the (F/16 * D)-wide clip embedding, softmax.

The reference turns both into probabilities with a softmax, AudioSet's multi-label classes too;
`activation="sigmoid"` gives independent per-class probabilities instead.

AudioSet class names and their order: `matpac_jax/labels.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from typing import Any

import numpy as np

from matpac_jax import cli
from matpac_jax import labels as labels_lib

ACTIVATIONS = ("softmax", "sigmoid")
BATCH_NORM_EPS = 1e-5  # torch.nn.BatchNorm1d's default


def audioset_labels() -> list[str]:
    """The 527 AudioSet display names in the reference head's class order (sorted by `mid`)."""
    return [row["display_name"] for row in labels_lib.audioset_classes()]


def read_labels(path: str) -> list[str]:
    """Class names from a user file, in class order.

    Forms: `.json` a list of names, {name: index} or {index: name} (the reference's mapping
    files); `.csv` with a `display_name` (or `name`, `label`) column, in file order; anything else
    one name per line.

    Raises:
      cli.UserError: the file cannot be read as any of these.
    """
    path = cli.input_file(path, "--labels", what="labels file")
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    try:
        if path.endswith(".json"):
            return _labels_from_json(json.loads(text))
        if path.endswith(".csv"):
            rows = list(csv.DictReader(text.splitlines()))
            column = next(c for c in ("display_name", "name", "label") if c in rows[0])
            return [row[column] for row in rows]
    except (ValueError, KeyError, IndexError, StopIteration) as e:
        raise cli.UserError(f"--labels {path}: cannot read class names ({e!r})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _labels_from_json(data: Any) -> list[str]:
    if isinstance(data, list):
        return [str(x) for x in data]
    pairs = {}
    for key, value in data.items():
        index, name = (int(key), value) if str(key).lstrip("-").isdigit() else (int(value), key)
        pairs[index] = str(name)
    if sorted(pairs) != list(range(len(pairs))):
        raise ValueError("class indices are not 0..C-1")
    return [pairs[i] for i in range(len(pairs))]


def head_config(kind: str, classes: int, labels: list[str] | None) -> dict:
    """config.json's "head" entry for an imported head."""
    if labels is not None and len(labels) != classes:
        raise cli.UserError(f"{len(labels)} class names for a head of {classes} classes")
    return {
        "kind": kind,
        "classes": classes,
        "activation": "softmax",  # the reference's probe_forward
        "norm_eps": BATCH_NORM_EPS,
        "labels": labels,
    }


@dataclasses.dataclass(frozen=True)
class Head:
    """A linear classification head on clip embeddings (see the module docstring)."""

    kind: str  # "audioset" (frequency-averaged input, batch norm) or "probe"
    kernel: np.ndarray  # (in, C)
    bias: np.ndarray  # (C,)
    labels: list[str]
    activation: str = "softmax"
    norm_mean: np.ndarray | None = None
    norm_var: np.ndarray | None = None
    norm_eps: float = BATCH_NORM_EPS

    @classmethod
    def from_export(cls, params: dict, config: dict) -> Head:
        """The head of an export: `params["head"]`, `config["head"]`."""
        arrays = {k: np.asarray(v, np.float64) for k, v in params.items()}
        classes = arrays["kernel"].shape[1]
        labels = config.get("labels") or [f"class {i}" for i in range(classes)]
        return cls(
            kind=config["kind"],
            kernel=arrays["kernel"],
            bias=arrays["bias"],
            labels=list(labels),
            activation=config.get("activation", "softmax"),
            norm_mean=arrays.get("norm_mean"),
            norm_var=arrays.get("norm_var"),
            norm_eps=float(config.get("norm_eps", BATCH_NORM_EPS)),
        )

    def logits(self, clip: np.ndarray, bands: int) -> np.ndarray:
        """(n, F/16 * D) clip embeddings -> (n, C) logits, float64."""
        x = np.asarray(clip, np.float64)
        if self.kind == "audioset":  # the reference's concat_freq=False: mean over the bands
            x = x.reshape(*x.shape[:-1], bands, -1).mean(axis=-2)
        if self.norm_mean is not None:
            x = (x - self.norm_mean) / np.sqrt(self.norm_var + self.norm_eps)
        return x @ self.kernel + self.bias

    def probabilities(self, clip: np.ndarray, bands: int, activation: str | None = None):
        """(n, E) clip embeddings -> (n, C) float32 class probabilities."""
        activation = activation or self.activation
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of {ACTIVATIONS}")
        z = self.logits(clip, bands)
        if activation == "sigmoid":
            return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)

    def top(self, probs: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most probable (label, probability) pairs of each row, most probable first."""
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        return [[(self.labels[j], float(p[j])) for j in row] for p, row in zip(probs, order)]
