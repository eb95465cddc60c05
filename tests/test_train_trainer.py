"""The trainer end to end (matpac_jax/train/trainer.py), as a user runs it: the CLI in subprocesses.

A tiny model on synthetic shards (80 mel bins, 64-frame crops). The key property: a run that is
stopped by SIGTERM and restarted logs exactly the losses of a run that was never stopped.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import logged_losses, subprocess_env, write_mel_dataset
from numerics import assert_close, is_close

from matpac_jax import dirlock
from matpac_jax.inference import export

pytestmark = pytest.mark.slow  # trainers run as subprocesses: end to end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 120


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mels")
    rng = np.random.default_rng(0)
    t = np.arange(100)
    mels = []
    for _ in range(40):  # some structure: drifting ridges over noise
        f0, slope = rng.uniform(5, 70), rng.uniform(-0.3, 0.3)
        ridge = np.exp(-0.5 * ((np.arange(80)[:, None] - f0 - slope * t) / 3) ** 2)
        mels.append((4 * ridge + rng.normal(size=(80, 100)) - 7).astype(np.float16))
    write_mel_dataset(str(d), mels, records_per_shard=16)
    return str(d)


def _cmd(workdir, data_dir, *extra):
    return [
        sys.executable,
        "-m",
        "matpac_jax.train",
        "--config=configs/matpac_pp.py:runlocal",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
        "--config.data.crop_frames=64",
        "--config.batch_size=8",
        f"--config.total_steps={TOTAL}",
        "--config.log_every=5",
        "--config.checkpoint_every=40",
        *extra,
    ]


def _run(cmd, **kw):
    return subprocess.run(
        cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600, **kw
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("reference"))
    out = _run(_cmd(workdir, data_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def test_uninterrupted_run_learns_and_exports(reference):
    losses = logged_losses(reference)
    assert sorted(losses) == list(range(5, TOTAL + 1, 5))
    first, last = (
        np.mean([losses[s] for s in (5, 10, 15)]),
        np.mean([losses[s] for s in (TOTAL - 10, TOTAL - 5, TOTAL)]),
    )
    assert last < first - 0.2, (first, last)
    params, config = export.load_export(os.path.join(reference, "export"))
    assert set(params) == {"patch_embed", "cls_token", "student"}
    assert config["model"]["max_frames"] == 64 and config["front_end"]["n_mels"] == 80
    with open(os.path.join(reference, "metrics.jsonl")) as f:
        row = json.loads(f.readline())
    for key in (
        "loss",
        "loss_pred",
        "loss_cls",
        "lr",
        "mcl/win_rate/0",
        "cls/perplexity",
        "grad_norm",
        "teacher_tau",
        "mcl_temperature",
        "ema/encoder",
        "skipped",
    ):
        assert key in row


def _run_until_logged_then_sigterm(cmd, workdir):
    """Starts a run, sends SIGTERM once a training step is logged; returns (stdout, stderr)."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # past step 0's evaluation, if any
        if os.path.exists(metrics) and '"loss"' in _read(metrics):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return stdout, err


