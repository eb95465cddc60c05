r"""Probe evaluators, during training (big_vision style) and offline, on the same code path.

  python -m matpac_jax.evaluation.evaluators --encoder runs/local --task demo:pitch [--task T.csv ...]

A task is a probe task CSV (`path,label,split` or `path,label,fold`, see matpac_jax/evaluation/tasks.py)
or `demo:timbre`, `demo:pitch`, `demo:event`: the demo corpus's tasks, made on first use. Each
clip is cut or padded to the task's median duration, as the linear probe does; its log-mel is
computed once and cached (`--cache`: a .npz named by a hash of the clips' files, that length and
the front end). Each evaluation runs the encoder in the papers' precise mode (docs/method.md,
section 7) on the cached log-mels and scores the clip embeddings:

- `knn` (the command's and the configs' default; `runlocal` uses `linear`): DINO's weighted
  k-NN. Embeddings are L2-normalised; each test clip takes the k = 20 training clips of highest
  cosine similarity, each voting for its label with weight exp(similarity / 0.07); the top-voted
  class is the prediction (ties: the first class). Memory: the train split (k-fold tasks: the
  other folds). Metric: accuracy (`knn_acc`), or macro mAP of the votes for a multi-label task
  (`knn_map`). A multi-label task's unknown labels (the CSV's `unknown` column: OpenMIC's
  unannotated instruments) cast no vote: a class's votes are those of the neighbours whose
  label of it is known, scaled to all k neighbours' weight.
- `linear`: probe_lib's linear probe (its default protocol, seed 0) on at most
  `linear_max_train` training clips, the same ones every time (`linear_acc` / `linear_map`).
  On the demo's tasks its last score ranks a pretrained encoder, its initial weights and log-mel
  as the final probe table does, where the kNN vote often does not (docs/small_scale.md, section 7).

Unknown labels are left out of every score as the probe leaves them out: of the linear probe's
loss and validation, of the test mAP and of its resamples.

Each score comes with the half-width of its 95% interval over the test clips (the score's
spread when the test clips are drawn again with replacement, `score_with_interval`): with a
few hundred test clips one clip is a third of a point, and the interval says how far apart two
curves must be to differ.

Keys: `eval/<task>/<protocol>_<metric>` and `..._ci95` (`eval/<task>/teacher_...` for the
teacher encoder).
Nothing here draws on a training RNG or the data position, so a resumed run evaluates
identically, and an in-training score equals this command's on the checkpoint or export of the
same step (the trainer's side, matpac_jax/train/evals.py, scores with this module's `Evaluator`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from matpac_jax import cli, config_lib
from matpac_jax.audio import frontend as audio
from matpac_jax.data import demo_corpus
from matpac_jax.evaluation import tasks as probe_data

# jax, the models and probe_lib are imported inside the functions that need them, so that a
# mistake in the inputs is answered before those slow imports, and so that the tools that read
# the baselines (run_summary, plot_run) start without them.

PROG = "python -m matpac_jax.evaluation.evaluators"
PROTOCOLS = ("knn", "linear")
DEMO_TASKS = ("timbre", "pitch", "event")
EMBED_WINDOW = 64  # clips per encoder call, as the probe's embed_clips: the same batches
BASELINES = "eval_baselines.json"  # in the workdir: the initial weights' and log-mel scores
BOOTSTRAP = 1000  # resamples of the test clips behind each score's 95% interval
_CACHE_VERSION = 1
CI_SUFFIX = "_ci95"  # eval/<task>/<metric>_ci95: the 95% half-width of eval/<task>/<metric>


def read_baselines(workdir: str) -> dict:
    """WORKDIR/eval_baselines.json: {"init": the scores of the run's initial weights (its step-0
    evaluation), "logmel": those of the log-mel statistics}, with their `_ci95` keys ({} when
    there is none)."""
    path = os.path.join(workdir, BASELINES)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How embeddings are scored (module docstring); the config's `eval_*` keys."""

    protocols: tuple[str, ...] = ("knn",)
    knn_k: int = config_lib.EVAL_KNN_K
    knn_temperature: float = config_lib.EVAL_KNN_TEMPERATURE
    linear_max_train: int = config_lib.EVAL_LINEAR_MAX_TRAIN

    @classmethod
    def from_config(cls, c) -> Protocol:
        p = split_list(c.eval_protocols)
        return cls(p, c.eval_knn_k, c.eval_knn_temperature, c.eval_linear_max_train)

    def check(self, flag: str = "--config.eval_") -> None:
        """UserError for an unknown protocol or a value out of range."""
        if not self.protocols or not set(self.protocols) <= set(PROTOCOLS):
            shown = ",".join(self.protocols)
            raise cli.UserError(f"{flag}protocols={shown}: choose among {', '.join(PROTOCOLS)}")
        if self.knn_k < 1 or not self.knn_temperature > 0 or self.linear_max_train < 2:
            raise cli.UserError(
                f"{flag}knn_k={self.knn_k}, {flag}knn_temperature={self.knn_temperature}, "
                f"{flag}linear_max_train={self.linear_max_train}: need k >= 1, a temperature "
                "> 0 and at least 2 training clips"
            )


