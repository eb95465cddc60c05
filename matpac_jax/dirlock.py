"""One writer per output folder (the trainer's workdir, preprocessing's output), on any file system.

Two trainers (or two preprocessing runs) on one folder corrupt each other's files. `DirLock`
holds FOLDER/.lock, a small JSON file naming its holder (what, host, boot, pid and the process's
start time, the scheduler's job), made to appear atomically (a hard link of a fully written
file; `O_EXCL` creation where the file system has no hard links) and kept fresh by a heartbeat
thread that touches it every `lease_s / 6` seconds. No `flock`: Lustre mounted without it and
NFS (where a dead client's lock outlives it) work the same as a local disk.

A run that finds the lock held takes it over when its holder is known to be gone, and is
refused otherwise (`LockedError`, which names the holder):

- the same host (and boot) and the holder's process is gone: a crash, a kill -9;
- the same SLURM job: a requeued job's earlier run, on whichever node it ran;
- the heartbeat stopped: the file is older than `lease_s` (default 120 s) by the file server's
  own clock (the age of a file written now), so nodes' clocks may disagree: a node that died.

On a bucket (gs://) the lock is an object: created with an upload precondition
(`ifGenerationMatch=0`, `storage.create_exclusive`), kept fresh by rewriting it, and aged by the
bucket's own clock (the time of an object written now).

A takeover happens under FOLDER/.lock.takeover (created with `O_EXCL`, held for milliseconds),
so of several runs that find the same dead holder, exactly one takes its place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid

from matpac_jax import storage
from matpac_jax.cli import UserError

LOCK_NAME = ".lock"
LEASE_S = 120.0  # a holder whose heartbeat stopped this long ago is dead
_TAKEOVER = ".takeover"  # the lock file's name with this: the takeover mutex
_TAKEOVER_STALE_S = 60.0  # a takeover mutex this old was left by a run that died taking over
# An empty lock older than this: left by matpac_jax before 0.2 (an flock on an empty .lock that
# stayed after the run) or by a run that died creating it (a lock is written within ms).
_EMPTY_STALE_S = 10.0
logger = logging.getLogger(__name__)


class LockedError(UserError):
    """The folder is held by another run."""


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _job() -> str | None:
    """The scheduler's job this process belongs to (a requeued SLURM job keeps its id)."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm:{job}" if job else None


