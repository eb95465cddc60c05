"""Paths that may be URLs: `gs://bucket/...` (or any scheme fsspec knows) beside local paths.

Local paths keep `os` and `open`; a URL goes through `etils.epath` (gcsfs for gs://), and byte
ranges through the fsspec file system behind it (`filesystem`). Credentials are the client's
own (Application Default Credentials on Google Cloud); `STORAGE_EMULATOR_HOST` points gcsfs at
a GCS emulator (the tests start one, tests/gcs_emulator.py).

Nothing here imports jax; etils and fsspec are imported only when a URL is used.
"""

from __future__ import annotations

import os
import re

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    """Whether `path` names a remote location (`gs://b/x`), not a local file (`file://` is)."""
    path = os.fspath(path)
    return bool(_URL.match(path)) and not path.startswith("file://")


def join(base: str, *parts: str) -> str:
    """`base/parts...` for a local path or a URL."""
    if is_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def epath(path: str):
    """`etils.epath.Path` of a URL."""
    from etils import epath as etils_epath  # pylint: disable=g-import-not-at-top

    return etils_epath.Path(path)


def exists(path: str) -> bool:
    return epath(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def read_text(path: str) -> str:
    if is_url(path):
        return epath(path).read_text()
    with open(path) as f:
        return f.read()


def filesystem(url: str):
    """(fsspec file system, its path for `url`): what byte-range reads go through."""
    import fsspec  # pylint: disable=g-import-not-at-top

    return fsspec.core.url_to_fs(url)
