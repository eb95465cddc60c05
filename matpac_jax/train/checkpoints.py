"""Checkpoints: the train state and the input-pipeline position, saved together with Orbax.

  WORKDIR/.lock                      one trainer per workdir (`matpac_jax.dirlock.DirLock`)
  WORKDIR/checkpoints/<step>/state/  the train state pytree (`ocp.args.StandardSave`)
  WORKDIR/checkpoints/<step>/data/   the input position, batches read (`ocp.args.JsonSave`, one
                                     file for every process: any process count resumes it)
  WORKDIR/damaged_checkpoints/       steps that failed to restore, set aside for inspection
  WORKDIR/export/                    the encoder export (`matpac_jax.inference.export`)

A step is FINISHED when Orbax lists it. On local and other POSIX file systems Orbax writes a
step into `<step>.orbax-checkpoint-tmp/` (older versions add `-<timestamp>`) and commits it by
renaming that to `<step>/`; 0.12.8 writes `commit_success.txt` just before the rename but judges
by the name alone, so steps from older Orbax still count. On GCS, which has no atomic rename,
a step is finished when `<step>/commit_success.txt` exists. Anything named
`*.orbax-checkpoint-tmp*` is an interrupted save: `Checkpointer` deletes it at start-up.

The step that `python -m matpac_jax.interop.convert from-torch --train_state` writes from a reference
checkpoint has no `data/` (WORKDIR/converted.json names it): its state is restored and the input
pipeline starts from its beginning. Any other step without `data/` is damaged.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from matpac_jax import cli

logger = logging.getLogger(__name__)

_TMP_SUFFIX = ".orbax-checkpoint-tmp"
CONVERTED_NAME = "converted.json"  # written by `python -m matpac_jax.interop.convert --train_state`


def _restore_target(abstract_state: Any) -> Any:
    """Concrete arrays -> ShapeDtypeStructs; every leaf must carry the sharding to restore to."""

    def leaf(path, x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            raise ValueError(
                f"abstract_state{jax.tree_util.keystr(path)} has no sharding: build the target "
                f"with jax.eval_shape and attach shardings (ShapeDtypeStruct(..., sharding=...))."
            )
        return x

    return jax.tree_util.tree_map_with_path(leaf, abstract_state)


class Checkpointer:
    """Saves and restores {train state, input iterator} pairs under WORKDIR/checkpoints.

    Args:
      workdir: the run's directory, absolute; hold a `dirlock.DirLock` on it first.
      save_interval_steps: `save` writes only at multiples of this, unless forced (Orbax
        would also save the first step it is offered; we do not: a resume after a crash
        before the first interval starts from scratch, which costs less than the extra save).
      max_to_keep: finished steps kept; older ones are deleted.
      async_save: write arrays in a background thread. `save` still returns only after the
        arrays are copied off the device and the iterator state is captured, so the caller may
        donate the state and read on at once; call `wait` before depending on the files.
    """

    def __init__(
        self, workdir: str, *, save_interval_steps: int, max_to_keep: int, async_save: bool = True
    ):
        self.workdir = epath.Path(cli.abspath(workdir))  # Orbax needs absolute paths
        self.directory = self.workdir / "checkpoints"
        self.save_interval_steps = save_interval_steps
        if jax.process_index() == 0:
            _remove_unfinished(self.directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_interval_steps,
                max_to_keep=max_to_keep,
                create=True,
                enable_async_checkpointing=async_save,
            ),
        )

    def save(self, step: int, state: Any, data_iter: Any, force: bool = False) -> bool:
        """Saves at `step` if the interval says so (or `force`); returns whether it did."""
        if not force and step % self.save_interval_steps:
            return False
        if force and step in self._manager.all_steps():
            return False  # already saved at this step: nothing newer to write
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_iter.get_state())
        )
        return self._manager.save(step, args=args, force=force)

    def wait(self) -> None:
        """Blocks until a background save is finished on disk; raises if it failed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for a pending save, then stops Orbax's threads."""
        self._manager.close()

    def latest_step(self) -> int | None:
        """The newest finished step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Finished steps, oldest first."""
        return sorted(self._manager.all_steps())

    def restore_latest(self, abstract_state: Any, data_iter: Any) -> tuple[Any, int] | None:
        """Restores the newest finished step that reads back whole, falling back past damage.

        Args:
          abstract_state: the state's structure: `jax.ShapeDtypeStruct`s with shardings (e.g.
            `jax.eval_shape` + the trainer's shardings) or concrete arrays; the restored arrays
            get these shardings.
          data_iter: an `InputIterator`; its position is set to the restored step's.

        Returns:
          (state, step), or None when there is no finished checkpoint at all.

        Raises:
          RuntimeError: checkpoints exist but none can be restored.
          ValueError: from `data_iter.set_state`: a position this version cannot read.
        """
        self._manager.reload()
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        self._check_data_format(steps[0])
        target = _restore_target(abstract_state)
        failures = []
        for i, step in enumerate(steps):
            items = {"state": ocp.args.StandardRestore(target)}
            has_data = not self._converted_step(step)
            if has_data:
                items["data"] = ocp.args.JsonRestore()
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # pylint: disable=broad-except
                reason = f"{type(e).__name__}: {e}"
                then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older step"
                logger.warning(
                    "checkpoint step %d in %s cannot be restored (%s); %s",
                    step,
                    self.directory,
                    reason,
                    then,
                )
                failures.append((step, reason))
                continue
            # Applied outside the fallback: a state the iterator refuses (an older format) is
            # a version to fix, not damage to skip.
            if has_data:
                data_iter.set_state(restored["data"])
            else:
                logger.warning(
                    "checkpoint step %d has no input-pipeline position (a converted checkpoint): "
                    "the input starts from its beginning",
                    step,
                )
            self._set_aside([s for s, _ in failures])
            logger.info("restored checkpoint step %d from %s", step, self.directory)
            return restored["state"], step
        # First line, shortened: tensorstore puts its whole spec on it; the warnings have it all.
        summary = "; ".join(f"step {s}: {r.splitlines()[0][:200]}" for s, r in failures)
        raise RuntimeError(
            f"none of the {len(steps)} checkpoints in {self.directory} can be restored "
            f"({summary}). Refusing to restart from step 0 over them: fix the cause (a changed "
            f"model config gives shape mismatches) or move the directory away to start afresh."
        )

    def _converted_step(self, step: int) -> bool:
        """Whether `step` is the state-only step that `convert --train_state` wrote (it names
        it in WORKDIR/converted.json); any other step without `data/` is damaged."""
        marker = self.workdir / CONVERTED_NAME
        if (self.directory / str(step) / "data").exists() or not marker.exists():
            return False
        try:
            return json.loads(marker.read_text()).get("step") == step
        except (ValueError, AttributeError):
            return False

    def _check_data_format(self, step: int) -> None:
        """Before matpac_jax kept one input position for the run, grain saved one per process
        (`data/process_<p>-of-<n>.json`): such a checkpoint cannot continue this input stream."""
        if any((epath.Path(self.directory) / str(step) / "data").glob("process_*-of-*.json")):
            raise ValueError(
                f"checkpoint step {step} in {self.directory} was written by an older matpac_jax "
                "(one input position per process, another data order): continue it with that "
                "version, or start a new run with another --workdir"
            )

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged steps newer than the restored one out of Orbax's sight.

        Left in place they would stay the "latest" step, and Orbax refuses to save any step
        at or below the latest, so the resumed run could never checkpoint again.
        """
        if not steps:
            return
        if jax.process_index() == 0:
            damaged = self.workdir / "damaged_checkpoints"
            damaged.mkdir(parents=True, exist_ok=True)
            for step in steps:
                dest = damaged / f"{step}-{time.time_ns()}"
                (self.directory / str(step)).rename(dest)
                logger.warning("moved damaged checkpoint step %d to %s", step, dest)
        _barrier("matpac_checkpointing_set_aside")
        self._manager.reload()


def _barrier(name: str) -> None:
    """All processes wait here (jax's barrier, unlike Orbax's, allows a name to recur)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _remove_unfinished(directory: epath.Path) -> None:
    """Deletes interrupted saves (`*.orbax-checkpoint-tmp*`): they are never to be restored."""
    if not directory.exists():
        return
    for path in sorted(directory.iterdir()):
        if _TMP_SUFFIX in path.name:
            logger.warning("removing unfinished checkpoint %s (a save that never committed)", path)
            if path.is_dir():
                path.rmtree()
            else:
                path.unlink()