def test_sigterm_then_resume_continues_identically(reference, data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    stdout, err = _run_until_logged_then_sigterm(_cmd(workdir, data_dir), workdir)
    stopped_at = max(logged_losses(workdir))
    assert stopped_at < TOTAL, "the run finished before the signal: nothing was tested"
    assert "saving step" in err
    assert "export/" not in stdout and "run the same command again to resume" in stdout
    assert not os.path.exists(os.path.join(workdir, "export"))
    out = _run(_cmd(workdir, data_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in out.stderr
    assert "resuming with" not in out.stderr  # the same config: no change reported
    resumed, ref = logged_losses(workdir), logged_losses(reference)
    assert all(resumed[s] == ref[s] for s in ref), {s: (resumed.get(s), ref[s]) for s in ref}
    # TensorBoard, read by its own loader, shows each step once, with the resumed run's values.
    assert _tensorboard_losses(workdir) == resumed


def _tensorboard_losses(workdir):
    """{step: loss} as TensorBoard shows it (its loader applies the purge on resume)."""
    from tensorboard.backend.event_processing import event_accumulator  # test-only dependency

    acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    acc.Reload()
    events = acc.Scalars("loss")
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"duplicated steps in TensorBoard: {steps}"
    return {e.step: e.value for e in events}


def test_damaged_latest_checkpoint_falls_back(reference, data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "export"))
    state_dir = os.path.join(workdir, "checkpoints", str(TOTAL), "state")
    for root, _, files in os.walk(state_dir):
        for name in files:
            if name not in ("_METADATA", "_CHECKPOINT_METADATA"):
                with open(os.path.join(root, name), "r+b") as f:
                    f.write(b"\x00garbage" * 64)
    out = _run(_cmd(workdir, data_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {TOTAL - 40}" in out.stderr
    assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints"))
    resumed, ref = logged_losses(workdir), logged_losses(reference)
    assert all(resumed[s] == ref[s] for s in ref)
    assert os.path.isdir(os.path.join(workdir, "export"))
    # Steps 85..120 were logged twice (before the damage and after the resume from 80): the
    # TensorBoard log must show them once.
    assert _tensorboard_losses(workdir) == resumed


def test_second_trainer_on_same_workdir_refuses(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with dirlock.DirLock(workdir, "trainer"):
        out = _run(_cmd(workdir, data_dir))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "in use by another trainer" in out.stderr


def test_non_finite_run_stops_keeping_last_good_checkpoint(tmp_path):
    data = tmp_path / "nan_mels"
    write_mel_dataset(str(data), [np.full((80, 100), np.nan, np.float16)] * 8)
    workdir = str(tmp_path / "run")
    out = _run(_cmd(workdir, str(data), "--config.log_every=1"))  # runlocal: corpus statistics
    assert out.returncode == 2 and "have mean nan and std nan" in out.stderr, out.stderr[-2000:]
    fixed = ("--config.data.normalization=fixed", "--config.max_consecutive_skips=3")
    out = _run(_cmd(workdir, str(data), "--config.log_every=1", *fixed))
    assert out.returncode != 0
    assert "non-finite steps in a row" in out.stderr
    assert not os.path.exists(os.path.join(workdir, "export"))


# ---------------------------------------------------------------------------------------------
# Evaluators during training (matpac_jax/evaluation/evaluators.py).

EVAL_EVERY = 40
TIMING = ("steps_per_s", "examples_per_s", "eval/seconds")


@pytest.fixture(scope="module")
def eval_tasks(tmp_path_factory):
    """Two tasks over the same tone clips: `tones` (easy) and `shuffled` (random labels, so its
    score moves with every change of the embeddings: a sharp test of equality)."""
    from test_evaluation_evaluators import write_tone_task

    root = tmp_path_factory.mktemp("eval_tasks")
    tones = write_tone_task(str(root), per_class=(20, 2, 10))
    with open(tones) as f:
        header, *rows = f.read().splitlines()
    labels = np.random.default_rng(1).choice(["a", "b", "c"], size=len(rows))
    shuffled = str(root / "shuffled.csv")
    with open(shuffled, "w") as f:
        lines = [",".join([r.split(",")[0], lab, r.split(",")[2]]) for r, lab in zip(rows, labels)]
        f.write("\n".join([header, *lines]) + "\n")
    return tones, shuffled, str(root / "cache")


def _eval_args(eval_tasks):
    tones, shuffled, cache = eval_tasks
    return [
        f"--config.evals={tones},{shuffled}",
        f"--config.eval_every={EVAL_EVERY}",
        "--config.eval_protocols=knn",  # runlocal's is linear: kNN is the cheaper to test with
        "--config.eval_knn_k=5",  # a vote of few neighbours: scores that move with the weights
        "--config.eval_teacher=true",
        f"--config.eval_cache={cache}",
    ]


def _read(path):
    with open(path) as f:
        return f.read()


def _rows(workdir):
    """{step: row} of metrics.jsonl; a step logged twice is an error."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r for r in rows}


def _scores(rows):
    return {
        s: {k: v for k, v in r.items() if k.startswith("eval/") and k not in TIMING}
        for s, r in rows.items()
        if "eval/seconds" in r
    }


@pytest.fixture(scope="module")
def eval_reference(tmp_path_factory, data_dir, eval_tasks):
    workdir = str(tmp_path_factory.mktemp("eval_reference"))
    out = _run(_cmd(workdir, data_dir, *_eval_args(eval_tasks)))
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def test_evaluations_are_logged_with_baselines(eval_reference):
    rows = _rows(eval_reference)
    scores = _scores(rows)
    assert sorted(scores) == list(range(0, TOTAL + 1, EVAL_EVERY))
    keys = {f"eval/{t}/{p}knn_acc" for t in ("tones", "shuffled") for p in ("", "teacher_")}
    keys |= {k + "_ci95" for k in keys}  # each score's 95% interval over the test clips
    assert all(set(s) == keys for s in scores.values())
    assert set(rows[0]) == keys | {"step", "eval/seconds"}  # step 0: before training
    assert sorted(s for s, r in rows.items() if "loss" in r) == list(range(5, TOTAL + 1, 5))
    shuffled = [s["eval/shuffled/knn_acc"] for s in scores.values()]
    assert len(set(shuffled)) > 1, shuffled  # else the equality tests below would prove little
    with open(os.path.join(eval_reference, "eval_baselines.json")) as f:
        baselines = json.load(f)
    # The baseline is the run's own initial weights: its step-0 evaluation, to the bit.
    assert baselines["init"] == scores[0]
    student = {k for k in keys if "teacher" not in k}
    assert set(baselines["logmel"]) == student
    assert baselines["logmel"]["eval/tones/knn_acc"] == 1.0


def test_baselines_made_again_on_resume_score_the_initial_weights(
    eval_reference, data_dir, eval_tasks, tmp_path
):
    # A resumed run without eval_baselines.json (evaluators added on resume, a lost file)
    # makes the initial weights again and scores them: the step-0 evaluation's numbers.
    workdir = str(tmp_path / "run")
    shutil.copytree(eval_reference, workdir)
    os.remove(os.path.join(workdir, "eval_baselines.json"))
    out = _run(_cmd(workdir, data_dir, *_eval_args(eval_tasks)))
    assert out.returncode == 0, out.stderr[-3000:]
    with open(os.path.join(workdir, "eval_baselines.json")) as f:
        again = json.load(f)
    step0 = _scores(_rows(eval_reference))[0]
    assert again["init"] == step0
    assert not any(s == step0 for s in list(_scores(_rows(eval_reference)).values())[1:])


def test_in_training_evaluation_equals_the_offline_one(eval_reference, eval_tasks, tmp_path):
    tones, shuffled, cache = eval_tasks
    rows = _rows(eval_reference)
    # The newest checkpoint of a copy without the export and the last checkpoint: step 80.
    earlier = str(tmp_path / "earlier")
    shutil.copytree(eval_reference, earlier)
    shutil.rmtree(os.path.join(earlier, "export"))
    shutil.rmtree(os.path.join(earlier, "checkpoints", str(TOTAL)))
    for workdir, step in ((eval_reference, TOTAL), (earlier, TOTAL - EVAL_EVERY)):
        cmd = [
            sys.executable,
            "-m",
            "matpac_jax.evaluation.evaluators",
            "--encoder",
            workdir,
            "--knn_k=5",
        ]
        out = _run(cmd + ["--task", tones, "--task", shuffled, "--cache", cache])
        assert out.returncode == 0, out.stderr[-3000:]
        offline = json.loads(out.stdout.splitlines()[-1])
        for key in ("eval/tones/knn_acc", "eval/shuffled/knn_acc"):
            assert abs(offline[key] - rows[step][key]) <= 1e-6, (step, key, offline, rows[step])


def test_sigterm_then_resume_evaluates_identically(eval_reference, data_dir, eval_tasks, tmp_path):
    workdir = str(tmp_path / "run")
    cmd = _cmd(workdir, data_dir, *_eval_args(eval_tasks))
    _run_until_logged_then_sigterm(cmd, workdir)
    stopped_at = max(_rows(workdir))
    assert stopped_at < TOTAL, "the run finished before the signal: nothing was tested"
    out = _run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in out.stderr
    resumed, ref = _rows(workdir), _rows(eval_reference)
    assert _scores(resumed) == _scores(ref)
    strip = lambda row: {k: v for k, v in row.items() if k not in TIMING}
    assert all(strip(resumed[s]) == strip(ref[s]) for s in ref)


def test_corpus_normalization_is_recorded_where_the_encoder_goes(data_dir, tmp_path):
    """`data.normalization=corpus` trains, logs, exports and evaluates with the shards' stats."""
    with open(os.path.join(data_dir, "index.json")) as f:
        index = json.load(f)
    values = np.concatenate([m.ravel() for m in _read_mels(data_dir)]).astype(np.float64)
    assert index["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert index["std"] == pytest.approx(values.std(), rel=1e-6)
    workdir = str(tmp_path / "run")
    extra = ("--config.total_steps=2", "--config.checkpoint_every=2")
    out = _run(_cmd(workdir, data_dir, "--config.data.normalization=corpus", *extra))
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads(_read(os.path.join(workdir, "run.json")))
    _, exported = export.load_export(os.path.join(workdir, "export"))
    for recorded in (run["config"]["data"], exported["normalization"]):
        assert (recorded["mean"], recorded["std"]) == (index["mean"], index["std"])

    bad = _run(_cmd(str(tmp_path / "bad"), data_dir, "--config.data.normalization=dataset"))
    assert bad.returncode == 2 and "allowed: fixed, corpus" in bad.stderr
    old = tmp_path / "old_mels"  # an index without statistics
    shutil.copytree(data_dir, old)
    index.update(mean=None, std=None)
    (old / "index.json").write_text(json.dumps(index))
    bad = _run(_cmd(str(tmp_path / "bad"), str(old), "--config.data.normalization=corpus"))
    assert bad.returncode == 2 and "records no mean and std" in bad.stderr, bad.stderr


def _read_mels(data_dir):
    from matpac_jax.audio import shards  # pylint: disable=g-import-not-at-top

    source = shards.MelSource(data_dir)
    return [source[i] for i in range(len(source))]


def test_random_init_twin_exports_the_initial_weights(data_dir, tmp_path):
    """launch/demo.sh's twin (one step at lr 0) exports exactly the run's initial student."""
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top

    from matpac_jax import models  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import step as train_step  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import trainer as train

    workdir = str(tmp_path / "twin")
    twin = ("--config.total_steps=1", "--config.optim.peak_lr=0", "--config.checkpoint_every=1")
    out = _run(_cmd(workdir, data_dir, *twin))
    assert out.returncode == 0, out.stderr[-3000:]
    params, config = export.load_export(os.path.join(workdir, "export"))
    model_cfg = models.model_config(config["model"])
    init = jax.jit(lambda key: train_step.init_state(key, model_cfg, optax.sgd(0)))(
        jax.random.fold_in(jax.random.key(0), 1)
    )  # under jit as the trainer does: eager sampling may differ in the last bit
    want = _flat(jax.device_get(train.encoder_params(init["params"])))
    got = _flat(params)
    assert sorted(got) == sorted(want)
    # The trainer's init (sharded over 8 devices) and this one are two compiled programs: the
    # same random bits, but the normal samples may differ in the last bit on some instruction
    # sets. A step at lr 0 changing the weights would differ far more (below).
    for key, value in want.items():
        assert_close(got[key], value, depth=1, err_msg=key)
    # A real step moves the weights: the comparison above can fail.
    moved = _flat(export.load_export(os.path.join(_two_steps(data_dir, tmp_path), "export"))[0])
    assert any(not is_close(moved[k], got[k], depth=1) for k in got)


def _flat(tree):
    import jax  # pylint: disable=g-import-not-at-top

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in leaves}


def _two_steps(data_dir, tmp_path):
    workdir = str(tmp_path / "two_steps")
    # two steps: the first runs at the warm-up's lr 0
    out = _run(_cmd(workdir, data_dir, "--config.total_steps=2", "--config.checkpoint_every=2"))
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def test_small_recipe_trains_the_xs_model(data_dir, tmp_path):
    """`configs/matpac_pp.py:small` as a user types it (relative paths, another folder)."""
    cmd = [
        a.replace("configs/matpac_pp.py:runlocal", os.path.join(ROOT, "configs/matpac_pp.py:small"))
        for a in _cmd("run", os.path.relpath(data_dir, tmp_path), "--config.total_steps=2")
    ]
    out = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads(_read(os.path.join(tmp_path, "run", "run.json")))
    model = run["model"]
    assert (model["width"], model["depth"], model["pred_width"], model["pred_depth"]) == (
        64,
        4,
        64,
        2,
    )
    assert (model["cls_hidden"], model["cls_bottleneck"], model["cls_out"]) == (256, 64, 1024)
    assert run["config"]["model"]["mask_ratio"] == 0.5
    with open(os.path.join(data_dir, "index.json")) as f:
        assert run["config"]["data"]["mean"] == json.load(f)["mean"]  # corpus normalisation


# ---------------------------------------------------------------------------------------------
# Resuming with another config (matpac_jax/train/run_record.py).


def _resume_cmd(data_dir, tmp_path, *extra):
    """A 4-step run in tmp_path/run, typed from tmp_path with relative paths."""
    config = os.path.join(os.path.relpath(ROOT, tmp_path), "configs/matpac_pp.py")
    cmd = _cmd("run", os.path.relpath(data_dir, tmp_path), "--config.checkpoint_every=2")
    cmd = [a.replace("configs/matpac_pp.py", config, 1) for a in cmd]
    return [*cmd, "--config.total_steps=4", *extra]


def _run_in(cwd, cmd):
    return subprocess.run(
        cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )


def test_resume_names_each_change_refusing_what_the_checkpoints_fix(data_dir, tmp_path):
    out = _run_in(tmp_path, _resume_cmd(data_dir, tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    record = _read(tmp_path / "run" / "run.json")
    steps = os.listdir(tmp_path / "run" / "checkpoints")

    # A model, a head count and a seed the checkpoints cannot take: one line naming each.
    changed = ("--config.model.variant=Ti", "--config.model.num_mcl_heads=3", "--config.seed=1")
    out = _run_in(tmp_path, _resume_cmd(data_dir, tmp_path, *changed))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    (line,) = [l for l in out.stderr.splitlines() if l.startswith("python -m matpac_jax.train")]
    for change in (
        'model.variant "mu" (run) vs "Ti" (now)',
        "model.num_mcl_heads 5 (run) vs 3 (now)",
        "seed 0 (run) vs 1 (now)",
    ):
        assert change in line, line
    assert "batch_size" not in line  # unchanged keys are not listed
    assert "run.json" in line and "another --workdir" in line
    # Nothing was touched: the record and the checkpoints are the run's.
    assert _read(tmp_path / "run" / "run.json") == record
    assert os.listdir(tmp_path / "run" / "checkpoints") == steps

    # Changes that can continue: a line each, and the record keeps both starts.
    more = ("--config.batch_size=16", "--config.total_steps=6", "--config.optim.peak_lr=0.002")
    out = _run_in(tmp_path, _resume_cmd(data_dir, tmp_path, *more))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step 4" in out.stderr
    said = [l.split("] ", 1)[-1] for l in out.stderr.splitlines() if "resuming with" in l]
    assert said == [
        "resuming with batch_size 8 -> 16",
        "resuming with optim.peak_lr 0.001 -> 0.002",
        "resuming with total_steps 4 -> 6",
    ], said
    assert sorted(logged_losses(str(tmp_path / "run"))) == [4, 5, 6]
    run = json.loads(_read(tmp_path / "run" / "run.json"))
    first, second = run["starts"]
    assert (first["step"], first["config"]["batch_size"], first["changed"]) == (0, 8, {})
    assert (second["step"], second["config"]["batch_size"]) == (4, 16)
    assert second["changed"] == {
        "batch_size": [8, 16],
        "optim.peak_lr": [0.001, 0.002],
        "total_steps": [4, 6],
    }
    assert run["config"] == second["config"] and run["schedule"]["total_steps"] == 6


def test_model_sizes_from_the_config_override_the_variants():
    from matpac_jax import config_lib  # pylint: disable=g-import-not-at-top
    from matpac_jax.train import trainer as train  # pylint: disable=g-import-not-at-top

    config = config_lib.load_config(os.path.join(ROOT, "configs/matpac_pp.py:variant=Ti"))
    index = {"front_end": {"n_mels": 80}}
    assert train.model_config(config, index).depth == 12  # unset: the variant's
    config_lib.apply_overrides(config, ["--config.model.depth=4", "--config.model.pred_depth=2"])
    cfg = train.model_config(config, index)
    assert (cfg.width, cfg.depth, cfg.pred_width, cfg.pred_depth) == (192, 4, 128, 2)
    train.check_config(config)
