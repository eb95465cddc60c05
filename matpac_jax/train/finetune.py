r"""Fine-tunes a pretrained encoder for multi-label tagging: AudioSet's protocol (M2D's recipe).

  python -m matpac_jax.train.finetune --config=configs/finetune_audioset.py --init=W/export \
      --config.data.train_dir=mels/as2m --config.data.eval_dir=mels/eval --workdir=W2
  python -m matpac_jax.train.finetune --config=configs/finetune_audioset.py:runlocal \
      --init=runs/demo/pretrain --workdir=runs/demo/finetune

The model is the encoder of `--init` (an export, a training workdir with one, or
`random[:VARIANT]`), then the mean of the last layer's patch tokens (D wide), BatchNorm
without affine parameters (batch statistics while training, running ones to evaluate) and a
linear layer to the classes. A step (`make_step`): per-example mixup of the normalised log-mels
and their labels, then one frequency band and one time span masked per example, binary
cross-entropy averaged over batch and classes, SGD with momentum. The schedule, sampling and
numbers are the config's (configs/finetune_audioset.py).

Everything else is the pretraining trainer's (`train/loop.py`): the mesh and sharding, the
grain pipeline with the input position in each Orbax checkpoint, exact resume on any number of
processes, SIGTERM, metrics.jsonl and TensorBoard, the progress bar. Each epoch (and after the
last step) process 0 scores the eval split: each whole clip through the encoder as inference
runs it (chunks of `crop_frames`), the head, mAP (`eval/map`), with the best epoch so far
(`eval/best_map`, `eval/best_epoch`). The last step's encoder and head are exported together to
WORKDIR/export: `Encoder.load(...).classify` tags audio with them, `embed` embeds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx
from orbax.checkpoint import multihost

from matpac_jax import cli, models, storage
from matpac_jax.audio import shards
from matpac_jax.data import demo
from matpac_jax.data import pipeline as input_pipeline
from matpac_jax.evaluation import multilabel
from matpac_jax.inference import classifier, export
from matpac_jax.inference import encoder as inference
from matpac_jax.objective import schedules
from matpac_jax.train import loop as loop_lib
from matpac_jax.train import metrics as metric_writer
from matpac_jax.train import sharding, trainer

PROG = "python -m matpac_jax.train.finetune"
_INIT = flags.DEFINE_string(
    "init",
    None,
    "the pretrained encoder: an export folder, a training workdir with export/, or "
    "random[:VARIANT] (untrained, the baseline)",
)
flags.adopt_module_key_flags(trainer)  # --help lists --config, --workdir, ... with --init
BN_EPS = classifier.BATCH_NORM_EPS
BN_MOMENTUM = 0.1  # torch.nn.BatchNorm1d's: running = 0.9 running + 0.1 batch
HEAD_INIT_STD = 0.01  # the reference fine-tuning's head: normal(0, 0.01) weights, zero bias
WAIT_S = 3600  # the other processes wait this long for process 0's evaluation


@dataclasses.dataclass(frozen=True)
class Augment:
    """Per-example augmentations of a step (0 turns one off)."""

    mixup_alpha: float
    freq_mask: int  # widest band masked, in mel bins (a width in [0, freq_mask) is drawn)
    time_mask: int  # widest span masked, in frames


def mixup(key, x, y, alpha: float):
    """Each example i mixed with example perm(i): lam_i x_i + (1 - lam_i) x_perm(i), and the
    labels alike; lam_i ~ Beta(alpha, alpha), perm a random permutation of the batch."""
    if alpha <= 0:
        return x, y
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha, (x.shape[0],)).astype(x.dtype)
    perm = jax.random.permutation(k_perm, x.shape[0])

    def mix(a):
        w = lam.reshape(-1, *[1] * (a.ndim - 1))
        return w * a + (1 - w) * a[perm]

    return mix(x), mix(y)


def mask_spans(key, x, width: int, axis: int):
    """Zeros one span per example along `axis` (1: frequency, 2: time) of (B, F, T): its width
    floor(u * width), its start floor(v * (size - that width)), u, v ~ U[0, 1) (torchaudio's
    FrequencyMasking / TimeMasking draw, here per example)."""
    if width <= 0:
        return x
    size = x.shape[axis]
    k_w, k_s = jax.random.split(key)
    w = jnp.floor(jax.random.uniform(k_w, (x.shape[0],)) * width)
    start = jnp.floor(jax.random.uniform(k_s, (x.shape[0],)) * (size - w))
    pos = jnp.arange(size, dtype=jnp.float32)
    masked = (pos[None] >= start[:, None]) & (pos[None] < (start + w)[:, None])  # (B, size)
    masked = masked[:, :, None] if axis == 1 else masked[:, None, :]
    return jnp.where(masked, 0.0, x)


def augment(key, x, y, aug: Augment):
    k_mix, k_f, k_t = jax.random.split(key, 3)
    x, y = mixup(k_mix, x, y, aug.mixup_alpha)
    return mask_spans(k_t, mask_spans(k_f, x, aug.freq_mask, 1), aug.time_mask, 2), y


def features(graphdef, params, x):
    """(B, F, T) normalised log-mels -> (B, D) float32: the mean of the last layer's patch
    tokens (after the final LayerNorm, the cls token left out)."""
    model = nnx.merge(graphdef, {k: params[k] for k in inference.ENCODER_KEYS})
    z, _ = model.features(x)
    return jnp.mean(z[:, 1:].astype(jnp.float32), axis=1)


def head_logits(head, h, mean, var):
    return (h - mean) / jnp.sqrt(var + BN_EPS) @ head["kernel"] + head["bias"]


def init_state(key, model_cfg, encoder_params, num_classes, tx) -> dict:
    width = model_cfg.width
    params = {
        **{k: encoder_params[k] for k in inference.ENCODER_KEYS},
        "head": {
            "kernel": HEAD_INIT_STD * jax.random.normal(key, (width, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32),
        },
    }
    return {
        "params": params,
        "batch_stats": {"mean": jnp.zeros((width,)), "var": jnp.ones((width,))},
        "opt": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "skips": jnp.zeros((), jnp.int32),
    }


def make_step(graphdef, aug: Augment, lr_fn, tx, seed: int, freeze_encoder: bool):
    """`step(state, (x, y)) -> (state, metrics)`: x (B, F, T) normalised log-mels, y (B, C)
    multi-hot labels. A non-finite loss or gradient leaves the state but `step`, `skips`."""

    def loss_fn(params, x, y):
        if freeze_encoder:  # the linear-probe baseline: only the head learns
            params = {**jax.lax.stop_gradient(params), "head": params["head"]}
        h = features(graphdef, params, x)
        mean, var = jnp.mean(h, axis=0), jnp.var(h, axis=0)
        logits = head_logits(params["head"], h, mean, var)
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))
        return loss, (mean, var * h.shape[0] / max(h.shape[0] - 1, 1))  # torch: unbiased

    def step_fn(state, batch):
        x, y = batch
        step = state["step"]
        x, y = augment(jax.random.fold_in(jax.random.key(seed), step), x, y, aug)
        (loss, (mean, var)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], x, y
        )
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(_):
            updates, opt = tx.update(grads, state["opt"], state["params"])
            stats = state["batch_stats"]
            return {
                "params": optax.apply_updates(state["params"], updates),
                "opt": opt,
                "batch_stats": {
                    "mean": (1 - BN_MOMENTUM) * stats["mean"] + BN_MOMENTUM * mean,
                    "var": (1 - BN_MOMENTUM) * stats["var"] + BN_MOMENTUM * var,
                },
            }

        def keep(_):
            return {k: state[k] for k in ("params", "opt", "batch_stats")}

        new = {
            **jax.lax.cond(ok, update, keep, None),
            "step": step + 1,
            "skips": jnp.where(ok, 0, state["skips"] + 1),
        }
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr_fn(step),
            "skipped": 1 - ok.astype(jnp.int32),
            "skip_streak": new["skips"],
        }
        return new, metrics

    return step_fn


def make_optimizer(config, lr_fn) -> optax.GradientTransformation:
    """SGD with momentum (torch's form), with weight decay if the config sets one."""
    sgd = optax.sgd(lr_fn, momentum=config.optim.momentum)
    if config.optim.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.optim.weight_decay), sgd)
    return sgd