def split_list(text: str) -> tuple[str, ...]:
    """`a, b,,c` -> ("a", "b", "c")."""
    return tuple(s.strip() for s in str(text or "").split(",") if s.strip())


# ---------------------------------------------------------------------------------------------
# Tasks and their cached log-mels.


def check_spec(spec: str, flag: str) -> str | None:
    """A demo task's name, None for a CSV (checked); UserError for an unknown name or file."""
    if not spec.startswith("demo:"):
        cli.input_file(spec, flag, what="task CSV")
        return None
    name = spec.partition(":")[2]
    if name not in DEMO_TASKS:
        known = ", ".join(f"demo:{t}" for t in DEMO_TASKS)
        raise cli.UserError(f"{flag} {spec}: unknown demo task; known: {known}")
    return name


def resolve_task(spec: str, demo_cache: str, flag: str = "--task") -> str:
    """A task spec -> the absolute path of its CSV; `demo:NAME` makes the demo corpus if needed."""
    name = check_spec(spec, flag)
    if name is None:
        return cli.abspath(spec)
    return os.path.join(_demo_audio(cli.abspath(demo_cache)), "tasks", f"{name}.csv")


@functools.cache
def _demo_audio(demo_cache: str) -> str:
    """The demo corpus's audio folder, generated if needed (once per process and folder)."""
    audio_dir = os.path.join(demo_cache, "audio")
    # Idempotent, and the same corpus as the pretraining and tagging shards' (data/demo.py).
    demo_corpus.generate(audio_dir, num_workers=2, num_tagging=demo_corpus.DEFAULT_TAGGING)
    return audio_dir


def mel_cache_file(paths: list[str], num_samples: int, front_end: dict, cache_dir: str) -> str:
    """Where the log-mels of these clips are cached: named by a hash of the files (names, sizes,
    times), the clip length and the front end, so tasks over the same clips share one file."""
    files = [f"{p}:{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}" for p in paths]
    key = json.dumps([_CACHE_VERSION, num_samples, front_end, files]).encode()
    return os.path.join(cache_dir, f"mels-{hashlib.sha256(key).hexdigest()[:16]}.npz")


def clip_log_mels(paths: list[str], num_samples: int, front_end, cache_dir: str) -> np.ndarray:
    """(n, F, T) float32 log-mels (not normalised) of fixed-length clips, cached in `cache_dir`."""

    path = mel_cache_file(paths, num_samples, front_end.to_dict(), cache_dir)
    if os.path.exists(path):
        with np.load(path) as z:
            return z["mels"]

    def log_mel(p: str) -> np.ndarray:
        try:
            wave = audio.load_audio(p, front_end.sample_rate)
        except audio.AudioError as e:
            raise cli.UserError(f"cannot load {probe_data.shown(p)}: {e}") from e
        return audio.log_mel(probe_data.fix_length(wave, num_samples), front_end)

    # Decoding and the STFT's matrix products release the GIL: threads overlap them. A 400-wide
    # product gains nothing from BLAS threads, which only contend (8x slower on 2 busy cores).
    import threadpoolctl  # pylint: disable=g-import-not-at-top

    with threadpoolctl.threadpool_limits(1), concurrent.futures.ThreadPoolExecutor(4) as pool:
        mels = np.stack(list(pool.map(log_mel, paths))).astype(np.float32)
    cli.make_dir(cache_dir)
    tmp = f"{path}.{os.getpid()}.tmp"  # several processes may fill the cache at once
    with open(tmp, "wb") as f:
        np.savez(f, mels=mels)
    os.replace(tmp, path)
    return mels


