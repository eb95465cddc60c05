"""Paths that may be URLs: `gs://bucket/...` (or any scheme fsspec knows) beside local paths.

Local paths keep `os` and `open`; a URL goes through its fsspec file system (gcsfs for gs://),
which `etils.epath` and Orbax use as well. Credentials are the client's own (Application
Default Credentials on Google Cloud); `STORAGE_EMULATOR_HOST` points gcsfs at a GCS emulator
(the tests start one, tests/gcs_emulator.py).

What differs on a bucket, and how each function here bridges it:

- no folders: `makedirs` does nothing, a "folder" exists when an object lies under it;
- no rename: an object appears whole when its upload ends, so `write_bytes` uploads at once
  where a local write goes through a temporary name and `os.replace`;
- no append: callers that append (metrics.jsonl) rewrite the object;
- exclusive creation is a precondition (`ifGenerationMatch=0`, `create_exclusive`), and an
  object's time is the server's (`mtime`), which is what `dirlock` needs.

Listings are never cached: several machines write the same bucket.

Nothing here imports jax; fsspec is imported only when a URL is used.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile

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


def dirname(path: str) -> str:
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(path)


def filesystem(url: str):
    """(fsspec file system, its path for `url`): what URL reads and writes go through."""
    import fsspec  # pylint: disable=g-import-not-at-top

    return fsspec.core.url_to_fs(url, use_listings_cache=False)


def exists(path: str) -> bool:
    if is_url(path):
        fs, p = filesystem(path)
        return fs.exists(p)
    return os.path.exists(path)


def isdir(path: str) -> bool:
    if is_url(path):
        fs, p = filesystem(path)
        return fs.isdir(p)
    return os.path.isdir(path)


def read_bytes(path: str) -> bytes:
    if is_url(path):
        fs, p = filesystem(path)
        return fs.cat_file(p)
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def temp_name(path: str) -> str:
    """`path` with a suffix no other process writes: `.tmp-HOST-PID` (machines that share a
    folder may run the same pid)."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def write_bytes(path: str, data: bytes) -> None:
    """Writes `path` so that readers see the old file or the new one, never half of one."""
    if is_url(path):
        fs, p = filesystem(path)
        fs.pipe_file(p, data)
        return
    tmp = temp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def upload(local: str, path: str) -> None:
    """Copies the local file `local` to `path` (a URL, or a local path: then a move)."""
    if is_url(path):
        fs, p = filesystem(path)
        fs.put_file(local, p)
    else:
        os.replace(local, path)


@contextlib.contextmanager
def local_copy(path: str):
    """A local file holding `path`'s bytes for the block (the path itself when local)."""
    if not is_url(path):
        yield path
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.TemporaryDirectory(prefix="matpac-") as tmp:
        local = os.path.join(tmp, "copy" + suffix)
        fs, p = filesystem(path)
        fs.get_file(p, local)
        yield local


def makedirs(path: str) -> None:
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def remove(path: str, missing_ok: bool = True) -> None:
    try:
        if is_url(path):
            fs, p = filesystem(path)
            fs.rm_file(p)
        else:
            os.remove(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path: str) -> None:
    """Deletes a folder and everything under it; nothing when there is none."""
    if is_url(path):
        fs, p = filesystem(path)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(p, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def glob(pattern: str) -> list[str]:
    """The paths matching `pattern` (`*`, `**`), as URLs for a URL pattern; sorted."""
    if is_url(pattern):
        fs, p = filesystem(pattern)
        scheme = pattern.split("://", 1)[0]
        return sorted(f"{scheme}://{m}" for m in fs.glob(p))
    import glob as glob_lib  # pylint: disable=g-import-not-at-top

    return sorted(glob_lib.glob(pattern, recursive=True))


def files_under(root: str) -> list[str]:
    """Sorted relative paths of every file under the folder `root` (following symlinks)."""
    if is_url(root):
        fs, p = filesystem(root)
        p = p.rstrip("/")
        return sorted(f[len(p) + 1 :] for f in fs.find(p) if not f.endswith("/"))
    found = []
    for r, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        found.extend(os.path.relpath(os.path.join(r, name), root) for name in files)
    return sorted(found)


def url_stamps(root: str) -> list[tuple[str, str]]:
    """(relative path, "size:version") of every object under the URL `root`, sorted: the
    version changes with each write (GCS's generation, else the modification time)."""
    fs, p = filesystem(root)
    p = p.rstrip("/")
    found = fs.find(p, detail=True)
    return sorted(
        (name[len(p) + 1 :], f"{info.get('size')}:{info.get('generation') or info.get('mtime')}")
        for name, info in found.items()
    )


def mtime(path: str) -> float | None:
    """The file's modification time by its server's clock (seconds), None when there is none."""
    try:
        if is_url(path):
            fs, p = filesystem(path)
            return fs.modified(p).timestamp()
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates `path` holding `data` unless it exists (then False), atomically: of several
    writers exactly one succeeds. On a bucket, an upload with `ifGenerationMatch=0`."""
    if is_url(path):
        fs, p = filesystem(path)
        try:
            fs.pipe_file(p, data, mode="create")
        except FileExistsError:
            return False
        return True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def touch(path: str) -> None:
    """Sets the file's time to now (on a bucket: rewrites the object, same bytes)."""
    if is_url(path):
        write_bytes(path, read_bytes(path))
    else:
        os.utime(path)