# ------------------------------------------------------------------------------ config, data


def check_config(config) -> None:
    """cli.UserError for a value that would fail late (before any work)."""
    loop_lib.check_run_config(config)
    if config.data.balanced and config.data.epoch_clips < config.batch_size:
        raise cli.UserError(
            f"--config.data.epoch_clips={config.data.epoch_clips}: an epoch must hold at least "
            f"one batch ({config.batch_size})"
        )
    if config.eval_every_epochs < 1:
        raise cli.UserError(f"--config.eval_every_epochs={config.eval_every_epochs}: >= 1")
    for name in ("train_dir", "eval_dir"):
        path = config.data[name]
        if path and storage.is_url(path):
            cli.input_dir(path, f"--config.data.{name}")  # one line: not from a bucket (yet)
        if path and not os.path.exists(os.path.join(cli.abspath(path), shards.INDEX_NAME)):
            raise cli.UserError(
                f"--config.data.{name} {path}: no {shards.INDEX_NAME}, not a folder of log-mel "
                "shards; make one with python -m matpac_jax.audio.preprocess --labels ..."
            )
    if bool(config.data.train_dir) != bool(config.data.eval_dir):
        raise cli.UserError(
            "--config.data.train_dir and --config.data.eval_dir go together (neither: the demo "
            "corpus's tagging clips)"
        )