@dataclasses.dataclass
class EvalTask:
    """A task ready to score: targets, partitions, and the key of its clips' log-mels."""

    name: str
    y: np.ndarray  # (n,) class indices or (n, C) multi-hot
    partitions: list  # probe_lib.Partition
    num_classes: int
    multilabel: bool
    clips: str  # mel cache file: tasks over the same clips share their embeddings
    known: np.ndarray | None = None  # (n, C) 1/0: 0 where nobody annotated a row's class


# ---------------------------------------------------------------------------------------------
# Scores of fixed embeddings: pure functions.


def knn_votes(
    memory, memory_y, queries, *, k: int, temperature: float, num_classes: int, known=None
):
    """(nq, C) votes of weighted k-NN (module docstring), in float64 for reproducible sums.

    Args:
      memory, queries: (nm, D) and (nq, D) embeddings (L2-normalised here).
      memory_y: (nm,) class indices or (nm, C) multi-hot.
      known: (nm, C) 1/0 mask of the memory's multi-hot labels; an unknown label casts no vote:
        a class's votes are its known neighbours' votes x (all k weights / theirs); None: all.
    """
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = unit(np.asarray(queries, np.float64)) @ unit(np.asarray(memory, np.float64)).T
    # A stable sort: equal similarities keep the memory order, so the vote is reproducible.
    idx = np.argsort(-sim, axis=1, kind="stable")[:, : min(k, len(memory))]
    weights = np.exp((np.take_along_axis(sim, idx, axis=1) - 1.0) / temperature)  # <= 1: finite
    labels = memory_y if memory_y.ndim == 2 else np.eye(num_classes)[memory_y]
    labels = np.asarray(labels, np.float64)[idx]  # (nq, k, C)
    if known is None:
        return np.einsum("qk,qkc->qc", weights, labels)
    known = np.asarray(known, np.float64)[idx]
    known_weight = np.einsum("qk,qkc->qc", weights, known)
    votes = np.einsum("qk,qkc->qc", weights, labels * known)
    scale = weights.sum(axis=1, keepdims=True) / np.maximum(known_weight, 1e-300)
    return np.where(known_weight > 0, votes * scale, 0.0)


def knn_score(x, task: EvalTask, protocol: Protocol) -> tuple[float, float]:
    """kNN accuracy (or mAP), the mean over the task's partitions, and its 95% half-width."""
    kw = {"k": protocol.knn_k, "temperature": protocol.knn_temperature}
    y, c, known = task.y, task.num_classes, task.known

    def rows(r):
        return None if known is None else known[r]

    votes = [
        knn_votes(x[p.train], y[p.train], x[p.test], num_classes=c, known=rows(p.train), **kw)
        for p in task.partitions
    ]
    tests = [p.test for p in task.partitions]
    return score_with_interval([y[t] for t in tests], votes, [rows(t) for t in tests])


