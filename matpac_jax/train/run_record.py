"""WORKDIR/run.json: what a training run is, and the history of its starts.

One entry per start (the step it began from, when, on which devices, with which config), so a
run resumed with another batch size keeps the record of its first half. The top-level "config"
and "model" are those of the newest start: what inference reads.

On resume the command's config is compared with the run's: a key that the checkpoints fix
(`fixed_key`) refuses to start, naming each difference and the two ways out; any other change
continues and is reported one line per key.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from matpac_jax import cli, storage
from matpac_jax.audio import shards

NAME = "run.json"

# What a checkpoint fixes: the model's shapes and initialisation (model.*), the token grid
# (data.crop_frames, data.num_mels) and the random streams of data, crops and masks (seed). The
# input position is batches read: any worker or process count continues it. How the same model
# is computed may change within a run: COMPUTE_KEYS.
FIXED_PREFIXES = ("model.", "seed", "data.crop_frames", "data.num_mels")
COMPUTE_KEYS = ("model.compute_dtype", "model.remat")


def fixed_key(key: str) -> bool:
    """Whether a run's checkpoints cannot be continued under another value of `key`."""
    if key in COMPUTE_KEYS:
        return False
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in FIXED_PREFIXES)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config's JSON form as dotted keys."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_json(config) -> dict:
    """The config as run.json stores it (tuples become lists, as they read back)."""
    return json.loads(config.to_json())


def changes(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for each dotted key whose value differs, sorted by key.

    Keys on one side only are skipped: they come from another version of the config (a key
    added since the run started is not a change the user made).
    """
    a, b = flatten(old), flatten(new)
    return [(k, a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]


def _show(value: Any) -> str:
    return json.dumps(value)


def read(workdir: str) -> dict | None:
    """The run's record, or None when the workdir has none (a new run, or an old workdir)."""
    path = storage.join(workdir, NAME)
    if not storage.exists(path):
        return None
    return json.loads(storage.read_text(path))


def check_resume(workdir: str, config) -> list[tuple[str, Any, Any]]:
    """Compares `config` with the config of the run's newest start.

    Call only when the workdir has checkpoints to resume from.

    Returns:
      The changes that may continue: (key, the run's value, this command's value).

    Raises:
      cli.UserError: a key the checkpoints fix differs; the message names every such key with
        both values and the ways out.
    """
    run = read(workdir)
    if run is None or "config" not in run:
        return []
    diff = changes(run["config"], config_json(config))
    fixed = [d for d in diff if fixed_key(d[0])]
    if fixed:
        listed = "; ".join(f"{k} {_show(old)} (run) vs {_show(new)} (now)" for k, old, new in fixed)
        raise cli.UserError(
            f"--workdir {workdir} holds a run whose checkpoints cannot continue under this "
            f"config: {listed}. Resume with the run's values (recorded in {workdir}/{NAME}), "
            "or start a new run with another --workdir"
        )
    return diff


def describe(change: tuple[str, Any, Any]) -> str:
    """'resuming with batch_size 32 -> 16'."""
    key, old, new = change
    return f"resuming with {key} {_show(old)} -> {_show(new)}"


def write(workdir: str, info: dict, *, config, step: int, changed: list) -> dict:
    """Records this start of the run: `info` (model, schedule, devices, ...) and `config` become
    the top level, and a start entry is appended to the history kept from earlier starts.

    Returns the record written.
    """
    previous = read(workdir) or {}
    start = {
        "step": step,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "changed": {k: [old, new] for k, old, new in changed},
        **info,
        "config": config_json(config),
    }
    history = previous.get("starts")
    if history is None:  # a record from before starts were kept: its one start, step unknown
        history = [{"step": None, **previous}] if previous else []
    record = {"config": start["config"], **info, "starts": [*history, start]}
    shards.write_json_atomic(storage.join(workdir, NAME), record)
    return record
