"""The launch scripts (launch/): syntax, the commands their --dry_run prints, and the local
launcher's fail-fast behaviour (with a stand-in for the trainer, no JAX).

SLURM and TPU pods are not reachable here: their scripts are checked through what they would
run, parsed back the way a shell reads it.
"""

import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ARGS = ["--config=configs/matpac_pp.py:variant=B", "--config.mesh=4,4", "--workdir=/x/it's"]


def _bash(*args, env=None, timeout=60):
    """Runs a script in this environment less the suite's own JAX and accelerator settings
    (launch/test.sh sets MATPAC_ACCELERATOR=cpu), plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("MATPAC_ACCELERATOR", "JAX_PLATFORMS")}
    return subprocess.run(
        ["bash", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
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


def test_slurm_dry_run_installs_cuda_and_runs_one_process_per_gpu():
    out = _bash(
        "launch/slurm_gpu.sbatch", "--dry_run", "--", *TRAIN_ARGS, env={"GPUS_PER_NODE": "4"}
    )
    assert out.returncode == 0, out.stderr
    # launch/env.sh's set-up: JAX's CUDA build, and JAX told to use it (or stop).
    assert ".venv/bin/python -m pip install -e '.[test,cuda]'" in out.stdout
    assert "export JAX_PLATFORMS=cuda" in out.stdout.splitlines()
    cmd = _commands(out.stdout)[-1]
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
    assert "#SBATCH --signal=B:USR1@300\n" in directives and "#SBATCH --requeue\n" in directives
    cuda13 = _bash("launch/slurm_gpu.sbatch", "--dry_run", env={"MATPAC_ACCELERATOR": "cuda13"})
    assert "pip install -e '.[test,cuda13]'" in cuda13.stdout
    bad = _bash("launch/slurm_gpu.sbatch", "--dry_run", env={"MATPAC_ACCELERATOR": "rocm"})
    assert bad.returncode == 2 and "use auto, cpu, cuda, cuda13 or tpu" in bad.stderr


def _fake_checkout(tmp_path, script):
    """A checkout holding `launch/<script>` and an env.sh that sets nothing up, with fake
    cluster commands in bin/ that log their calls to calls.log."""
    (tmp_path / "launch").mkdir()
    shutil.copy(os.path.join(ROOT, "launch", script), tmp_path / "launch" / script)
    (tmp_path / "launch" / "env.sh").write_text(
        'export JAX_PLATFORMS=cuda\nexport PATH="$(dirname "${BASH_SOURCE[0]}")/../bin:$PATH"\n'
    )
    (tmp_path / "bin").mkdir()
    return tmp_path / "launch" / script


def _fake(tmp_path, name, body):
    path = tmp_path / "bin" / name
    path.write_text(f'#!/usr/bin/env bash\necho {name} "$*" >> {tmp_path}/calls.log\n{body}')
    path.chmod(0o755)


# srun's tasks: save and exit 0 on SIGTERM (the trainers' behaviour), or fail on their own.
_SRUN = """
trap 'echo "trainers: SIGTERM, saving"; exit 0' TERM
echo started
[ -n "${FAIL_WITH:-}" ] && exit "$FAIL_WITH"
while :; do sleep 0.1; done
"""


@pytest.mark.parametrize(
    "event, status, requeued",
    [("USR1", 0, True), ("TERM", 0, False), ("fail", 3, False)],
    ids=["time limit", "preemption", "a failed task"],
)
def test_slurm_requeues_on_the_time_limit(tmp_path, event, status, requeued):
    """SLURM's USR1 before the time limit: the trainers get SIGTERM (save, exit 0), then the
    job is requeued; on preemption SLURM's own --requeue does it; a failure is not requeued."""
    script = _fake_checkout(tmp_path, "slurm_gpu.sbatch")
    _fake(tmp_path, "srun", _SRUN)
    _fake(tmp_path, "scontrol", "")
    env = {
        **os.environ,
        "MATPAC_ROOT": str(tmp_path),
        "SLURM_JOB_ID": "77",
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        **({"FAIL_WITH": "3"} if event == "fail" else {}),
    }
    with subprocess.Popen(
        ["bash", str(script), "--", "--workdir=x"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as job:
        try:
            while "started" not in job.stdout.readline():
                pass
            if event != "fail":
                time.sleep(0.3)  # the script is waiting on srun
                job.send_signal(getattr(signal, f"SIG{event}"))
            out = job.stdout.read()
            assert job.wait(timeout=30) == status, out
        finally:
            job.kill()
    calls = (tmp_path / "calls.log").read_text()
    assert "srun --kill-on-bad-exit=1" in calls
    assert ("scontrol requeue 77" in calls) == requeued, calls
    if event != "fail":
        assert "trainers: SIGTERM, saving" in out


@pytest.mark.parametrize(
    "accelerator, runtime",
    [
        ("v5p-256", "v2-alpha-tpuv5"),
        ("v5litepod-64", "v2-alpha-tpuv5-lite"),
        ("v6e-16", "v2-alpha-tpuv6e"),
        ("v4-32", "tpu-ubuntu2204-base"),
    ],
)
def test_tpu_dry_run_creates_copies_installs_and_trains_everywhere(accelerator, runtime):
    env = {"TPU_NAME": "matpac", "ZONE": "us-east5-a", "ACCELERATOR_TYPE": accelerator}
    out = _bash("launch/tpu_pod.sh", "--dry_run", "--", *TRAIN_ARGS, env=env)
    assert out.returncode == 0, out.stderr
    create, delete, tar, scp, install, train = _commands(out.stdout)
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert create[:6] == [*gcloud, "create", "matpac"]
    assert f"--accelerator-type={accelerator}" in create and "--zone=us-east5-a" in create
    assert f"--version={runtime}" in create  # the generation's TPU software version
    assert delete[:6] == [*gcloud, "delete", "matpac"]  # a preempted slice is made again
    assert tar[:2] == ["tar", "-czf"] and "--exclude=./.venv" in tar
    assert scp[:5] == [*gcloud, "scp"] and "--worker=all" in scp
    for ssh in (install, train):
        assert ssh[:6] == [*gcloud, "ssh", "matpac"] and "--worker=all" in ssh
    install_cmd = install[-1].removeprefix("--command=")
    assert "export MATPAC_ACCELERATOR=tpu && source launch/env.sh" in install_cmd
    # What env.sh does on every worker: the TPU build, and JAX told to use it (or stop).
    assert "# .venv/bin/python -m pip install -e '.[test,tpu]'" in out.stdout
    assert "# export JAX_PLATFORMS=tpu" in out.stdout.splitlines()
    # The remote command line, as the worker's shell splits it: the trainer gets the arguments
    # unchanged, quotes included.
    remote = shlex.split(train[-1].removeprefix("--command="))
    i = remote.index("matpac_jax.train")
    assert remote[i + 1 : i + 2 + len(TRAIN_ARGS)] == ["--distributed=on", *TRAIN_ARGS]
    assert "MATPAC_ACCELERATOR=tpu" in train[-1]


def test_tpu_mounts_only_what_is_not_mounted():
    env = {
        "TPU_NAME": "t",
        "ZONE": "z",
        "MOUNT_POINT": "/mnt/shared",
        "MOUNT_CMD": "sudo mount -t nfs 10.0.0.2:/vol /mnt/shared",
    }
    out = _bash("launch/tpu_pod.sh", "--dry_run", "--skip_setup", "--", "--workdir=x", env=env)
    assert out.returncode == 0, out.stderr
    mount = [c for c in _commands(out.stdout) if "mountpoint" in c[-1]]
    assert len(mount) == 1
    assert mount[0][-1] == (
        "--command=mountpoint -q /mnt/shared || { sudo mount -t nfs 10.0.0.2:/vol /mnt/shared; }"
    )
    del env["MOUNT_POINT"]
    out = _bash("launch/tpu_pod.sh", "--dry_run", "--", "--workdir=x", env=env)
    assert out.returncode == 2 and "MOUNT_CMD needs MOUNT_POINT" in out.stderr


# gcloud's TPU verbs over a slice whose state is a file; the first training run is preempted
# after saving (the trainers' last line), the second finishes.
_GCLOUD = """
state="$(dirname "$0")/../state"
case "$4" in
  describe) cat "$state" 2>/dev/null || exit 1 ;;
  create) echo READY > "$state" ;;
  delete) rm -f "$state" ;;
  ssh)
    if [[ "$*" == *matpac_jax.train* ]]; then
      if [ ! -e "$state.trained" ]; then
        touch "$state.trained"; echo PREEMPTED > "$state"
        echo "[w-0] workdir: /x (metrics.jsonl); stopped before the last step: run the same command again"
      else
        echo "[w-0] workdir: /x (metrics.jsonl, tensorboard/, checkpoints/, export/)"
      fi
    fi ;;
esac
"""


@pytest.mark.parametrize("restarts", [0, 1])
def test_tpu_rides_through_a_preemption(tmp_path, restarts):
    script = _fake_checkout(tmp_path, "tpu_pod.sh")
    _fake(tmp_path, "gcloud", _GCLOUD)
    (tmp_path / "state").write_text("READY\n")
    (tmp_path / "tmp").mkdir()  # the archive of the checkout goes outside it
    env = {
        "TPU_NAME": "t",
        "ZONE": "z",
        "ACCELERATOR_TYPE": "v5p-256",
        "TMPDIR": str(tmp_path / "tmp"),
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }
    args = ["--skip_setup", "--restarts", str(restarts), "--", "--workdir=/x"]
    out = _bash(str(script), *args, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    verbs = [line.split()[4] for line in (tmp_path / "calls.log").read_text().splitlines()]
    if restarts == 0:
        assert verbs == ["describe", "ssh", "describe"]
        assert "run this script again (or pass --restarts N) to resume" in out.stderr
    else:  # re-created, set up again (new workers), trained to the end
        assert verbs == [
            "describe", "ssh", "describe",  # trained; preempted
            "describe", "delete", "create", "describe",  # re-created
            "scp", "ssh", "ssh",  # copied, installed, trained
        ]  # fmt: skip
        assert "PREEMPTED: re-creating it" in out.stderr and "export/" in out.stdout


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
    cmd = _commands(slurm.stdout)[-1]
    assert cmd[5:] == ["python", "-m", "matpac_jax.train.finetune", *args]
    env = {"TPU_NAME": "t", "ZONE": "z", **module}
    tpu = _bash("launch/tpu_pod.sh", "--dry_run", "--", *args, env=env)
    assert tpu.returncode == 0, tpu.stderr
    remote = shlex.split(_commands(tpu.stdout)[-1][-1].removeprefix("--command="))
    i = remote.index("matpac_jax.train.finetune")
    assert remote[i + 1 :][: 1 + len(args)] == ["--distributed=on", *args]


def _wheel(folder, name="marker_pkg"):
    """A minimal pure-Python wheel of one module, as pip builds them."""
    import zipfile

    folder.mkdir(exist_ok=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_accelerator_check_script_installs_carried_wheels_offline(tmp_path):
    # From another folder, relative paths, the suite's python standing in for the device's:
    # the wheels land in the site folder, and the check runs from the checkout (deadline 0: the
    # parts are skipped, the report written).
    _wheel(tmp_path / "wheels")
    env = {
        "PYTHON": sys.executable,
        "MATPAC_WHEELS_SITE": str(tmp_path / "site"),
        "JAX_PLATFORMS": "cpu",
    }
    script = os.path.join(ROOT, "launch", "accelerator_check.sh")
    args = [script, "--wheels", "wheels", "--out", "accel", "--tiny", "--deadline_s", "0"]
    out = subprocess.run(["bash", *args], cwd=tmp_path, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "installing 1 wheels from wheels" in out.stdout
    assert (tmp_path / "site" / "marker_pkg.py").read_text() == "VALUE = 42\n"
    assert (tmp_path / "accel" / "report.json").exists()
    for bad, why in ((["--wheels", "nowhere"], "no such folder"), (["--wheels", "."], "no .whl")):
        out = subprocess.run(["bash", script, *bad, "--out", "x"], cwd=tmp_path,
                             env={**os.environ, **env}, capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 2 and why in out.stderr and not (tmp_path / "x").exists()