def score_with_interval(
    ys: list, scores: list, knowns: list | None = None, resamples: int = BOOTSTRAP
) -> tuple[float, float]:
    """The protocol's score (accuracy or macro mAP) of each partition's test predictions,
    averaged over the partitions, and the half-width of its 95% interval over the test clips:
    1.96 x the standard deviation of the score when each partition's test clips are drawn again
    with replacement (`resamples` times, a fixed seed). It measures how much the score owes to
    which clips happen to be in the test split: with 150 test clips, about +-7 points at 50%.
    `knowns`: per partition, the (n_test, C) label mask of a multi-label task (unknown labels
    are left out of the mAP and its resamples), or None.
    """
    from matpac_jax.evaluation import protocol as probe_lib  # pylint: disable=g-import-not-at-top (jax: see the note above PROG)

    knowns = knowns if knowns is not None else [None] * len(ys)
    value = float(np.mean([probe_lib.score(y, v, k) for y, v, k in zip(ys, scores, knowns)]))
    rng = np.random.default_rng(0)
    if ys[0].ndim == 2:  # mAP costs a scikit-learn call per class and draw: fewer draws
        resamples = min(resamples, 200)
    draws = np.zeros(resamples)
    for y, v, k in zip(ys, scores, knowns):
        idx = rng.integers(0, len(y), size=(resamples, len(y)))
        if y.ndim == 1:  # accuracy: the mean of a resampled 0/1 vector
            draws += (np.argmax(v, axis=1) == y)[idx].mean(axis=1)
        else:  # a draw without a positive of some class leaves that class out of its mean
            draws += [
                _nan_safe(probe_lib.mean_average_precision(y[i], v[i], None if k is None else k[i]))
                for i in idx
            ]
    return value, float(1.96 * np.std(draws / len(ys)))