def finished_steps(workdir: str) -> list[int]:
    """The finished steps under WORKDIR/checkpoints, oldest first, without starting Orbax's
    manager (interrupted saves are not counted)."""
    directory = epath.Path(cli.abspath(workdir)) / "checkpoints"
    return sorted(ocp.utils.checkpoint_steps(directory)) if directory.exists() else []


def write_state_only(workdir: str, step: int, state: Any, info: dict) -> str:
    """Writes a train state as checkpoint `step` of WORKDIR without an input position.

    For `python -m matpac_jax.interop.convert from-torch --train_state`: the trainer restores this step
    (WORKDIR/converted.json names it) and starts its input pipeline from the beginning.

    Args:
      workdir: the run's directory (created if needed); must hold no checkpoints yet.
      step: the step the state has reached.
      state: the train state pytree, as `train_step.init_state` builds it.
      info: what converted.json records beside the step (source, model sizes, ...).

    Returns:
      The step's folder.
    """
    workdir = epath.Path(cli.abspath(workdir))
    directory = workdir / "checkpoints"
    manager = ocp.CheckpointManager(
        directory,
        item_names=("state",),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
    )
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
    manager.wait_until_finished()
    manager.close()
    # Written last: a step without data/ and without this marker counts as damaged.
    (workdir / CONVERTED_NAME).write_text(json.dumps({**info, "step": step}, indent=2))
    return str(directory / str(step))
