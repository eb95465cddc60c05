"""The launch scripts (launch/): syntax, the commands their --dry_run prints, and the local
launcher's fail-fast behaviour (with a stand-in for the trainer, no JAX).

SLURM and TPU pods are not reachable here: their scripts are checked through what they would
run, parsed back the way a shell reads it.
"""

import glob
import os
import shlex
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ARGS = ["--config=configs/matpac_pp.py:variant=B", "--config.mesh=4,4", "--workdir=/x/it's"]


def _bash(*args, env=None, timeout=60):
    return subprocess.run(
        ["bash", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _commands(stdout):
    """The printed command lines, split into words as a shell would."""
    lines = [line.removeprefix("+ ") for line in stdout.splitlines() if not line.startswith("#")]
    return [shlex.split(line.removesuffix("&")) for line in lines if line.strip()]


@pytest.mark.parametrize(
    "script",
    sorted(
        glob.glob(os.path.join(ROOT, "launch", "*.sh"))
        + glob.glob(os.path.join(ROOT, "launch", "*.sbatch"))
    ),
)
def test_syntax(script):
    out = _bash("-n", script)
    assert out.returncode == 0, out.stderr


def test_local_dry_run_gives_each_process_its_id_and_devices():
    out = _bash(
        "launch/local_multiprocess.sh",
        "3",
        "--dry_run",
        "--",
        *TRAIN_ARGS,
        env={
            "DEVICES_PER_PROCESS": "2",
            "MATPAC_PORT": "4321",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1",
        },
    )
    assert out.returncode == 0, out.stderr
    assert "XLA_FLAGS='--xla_cpu_foo=1 --xla_force_host_platform_device_count=2'" in out.stdout
    assert "device_count=8" not in out.stdout
    commands = _commands(out.stdout)
    assert len(commands) == 3
    for i, cmd in enumerate(commands):
        assert cmd == [
            "python",
            "-m",
            "matpac_jax.train",
            "--coordinator_address=127.0.0.1:4321",
            "--num_processes=3",
            f"--process_id={i}",
            *TRAIN_ARGS,
        ]


def test_local_usage_errors():
    assert _bash("launch/local_multiprocess.sh").returncode == 2
    out = _bash("launch/local_multiprocess.sh", "two", "--", "--workdir=x")
    assert out.returncode == 2 and "positive integer" in out.stderr
    assert _bash("launch/local_multiprocess.sh", "2", "--workdir=x").returncode == 2


def test_local_failure_kills_the_others(tmp_path):
    """Process 1 fails at once; process 0 would run for a minute: the launcher ends it."""
    fake = tmp_path / "fake_python"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        "i = int([a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1])\n"
        f"open(os.path.join({str(tmp_path)!r}, f'pid{{i}}'), 'w').write(str(os.getpid()))\n"
        "print('hello from', i, flush=True)\n"
        "time.sleep(0.5)\n"
        "sys.exit(3) if i == 1 else time.sleep(60)\n"
    )
    fake.chmod(0o755)
    start = time.time()
    out = _bash(
        "launch/local_multiprocess.sh",
        "2",
        "--",
        "--workdir=x",
        env={"MATPAC_PYTHON": str(fake), "MATPAC_PORT": "4321"},
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert time.time() - start < 30
    assert "[p0] hello from 0" in out.stdout and "[p1] hello from 1" in out.stdout
    assert "process 1 exited with status 3: killing the others" in out.stderr
    pid0 = int((tmp_path / "pid0").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid0, 0)


def test_slurm_dry_run_runs_one_process_per_gpu():
    out = _bash(
        "launch/slurm_gpu.sbatch", "--dry_run", "--", *TRAIN_ARGS, env={"GPUS_PER_NODE": "4"}
    )
    assert out.returncode == 0, out.stderr
    (cmd,) = _commands(out.stdout)
    assert cmd[:5] == [
        "srun",
        "--kill-on-bad-exit=1",
        "--ntasks-per-node=4",
        "--nodes=1",
        "--cpu-bind=none",
    ]
    assert cmd[5:] == ["python", "-m", "matpac_jax.train", *TRAIN_ARGS]
    with open(os.path.join(ROOT, "launch", "slurm_gpu.sbatch")) as f:
        directives = [line for line in f if line.startswith("#SBATCH")]
    assert "#SBATCH --ntasks-per-node=8\n" in directives
    assert "#SBATCH --gpus-per-node=8\n" in directives
    assert any("--signal=TERM@" in d for d in directives)


def test_tpu_dry_run_creates_copies_installs_and_trains_everywhere():
    env = {"TPU_NAME": "matpac", "ZONE": "us-central2-b", "ACCELERATOR_TYPE": "v5litepod-64"}
    out = _bash("launch/tpu_pod.sh", "--dry_run", "--", *TRAIN_ARGS, env=env)
    assert out.returncode == 0, out.stderr
    create, tar, scp, install, train = _commands(out.stdout)
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert create[:6] == [*gcloud, "create", "matpac"]
    assert "--accelerator-type=v5litepod-64" in create and "--zone=us-central2-b" in create
    assert tar[:2] == ["tar", "-czf"] and "--exclude=./.venv" in tar
    assert scp[:5] == [*gcloud, "scp"] and "--worker=all" in scp
    for ssh in (install, train):
        assert ssh[:6] == [*gcloud, "ssh", "matpac"] and "--worker=all" in ssh
    install_cmd = install[-1].removeprefix("--command=")
    assert "source launch/env.sh" in install_cmd and "jax[tpu]" in install_cmd
    # The remote command line, as the worker's shell splits it: the trainer gets the arguments
    # unchanged, quotes included.
    remote = shlex.split(train[-1].removeprefix("--command="))
    i = remote.index("matpac_jax.train")
    assert remote[i + 1 : i + 2 + len(TRAIN_ARGS)] == ["--distributed=on", *TRAIN_ARGS]
    assert "JAX_PLATFORMS=tpu" in train[-1]


def test_tpu_needs_name_and_zone():
    out = _bash("launch/tpu_pod.sh", "--dry_run", "--", "--workdir=x", env={"ZONE": "z"})
    assert out.returncode != 0 and "TPU_NAME" in out.stderr


def test_every_launcher_runs_fine_tuning_when_asked():
    module = {"MATPAC_MODULE": "matpac_jax.train.finetune"}
    args = ["--config=configs/finetune_audioset.py", "--init=runs/b/export", "--workdir=runs/ft"]
    local = _bash("launch/local_multiprocess.sh", "2", "--dry_run", "--", *args, env=module)
    assert local.returncode == 0, local.stderr
    for cmd in _commands(local.stdout):
        assert cmd[:3] == ["python", "-m", "matpac_jax.train.finetune"] and cmd[-3:] == args
    slurm = _bash("launch/slurm_gpu.sbatch", "--dry_run", "--", *args, env=module)
    assert slurm.returncode == 0, slurm.stderr
    (cmd,) = _commands(slurm.stdout)
    assert cmd[5:] == ["python", "-m", "matpac_jax.train.finetune", *args]
    env = {"TPU_NAME": "t", "ZONE": "z", **module}
    tpu = _bash("launch/tpu_pod.sh", "--dry_run", "--", *args, env=env)
    assert tpu.returncode == 0, tpu.stderr
    remote = shlex.split(_commands(tpu.stdout)[-1][-1].removeprefix("--command="))
    i = remote.index("matpac_jax.train.finetune")
    assert remote[i + 1 :][: 1 + len(args)] == ["--distributed=on", *args]
