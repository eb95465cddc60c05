"""The command-line boundary that every `python -m matpac_jax.*` program goes through.

- Paths: every path a user gives is made absolute (and `~` expanded) once, here, so a program
  works from any current directory (Orbax, grain workers and subprocesses need absolute paths).
- Mistakes: a `UserError` (a missing or unwritable path, a bad flag value, a config typo) prints
  one line, `PROG: error: MESSAGE`, and exits 2, without a traceback. A failure of the run itself
  (a real bug, a crash) still raises with its traceback and exits 1. `--debug` or the
  environment variable `MATPAC_DEBUG=1` shows the traceback of a `UserError` too.
- Outputs are checked for writability before any long work starts (`output_dir`, `output_file`).
- Progress: a bar on a terminal, plain log lines elsewhere (`progress`).

Nothing here imports jax: the checks run before the slow imports.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import sys
import time
from typing import Callable, Iterator, Optional, Sequence

from matpac_jax import storage

DEBUG_ENV = "MATPAC_DEBUG"
logger = logging.getLogger(__name__)


class UserError(Exception):
    """A mistake in what the user asked for: shown as one line, exit status 2."""


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """True with `--debug` on the command line or MATPAC_DEBUG set to a true value."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return "--debug" in argv or env not in ("", "0", "false", "no")


def one_line(message: object) -> str:
    """The first line of a message, stripped (tracebacks and tool dumps stay out)."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(message).__name__


def fail(prog: str, message: object) -> int:
    """Prints `PROG: error: MESSAGE` on stderr; returns the exit status 2."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return 2


def run(main: Callable[[Optional[Sequence[str]]], int], argv=None, *, prog: str) -> int:
    """Calls `main(argv)` under the boundary's rules and returns the exit status.

    UserError -> one line and 2 (traceback with --debug); KeyboardInterrupt -> 130; any other
    exception propagates (traceback, exit 1).
    """
    start_process()
    try:
        return int(main(argv) or 0)
    except UserError as e:
        if debug_requested(argv):
            raise
        return fail(prog, e)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def start_process() -> tuple[int, int]:
    """What every command sets up before its work: quiet backend probing, the host allocator,
    the open-file limit (returns `raise_open_file_limit`'s (before, after))."""
    quiet_jax_backend_probing()
    keep_freed_host_memory()
    return raise_open_file_limit()


def raise_open_file_limit() -> tuple[int, int]:
    """Raises this process's soft limit on open files to its hard limit; returns (before, after).

    The soft limit is often 1,024 while the hard one is far higher; reading a corpus keeps a
    file open per shard (up to half the limit, `audio.shards.max_open_shards`), and checkpoints
    open many more. Processes started later (grain's workers) inherit the raised limit. Where
    the hard limit is unlimited (macOS), the kernel's own ceiling is tried, then 10,240.
    """
    try:
        import resource  # pylint: disable=g-import-not-at-top (POSIX only)
    except ImportError:
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    targets = (
        [hard] if hard != resource.RLIM_INFINITY else [n for n in (1 << 20, 10_240) if n > soft]
    )
    for target in targets:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target
        except (ValueError, OSError):
            continue
    return soft, soft


HOST_MALLOC_ENV = "MATPAC_HOST_MALLOC"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8


def keep_freed_host_memory() -> bool:
    """Lets the memory a process frees stay in it for its next allocation (glibc malloc options).

    XLA's CPU runtime allocates each call's temporary buffer (593 MiB for the small train step of
    docs/PERFORMANCE.md, 2 GiB for ViT-B at batch 8) from its worker threads. glibc serves an
    allocation that large with mmap and unmaps it when it is freed, so every call faults in fresh
    zeroed pages: 160,000 page faults and 0.3 s of kernel time per small step on a 2-core machine.
    With one arena, no mmap and no trimming, the freed buffer stays in the heap and the next call
    reuses it. The cost: the process keeps its peak memory until it exits.

    Call it before JAX starts its threads (a thread that already has an arena keeps it).
    `MATPAC_HOST_MALLOC=system` keeps glibc's defaults. Returns whether the options were set: not
    with that variable, nor with a C library other than glibc.
    """
    if os.environ.get(HOST_MALLOC_ENV, "").strip().lower() == "system":
        return False
    try:
        os.confstr("CS_GNU_LIBC_VERSION")  # raises off glibc
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False
    settings = (
        (_M_ARENA_MAX, 1),  # every thread allocates from the main (brk) heap
        (_M_MMAP_MAX, 0),  # no allocation is served by mmap...
        (_M_MMAP_THRESHOLD, 32 << 20),  # ...and the threshold stops adapting to frees
        (_M_TRIM_THRESHOLD, -1),  # freed memory at the top of the heap is never given back
    )
    results = [mallopt(param, value) for param, value in settings]  # each one, even after a refusal
    return all(result == 1 for result in results)


