"""Joining a multi-process run: `jax.distributed`, CPU collectives, failure detection, SIGTERM.

One process per TPU VM worker, per GPU (SLURM task) or per localhost CPU process
(`launch/local_multiprocess.sh`). Every process runs the same trainer on its own slice of the
data; jit over global arrays does the rest. `initialize` must run before anything touches a
JAX backend (`jax.devices()`, any computation).

Failure: when a process dies, a collective that was waiting for it usually fails at once
(Gloo on CPUs: "Connection reset by peer"), and `fail_fast` ends the survivor with exit status
1. Otherwise (a frozen process, a lost host, a survivor between collectives) the coordinator
(process 0) misses heartbeats and JAX terminates every process within `heartbeat_timeout_s`
(SIGABRT, "the JAX distributed service detected fatal errors"), rather than leaving them
waiting forever. The last finished checkpoint is unaffected: Orbax commits a step only after
every process has written its part.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import signal
import sys

import jax
from absl import logging
from jax.experimental import multihost_utils

from matpac_jax import cli

MODES = ("auto", "on", "off")
# JAX's default (100 s) leaves a survivor hanging for minutes; a heartbeat is a few bytes from
# a background thread, so even a long compile or checkpoint does not delay it.
HEARTBEAT_TIMEOUT_S = 30
INITIALIZATION_TIMEOUT_S = 300  # every process must have joined by then (slow VM start-up)
# A process that finishes (or fails) waits this long at exit for the others to finish too;
# JAX's default (300 s) would keep a failed process alive for 5 minutes.
SHUTDOWN_TIMEOUT_S = 60


def detect_cluster() -> str | None:
    """The launcher whose environment describes several processes, or None.

    Only cheap local checks: JAX reads the actual layout (coordinator, count, id) itself.
    """
    env = os.environ
    # srun sets SLURM_STEP_NUM_TASKS; a plain `python` in an sbatch script (the batch step) is
    # one process even in a many-task allocation.
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    # A Cloud TPU VM: libtpu installed and TPU chips present (/dev/accel* on v2-v4, vfio on
    # v5e and later). JAX asks the VM's metadata server for the workers (one worker: 1 process).
    if importlib.util.find_spec("libtpu") and (
        glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
    ):
        return "tpu"
    return None


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
) -> bool:
    """Joins the multi-process run this process belongs to, if any; returns whether it did.

    Args:
      mode: "auto" joins when the three explicit arguments are given, or under a multi-task
        srun, Open MPI, or on a Cloud TPU VM; "on" always joins (JAX detects the layout);
        "off" never does (a single process).
      coordinator_address: host:port of process 0 (explicit layout, e.g. localhost runs).
      num_processes, process_id: the explicit layout's size and this process's place in it.
      heartbeat_timeout_s: how long a silent process counts as alive.
    """
    if mode not in MODES:
        raise ValueError(f"--distributed must be one of {MODES}, got {mode!r}")
    explicit = (coordinator_address, num_processes, process_id)
    if any(x is not None for x in explicit) and None in explicit:
        raise ValueError(
            "--coordinator_address, --num_processes and --process_id go together: give all "
            f"three or none (got {coordinator_address!r}, {num_processes!r}, {process_id!r})"
        )
    if mode == "off":
        if coordinator_address is not None:
            raise ValueError("--distributed=off contradicts --coordinator_address")
        return False
    if mode == "auto" and coordinator_address is None:
        cluster = detect_cluster()
        if cluster is None:
            return False
        logging.info("joining the %s job's processes", cluster)
    # Gloo is the default in jax 0.10 and only CPUs use it; it is set for older defaults
    # (no cross-process CPU collectives at all) and left alone if the user chose MPI.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=INITIALIZATION_TIMEOUT_S,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
    )
    logging.info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def check_backend() -> None:
    """cli.UserError when JAX_PLATFORMS names a platform JAX cannot start (a CPU-only jaxlib on
    a GPU node, no GPU visible, no libtpu): the run stops here instead of training on the CPU
    or failing later with JAX's bare AssertionError. Call after `initialize`."""
    wanted = os.environ.get("JAX_PLATFORMS", "")
    try:
        jax.devices()
    except (RuntimeError, AssertionError) as e:
        hints = {
            "cuda": "Install the CUDA build where GPUs are (pip install -e '.[cuda]'; "
            "launch/env.sh does with MATPAC_ACCELERATOR=cuda) and check nvidia-smi",
            "tpu": "Install the TPU build (pip install -e '.[tpu]') on a TPU VM",
        }
        platforms = [p.strip() for p in wanted.split(",") if p.strip()]
        hint = "; ".join(hints[p] for p in platforms if p in hints) or "Check JAX_PLATFORMS"
        detail = f": {cli.one_line(e)}" if str(e).strip() else ""
        raise cli.UserError(
            f"JAX_PLATFORMS={wanted or '(unset)'} but JAX cannot start it{detail}. {hint}"
        ) from None


MEET_TIMEOUT_S = 1800  # a slow compile on a loaded host, not a hang


def meet(name: str) -> None:
    """Every process waits here for the others, through the coordination service.

    Gloo gives a new communicator 30 s (fixed) for all processes to join it: a process that is
    still compiling the step when the others reach its first collective would fail the run. A
    meeting after compiling lines them up (jax's own barriers are collectives, hence Gloo's).
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

    # The client of jax.distributed.initialize; jax has no public barrier outside collectives.
    jax_distributed.global_state.client.wait_at_barrier(name, MEET_TIMEOUT_S * 1000)


class StopRequest:
    """SIGTERM (preemption) -> stop after a step that every process agrees on.

    One process: a Python SIGTERM handler sets a flag. Several: JAX's preemption service (set
    up by `jax.distributed.initialize`) catches SIGTERM on any process and picks the step
    after the furthest one any process has reached, so all save the same step and stop; a
    Python handler here would replace JAX's and let the processes stop at different steps.
    """

    def __init__(self):
        self.signum: int | None = None
        self._shared = jax.process_count() > 1
        if self._shared and not jax.config.jax_enable_preemption_service:
            raise ValueError(
                "a multi-process run needs JAX's preemption service to stop on SIGTERM: "
                "unset JAX_ENABLE_PREEMPTION_SERVICE=0"
            )
        self._previous = None
        if not self._shared:
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.signum = signum

    def __call__(self, step: int) -> bool:
        """Whether to stop after `step`; call once per step, on every process."""
        if self._shared and multihost_utils.reached_preemption_sync_point(step):
            self.signum = signal.SIGTERM
        return self.signum is not None

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


@contextlib.contextmanager
def fail_fast():
    """An exception in one process of several ends that process at once, with exit status 1.

    Exiting normally would first wait up to SHUTDOWN_TIMEOUT_S for the other processes, which
    are themselves stuck in a collective waiting for this one; exiting at once lets the
    heartbeat end them within `heartbeat_timeout_s`. A single process raises as usual.
    """
    try:
        yield
    except (Exception, KeyboardInterrupt):  # Ctrl-C too: the others must not hang either
        if jax.process_count() == 1:
            raise
        logging.exception(
            "process %d failed; exiting without waiting for the others", jax.process_index()
        )
        logging.flush()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
