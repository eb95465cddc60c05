"""What every trainer here shares: the workdir's life and the step loop.

Pretraining (`trainer.py`) and fine-tuning (`finetune.py`) build their own data, state and
jitted step, then hand them to `run_loop`: logging (metrics.jsonl, TensorBoard, a progress bar
on a terminal or a line per logged step elsewhere), evaluation on schedule, checkpoints with
the input position, the non-finite guard and SIGTERM (save after the current step, exit 0).
`in_workdir` holds the workdir's lock and removes a workdir that a failed start created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from typing import Any, Callable

import jax
from absl import logging

from matpac_jax import cli, dirlock
from matpac_jax.train import distributed, sharding


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row."""


@dataclasses.dataclass
class RunResult:
    """What a trainer returns: the last logged metrics and how the run ended."""

    metrics: dict
    exported: bool  # False when a signal stopped the run before the last step


def in_workdir(workdir: str, what: str, body: Callable[[str, list], RunResult]) -> RunResult:
    """Runs `body(workdir, started)` holding WORKDIR's lock (process 0).

    `body` appends to `started` once the first step runs; a start that fails before (a bad
    config or data, a locked workdir) leaves no workdir behind that did not exist before.
    """
    process = jax.process_index()
    workdir = cli.output_dir(workdir, "--workdir")
    created = process == 0 and not os.path.exists(workdir)
    cli.make_dir(workdir, "--workdir")
    started = []
    lock = dirlock.DirLock(workdir, what) if process == 0 else contextlib.nullcontext()
    try:
        with lock:
            return body(workdir, started)
    except BaseException:
        if created and not started:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


@dataclasses.dataclass
class Loop:
    """The step loop's parts. `step_fn(state, batch) -> (state, metrics)` with "loss" and
    "skip_streak" in the metrics; `due(step)` says whether `evaluate(state, step) -> scores`
    runs after `step` (its scores join that step's row, before its checkpoint)."""

    step_fn: Callable
    data_iter: Any
    mesh: Any
    ckpt: Any
    writer: Any
    total_steps: int
    batch_size: int
    log_every: int
    max_consecutive_skips: int
    due: Callable[[int], bool] = lambda step: False
    evaluate: Callable[[Any, int], dict] | None = None
    desc: str = "train"


def run_loop(loop: Loop, state, start: int, started: list) -> tuple[Any, dict, bool]:
    """Runs steps `start` .. `total_steps`; returns (state, last logged metrics, finished).

    `finished` is False when a signal stopped the run (its step is saved).
    """
    process, num_processes = jax.process_index(), jax.process_count()
    stop = distributed.StopRequest()
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm(
        total=loop.total_steps,
        initial=start,
        unit="step",
        disable=True if process else None,  # None: a bar on a terminal only, not in log files
        dynamic_ncols=True,
        desc=loop.desc,
    )
    step_fn, last, tick, tick_step = loop.step_fn, {}, time.perf_counter(), start
    started.append(start)
    finished = False
    try:
        for step in range(start, loop.total_steps):
            batch = sharding.global_batch(next(loop.data_iter), loop.mesh)
            if step == start and num_processes > 1:  # compiled everywhere before collectives
                step_fn = step_fn.lower(state, batch).compile()
                distributed.meet(f"step {start} compiled")
            state, metrics = step_fn(state, batch)
            done = step + 1
            stopping = stop(done)
            evaluating = loop.due(done)  # on schedule only: a resumed run evaluates the same
            if done % loop.log_every == 0 or done == loop.total_steps or stopping or evaluating:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                rate = (done - tick_step) / max(now - tick, 1e-9)
                last.update(steps_per_s=rate, examples_per_s=rate * loop.batch_size)
                if evaluating:  # in the step's row, before its checkpoint
                    last.update(loop.evaluate(state, done))
                    now = time.perf_counter()  # the next rate counts training alone
                tick, tick_step = now, done
                loop.writer.write(done, last)
                if bar.disable:
                    logging.info(
                        "step %d/%d: loss %.4f, %.0f examples/s",
                        done,
                        loop.total_steps,
                        last["loss"],
                        last["examples_per_s"],
                    )
                else:
                    bar.set_postfix(
                        loss=f"{last['loss']:.4f}",
                        ex_s=f"{last['examples_per_s']:.0f}",
                        refresh=False,
                    )
                if last["skip_streak"] >= loop.max_consecutive_skips:
                    raise NonFiniteError(
                        f"{int(last['skip_streak'])} non-finite steps in a row up to step "
                        f"{done}: stopping; the last finished checkpoint (step "
                        f"{loop.ckpt.latest_step()}) holds the last good state"
                    )
            bar.update(1)
            loop.ckpt.save(done, state, loop.data_iter, force=done == loop.total_steps)
            if stopping:
                logging.warning("signal %d: saving step %d and exiting", stop.signum, done)
                loop.ckpt.save(done, state, loop.data_iter, force=True)
                break
        else:
            finished = True
    finally:
        bar.close()
        stop.close()
    return state, last, finished
