"""matpac_jax/dirlock.py: one writer per folder, across processes; no lock outlives its holder."""

import os
import signal
import subprocess
import sys

import pytest

from matpac_jax import cli, dirlock

_CHILD = """
import sys
from matpac_jax import dirlock
for attempt in range(2):
    try:
        with dirlock.DirLock(sys.argv[1], "trainer"):
            print("acquired", flush=True)
    except dirlock.LockedError as e:
        print("refused:", e, flush=True)
    sys.stdin.readline()  # the parent says when to try again
"""


def test_lock_excludes_another_process_and_names_the_holder(tmp_path):
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as child:
        try:
            with dirlock.DirLock(str(tmp_path), "trainer"):
                first = child.stdout.readline()
            child.stdin.write("\n")
            child.stdin.flush()
            second = child.stdout.readline()
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(timeout=60) == 0
        finally:
            child.kill()
    assert first.startswith("refused:") and str(tmp_path) in first
    assert f"pid {os.getpid()} on host" in first and "another trainer" in first
    assert second.strip() == "acquired"
    assert not os.path.exists(tmp_path / dirlock.OWNER_NAME)  # released: no owner left


def test_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from matpac_jax import dirlock\n"
            "with dirlock.DirLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(dirlock.LockedError):
            with dirlock.DirLock(str(tmp_path)):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with dirlock.DirLock(str(tmp_path)):  # the kernel dropped the dead holder's lock
            pass
    finally:
        holder.kill()
    assert issubclass(dirlock.LockedError, cli.UserError)  # a one-line error at the CLI
