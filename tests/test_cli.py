"""The trainer, the tools and the encoder paths as a user types them: subprocesses started from a
folder that is not the repository, with relative paths; and the mistakes people make, each
answered with one line and exit status 2, no traceback, nothing left behind.

(preprocess, embed, datasets.prepare and the demo corpus: tests/test_cli_data.py; the probe:
tests/test_evaluation_probe.py.)
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import subprocess_env, write_mel_dataset

from matpac_jax import cli
from matpac_jax.tools import bench_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = "matpac_jax.train"
TINY = [
    "--config.data.crop_frames=64",
    "--config.batch_size=8",
    "--config.total_steps=12",
    "--config.log_every=2",
    "--config.checkpoint_every=5",
]


def _run(module, args, cwd, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=subprocess_env(devices=1),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _config(cwd, name="matpac_pp.py", arg="runlocal"):
    """The repository's config file as a path relative to `cwd`, as a user would type it."""
    path = os.path.relpath(os.path.join(ROOT, "configs", name), cwd)
    return f"{path}:{arg}" if arg else path


def _mels(n, frames, seed):
    """Distinct log-mels: drifting ridges over noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f0 = rng.uniform(5, 70)
        ridge = np.exp(-0.5 * ((np.arange(80)[:, None] - f0 - 0.1 * np.arange(frames)) / 3) ** 2)
        out.append((4 * ridge + rng.normal(size=(80, frames)) - 7).astype(np.float16))
    return out


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's folder outside the repository, holding shards (mels/), short clips (clips/)
    and a run trained there with relative paths (runs/local)."""
    cwd = tmp_path_factory.mktemp("user")
    write_mel_dataset(str(cwd / "mels"), _mels(24, 96, 0), records_per_shard=8)
    os.makedirs(cwd / "clips")
    rng = np.random.default_rng(1)
    for i in range(3):
        sf.write(str(cwd / "clips" / f"c{i}.wav"), 0.1 * rng.normal(size=16000), 16000)
    out = _run(
        TRAIN,
        [f"--config={_config(cwd)}", "--workdir=runs/local", "--config.data.dir=mels", *TINY],
        cwd,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Unable to initialize backend" not in out.stderr  # no accelerator-probing noise
    return cwd, out


@pytest.mark.slow
def test_train_with_relative_paths_checkpoints_and_exports(user_dir):
    cwd, out = user_dir
    workdir = cwd / "runs" / "local"
    assert f"workdir: {workdir} (" in out.stdout and "export/" in out.stdout
    # Interval saves and the last step only: no extra save of step 1.
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints")) == [5, 10, 12]
    assert (workdir / "export" / "config.json").exists()
    with open(workdir / "run.json") as f:
        assert json.load(f)["config"]["data"]["dir"] == "mels"  # as typed; resolved at use


@pytest.mark.slow
def test_encoder_paths_relative_to_the_current_folder(user_dir):
    cwd, _ = user_dir
    out = _run(
        "matpac_jax.inference.embed",
        ["--encoder", "runs/local/export", "--input_dir", "clips", "--out", "emb.npz"],
        cwd,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(cwd / "emb.npz") as f:
        assert f["embeddings"].shape == (3, 5 * 32) and np.isfinite(f["embeddings"]).all()
    code = (
        "from matpac_jax.inference import hear; import numpy as np\n"
        "m = hear.load_model('runs/local')\n"  # a workdir: its export
        "print(hear.get_scene_embeddings(np.zeros((1, 16000), np.float32), m).shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=subprocess_env(devices=1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("(1, 160)")


@pytest.mark.slow
def test_tools_with_relative_paths(user_dir):
    cwd, _ = user_dir
    out = _run("matpac_jax.tools.run_summary", ["runs/local", "--rows", "3"], cwd)
    assert out.returncode in (0, 1), out.stderr  # 1: a collapse sign, which 12 steps may show
    assert "loss" in out.stdout.splitlines()[0]
    out = _run(
        "matpac_jax.tools.bench_input",
        ["--data", "mels", "--batch_size", "4", "--seconds", "0.3", "--workers", "0"]
        + ["--crop_frames", "64", "--preprocess_files", "0"]
        + ["--read_latency_ms", "2", "--read_threads", "1,4"],
        cwd,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["read_threads"], r["read_latency_ms"]) for r in rows] == [(1, 2.0), (4, 2.0)]
    assert all(r["crops_per_s"] > 0 for r in rows)
    out = _run(
        "matpac_jax.tools.cost", ["--config", _config(cwd), "--batch_size", "2"], cwd, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["gflop_per_example"] > 0


def test_help_exits_zero(tmp_path):
    out = _run(TRAIN, ["--help"], tmp_path)
    assert out.returncode == 0 and "--workdir" in out.stdout + out.stderr


# ------------------------------------------------------------------ mistakes, one line each

BAD_TRAIN = {
    "config file missing": (["--config=nope.py:runlocal", "--workdir=w"], "no such config file"),
    "config key typo": (
        ["--config={cfg}", "--workdir=w", "--config.totl_steps=3"],
        "did you mean total_steps",
    ),
    "nested key, far off": (
        ["--config={cfg}", "--workdir=w", "--config.optim.zzzz=3"],
        "keys there: b1, b2",
    ),
    "config argument typo": (
        ["--config={cfg_raw}:varant=B", "--workdir=w"],
        "unknown config argument 'varant'",
    ),
    "unknown variant": (["--config={cfg_raw}:variant=XL", "--workdir=w"], "unknown; known: Ti"),
    "zero steps": (["--config={cfg}", "--workdir=w", "--config.total_steps=0"], "at least 1"),
    "negative steps": (["--config={cfg}", "--workdir=w", "--config.total_steps=-5"], "at least 1"),
    "crop not a multiple of 16": (
        ["--config={cfg}", "--workdir=w", "--config.data.crop_frames=600"],
        "multiple of the 16-frame patch",
    ),
    "bad flag value": (["--config={cfg}", "--workdir=w", "--config.batch_size=abc"], "abc"),
    "flag typo": (["--config={cfg}", "--workdr=w"], "Did you mean: workdir"),
    "no workdir": (["--config={cfg}"], "--workdir"),
    "workdir under a file": (["--config={cfg}", "--workdir=afile/w"], "afile is a file"),
    "workdir is a file": (["--config={cfg}", "--workdir=afile"], "is a file, expected a folder"),
    "workdir not creatable": (["--config={cfg}", "--workdir=/proc/w"], "cannot create"),
    "data dir missing": (
        ["--config={cfg}", "--workdir=w", "--config.data.dir=nope"],
        "no such folder",
    ),
    "data dir not shards": (
        ["--config={cfg}", "--workdir=w", "--config.data.dir=."],
        "not a folder of log-mel shards",
    ),
    "records shorter than the crop": (
        ["--config={cfg}", "--workdir=w", "--config.data.dir=short"],
        "--min_frames 608",
    ),
    "bad choice": (
        ["--config={cfg}", "--workdir=w", "--config.loss.center_on=mean"],
        "allowed: probs, logits",
    ),
}


def _one_line_error(out, prog, expect):
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"python -m {prog}: error:"), lines[0]
    assert expect in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_train_mistakes(case, tmp_path):
    args, expect = BAD_TRAIN[case]
    (tmp_path / "afile").write_text("x")
    if case == "records shorter than the crop":
        write_mel_dataset(str(tmp_path / "short"), _mels(4, 200, 2), records_per_shard=4)
    before = sorted(os.listdir(tmp_path))
    cfg, cfg_raw = _config(tmp_path), _config(tmp_path, arg=None)
    args = [a.format(cfg=cfg, cfg_raw=cfg_raw) for a in args]
    _one_line_error(_run(TRAIN, args, tmp_path), TRAIN, expect)
    assert sorted(os.listdir(tmp_path)) == before  # no workdir, lock or output left behind


def test_locked_workdir_is_one_line(tmp_path):
    from matpac_jax import dirlock  # pylint: disable=g-import-not-at-top

    os.makedirs(tmp_path / "w")
    with dirlock.DirLock(str(tmp_path / "w"), "trainer"):
        out = _run(TRAIN, [f"--config={_config(tmp_path)}", "--workdir=w", *TINY], tmp_path)
        assert sorted(os.listdir(tmp_path / "w")) == [dirlock.LOCK_NAME]  # nothing written
    _one_line_error(out, TRAIN, "in use by another trainer")


@pytest.mark.parametrize("platform, hint", [("cuda", "pip install -e '.[cuda]'"), ("tpu", "[tpu]")])
def test_a_missing_accelerator_is_one_line(platform, hint, tmp_path):
    """A GPU job whose node has the CPU jaxlib (or no visible GPU) stops at start-up; before,
    JAX_PLATFORMS=cuda ended in JAX's bare AssertionError, and without it JAX warned and the
    run went on on the CPU."""
    env = {**subprocess_env(devices=1), "JAX_PLATFORMS": platform}
    args = [f"--config={_config(tmp_path)}", "--workdir=w", *TINY]
    out = subprocess.run(
        [sys.executable, "-m", TRAIN, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _one_line_error(out, TRAIN, f"JAX_PLATFORMS={platform} but JAX cannot start it")
    assert hint in out.stderr
    assert not os.path.exists(tmp_path / "w")


def test_debug_shows_the_traceback(tmp_path):
    args = [f"--config={_config(tmp_path)}", "--workdir=w", "--config.total_steps=0"]
    out = _run(TRAIN, [*args, "--debug"], tmp_path)
    assert out.returncode != 0 and "Traceback" in out.stderr and "UserError" in out.stderr


BAD_TOOLS = {
    "summary of a missing workdir": ("tools.run_summary", ["nope"], "no such folder"),
    "summary without metrics": ("tools.run_summary", ["."], "no logged step"),
    "cost without the config file": (
        "tools.cost",
        ["--config", "nope.py", "--batch_size", "2"],
        "no such config file",
    ),
    "cost with a bad config argument": (
        "tools.cost",
        ["--config", "{cfg_raw}:varant=B", "--batch_size", "2"],
        "unknown config argument",
    ),
    "cost with a bad mesh": (
        "tools.cost",
        ["--config", "{cfg}", "--batch_size", "2", "--mesh", "0,1"],
        "two positive integers",
    ),
    "bench_input on a non-shard folder": ("tools.bench_input", ["--data", "."], "no index.json"),
    "bench_input with no read thread": (
        "tools.bench_input",
        ["--data", "short", "--crop_frames", "16", "--read_threads", "0"],
        "--read_threads 0: comma-separated counts >= 1",
    ),
    "bench_input with a crop longer than the records": (
        "tools.bench_input",
        ["--data", "short"],
        "shorter than the 608-frame crop",
    ),
    "bench_step with batch 0": (
        "tools.bench_step",
        ["--config", "{cfg}", "--batch_size", "0"],
        "at least 1",
    ),
    "bench_step with a misspelt config key": (
        "tools.bench_step",
        ["--config", "{cfg}", "--batch_size", "2", "--config.model.dept=4"],
        "--config.model.dept: no such config key; keys in model: ",
    ),
    "bench_step with an override of the wrong type": (
        "tools.bench_step",
        ["--config", "{cfg}", "--batch_size", "2", "--config.model.depth=deep"],
        "--config.model.depth=deep:",
    ),
    "bench_step with heads that do not divide the width": (
        "tools.bench_step",
        ["--config", "{cfg}", "--batch_size", "2", "--config.model.num_heads=3"],
        "model.width=32 is not divisible by model.num_heads=3",
    ),
    "cost with a zero depth": (
        "tools.cost",
        ["--config", "{cfg}", "--batch_size", "2", "--config.model.depth=0"],
        "model.depth=0: must be an integer >= 1",
    ),
    "cost with an override without a value": (
        "tools.cost",
        ["--config", "{cfg}", "--batch_size", "2", "--config.model.depth"],
        "look like --config.model.depth=VALUE",
    ),
    "missing required flag": ("tools.cost", ["--batch_size", "2"], "--config"),
    "bench_attention with a malformed shape": (
        "tools.bench_attention",
        ["--shape", "8,191,16"],
        "expected four positive integers B,N,H,dh",
    ),
    "bench_attention with neither a config nor a shape": (
        "tools.bench_attention",
        ["--seconds", "1"],
        "give either --config with --batch_size, or --shape",
    ),
    "bench_attention with a shape and a config override": (
        "tools.bench_attention",
        ["--shape", "2,5,1,4", "--config.model.depth=2"],
        "--config.model.depth=2: goes with --config, not with --shape",
    ),
    "bench_attention with a config and no batch size": (
        "tools.bench_attention",
        ["--config", "{cfg}"],
        "--config needs --batch_size",
    ),
    "bench_attention with a misspelt config key": (
        "tools.bench_attention",
        ["--config", "{cfg}", "--batch_size", "2", "--config.model.dept=4"],
        "--config.model.dept: no such config key",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_TOOLS))
def test_tool_mistakes(case, tmp_path):
    module, args, expect = BAD_TOOLS[case]
    if "short" in args:
        write_mel_dataset(str(tmp_path / "short"), _mels(4, 200, 2), records_per_shard=4)
    before = sorted(os.listdir(tmp_path))
    cfg, cfg_raw = _config(tmp_path), _config(tmp_path, arg=None)
    args = [a.format(cfg=cfg, cfg_raw=cfg_raw) for a in args]
    module = f"matpac_jax.{module}"
    _one_line_error(_run(module, args, tmp_path), module, expect)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(
    "flags, want",
    [
        (None, "--xla_force_host_platform_device_count=4"),
        ("", "--xla_force_host_platform_device_count=4"),
        (
            "--xla_cpu_max_isa=AVX2",
            "--xla_cpu_max_isa=AVX2 --xla_force_host_platform_device_count=4",
        ),
        (
            "--xla_force_host_platform_device_count=8  --xla_dump_to=/tmp/d",
            "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=4",
        ),
    ],
)
def test_xla_flags_keep_the_users_and_set_the_device_count(flags, want):
    assert cli.xla_flags_with_device_count(flags, 4) == want


def test_subprocess_env_adds_the_device_count_to_the_users_xla_flags(monkeypatch):
    monkeypatch.setenv(
        "XLA_FLAGS", "--xla_cpu_max_isa=AVX2 --xla_force_host_platform_device_count=8"
    )
    env = subprocess_env(devices=2)
    assert env["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX2 --xla_force_host_platform_device_count=2"


# A command's allocations reuse the host memory that earlier ones freed (cli.keep_freed_host_memory).
# Faults are counted in a child process with and without the malloc options (system: glibc's
# defaults). A fresh 4 KiB page is one minor fault: 64 MiB is 16,384.
_MALLOC_CHILD = """
import ctypes, json, resource, sys, threading
from matpac_jax import cli

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def faults_of_buffers(out):
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(64 << 20)
        ctypes.memset(p, 1, 64 << 20)  # touches every page
        libc.free(p)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

def main(argv):
    main_thread, worker = [], []
    faults_of_buffers(main_thread)
    # A thread started afterwards, as XLA's workers are: a heap of its own would map the buffer.
    t = threading.Thread(target=faults_of_buffers, args=(worker,))
    t.start()
    t.join()
    print(json.dumps({"main": main_thread, "worker": worker}))

sys.exit(cli.run(main, [], prog="faults"))
"""

_XLA_CHILD = """
import json, resource, sys
import jax, jax.numpy as jnp
from matpac_jax import cli

def main(argv):
    # A 64 MiB temporary buffer per call: exp's output, which the product reads transposed.
    f = jax.jit(lambda x: (jnp.exp(x).T @ jnp.ones((4096, 1)))[:, 0])
    x = jnp.ones((4096, 4096), jnp.float32)
    faults = []
    for _ in range(30):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"taken": cli.keep_freed_host_memory(), "faults": faults}))

sys.exit(cli.run(main, [], prog="faults"))
"""


def _faults(child, tmp_path):
    """{setting: the child's JSON} for the malloc options ("") and glibc's defaults."""
    got = {}
    for setting in ("", "system"):
        env = {**subprocess_env(), cli.HOST_MALLOC_ENV: setting}
        out = subprocess.run(
            [sys.executable, "-c", child],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        got[setting] = json.loads(out.stdout.split("\n")[-2])
    return got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc options")
def test_a_freed_buffer_is_reused_by_the_next_allocation_on_any_thread(tmp_path):
    faults = _faults(_MALLOC_CHILD, tmp_path)
    for thread in ("main", "worker"):
        kept, system = faults[""][thread], faults["system"][thread]
        # glibc's defaults map a 64 MiB buffer and unmap it on free: every allocation faults.
        assert min(system) > 16_000, faults
        # Kept: the heap grows once (on the main thread), then every allocation reuses it.
        assert max(kept[1:]) < 100, faults
    assert max(faults[""]["worker"]) < 100, faults


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc options")
def test_xla_calls_fault_less_with_the_kept_memory(tmp_path):
    # XLA's calls do more than one allocation each, from several threads: the heap grows to its
    # working size over a number of calls that depends on the order the allocations come in
    # (and so on the machine: docs/PERFORMANCE.md), then stays. What holds everywhere: the
    # options are taken and the calls fault less than with glibc's defaults.
    faults = _faults(_XLA_CHILD, tmp_path)
    assert faults[""]["taken"] is True and faults["system"]["taken"] is False, faults
    kept, system = sum(faults[""]["faults"][1:]), sum(faults["system"]["faults"][1:])
    assert kept < system, faults


def test_host_malloc_options_are_left_alone_when_asked_or_off_glibc(monkeypatch):
    monkeypatch.setenv(cli.HOST_MALLOC_ENV, "system")
    assert cli.keep_freed_host_memory() is False
    monkeypatch.delenv(cli.HOST_MALLOC_ENV)

    def not_glibc(name):
        raise ValueError(f"unrecognized configuration name {name!r}")

    monkeypatch.setattr(os, "confstr", not_glibc)
    assert cli.keep_freed_host_memory() is False


BENCH_TINY = ["--batch_size", "2", "--seconds", "0.1", "--matmul_n", "64"]
BENCH_TINY += ["--config.data.crop_frames=64", "--config.model.depth=1"]


@pytest.mark.slow
def test_bench_step_takes_the_trainers_overrides_and_profiles(tmp_path):
    out = _run(
        "matpac_jax.tools.bench_step",
        [
            "--config",
            _config(tmp_path),
            *BENCH_TINY,
            "--config.model.pred_width=16",
            "--profile",
            "4",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert (result["model"]["depth"], result["model"]["pred_width"]) == (1, 16)
    assert result["step_ms"] > 0 and 0 < result["step_over_matmul"] == pytest.approx(
        result["step_tflop_per_s"] / result["matmul_64_tflop_per_s"], rel=0.01
    )
    # The step and the matmul took turns; each round's ratio is its own step over its own matmul.
    rounds = result["rounds"]
    assert len(rounds) == bench_step.ROUNDS
    for r in rounds:
        assert r["step_ms"] > 0 and r["step_over_matmul"] == pytest.approx(
            result["step_tflop_per_s"]
            * result["step_ms"]
            / r["step_ms"]
            / r["matmul_64_tflop_per_s"],
            rel=0.01,
        )
    shares = [row["share"] for row in result["top_ops"]]
    assert len(shares) == 4 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert all(row["runs"] >= row["ops"] >= 1 and row["kind"] for row in result["top_ops"])
    timeline = result["timeline"]
    assert 0 <= timeline["no_op_ms"] < timeline["span_ms"] and timeline["concurrent_ms"] >= 0
    assert sum(timeline["no_op_after"].values()) <= timeline["no_op_ms"] + 0.01
    table = [line for line in out.stderr.splitlines() if " ms " in line]
    assert len(table) == 5 and table[-1].startswith("the ops span ")  # 4 kinds, the timeline


@pytest.mark.slow
def test_bench_step_compares_xla_options_in_fresh_processes(tmp_path):
    settings = ["--xla_cpu_enable_fast_math=false", "--xla_no_such_option=1"]
    out = _run(
        "matpac_jax.tools.bench_step",
        ["--config", _config(tmp_path), *BENCH_TINY, *(f"--xla_flags={s}" for s in settings)],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    default, same, broken = json.loads(out.stdout)["runs"]
    assert default["setting"] == "(default)" and default["speedup"] == 1.0
    assert same["xla_flags"].endswith(settings[0]) and same["model"]["depth"] == 1
    # An option that changes nothing computes the same loss and gradients (same batch and mask).
    assert same["equal"] and same["grad_rel"] == 0.0 and same["loss_rel"] == 0.0
    assert same["same_program"] and same["program_sha1"] == default["program_sha1"]
    assert "no_such_option" in broken["error"]  # a failing setting is reported, not fatal


@pytest.mark.slow
def test_bench_attention_times_the_steps_own_shapes(tmp_path):
    # 80 mels x 64 frames: 5 x 4 = 20 patches; ratio 0.7 leaves int(20 * 0.3) = 6 visible.
    # The student sees 6 + cls, the teacher 14 + cls, the predictor all 20 + cls.
    overrides = [
        "--config.data.crop_frames=64",
        "--config.model.mask_ratio=0.7",
        "--config.model.depth=2",
        "--config.model.pred_depth=3",
        "--config.model.pred_num_heads=4",
    ]
    args = ["--config", _config(tmp_path), "--batch_size", "2", "--seconds", "0.05"]
    out = _run(
        "matpac_jax.tools.bench_attention", [*args, "--matmul_n", "64", *overrides], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    rows = {tuple(row["shape"]): row for row in result["shapes"]}
    # runlocal: width 32 in 2 heads of 16; the predictor's 32 in 4 heads of 8.
    assert {shape: row["calls"] for shape, row in rows.items()} == {
        (2, 7, 2, 16): 2,  # the student's two layers
        (2, 15, 2, 16): 2,  # the teacher's
        (2, 21, 4, 8): 3,  # the predictor's three
    }
    matmul = result["matmul_64_tflop_per_s"] * 1e12
    for (b, n, h, dh), row in rows.items():
        assert row["gflop_fwd"] == pytest.approx(4 * b * h * n * n * dh / 1e9, abs=1e-4)
        for name in ("ours", "xla_dot_product_attention"):
            r = row[name]
            assert 0 < r["fwd_ms"] and 0 < r["fwd_bwd_ms"]
            fwd_rate = 4 * b * h * n * n * dh / (r["fwd_ms"] / 1e3)
            assert r["fwd_of_matmul"] == pytest.approx(fwd_rate / matmul, rel=0.02, abs=2e-3)
            both_rate = 3 * 4 * b * h * n * n * dh / (r["fwd_bwd_ms"] / 1e3)
            assert r["fwd_bwd_of_matmul"] == pytest.approx(both_rate / matmul, rel=0.02, abs=2e-3)
        # Same maths, two programs: equal to float32 rounding.
        assert row["xla_dot_product_attention"]["max_rel_diff"] < 1e-5
    table = [line for line in out.stderr.splitlines() if "of the matmul" in line]
    assert len(table) == 6 and "3 calls a step" in out.stderr


def test_bench_attention_against_pytorchs_fused_kernel(tmp_path):
    pytest.importorskip("torch")
    args = ["--shape", "2,9,3,4", "--shape", "1,5,1,8", "--torch", "--seconds", "0.05"]
    out = _run("matpac_jax.tools.bench_attention", [*args, "--matmul_n", "64"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout)["shapes"]
    assert [row["shape"] for row in rows] == [[2, 9, 3, 4], [1, 5, 1, 8]]
    for row in rows:
        assert "calls" not in row and row["torch_sdpa"]["fwd_bwd_ms"] > 0
        assert row["torch_sdpa"]["max_rel_diff"] < 1e-5


def test_bench_attention_says_torch_is_not_a_dependency(tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("PyTorch is installed")
    out = _run("matpac_jax.tools.bench_attention", ["--shape", "1,5,1,8", "--torch"], tmp_path)
    _one_line_error(out, "matpac_jax.tools.bench_attention", "not a dependency of this package")
