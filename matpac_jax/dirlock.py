"""One writer per output folder: the trainer's workdir and preprocessing's output folder.

Two trainers (or two preprocessing runs) on one folder corrupt each other's files. `DirLock`
holds an exclusive, non-blocking `filelock` on FOLDER/.lock; the kernel drops it when the holder
exits or dies, so a crashed run never leaves a lock that blocks the next one. The holder writes
who it is into FOLDER/.lock.owner (removed on release) so that a refused run can say who holds
the folder. `flock` needs a local or NFS file system (not gs://).
"""

from __future__ import annotations

import os
import socket

import filelock

from matpac_jax.cli import UserError

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner"


class LockedError(UserError):
    """The folder is held by another run."""


class DirLock:
    """Context manager: FOLDER/.lock held for the duration of the block.

    Args:
      folder: an existing folder.
      holder: what holds it, for the message ("trainer", "preprocessing run").
    """

    def __init__(self, folder: str, holder: str = "run"):
        self.folder = os.fspath(folder)
        self.holder = holder
        self._lock = filelock.FileLock(os.path.join(self.folder, LOCK_NAME), timeout=0)
        self._owner = os.path.join(self.folder, OWNER_NAME)

    def __enter__(self) -> DirLock:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            try:
                with open(self._owner) as f:
                    who = f.read().strip()
            except OSError:
                who = ""
            raise LockedError(
                f"{self.folder} is in use by another {self.holder} ({who or 'starting up'}): "
                "stop that run or choose another folder"
            ) from None
        with open(self._owner, "w") as f:
            f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            os.remove(self._owner)
        except OSError:
            pass
        self._lock.release()