def _nan_safe(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def subsample(rows, y, n: int, rng) -> np.ndarray:
    """At most `n` of `rows` (sorted), drawn with `rng`; single-label classes are taken in turn,
    so that each keeps about n / C rows (all of its rows if it has fewer)."""
    rows = rng.permutation(rows)
    if len(rows) > n and y.ndim == 1:
        labels = y[rows]
        rank = np.zeros(len(rows), np.int64)  # a row's place among its class's rows
        for c in np.unique(labels):
            rank[labels == c] = np.arange(np.sum(labels == c))
        rows = rows[np.argsort(rank, kind="stable")]
    return np.sort(rows[:n])


def linear_score(x, task: EvalTask, protocol: Protocol) -> tuple[float, float]:
    """probe_lib's linear probe (default protocol, seed 0) on a fixed subsample of train rows,
    and its 95% half-width over the test clips (`score_with_interval`)."""
    from matpac_jax.evaluation import protocol as probe_lib  # pylint: disable=g-import-not-at-top (jax: see the note above PROG)

    rng = np.random.default_rng(0)  # the same rows at every evaluation
    n = protocol.linear_max_train
    parts = [p._replace(train=subsample(p.train, task.y, n, rng)) for p in task.partitions]
    known = task.known
    result = probe_lib.evaluate(
        x, task.y, parts, num_classes=task.num_classes, seeds=(0,), keep_logits=True, known=known
    )
    tests = [p.test for p in parts]
    knowns = None if known is None else [known[t] for t in tests]
    return score_with_interval([task.y[t] for t in tests], result["test_logits"][0], knowns)


SCORERS = {"knn": knn_score, "linear": linear_score}


# ---------------------------------------------------------------------------------------------
# Embeddings of the cached log-mels, and the evaluator.


def embed_mels(featurizer, mels: np.ndarray) -> np.ndarray:
    """(n, E) clip embeddings of (n, F, T) raw log-mels: what `featurizer.embed` gives for the
    clips' audio (an `inference.Encoder` or `LogMelBaseline`), without recomputing the log-mels."""
    from matpac_jax.inference import encoder as inference  # pylint: disable=g-import-not-at-top (jax: see the note above PROG)

    x = audio.normalize(mels, featurizer.mean, featurizer.std)
    if isinstance(featurizer, inference.LogMelBaseline):
        return np.concatenate([x.mean(axis=2), x.std(axis=2)], axis=1)
    # Encoder.embed's chunks and batches, from log-mels.
    windows = range(0, len(x), EMBED_WINDOW)
    return np.concatenate([featurizer.embed_log_mels(x[i : i + EMBED_WINDOW]) for i in windows])


class Evaluator:
    """The tasks with their log-mels, scored for any featurizer. Built once per run or command.

    Args:
      specs: task specs (module docstring).
      front_end: the `audio.FrontEnd` of the encoder.
      cache_dir, demo_cache: the log-mel cache and the demo corpus folders.
      protocol: how to score.
      flag: the option that named the specs, for error messages.
    """

    def __init__(self, specs, front_end, cache_dir, demo_cache, protocol=Protocol(), flag="--task"):
        self.protocol, self.front_end, self.tasks, self.mels = protocol, front_end, [], {}
        for spec in specs:
            task = probe_data.read_task(resolve_task(spec, demo_cache, flag))
            if any(t.name == task.name for t in self.tasks):
                raise cli.UserError(f"{flag} {spec}: a second task named {task.name!r}")
            n = round(probe_data.median_seconds(task.paths) * front_end.sample_rate)
            key = mel_cache_file(task.paths, n, front_end.to_dict(), cache_dir)
            if key not in self.mels:
                self.mels[key] = clip_log_mels(task.paths, n, front_end, cache_dir)
            parts, c = task.partitions(), len(task.classes)
            self.tasks.append(
                EvalTask(task.name, task.targets(), parts, c, task.multilabel, key, task.known())
            )

    def evaluate(self, featurizer, prefix: str = "") -> dict:
        """{`eval/<task>/<prefix><protocol>_<metric>`: score, and the same key + `_ci95`: the
        half-width of its 95% interval over the test clips}; tasks over the same clips embed
        them once."""
        embeddings = {key: embed_mels(featurizer, m) for key, m in self.mels.items()}
        out = {}
        for t in self.tasks:
            for p in self.protocol.protocols:
                key = f"eval/{t.name}/{prefix}{p}_{'map' if t.multilabel else 'acc'}"
                value, half = SCORERS[p](embeddings[t.clips], t, self.protocol)
                out[key], out[key + CI_SUFFIX] = value, half
        return out

    def logmel_scores(self, normalization: dict) -> dict:
        """The scores of the log-mel statistics, normalised as the encoder's inputs."""
        from matpac_jax.inference import encoder as inference  # pylint: disable=g-import-not-at-top (jax: see the note above PROG)

        return self.evaluate(inference.LogMelBaseline(self.front_end, normalization))


# ---------------------------------------------------------------------------------------------
# Command line: the offline twin of the in-training evaluation.


def _main(argv) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("--encoder", required=True, help="export, workdir, random[:VARIANT] or logmel")
    p.add_argument("--task", required=True, action="append", help="task CSV or demo:NAME; repeat")
    p.add_argument("--protocols", default="knn", help=f"comma-separated: {', '.join(PROTOCOLS)}")
    p.add_argument("--knn_k", type=int, default=config_lib.EVAL_KNN_K)
    p.add_argument("--knn_temperature", type=float, default=config_lib.EVAL_KNN_TEMPERATURE)
    p.add_argument("--linear_max_train", type=int, default=config_lib.EVAL_LINEAR_MAX_TRAIN)
    p.add_argument("--cache", default="~/.cache/matpac_jax/eval", help="log-mel cache folder")
    p.add_argument("--demo_cache", default="~/.cache/matpac_jax/demo", help="demo corpus folder")
    a = p.parse_args(argv)
    protocol = Protocol(split_list(a.protocols), a.knn_k, a.knn_temperature, a.linear_max_train)
    protocol.check("--")
    for spec in a.task:
        check_spec(spec, "--task")
    cache, demo = cli.output_dir(a.cache, "--cache"), cli.output_dir(a.demo_cache, "--demo_cache")
    from matpac_jax.inference import encoder as inference  # pylint: disable=g-import-not-at-top (jax: see the note above PROG)

    featurizer = inference.load_encoder(a.encoder)
    start = time.perf_counter()
    scores = Evaluator(a.task, featurizer.front_end, cache, demo, protocol).evaluate(featurizer)
    print(json.dumps({**scores, "eval/seconds": time.perf_counter() - start}))
    return 0


def main(argv=None) -> int:
    """`python -m matpac_jax.evaluation.evaluators ...`; returns the exit status."""
    return cli.run(_main, sys.argv[1:] if argv is None else list(argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
