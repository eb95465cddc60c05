"""Open-file limits: every command lifts its soft limit to the hard one (cli.start_process), and
the trainer reads a corpus of more shards than it may open (audio/shards.py keeps at most half
the limit open).

AudioSet at 1,024 records a shard is ~1,950 shards, over the common soft limit of 1,024; here,
600 one-record shards under a hard limit of 256 (which no process can lift): before, the
trainer stopped after a few steps with "Too many open files" at the ~220th shard it read.
"""

import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from conftest import logged_losses, subprocess_env, write_mel_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS, LIMIT, STEPS = 600, 256, 40


def _limited(soft, hard):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_every_command_lifts_its_soft_limit_to_the_hard_one(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 64:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to lift")
    code = (
        "import resource, sys\n"
        "from matpac_jax import cli\n"
        "def main(argv):\n"
        "    print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "sys.exit(cli.run(main, prog='x'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
        preexec_fn=_limited(64, hard),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    soft_after, hard_after = (int(x) for x in out.stdout.split())
    assert hard_after == hard and soft_after > 64
    if hard != resource.RLIM_INFINITY:
        assert soft_after == hard


@pytest.mark.slow
def test_trainer_reads_more_shards_than_it_may_open(tmp_path):
    rng = np.random.default_rng(0)
    mels = [(rng.normal(size=(80, 64 + i % 7)) - 7).astype(np.float16) for i in range(SHARDS)]
    write_mel_dataset(str(tmp_path / "mels"), mels, records_per_shard=1)
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "matpac_jax.train",
        "--config=configs/matpac_pp.py:runlocal",
        f"--workdir={workdir}",
        f"--config.data.dir={tmp_path / 'mels'}",
        "--config.data.crop_frames=64",
        "--config.batch_size=16",  # 640 reads: ~400 distinct shards
        f"--config.total_steps={STEPS}",
        "--config.log_every=10",
        "--config.checkpoint_every=20",
    ]
    out = subprocess.run(
        cmd,
        cwd=ROOT,
        env=subprocess_env(1),
        preexec_fn=_limited(LIMIT, LIMIT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"open files up to {LIMIT}" in out.stderr
    assert sorted(logged_losses(str(workdir))) == list(range(10, STEPS + 1, 10))
