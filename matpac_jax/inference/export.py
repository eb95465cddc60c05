"""The encoder export: one folder that the trainer writes and inference, the probe and convert read.

  DIR/config.json   {"format_version", "model", "front_end", "normalization", ...; "head" if any}
  DIR/params/       Orbax pytree: {"patch_embed", "cls_token", "student"} (+ "head" if any)

The trainer writes WORKDIR/export at the end of a run (`export_encoder`); `python -m
matpac_jax.interop.convert from-torch` writes one from the published PyTorch weights (`write_export`).
A folder is replaced whole: the new one is written beside it and renamed into place, so a reader
finds the old export, the new one, or (briefly) none, never a partial one. A bucket (gs://) has
no rename: there the old export loses its config.json first and the new one gets it last.

Format versions: 1 adds `format_version` itself (and the optional `head`); a config.json without
it is version 0, written before this module, and reads the same. A newer version is refused.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from matpac_jax import cli, storage

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
PARAMS_NAME = "params"


def _barrier(name: str) -> None:
    """All processes wait here (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def config_text(config: dict) -> str:
    """config.json's text: `config` with the current `format_version`, keys sorted.

    Raises:
      TypeError: the config holds something JSON cannot write.
    """
    try:
        return json.dumps({**config, "format_version": FORMAT_VERSION}, indent=2, sort_keys=True)
    except TypeError as e:
        raise TypeError(
            f"export config must be JSON-serialisable (plain dicts, lists, numbers, strings): {e}"
        ) from None


def is_export(path: str) -> bool:
    """Whether `path` holds an export (config.json and params/)."""
    path = epath.Path(cli.abspath(path))
    return (path / CONFIG_NAME).exists() and (path / PARAMS_NAME).exists()


def write_export(path: str, params: Any, config: dict) -> str:
    """Writes an export folder at `path`, replacing an earlier one whole.

    Every process of a multi-process run calls this with its part of `params` (Orbax writes the
    shards together); process 0 writes config.json and renames. The temporary folders are
    siblings of `path` with fixed names (`.NAME.tmp`, `.NAME.old`), the same on every process.

    Args:
      path: the export folder to write (its parent is created if needed).
      params: the parameter pytree (jax or numpy arrays).
      config: front end, model config and the rest, JSON-serialisable; `format_version` is added.

    Returns:
      The absolute path of the export folder.
    """
    text = config_text(config)
    final = epath.Path(cli.abspath(path))
    if storage.is_url(os.fspath(final)):
        return _write_export_in_place(final, params, text)
    tmp, old = (final.parent / f".{final.name}.{suffix}" for suffix in ("tmp", "old"))
    if jax.process_index() == 0:
        for stale in (tmp, old):
            if stale.exists():
                stale.rmtree()
        tmp.mkdir(parents=True)
    _barrier("matpac_export_start")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / PARAMS_NAME, params)
    if jax.process_index() == 0:
        (tmp / CONFIG_NAME).write_text(text)
        # Folders cannot be renamed over one another: the old export is moved aside first.
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            old.rmtree()
    _barrier("matpac_export_done")
    logger.info("wrote the encoder export %s", final)
    return os.fspath(final)


def _write_export_in_place(final: epath.Path, params: Any, text: str) -> str:
    """`write_export` on a bucket, which has no rename (gcsfs copies every object, then
    deletes it): config.json, which makes the folder an export (`is_export`), goes first when
    an old export is removed and last when the new one is written, so a reader finds the old
    export, the new one or none, never a partial one."""
    if jax.process_index() == 0 and final.exists():
        if (final / CONFIG_NAME).exists():
            (final / CONFIG_NAME).unlink()
        final.rmtree()
    _barrier("matpac_export_start")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(final / PARAMS_NAME, params)
    if jax.process_index() == 0:
        (final / CONFIG_NAME).write_text(text)
    _barrier("matpac_export_done")
    logger.info("wrote the encoder export %s", final)
    return os.fspath(final)


def export_encoder(workdir: str, params_encoder: Any, config: dict) -> str:
    """The trainer's export: WORKDIR/export/ (see `write_export`).

    Args:
      workdir: the run's directory.
      params_encoder: the student encoder's parameter pytree.
      config: front-end and model config, JSON-serialisable.

    Returns:
      The export directory.
    """
    return write_export(storage.join(cli.abspath(workdir), "export"), params_encoder, config)


def read_config(path: str) -> dict:
    """An export's config.json, its version checked.

    Raises:
      FileNotFoundError: `path` is not an export.
      ValueError: a format newer than this code reads.
    """
    path = epath.Path(cli.abspath(path))
    if not is_export(os.fspath(path)):
        raise FileNotFoundError(
            f"{path} is not an encoder export (expected {PARAMS_NAME}/ and {CONFIG_NAME}, as "
            "written by the trainer or python -m matpac_jax.interop.convert)"
        )
    config = json.loads((path / CONFIG_NAME).read_text())
    version = config.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path / CONFIG_NAME}: export format {version!r}, this matpac_jax reads up to "
            f"{FORMAT_VERSION}; update matpac_jax"
        )
    return config


def load_export(path: str, sharding: jax.sharding.Sharding | None = None) -> tuple[Any, dict]:
    """Reads an export folder.

    Args:
      path: the export folder.
      sharding: where every array goes; the first local device by default.

    Returns:
      (params, config): params as written (a "head" entry too, if the export has one).
    """
    config = read_config(path)
    path = epath.Path(cli.abspath(path))  # Orbax needs absolute paths
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.metadata(path / PARAMS_NAME).item_metadata.tree
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree
        )
        params = ckptr.restore(path / PARAMS_NAME, target)
    return params, config
