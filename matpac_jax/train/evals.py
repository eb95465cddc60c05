"""The trainer's evaluators: when to evaluate, the parameters to score, the baselines.

The evaluation itself (tasks, cached log-mels, embeddings, kNN and linear scores) is
matpac_jax/evaluation/evaluators.py, shared with its offline command: an in-training score equals that
command's on the checkpoint or export of the same step.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from orbax.checkpoint import multihost

from matpac_jax import cli, storage
from matpac_jax.evaluation.evaluators import (
    BASELINES,
    CI_SUFFIX,
    DEMO_TASKS,
    Evaluator,
    Protocol,
    check_spec,
    split_list,
)
from matpac_jax.inference import encoder as inference
from matpac_jax.train import metrics as metric_writer
from matpac_jax.train import sharding

# jax, orbax and the encoder are imported inside the functions that need them, as in evaluators.

WAIT_S = 3600  # the other processes wait this long for process 0's evaluation


def task_specs(config) -> tuple[str, ...]:
    """The config's tasks; `auto`: the demo tasks when the run trains on the demo corpus."""
    if config.evals == "auto":
        return () if config.data.dir else tuple(f"demo:{t}" for t in DEMO_TASKS)
    return split_list(config.evals)


def check_config(config) -> None:
    """UserError for an eval setting that would fail later (the trainer's check, before work)."""
    if config.eval_every < 0:
        raise cli.UserError(f"--config.eval_every={config.eval_every}: must be at least 0")
    Protocol.from_config(config).check()
    for spec in task_specs(config):
        check_spec(spec, "--config.evals")


def summary(scores: dict) -> str:
    """`pitch/knn_acc 0.412 ± 0.061, ..., 3.1 s`: one log line of an evaluation's scores."""
    parts = [
        f"{k[5:]} {v:.3f}" + (f" ± {scores[k + CI_SUFFIX]:.3f}" if k + CI_SUFFIX in scores else "")
        for k, v in scores.items()
        if k != "eval/seconds" and not k.endswith(CI_SUFFIX)
    ]
    return ", ".join(parts + [f"{scores.get('eval/seconds', 0.0):.1f} s"])


def step_logged(workdir: str, step: int) -> bool:
    """Whether WORKDIR/metrics.jsonl holds a row for `step`."""
    return any(row["step"] == step for row in metric_writer.read_metrics(workdir))


class TrainingEvals:
    """The trainer's evaluators: when to run, the parameters to score, the baselines.

    Every process takes part in gathering the (possibly FSDP-sharded) encoder parameters; the
    writing process (process 0) alone embeds and scores, on one local device, while the others
    wait at a barrier of the coordination service: a collective would give up after 30 s where
    it is first used (Gloo sets up its connections then). Nothing touches the training RNG or
    data.

    Args:
      config: the run's config (`evals`, `eval_*`, `data`).
      model_cfg, front_end: the run's `models.ModelConfig` and its data's `audio.FrontEnd`.
      mesh: the training mesh.
      total_steps: the run's last step (always evaluated).
      write: whether this process scores (process 0).
    """

    def __init__(self, config, model_cfg, front_end, mesh, total_steps: int, *, write: bool):
        self._barrier, self._waits = multihost.get_barrier_sync_fn(), 0  # no-op: one process
        self.specs, self.protocol = task_specs(config), Protocol.from_config(config)
        self.every, self.total, self.teacher = config.eval_every, total_steps, config.eval_teacher
        self.model_cfg, self.write = model_cfg, write and bool(self.specs)
        norm = {"mean": config.data.mean, "std": config.data.std}
        self.inputs = {"front_end": front_end, "normalization": norm}
        self._encoder = None  # one Encoder, parameters swapped: it compiles once per run
        self._gather = jax.jit(lambda tree: tree, out_shardings=sharding.replicated(mesh))
        if self.write:
            start, cache = time.perf_counter(), cli.abspath(config.eval_cache)
            demo = cli.abspath(config.data.demo_cache)
            self.evaluator = Evaluator(
                self.specs, front_end, cache, demo, self.protocol, "--config.evals"
            )
            self.setup_seconds = time.perf_counter() - start  # tasks and log-mels (cached?)

    def due(self, step: int) -> bool:
        """Before the first step, every `eval_every` steps, and after the last."""
        every = bool(self.every and step % self.every == 0)
        return bool(self.specs) and (step in (0, self.total) or every)

    def __call__(self, state) -> dict:
        """The scores of the state's student (and teacher) encoder; {} on the other processes."""

        start = time.perf_counter()
        trees = {"": {k: state["params"][k] for k in inference.ENCODER_KEYS}}
        if self.teacher:  # the teacher encoder runs on the student's patch embedding and cls
            trees["teacher_"] = {**trees[""], "student": state["teacher"]["encoder"]}
        trees = self._gather(trees)  # collective: every process, every evaluation
        scores = {}
        for prefix, params in jax.device_get(trees).items() if self.write else ():
            if self._encoder is None:
                self._encoder = inference.Encoder(self.model_cfg, params, **self.inputs)
            self._encoder.load_params(params)
            scores.update(self.evaluator.evaluate(self._encoder, prefix))
        self.wait()
        return {**scores, "eval/seconds": time.perf_counter() - start} if self.write else {}

    def wait(self) -> None:
        """Every process waits here until all are here (process 0 is done evaluating)."""
        self._waits += 1  # a fresh name each time: the same on every process
        self._barrier(key=f"matpac_evaluators_{self._waits}", timeout_ms=WAIT_S * 1000)

    def write_baselines(self, workdir: str, seed: int, initial_state, step0=None) -> None:
        """Writes WORKDIR/eval_baselines.json, unless it holds those of these tasks, protocol,
        model, inputs and seed already: "init", the scores of the run's own initial weights, and
        "logmel", those of the log-mel statistics. Every process takes part.

        The initial weights are the step-0 evaluation's: `step0` (that evaluation's scores,
        at a fresh start) is written as it is; otherwise (a resumed run without the file)
        `initial_state()` makes them again and they are scored here.
        """
        key = [self.specs, dataclasses.asdict(self.protocol), dataclasses.asdict(self.model_cfg)]
        key = json.loads(json.dumps([*key, self.inputs["normalization"], seed]))  # tuples: lists
        path = storage.join(workdir, BASELINES)
        done = False
        if self.write and storage.exists(path):
            done = json.loads(storage.read_text(path)).get("key") == key
        done = _agreed(done, self.write)  # every process takes the writer's decision
        if done or not self.specs:
            return
        start = time.perf_counter()
        init = step0 if step0 is not None else self(initial_state())
        if self.write:
            init = {k: v for k, v in init.items() if k != "eval/seconds"}
            logmel = self.evaluator.logmel_scores(self.inputs["normalization"])
            seconds = {"seconds": time.perf_counter() - start, "setup_seconds": self.setup_seconds}
            record = {"key": key, "init": init, "logmel": logmel, **seconds}
            storage.write_text(path, json.dumps(record, indent=1))
        self.wait()


def _agreed(value: bool, write: bool) -> bool:
    """`value` as the writing process (process 0) has it, on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(value if write else False)))