def quiet_jax_backend_probing() -> None:
    """JAX narrates each accelerator backend it fails to find ('Unable to initialize backend
    tpu') at INFO; on a CPU-only machine that is noise, so only its warnings are kept."""
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def xla_flags_with_device_count(flags: Optional[str], count: int) -> str:
    """`flags` (an XLA_FLAGS value, or None) with `count` fake host-platform (CPU) devices.

    The user's other XLA options (an instruction-set cap, a dump folder) are kept; only a device
    count already there is replaced. Must be put in the environment before jax starts.
    """
    kept = [f for f in (flags or "").split() if f.split("=", 1)[0] != _DEVICE_COUNT_FLAG]
    return " ".join(kept + [f"{_DEVICE_COUNT_FLAG}={count}"])


class ArgumentParser(argparse.ArgumentParser):
    """argparse with `--debug`, the module docstring as help, and one-line usage errors."""

    def __init__(self, prog: str, doc: Optional[str] = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if doc:
            kwargs.setdefault("description", doc.strip().split("\n\n")[0])
        super().__init__(prog=prog, **kwargs)
        self.add_argument(
            "--debug",
            action="store_true",
            help=f"show the traceback of a usage error (or set {DEBUG_ENV}=1)",
        )

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def int_at_least(low: int):
    """An argparse `type`: an integer >= `low` (a usage error, one line, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low}")
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse names in its message
    return parse


# ---------------------------------------------------------------- paths


def abspath(path: Optional[str]) -> Optional[str]:
    """`~` expanded, made absolute against the current directory; None stays None."""
    if path is None:
        return None
    path = os.fspath(path)
    if storage.is_url(path):  # gs://, s3:// ...: a URL is absolute already
        return path
    return os.path.abspath(os.path.expanduser(path))


def _name(flag: str, path: str, given: Optional[str]) -> str:
    shown = given if given is not None else path
    return f"{flag} {shown}" if flag else shown


def _no_url_here(full: str, name: str, verb: str) -> None:
    scheme = full.split("://", 1)[0]
    raise UserError(
        f"{name}: {verb} {scheme}:// is not supported here (training, preprocessing, export, "
        "embed and probe's --encoder take bucket paths): use a local or shared folder, and "
        "copy it to or from the bucket (gcloud storage cp -r)"
    )


def input_dir(path: str, flag: str = "", *, what: str = "folder", url: bool = False) -> str:
    """An existing, readable folder, as an absolute path; with `url`, also a URL under which
    objects exist (gs://bucket/mels); UserError otherwise."""
    full = abspath(path)
    name = _name(flag, full, path)
    if storage.is_url(full) and not url:
        _no_url_here(full, name, "reading from")
    if storage.is_url(full):
        try:
            found = storage.isdir(full)
        except Exception as e:  # pylint: disable=broad-except (the client's own: auth, network)
            raise UserError(f"{name}: cannot be read ({one_line(e)})") from None
        if not found:
            raise UserError(f"{name}: no such {what} (no object under it)")
        return full
    if not os.path.exists(full):
        raise UserError(f"{name}: no such {what}")
    if not os.path.isdir(full):
        raise UserError(f"{name}: is a file, expected a {what}")
    if not os.access(full, os.R_OK | os.X_OK):
        raise UserError(f"{name}: {what} is not readable")
    return full


def input_file(path: str, flag: str = "", *, what: str = "file") -> str:
    """An existing, readable file, as an absolute path; UserError otherwise."""
    full = abspath(path)
    name = _name(flag, full, path)
    if not os.path.exists(full):
        raise UserError(f"{name}: no such {what}")
    if os.path.isdir(full):
        raise UserError(f"{name}: is a folder, expected a {what}")
    if not os.access(full, os.R_OK):
        raise UserError(f"{name}: {what} is not readable")
    return full


def _check_creatable(full: str, name: str) -> None:
    """The nearest existing ancestor of `full` must be a writable folder."""
    parent = os.path.dirname(full)
    while parent and not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        raise UserError(f"{name}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{name}: cannot be created, {parent} is not writable")


def output_dir(path: str, flag: str = "", *, what: str = "folder", url: bool = False) -> str:
    """A folder that exists and is writable, or can be created; absolute; with `url`, also a
    URL (gs://bucket/run: objects are written under it). Creates nothing."""
    full = abspath(path)
    name = _name(flag, full, path)
    if storage.is_url(full) and not url:
        _no_url_here(full, name, "writing to")
    if storage.is_url(full):
        try:
            is_file = storage.exists(full) and not storage.isdir(full)
        except Exception as e:  # pylint: disable=broad-except (the client's own: auth, network)
            raise UserError(f"{name}: cannot be reached ({one_line(e)})") from None
        if is_file:
            raise UserError(f"{name}: is an object (a file), expected a {what}")
        return full
    if os.path.exists(full):
        if not os.path.isdir(full):
            raise UserError(f"{name}: is a file, expected a {what}")
        if not os.access(full, os.W_OK | os.X_OK):
            raise UserError(f"{name}: {what} is not writable")
        return full
    _check_creatable(full, name)
    return full


def output_file(path: str, flag: str = "", *, what: str = "file", url: bool = False) -> str:
    """A file path whose folder exists and is writable, or can be created; absolute; with
    `url`, also a URL (gs://bucket/emb.npz)."""
    full = abspath(path)
    name = _name(flag, full, path)
    if storage.is_url(full) and not url:
        _no_url_here(full, name, "writing to")
    if storage.is_url(full):
        output_dir(storage.dirname(full), flag, url=True)  # reachable, and not an object
        if storage.isdir(full):
            raise UserError(f"{name}: is a folder, expected a {what}")
        return full
    if os.path.isdir(full):
        raise UserError(f"{name}: is a folder, expected a {what}")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise UserError(f"{name}: {what} is not writable")
    folder = os.path.dirname(full)
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise UserError(f"{name}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"{name}: folder {folder} is not writable")
    else:
        _check_creatable(full, name)
    return full


def make_dir(path: str, flag: str = "") -> str:
    """Creates a folder (and its parents); a failure (permissions, a read-only or special file
    system) is a UserError naming the folder."""
    try:
        storage.makedirs(path)  # a bucket has no folders: nothing to make
    except OSError as e:
        raise UserError(
            f"{_name(flag, path, None)}: cannot create it ({e.strerror or e})"
        ) from None
    return path


@contextlib.contextmanager
def removed_on_failure(path: str) -> Iterator[str]:
    """Yields `path`; if the block fails and `path` did not exist before, removes what it made.

    For outputs that a failed start must not leave behind (an empty workdir or output folder).
    """
    existed = storage.isdir(path) if storage.is_url(path) else os.path.lexists(path)
    try:
        yield path
    except BaseException:
        if not existed and storage.isdir(path):
            storage.rmtree(path)
        raise


# ---------------------------------------------------------------- progress


class _LogProgress:
    """tqdm's calls we use, as a log line at most every `interval` seconds and at the end."""

    def __init__(self, total, desc, unit, initial=0, interval=30.0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval, self._last, self._post = interval, time.monotonic(), ""
        self.disable = True  # what tqdm says when no bar is drawn

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._log()

    def set_postfix(self, refresh: bool = True, **kwargs) -> None:
        del refresh
        self._post = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def write(self, message: str, file=None) -> None:
        print(message, file=file or sys.stderr, flush=True)

    def _log(self) -> None:
        self._last = time.monotonic()
        of = f"/{self.total}" if self.total else ""
        post = f" ({self._post})" if self._post else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{post}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n:
            self._log()


def progress(
    total: Optional[int] = None,
    *,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    interval: float = 30.0,
):
    """A tqdm bar on a terminal; elsewhere (log files, CI) a plain line every `interval` s.

    Disabled (`enabled=False`) it still counts but prints nothing.
    """
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm  # pylint: disable=g-import-not-at-top

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    bar = _LogProgress(total, desc, unit, initial=initial, interval=interval)
    if not enabled:
        bar.close = lambda: None  # type: ignore[method-assign]
        bar.interval = float("inf")
    return bar