def data_dirs(config) -> tuple[str, str]:
    """(train, eval) shard folders: the config's, or the demo corpus's tagging splits."""
    if config.data.train_dir:
        return cli.abspath(config.data.train_dir), cli.abspath(config.data.eval_dir)
    return demo.tagging_shards(cli.abspath(config.data.demo_cache))


def split_labels(index: dict, data_dir: str, classes: list[str], flag: str) -> list[list[int]]:
    """Each record's labels as indices into `classes` (the training split's class ids).

    A label the training split does not have is left out, with a warning: no head can learn it.
    """
    try:
        rows = input_pipeline.record_labels(index)
    except ValueError as e:
        raise cli.UserError(f"{flag} {data_dir}: {e}") from None
    own = index["classes"]["ids"]
    position = {c: i for i, c in enumerate(classes)}
    unknown = sorted({own[i] for row in rows for i in row} - set(position))
    if unknown:
        logging.warning(
            "%s %s: %d labels the training split does not have are left out: %s",
            flag,
            data_dir,
            len(unknown),
            unknown[:5],
        )
    return [sorted(position[own[i]] for i in row if own[i] in position) for row in rows]


def load_init(spec: str, config, train_index: dict) -> tuple[dict, dict]:
    """(encoder parameters, export-like config {"model", "front_end", "normalization"})."""
    spec = str(spec)
    if spec == "random" or spec.startswith("random:"):
        variant = spec.partition(":")[2] or "B"
        if variant not in models.VARIANTS:
            raise cli.UserError(f"--init {spec}: unknown variant; known: {models.VARIANTS}")
        cfg = models.model_config(
            {"variant": variant, "n_mels": train_index["front_end"]["n_mels"]}
        )
        params = inference.Encoder.random(cfg, seed=config.seed).params()
        stats = {"mean": train_index["mean"], "std": train_index["std"]}
        return params, {
            "model": dataclasses.asdict(cfg),
            "front_end": train_index["front_end"],
            "normalization": stats,
        }
    path = cli.abspath(spec)
    for candidate in (path, os.path.join(path, "export")):
        if export.is_export(candidate):
            params, init_config = export.load_export(candidate)
            # Host arrays: the state is built sharded over the mesh, not on the restore device.
            encoder = {k: jax.tree.map(np.asarray, params[k]) for k in inference.ENCODER_KEYS}
            return encoder, init_config
    raise cli.UserError(
        f"--init {spec}: not an export (config.json + params/), a workdir with export/, or "
        "random[:VARIANT]"
    )


# ------------------------------------------------------------------------------ evaluation


