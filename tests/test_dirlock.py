"""matpac_jax/dirlock.py: one writer per folder, across processes and hosts, without flock.

A live holder is refused; a holder that is gone (killed on this host, the earlier run of a
requeued SLURM job, a node whose heartbeat stopped) is taken over; of several runs that find
the same dead holder exactly one takes its place. Holders on other hosts are lock files written
as another host's run writes them.
"""

import fcntl
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

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


def _holder(folder, *extra):
    """A process holding FOLDER's lock until killed (`extra`: DirLock's other arguments)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from matpac_jax import dirlock\n"
            f"with dirlock.DirLock(sys.argv[1], 'trainer', {', '.join(extra)}):\n"
            "    print('held', flush=True); time.sleep(120)",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _written_by_another_host(folder, age_s, **fields):
    """FOLDER/.lock as a trainer on node-7 writes it, last renewed `age_s` ago."""
    holder = {
        "what": "trainer",
        "host": "node-7",
        "boot": "b",
        "pid": 4242,
        "start": 1,
        "job": None,
        "lease_s": dirlock.LEASE_S,
        "token": "theirs",
        **fields,
    }
    path = os.path.join(folder, dirlock.LOCK_NAME)
    with open(path, "w") as f:
        json.dump(holder, f)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


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
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in first
    assert "another trainer" in first and "taken over once silent for 120 s" in first
    assert second.strip() == "acquired"
    assert os.listdir(tmp_path) == []  # released: nothing left behind


def test_a_killed_holder_is_taken_over_and_a_live_one_refused(tmp_path, caplog):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(dirlock.LockedError, match=f"pid {holder.pid} on host"):
            with dirlock.DirLock(str(tmp_path), "trainer"):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert os.path.exists(tmp_path / dirlock.LOCK_NAME)  # a dead holder's lock file stays
        with dirlock.DirLock(str(tmp_path), "trainer") as lock:
            assert lock.took_over["pid"] == holder.pid
    finally:
        holder.kill()
    assert f"took over the lock of a trainer pid {holder.pid}" in caplog.text
    assert "its process is gone" in caplog.text
    assert issubclass(dirlock.LockedError, cli.UserError)  # a one-line error at the CLI


def test_another_hosts_holder_counts_as_alive_until_its_lease_runs_out(tmp_path):
    _written_by_another_host(str(tmp_path), age_s=5)
    with pytest.raises(
        dirlock.LockedError, match=r"another trainer \(pid 4242 on host node-7, alive"
    ):
        with dirlock.DirLock(str(tmp_path), "trainer"):
            pass
    _written_by_another_host(str(tmp_path), age_s=dirlock.LEASE_S + 30)
    with dirlock.DirLock(str(tmp_path), "trainer") as lock:
        assert lock.took_over["host"] == "node-7"
        with open(tmp_path / dirlock.LOCK_NAME) as f:
            assert json.load(f)["pid"] == os.getpid()


def test_a_requeued_slurm_job_takes_over_its_earlier_run(tmp_path, monkeypatch):
    """SLURM requeues a job under the same id, on any node: its earlier run is gone even if
    that node never came back to stop its heartbeat."""
    _written_by_another_host(str(tmp_path), age_s=1, job="slurm:77")
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(dirlock.LockedError, match=r"on host node-7 \(slurm job 77\)"):
        with dirlock.DirLock(str(tmp_path), "trainer"):
            pass
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with dirlock.DirLock(str(tmp_path), "trainer") as lock:
        assert lock.took_over["job"] == "slurm:77"


def test_a_restarted_host(tmp_path):
    _written_by_another_host(str(tmp_path), age_s=1, host=socket.gethostname(), pid=os.getpid())
    with dirlock.DirLock(str(tmp_path), "trainer") as lock:  # the boot ids differ
        assert lock.took_over["boot"] == "b"


def test_the_empty_lock_an_older_version_left(tmp_path):
    """Before, a run held an flock on an empty .lock and left the file behind: a workdir of an
    older version resumes at once (an empty lock younger than 10 s may be one being made)."""
    path = tmp_path / dirlock.LOCK_NAME
    path.write_text("")
    with pytest.raises(dirlock.LockedError, match=r"another trainer \(starting up, alive"):
        with dirlock.DirLock(str(tmp_path), "trainer"):
            pass
    os.utime(path, (time.time() - 11,) * 2)
    with dirlock.DirLock(str(tmp_path), "trainer") as lock:
        assert lock.took_over == {"empty": True}


def test_a_damaged_lock_is_judged_by_its_age(tmp_path):
    path = tmp_path / dirlock.LOCK_NAME
    path.write_text('{"what": "trai')
    with pytest.raises(dirlock.LockedError, match=r"another trainer \(starting up, alive"):
        with dirlock.DirLock(str(tmp_path), "trainer"):
            pass
    os.utime(path, (time.time() - dirlock.LEASE_S - 30,) * 2)
    with dirlock.DirLock(str(tmp_path), "trainer") as lock:
        assert lock.took_over == {}


def test_the_heartbeat_keeps_a_holder_alive(tmp_path):
    holder = _holder(tmp_path, "lease_s=1.2")
    try:
        time.sleep(3)  # more than two leases: without the heartbeat, it would be taken over
        with pytest.raises(dirlock.LockedError, match="taken over once silent for 1 s"):
            with dirlock.DirLock(str(tmp_path), "trainer", lease_s=1.2):
                pass
        holder.send_signal(signal.SIGSTOP)  # frozen (a lost node): the heartbeat stops
        time.sleep(2)
        with dirlock.DirLock(str(tmp_path), "trainer", lease_s=1.2) as lock:
            assert lock.took_over["pid"] == holder.pid
    finally:
        holder.kill()


def _contend(folder, barrier, results):
    barrier.wait()
    try:
        with dirlock.DirLock(folder, "trainer"):
            results.put("acquired")
            time.sleep(1)  # held while the others look
    except dirlock.LockedError as e:
        results.put(f"refused: {e}")


def test_of_several_runs_finding_a_dead_holder_one_takes_over(tmp_path):
    _written_by_another_host(str(tmp_path), age_s=dirlock.LEASE_S + 30)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes.count("acquired") == 1, outcomes
    assert all(o.startswith("refused:") for o in outcomes if o != "acquired")


_NO_FLOCK = """
import errno, fcntl, sys
def no_flock(*args):
    raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre mounted without flock
fcntl.flock = fcntl.lockf = no_flock
from matpac_jax import dirlock
with dirlock.DirLock(sys.argv[1], "trainer"):
    print("acquired", flush=True)
"""


def test_works_where_the_file_system_has_no_flock(tmp_path):
    assert fcntl.flock  # the child replaces it
    out = subprocess.run(
        [sys.executable, "-c", _NO_FLOCK, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "acquired", out.stderr[-2000:]


def test_works_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    def no_link(*args):
        raise PermissionError(1, "Operation not permitted")  # e.g. a FUSE mount

    monkeypatch.setattr(os, "link", no_link)
    with dirlock.DirLock(str(tmp_path), "trainer"):
        with pytest.raises(dirlock.LockedError, match="in use by another trainer"):
            with dirlock.DirLock(str(tmp_path), "trainer"):
                pass
    assert os.listdir(tmp_path) == []