def _alive(pid: int, start: int | None) -> bool:
    """Whether process `pid` of this host runs, and is the one that started at `start`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _start_time(pid)
    return start is None or now is None or now == start


def describe(holder: dict, what: bool = True) -> str:
    """The holder as a message says it: "trainer pid 12 on host a (slurm job 7)" (without
    "trainer" when not `what`)."""
    if not holder or holder.get("empty"):
        return "starting up"
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if what:
        text = f"{holder.get('what', 'run')} {text}"
    job = holder.get("job")
    return f"{text} ({job.replace(':', ' job ')})" if job else text


class DirLock:
    """Context manager: FOLDER/.lock held for the duration of the block.

    Args:
      folder: an existing folder.
      holder: what holds it, for the messages ("trainer", "preprocessing run").
      lease_s: how long a silent holder counts as alive.
      name: the lock file's name (a part of the folder: one lock per preprocessing task).
    """

    def __init__(
        self, folder: str, holder: str = "run", lease_s: float = LEASE_S, name: str = LOCK_NAME
    ):
        self.folder = os.fspath(folder)
        self.holder = holder
        self.lease_s = float(lease_s)
        self.path = storage.join(self.folder, name)
        self.took_over: dict | None = None  # the dead holder this lock was taken from
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading the lock
    def _me(self) -> dict:
        pid = os.getpid()
        return {
            "what": self.holder,
            "host": socket.gethostname(),
            "boot": _boot_id(),
            "pid": pid,
            "start": _start_time(pid),
            "job": _job(),
            "lease_s": self.lease_s,
            "token": self._token,
        }

    def _read(self) -> tuple[dict | None, float | None]:
        """(the lock's contents, {} if unreadable; its mtime), or (None, None) if there is none."""
        try:
            if storage.is_url(self.path):
                text, mtime = storage.read_text(self.path), storage.mtime(self.path)
                if mtime is None:
                    return None, None
            else:
                with open(self.path) as f:
                    mtime = os.fstat(f.fileno()).st_mtime
                    text = f.read()
        except FileNotFoundError:
            return None, None
        if not text.strip():
            return {"empty": True}, mtime
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {}  # damaged: judged by its age
        return (holder if isinstance(holder, dict) else {}), mtime

    def _server_now(self) -> float:
        """The file server's clock: the mtime of a file written now."""
        probe = storage.join(self.folder, f".lock.clock-{self._token}")
        storage.write_bytes(probe, b"")
        try:
            return storage.mtime(probe)
        finally:
            storage.remove(probe)

    def _gone_because(self, holder: dict, mtime: float) -> str | None:
        """Why the holder is gone, or None if it may be alive."""
        age = self._server_now() - mtime
        if holder.get("empty"):
            return "an empty lock file, left by an older version" if age > _EMPTY_STALE_S else None
        me = self._me()
        same_host = holder.get("host") == me["host"]
        if same_host and holder.get("boot") and holder.get("boot") != me["boot"]:
            return "its host restarted since"
        pid = holder.get("pid")
        if same_host and isinstance(pid, int) and not _alive(pid, holder.get("start")):
            return "its process is gone"
        if me["job"] and holder.get("job") == me["job"] and holder.get("pid") != me["pid"]:
            return "it is an earlier run of this same job (requeued)"
        lease = float(holder.get("lease_s") or self.lease_s)
        if age > lease:
            return f"its heartbeat stopped {age:.0f} s ago (lease {lease:.0f} s)"
        return None

    # ------------------------------------------------------------------ taking it
    def _create(self) -> bool:
        """Makes the lock ours if there is none; False if one exists."""
        if storage.is_url(self.path):  # a bucket: an upload with a precondition
            return self._create_exclusive()
        tmp = f"{self.path}.new-{self._token}"
        with open(tmp, "w") as f:
            json.dump(self._me(), f)
        try:
            os.link(tmp, self.path)  # atomic, and the file is whole when it appears
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return self._create_exclusive()  # no hard links here
        finally:
            os.remove(tmp)

    def _create_exclusive(self) -> bool:
        return storage.create_exclusive(self.path, json.dumps(self._me()).encode())

    @contextlib.contextmanager
    def _takeover_mutex(self):
        path = self.path + _TAKEOVER
        for attempt in range(2):
            if storage.create_exclusive(path, b""):
                break
            mtime = storage.mtime(path)
            if mtime is None:
                continue
            if attempt or self._server_now() - mtime < _TAKEOVER_STALE_S:
                raise LockedError(
                    f"{self.folder} is being taken over by another {self.holder}: "
                    "try again in a minute"
                )
            storage.remove(path)
        else:
            raise LockedError(f"{self.folder} is being taken over by another {self.holder}")
        try:
            yield
        finally:
            storage.remove(path)

    def acquire(self) -> None:
        if self._create():
            return self._start_heartbeat()
        holder, mtime = self._read()
        if holder is None:  # released between the two calls
            if self._create():
                return self._start_heartbeat()
            holder, mtime = self._read()
        why = None if holder is None else self._gone_because(holder, mtime)
        if holder is None or why is None:
            age = "" if mtime is None else f", alive {time.time() - mtime:.0f} s ago"
            raise LockedError(
                f"{self.folder} is in use by another {self.holder} ({describe(holder or {}, False)}"
                f"{age}; taken over once silent for {self.lease_s:.0f} s): stop that run, wait, "
                "or choose another folder"
            )
        with self._takeover_mutex():
            again, _ = self._read()
            if again is not None and again.get("token") != holder.get("token"):
                raise LockedError(
                    f"{self.folder} was just taken by another {self.holder} "
                    f"({describe(again)}): choose another folder"
                )
            storage.remove(self.path)
            if not self._create():
                raise LockedError(f"{self.folder} was just taken by another {self.holder}")
        self.took_over = holder
        logger.warning(
            "%s: took over the lock of a %s that is gone (%s): %s",
            self.folder,
            describe(holder),
            why,
            "resuming from its last finished checkpoint" if self.holder == "trainer" else "",
        )
        self._start_heartbeat()

    # ------------------------------------------------------------------ holding it
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="dirlock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(self.lease_s / 6):
            holder, _ = self._read()
            if (holder or {}).get("token") != self._token and holder != {}:
                if not warned:
                    logger.error(
                        "%s: this run's lock was taken over by %s (this run was silent longer "
                        "than the %.0f s lease?): two runs may now write to it",
                        self.folder,
                        describe(holder or {}),
                        self.lease_s,
                    )
                    warned = True
                continue
            with contextlib.suppress(OSError):
                storage.touch(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder, _ = self._read()
        if holder is not None and holder.get("token") == self._token:
            storage.remove(self.path)

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