class EvalSplit:
    """mAP on the eval split (process 0 scores; every process gathers the parameters)."""

    def __init__(self, data_dir, labels, num_classes, config, model_cfg, init_config, mesh, write):
        self.write, self._barrier, self._waits = write, multihost.get_barrier_sync_fn(), 0
        self._gather = jax.jit(lambda tree: tree, out_shardings=sharding.replicated(mesh))
        self.batch = config.eval_batch_size
        self.y = np.zeros((len(labels), num_classes), np.int8)
        for i, row in enumerate(labels):
            self.y[i, row] = 1
        self.model_cfg = model_cfg
        self._source = shards.MelSource(data_dir) if write else None
        self._encoder = None
        norm = init_config["normalization"]
        self._normalize = input_pipeline.Normalize(norm["mean"], norm["std"])

    def gather(self, state) -> dict:
        """{"params", "stats"} replicated on every device (a collective: every process)."""
        return self._gather({"params": state["params"], "stats": state["batch_stats"]})

    def scores(self, state) -> dict:
        start = time.perf_counter()
        tree = self.gather(state)
        out = {}
        if self.write:
            tree = jax.device_get(tree)
            params = tree["params"]
            if self._encoder is None:
                self._encoder = inference.Encoder(
                    self.model_cfg, params, batch_size=self.batch, dtype=None
                )
            self._encoder.load_params(params)
            head = classifier.Head.from_export(head_params(tree), head_config([], []))
            probs = []
            for lo in range(0, len(self._source), self.batch):
                mels = [
                    self._normalize.map(self._source[i])
                    for i in range(lo, min(lo + self.batch, len(self._source)))
                ]
                clip = self._encoder.embed_log_mels(mels)
                probs.append(head.logits(clip, self.model_cfg.n_mels // self.model_cfg.patch))
            out["eval/map"] = multilabel.mean_average_precision(self.y, np.concatenate(probs))
        self._waits += 1
        self._barrier(key=f"matpac_finetune_eval_{self._waits}", timeout_ms=WAIT_S * 1000)
        return {**out, "eval/seconds": time.perf_counter() - start} if self.write else {}


def head_params(tree: dict) -> dict:
    """The export's `params["head"]` from the gathered {"params", "stats"}: the linear layer
    and the BatchNorm's running statistics (an AudioSet head, `classifier.Head`)."""
    return {
        **tree["params"]["head"],
        "norm_mean": tree["stats"]["mean"],
        "norm_var": tree["stats"]["var"],
    }


def head_config(ids: list[str], names: list[str]) -> dict:
    """The export's `config["head"]`: AudioSet's kind, sigmoid (independent classes)."""
    config = classifier.head_config("audioset", len(names), names or None)
    return {**config, "activation": "sigmoid", "norm_eps": BN_EPS, "ids": ids}


def _best_so_far(workdir: str, start: int) -> tuple[float, float]:
    """(best eval/map, its epoch) among the rows logged up to `start` (a resumed run)."""
    rows = [
        r for r in metric_writer.read_metrics(workdir) if "eval/map" in r and r["step"] <= start
    ]
    if not rows:
        return -1.0, -1.0
    best = max(rows, key=lambda r: r["eval/map"])
    return best["eval/map"], best["epoch"]


# ------------------------------------------------------------------------------ run


def finetune(config, workdir: str, init: str) -> loop_lib.RunResult:
    """Runs (or resumes) fine-tuning in `workdir` from the encoder `init`."""
    check_config(config)
    if not init:
        raise cli.UserError("--init is required: the pretrained encoder to fine-tune")
    return loop_lib.in_workdir(
        workdir,
        "fine-tuning",
        lambda workdir, started: _finetune_locked(config, workdir, init, started),
    )


def _finetune_locked(config, workdir, init, started) -> loop_lib.RunResult:
    process = jax.process_index()
    # ---------------------------------------------------------------- data
    train_dir, eval_dir = data_dirs(config)
    train_index, eval_index = shards.load_index(train_dir), shards.load_index(eval_dir)
    if "classes" not in train_index:
        raise cli.UserError(
            f"--config.data.train_dir {train_dir}: the shards hold no labels: preprocess them "
            "with --labels"
        )
    classes = train_index["classes"]["ids"]
    names = train_index["classes"]["names"]
    train_labels = split_labels(train_index, train_dir, classes, "--config.data.train_dir")
    eval_labels = split_labels(eval_index, eval_dir, classes, "--config.data.eval_dir")
    encoder_params, init_config = load_init(init, config, train_index)
    if init_config["front_end"] != train_index["front_end"]:
        raise cli.UserError(
            f"--init {init}: its front end {init_config['front_end']} is not the shards' "
            f"{train_index['front_end']}: preprocess the audio with the encoder's front end"
        )
    changed = loop_lib.resume_changes(workdir, config)
    # ---------------------------------------------------------------- mesh, schedule
    loop_lib.log_runtime(config, trainer.compute_dtype(config.model.compute_dtype))
    mesh = loop_lib.make_mesh(config)
    epoch_clips = config.data.epoch_clips if config.data.balanced else len(train_labels)
    steps_per_epoch = max(1, round(epoch_clips / config.batch_size))
    total_steps = config.total_steps or int(round(config.total_epochs * steps_per_epoch))
    peak_lr = config.optim.lr * config.batch_size / config.optim.lr_batch
    lr_fn = functools.partial(
        schedules.epoch_cosine_lr,
        peak_lr=peak_lr,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=config.optim.warmup_epochs,
        total_epochs=config.total_epochs,
        min_lr=config.optim.min_lr,
    )
    norm = init_config["normalization"]
    dataset = input_pipeline.finetune_dataset(
        train_dir,
        batch_size=config.batch_size,
        crop_frames=config.data.crop_frames,
        seed=config.seed,
        mean=norm["mean"],
        std=norm["std"],
        labels=train_labels,
        num_classes=len(classes),
        epoch_clips=config.data.epoch_clips if config.data.balanced else None,
        rows=sharding.process_rows(mesh, config.batch_size),
        read_threads=config.data.read_threads,
    )
    data_iter = input_pipeline.InputIterator(dataset, config.data.num_workers)
    sched_info = {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "peak_lr": peak_lr,
        "epoch_clips": epoch_clips,
    }
    logging.info(
        "train %s (%d clips), eval %s (%d clips), %d classes; %s",
        train_dir,
        len(train_labels),
        eval_dir,
        len(eval_labels),
        len(classes),
        sched_info,
    )
    # ---------------------------------------------------------------- model and state
    model_cfg = dataclasses.replace(
        models.model_config(init_config["model"]),
        max_frames=config.data.crop_frames,
        dtype=trainer.compute_dtype(config.model.compute_dtype),
        remat=config.model.remat,
    )
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: inference.encoder_model(model_cfg, nnx.Rngs(0))))
    tx = make_optimizer(config, lr_fn)
    init_fn = lambda key, enc: init_state(key, model_cfg, enc, len(classes), tx)  # noqa: E731
    abstract = jax.eval_shape(init_fn, jax.random.key(0), encoder_params)
    state_sharding = sharding.state_shardings(abstract, mesh, config.fsdp_min_size)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )
    aug = Augment(config.augment.mixup_alpha, config.augment.freq_mask, config.augment.time_mask)
    step_fn = jax.jit(
        make_step(graphdef, aug, lr_fn, tx, config.seed, config.freeze_encoder),
        in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    evals = EvalSplit(
        eval_dir, eval_labels, len(classes), config, model_cfg, init_config, mesh, process == 0
    )
    # ---------------------------------------------------------------- checkpoints
    ckpt, state, start, writer = loop_lib.start_state(
        workdir,
        config,
        mesh,
        abstract,
        data_iter,
        lambda: jax.jit(init_fn, out_shardings=state_sharding)(
            jax.random.fold_in(jax.random.key(config.seed), 2), encoder_params
        ),
        {
            "model": dataclasses.asdict(model_cfg),
            "init": init,
            "classes": len(classes),
            "schedule": sched_info,
        },
        changed,
        fresh=f"starting from {init}",
    )
    best = list(_best_so_far(workdir, start))
    eval_every = config.eval_every_epochs * steps_per_epoch

    def evaluate(state, step):
        scores = evals.scores(state)
        epoch = step / steps_per_epoch
        if "eval/map" in scores:
            if scores["eval/map"] > best[0]:
                best[:] = [scores["eval/map"], epoch]
            scores.update({"eval/best_map": best[0], "eval/best_epoch": best[1]})
            logging.info(
                "epoch %.2f: eval mAP %.4f (best %.4f at epoch %.2f), %.1f s",
                epoch,
                scores["eval/map"],
                best[0],
                best[1],
                scores["eval/seconds"],
            )
        return {"epoch": epoch, **scores}

    def finish(state):
        tree = jax.device_get(evals.gather(state))
        params = {k: tree["params"][k] for k in inference.ENCODER_KEYS}
        params["head"] = head_params(tree)
        export.export_encoder(
            workdir,
            params,
            {
                "model": dataclasses.asdict(model_cfg),
                "front_end": train_index["front_end"],
                "normalization": norm,
                "crop_frames": config.data.crop_frames,
                "head": head_config(classes, names),
                "finetune": {"init": init, "best_map": best[0], "best_epoch": best[1]},
            },
        )

    due = lambda step: step % eval_every == 0 or step == total_steps  # noqa: E731
    loop = loop_lib.Loop(
        config, step_fn, data_iter, mesh, ckpt, writer, total_steps, due, evaluate, "finetune"
    )
    return loop_lib.run_loop(loop, state, start, started, finish)


def main(argv):
    trainer.main(
        argv, run=lambda config, workdir: finetune(config, workdir, _INIT.value), prog=PROG
    )


if __name__ == "__main__":
    app.run(main, flags_parser=functools.partial(trainer.parse_flags, prog=PROG))
