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
import time
from typing import Any, Callable

import jax
from absl import logging

from matpac_jax import cli, dirlock, models, storage
from matpac_jax.train import checkpoints as checkpointing
from matpac_jax.train import distributed, run_record, sharding
from matpac_jax.train import metrics as metric_writer


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row."""


@dataclasses.dataclass
class RunResult:
    """What a trainer returns: the last logged metrics and how the run ended."""

    metrics: dict
    exported: bool  # False when a signal stopped the run before the last step


def check_run_config(config) -> None:
    """cli.UserError for a bad value of what every trainer's config has: step counts, logging
    and checkpoint intervals, the crop length."""
    if config.total_steps is not None and config.total_steps < 1:
        raise cli.UserError(
            f"--config.total_steps={config.total_steps}: must be at least 1 (leave it unset to "
            "train for --config.total_epochs)"
        )
    for key in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        if config[key] < 1:
            raise cli.UserError(f"--config.{key}={config[key]}: must be at least 1")
    crop, patch = config.data.crop_frames, models.ModelConfig.patch
    if crop < patch or crop % patch:
        fix = max(patch, crop // patch * patch)
        raise cli.UserError(
            f"--config.data.crop_frames={crop}: must be a positive multiple of the {patch}-frame "
            f"patch, e.g. {fix}"
        )


def in_workdir(workdir: str, what: str, body: Callable[[str, list], RunResult]) -> RunResult:
    """Runs `body(workdir, started)` holding WORKDIR's lock (process 0).

    `body` appends to `started` once the first step runs; a start that fails before (a bad
    config or data, a locked workdir) leaves no workdir behind that did not exist before.
    """
    process = jax.process_index()
    workdir = cli.output_dir(workdir, "--workdir", url=True)
    created = process == 0 and not storage.isdir(workdir)
    cli.make_dir(workdir, "--workdir")
    started = []
    lock = dirlock.DirLock(workdir, what) if process == 0 else contextlib.nullcontext()
    try:
        with lock:
            return body(workdir, started)
    except BaseException:
        if created and not started:
            storage.rmtree(workdir)
        raise


def resume_changes(workdir: str, config) -> list:
    """Before any work: the config changes a resume may continue under (logged once), or
    cli.UserError for one the checkpoints cannot (run_record.check_resume)."""
    if not checkpointing.finished_steps(workdir):
        return []
    changed = run_record.check_resume(workdir, config)
    if jax.process_index() == 0:
        for change in changed:
            logging.warning(run_record.describe(change))
    return changed


def log_runtime(config, dtype: str) -> None:
    """The run's first line: where it computes and in what, so a GPU job that fell back to the
    CPU (a CPU jaxlib, a hidden GPU) says so at once; with the open-file limit it reads under."""
    import resource  # pylint: disable=g-import-not-at-top (POSIX only)

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    logging.info(
        "backend %s: %d %s device%s in %d process%s (%d here); compute dtype %s (params and "
        "optimiser float32); mesh %s; open files up to %d",
        jax.default_backend(),
        len(devices),
        "/".join(kinds),
        "s" if len(devices) > 1 else "",
        jax.process_count(),
        "es" if jax.process_count() > 1 else "",
        jax.local_device_count(),
        dtype,
        tuple(config.mesh),
        resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    )


def make_mesh(config):
    """The config's (data, fsdp) mesh; cli.UserError when the batch does not split over it."""
    mesh = sharding.make_mesh(config.mesh)
    if config.batch_size % mesh.size:
        raise cli.UserError(
            f"batch_size {config.batch_size} is not divisible by the {mesh.size} "
            "devices of the mesh"
        )
    return mesh


def start_state(
    workdir,
    config,
    mesh,
    abstract,
    data_iter,
    init: Callable[[], Any],
    info: dict,
    changed: list,
    fresh: str = "starting from scratch",
):
    """The checkpointer, the state and step to start from (the newest finished checkpoint, or
    `init()`, logging `fresh`), the metric writer, and this start recorded in run.json (`info`
    with the devices, mesh and versions)."""
    ckpt = checkpointing.Checkpointer(
        workdir, save_interval_steps=config.checkpoint_every, max_to_keep=config.keep_checkpoints
    )
    restored = ckpt.restore_latest(abstract, data_iter)
    if restored is None:
        state, start = init(), 0
        logging.info(fresh)
    else:
        state, start = restored
        logging.info("resumed from step %d", start)
    process = jax.process_index()
    writer = metric_writer.MetricWriter(workdir, resume_step=start, enabled=process == 0)
    if process == 0:
        info = {
            **info,
            "devices": [str(d) for d in jax.devices()],
            "mesh": dict(mesh.shape),
            "processes": jax.process_count(),
            "jax": jax.__version__,
        }
        run_record.write(workdir, info, config=config, step=start, changed=changed)
    return ckpt, state, start, writer


@dataclasses.dataclass
class Loop:
    """The step loop's parts. `step_fn(state, batch) -> (state, metrics)` with "loss" and
    "skip_streak" in the metrics; `due(step)` says whether `evaluate(state, step) -> scores`
    runs after `step` (its scores join that step's row, before its checkpoint). From `config`:
    batch_size, log_every, max_consecutive_skips."""

    config: Any
    step_fn: Callable
    data_iter: Any
    mesh: Any
    ckpt: Any
    writer: Any
    total_steps: int
    due: Callable[[int], bool]
    evaluate: Callable[[Any, int], dict]
    desc: str = "train"


def run_loop(loop: Loop, state, start: int, started: list, finish: Callable) -> RunResult:
    """Runs steps `start` .. `total_steps`, then `finish(state)` (the export) unless a signal
    stopped the run (its step is saved); closes the checkpointer, writer and input after."""
    config = loop.config
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
            if done % config.log_every == 0 or done == loop.total_steps or stopping or evaluating:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                rate = (done - tick_step) / max(now - tick, 1e-9)
                last.update(steps_per_s=rate, examples_per_s=rate * config.batch_size)
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
                if last["skip_streak"] >= config.max_consecutive_skips:
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
            finish(state)
    finally:
        bar.close()
        stop.close()
        loop.ckpt.close()
        loop.writer.close()
        loop.data_iter.close()
    return RunResult(last, finished)
