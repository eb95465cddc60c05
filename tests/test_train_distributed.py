"""Several trainer processes on localhost: the multi-host path (matpac_jax/train/distributed.py, the
trainer, launch/local_multiprocess.sh) on CPU devices with Gloo collectives.

The records are distinct (each its own ridge, noise and length, so crops differ too): a layout
computes the same steps only if it reads the same global batches in the same rows. 2 processes
x 4 devices with the devices interleaved between the processes as on a TPU slice (mesh (8, 1)),
2 processes x 2 devices (mesh (2, 2), the state sharded across the processes), and runs
stopped on 2 processes and resumed on 1 (and the reverse), must all log the losses of 1 process
x 1 device, up to the order of float32 reductions.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import logged_losses, subprocess_env, write_mel_dataset
from numerics import assert_close, encoder_depth

from matpac_jax.train import distributed

pytestmark = pytest.mark.slow  # trainers run as subprocesses: end to end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL, CHECKPOINT_EVERY = 24, 4
# Other device counts are other programs (tests/numerics.py): the losses of every step, as one
# array, against its scale; a step's longest path is the "mu" encoders and predictor, forward
# and backward. Observed: <= 3.6e-7 relative over 24 to 40 steps (4 devices, 2 processes).
STEP_DEPTH = 2 * encoder_depth(2 + 2 + 1)
KILL_DEADLINE_S = 60


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mels")
    rng = np.random.default_rng(0)
    mels = []
    for i in range(16):
        t = np.arange(64 + 3 * i)
        ridge = np.exp(-0.5 * ((np.arange(80)[:, None] - 10 - 3 * i - 0.3 * t) / 3) ** 2)
        mels.append((4 * ridge + rng.normal(size=(80, len(t))) - 7).astype(np.float16))
    write_mel_dataset(str(d), mels, records_per_shard=8)
    return str(d)


def _train_args(workdir, data_dir, mesh):
    return [
        "--config=configs/matpac_pp.py:runlocal",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
        "--config.data.crop_frames=64",
        "--config.batch_size=8",
        f"--config.total_steps={TOTAL}",
        "--config.log_every=2",
        f"--config.checkpoint_every={CHECKPOINT_EVERY}",
        f"--config.mesh={mesh}",
        "--config.fsdp_min_size=0",  # shard even the tiny model's leaves across processes
    ]


def _finished_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return (
        sorted(int(n) for n in os.listdir(directory) if n.isdigit())
        if os.path.isdir(directory)
        else []
    )


def _one_process(workdir, data_dir, devices, mesh):
    cmd = [sys.executable, "-m", "matpac_jax.train", *_train_args(workdir, data_dir, mesh)]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=subprocess_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_one_process(workdir, data_dir, devices, mesh):
    """Runs a one-process trainer to its end; returns its output (stdout and stderr)."""
    proc = _one_process(workdir, data_dir, devices, mesh)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """One process, one device: the losses every layout must reproduce."""
    workdir = str(tmp_path_factory.mktemp("one_process"))
    out = _run_one_process(workdir, data_dir, 1, "1,1")
    assert "resumed" not in out
    return logged_losses(workdir)


def _assert_same_losses(losses, reference, stopped=None):
    assert sorted(reference) == list(range(2, TOTAL + 1, 2))
    assert set(losses) - set(reference) <= {stopped}  # a stop logs its step too
    got, want = np.array([losses[s] for s in reference]), np.array(list(reference.values()))
    assert_close(got, want, depth=STEP_DEPTH)
    print(f"max relative loss difference: {np.max(np.abs(got / want - 1)):.2e}")


def test_two_processes_with_interleaved_devices_match_one_process(tmp_path, reference, data_dir):
    """2 processes x 4 devices, the mesh's devices alternating between the processes (a TPU
    slice's order, tests/interleaved_trainer.py), mesh (8, 1): each process loads every other
    row of each global batch, and the losses are those of 1 process on 1 device. (The state
    sharded across processes: the (2, 2) runs below.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wrapper = os.path.join(ROOT, "tests", "interleaved_trainer.py")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                wrapper,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *_train_args(str(tmp_path / "run"), data_dir, "8,1"),
            ],
            cwd=ROOT,
            env=subprocess_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "this process loads rows [0, 1) [2, 3) [4, 5) [6, 7)" in outs[0], outs[0][-3000:]
    _assert_same_losses(logged_losses(str(tmp_path / "run")), reference)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, data_dir):
    """Two processes started by hand; process 1 is SIGKILLed once a checkpoint is finished."""
    workdir = str(tmp_path_factory.mktemp("two_processes"))
    logs = [tmp_path_factory.mktemp("logs") / f"p{i}.log" for i in range(2)]
    files = [open(log, "w") for log in logs]  # pylint: disable=consider-using-with
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "matpac_jax.train",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *_train_args(workdir, data_dir, "2,2"),
            ],
            cwd=ROOT,
            env=subprocess_env(2),
            stdout=files[i],
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    deadline = time.time() + 300
    # Orbax also saves the first step; wait for a regular one, after some logged steps.
    while time.time() < deadline and _finished_steps(workdir)[-1:] < [CHECKPOINT_EVERY]:
        assert procs[0].poll() is None, logs[0].read_text()[-3000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        procs[0].wait(timeout=KILL_DEADLINE_S + 30)
    finally:
        for p, f in zip(procs, files):
            p.kill()
            f.close()
    return {
        "workdir": workdir,
        "returncode": procs[0].returncode,
        "exit_after_s": time.time() - killed_at,
        "output": logs[0].read_text(),
    }


def test_killed_process_ends_the_other(killed_run):
    assert killed_run["returncode"] != 0, killed_run["output"][-3000:]
    assert killed_run["exit_after_s"] < KILL_DEADLINE_S, killed_run["exit_after_s"]
    # Either a collective notices the lost peer (a Gloo read error: this process exits at once,
    # distributed.fail_fast) or the coordinator misses its heartbeats and ends this process.
    out = killed_run["output"]
    assert "exiting without waiting" in out or "detected fatal errors" in out, out[-3000:]
    print(f"process 0 exited {killed_run['exit_after_s']:.1f} s after process 1 was killed")


def _launch(workdir, data_dir):
    return subprocess.Popen(
        ["bash", "launch/local_multiprocess.sh", "2", "--", *_train_args(workdir, data_dir, "2,2")],
        cwd=ROOT,
        env={**subprocess_env(2), "DEVICES_PER_PROCESS": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _p0_says(output, text):
    return any(line.startswith("[p0] ") and text in line for line in output.splitlines())


def test_launcher_resumes_stops_on_sigterm_and_matches_one_process(killed_run, reference, data_dir):
    """Resume after the kill; SIGTERM the launcher (all processes stop at one step); resume."""
    workdir = killed_run["workdir"]
    finished = _finished_steps(workdir)
    assert finished and finished[-1] < TOTAL, "the run ended before the kill: nothing was tested"
    data_state = os.path.join(workdir, "checkpoints", str(finished[-1]), "data", "metadata")
    with open(data_state) as f:  # one input position for the run, whatever the process count
        assert json.load(f) == {"version": 2, "batches": finished[-1]}

    launcher = _launch(workdir, data_dir)
    deadline = time.time() + 300
    while time.time() < deadline and launcher.poll() is None:
        if max(logged_losses(workdir)) > finished[-1]:  # stepping again
            break
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out[-3000:]
    assert _p0_says(out, f"resumed from step {finished[-1]}"), out[-3000:]
    stopped = _finished_steps(workdir)[-1]
    assert stopped < TOTAL, "the run finished before the signal: nothing was tested"
    assert _p0_says(out, f"saving step {stopped} and exiting"), out[-3000:]

    # Stopped on 2 processes, finished on 1 (one device, another mesh).
    out = _run_one_process(workdir, data_dir, 1, "1,1")
    assert f"resumed from step {stopped}" in out, out[-3000:]
    _assert_same_losses(logged_losses(workdir), reference, stopped)


def test_stopped_on_one_process_resumes_on_two(tmp_path, reference, data_dir):
    workdir = str(tmp_path)
    proc = _one_process(workdir, data_dir, 1, "1,1")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (
            os.path.exists(os.path.join(workdir, "metrics.jsonl"))
            and max(logged_losses(workdir), default=0) >= CHECKPOINT_EVERY
        ):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    stopped = _finished_steps(workdir)[-1]
    assert stopped < TOTAL, "the run finished before the signal: nothing was tested"
    out, _ = _launch(workdir, data_dir).communicate(timeout=600)
    assert _p0_says(out, f"resumed from step {stopped}"), out[-3000:]
    _assert_same_losses(logged_losses(workdir), reference, stopped)


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8"}, "slurm"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, None),  # the sbatch script itself
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1"}, None),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ],
)
def test_detect_cluster(monkeypatch, env, want):
    for name in ("SLURM_JOB_ID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.detect_cluster() == want


def test_initialize_argument_errors_and_single_process():
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize("auto", "127.0.0.1:1234", None, 0)
    with pytest.raises(ValueError, match="must be one of"):
        distributed.initialize("yes")
    with pytest.raises(ValueError, match="contradicts"):
        distributed.initialize("off", "127.0.0.1:1234", 2, 0)
    assert distributed.initialize("off") is False
