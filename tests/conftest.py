"""Test-wide setup: 8 fake CPU devices, float32, a persistent compile cache, absl flags parsed."""

import os

import numpy as np
import pytest

from matpac_jax import cli  # imports no jax

# Must happen before jax is imported anywhere: multi-device tests run on 8 fake CPU devices,
# added to the user's own XLA_FLAGS (e.g. --xla_cpu_max_isa=AVX2, which the README's testing
# section uses to run what a machine without AVX-512 computes).
os.environ["XLA_FLAGS"] = cli.xla_flags_with_device_count(os.environ.get("XLA_FLAGS"), 8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from absl import flags  # noqa: E402

_CACHE = os.environ.get(
    "MATPAC_TEST_COMPILE_CACHE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax_test"),
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# grain's multiprocess prefetch reads absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()


def write_mel_dataset(out_dir, mels, records_per_shard=4, labels=None, classes=None):
    """Writes log-mels straight into a shard directory (index included), skipping the audio.

    `labels` (a list of class-index lists, one per record) and `classes` (their names) make a
    labelled index, as `preprocess --labels` writes one."""
    from matpac_jax.audio import frontend as audio  # pylint: disable=g-import-not-at-top
    from matpac_jax.audio import preprocess

    os.makedirs(os.path.join(out_dir, preprocess.SHARD_DIR), exist_ok=True)
    n = -(-len(mels) // records_per_shard)
    names = [preprocess._shard_name(i, n) for i in range(n)]  # pylint: disable=protected-access
    for i, name in enumerate(names):
        chunk = mels[i * records_per_shard : (i + 1) * records_per_shard]
        results = [
            {
                "path": f"rec{i * records_per_shard + j}.wav",
                "status": "ok",
                "reason": None,
                "frames": m.shape[1],
                "mel": m,
                "sum": float(m.astype(np.float64).sum()),
                "sum_sq": float(np.square(m.astype(np.float64)).sum()),
            }
            for j, m in enumerate(chunk)
        ]
        by_path = None if labels is None else {f"rec{k}.wav": row for k, row in enumerate(labels)}
        preprocess.write_shard(out_dir, name, results, by_path)
    plan = {"front_end": audio.FrontEnd().to_dict(), "min_frames": 0}
    if labels is not None:
        plan["classes"] = {"ids": list(classes), "names": list(classes)}
    return preprocess._finalize(out_dir, names, plan)  # pylint: disable=protected-access


def tiny_step_parts(mcl=True, center_on="probs", lr_warmup_steps=10):
    """(StepConfig, Schedules) of the tiny train-step tests: fast-moving, every branch reached."""
    from matpac_jax.objective import schedules  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as train_step  # pylint: disable=g-import-not-at-top

    step_cfg = train_step.StepConfig(
        mask_ratio=0.7,
        alpha=0.5,
        mcl=mcl,
        mcl_threshold=1e-4,
        student_temp=0.1,
        center_on=center_on,
        center_momentum=0.9,
    )
    sched = schedules.Schedules(
        total_steps=100,
        lr_warmup_steps=lr_warmup_steps,
        tau_warmup_steps=20,
        peak_lr=1e-3,
        encoder_ema=(0.9, 0.99),
        cls_head_ema=(0.8, 1.0),
        mcl_t0=0.5,
        mcl_decay=0.9,
    )
    return step_cfg, sched


def subprocess_env(devices=None):
    """Environment for a trainer run in a child process: the tests' compile cache, unbuffered
    output, and (if given) its own number of fake CPU devices instead of this process's 8."""
    env = dict(os.environ)
    if devices is not None:
        env["XLA_FLAGS"] = cli.xla_flags_with_device_count(env.get("XLA_FLAGS"), devices)
        env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    env["PYTHONUNBUFFERED"] = "1"
    return env


def logged_losses(workdir):
    """{step: loss} from a run's metrics.jsonl; a step logged twice is an error."""
    import json  # pylint: disable=g-import-not-at-top

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), "a step was logged twice (by two processes?)"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}  # step 0: evaluations only


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator on localhost (tests/gcs_emulator.py) that this process's clients and the
    subprocesses started with its `env` talk to; gs://matpac-test/... exists."""
    import gcs_emulator  # pylint: disable=g-import-not-at-top

    server = gcs_emulator.Emulator()
    os.environ.update(server.env)
    yield server
    server.stop()
