"""Buckets (gs://), against a GCS server started by the tests (conftest.py's `gcs`): shards read
by byte ranges (matpac_jax/storage.py, audio/shards.py) give the records and batches of the local
copy; the workdir lock, metrics and every command's outputs live on the bucket; preprocessing,
training (with a resume), embed and probe run end to end on gs:// paths, as a user types them.

An ArrayRecord file's records are byte ranges between 64 KiB block headers; the ranges that
preprocessing writes beside each shard are checked against the C++ reader on records that
cross zero, one and several block boundaries."""

import json
import os
import subprocess
import sys
import threading
import time

import fsspec
import numpy as np
import pytest
from array_record.python import array_record_module
from conftest import subprocess_env, write_mel_dataset

from matpac_jax import dirlock, storage
from matpac_jax.audio import shards
from matpac_jax.data import pipeline


def test_byte_ranges_give_the_records_of_the_cpp_reader(tmp_path):
    rng = np.random.default_rng(0)
    # 65,512 bytes fill a block's data exactly; the others straddle 0, 1, 2 or 3 boundaries.
    sizes = [10, 70_000, 5, 65_512, 65_513, 200_000, 1, 131_000, 3, 65_490]
    records = [rng.bytes(n) for n in sizes]
    path = str(tmp_path / "s.array_record")
    writer = array_record_module.ArrayRecordWriter(path, shards.WRITER_OPTIONS)
    for r in records:
        writer.write(r)
    writer.close()
    shards.write_ranges(path, len(records))
    reader = shards.RangeReader(fsspec.filesystem("file"), path)
    assert reader.num_records() == len(records)
    got = reader.read(list(range(len(records)))[::-1])
    assert got == records[::-1]
    cpp = array_record_module.ArrayRecordReader(path)
    assert cpp.read(list(range(len(records)))) == got[::-1]
    cpp.close()


def test_byte_ranges_refuse_other_writer_options(tmp_path):
    path = str(tmp_path / "grouped.array_record")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:4,uncompressed")
    for i in range(8):
        writer.write(bytes([i]) * 100)
    writer.close()
    with pytest.raises(ValueError, match="not one uncompressed record"):
        shards.write_ranges(path, 8)


def test_paths_and_urls():
    assert storage.is_url("gs://b/x") and storage.is_url("s3://b/x")
    assert not storage.is_url("/data/x") and not storage.is_url("file:///data/x")
    assert not storage.is_url("runs/gs:/x")
    assert storage.join("gs://b/mels/", "shards", "a.json") == "gs://b/mels/shards/a.json"
    assert storage.join("/data", "shards") == os.path.join("/data", "shards")


@pytest.fixture(scope="module")
def local_and_bucket(tmp_path_factory, gcs):
    d = tmp_path_factory.mktemp("mels")
    rng = np.random.default_rng(1)
    mels = [(rng.normal(size=(80, 600 + 17 * i)) - 7).astype(np.float16) for i in range(9)]
    write_mel_dataset(str(d), mels, records_per_shard=4)
    return str(d), gcs.upload(str(d), "mels"), mels


def test_shards_read_from_the_bucket(local_and_bucket):
    local, url, mels = local_and_bucket
    source = shards.MelSource(url)
    assert len(source) == len(mels) and source.index == shards.load_index(local)
    for i in (8, 0, 5, 3):  # records of every shard, out of order
        np.testing.assert_array_equal(source[i], mels[i])
    for threads in (1, 4):
        remote = pipeline.pretraining_dataset(
            url, batch_size=4, crop_frames=64, read_threads=threads, seed=3
        )
        near = pipeline.pretraining_dataset(local, batch_size=4, crop_frames=64, seed=3)
        for step in range(5):
            np.testing.assert_array_equal(remote[step], near[step])


def test_a_bucket_without_the_byte_ranges_says_what_to_do(local_and_bucket, gcs):
    local, _, _ = local_and_bucket
    url = gcs.upload(local, "mels_without_ranges")
    fs, _ = storage.filesystem(url)
    for path in fs.glob(url.removeprefix("gs://") + "/shards/*" + shards.RANGES_SUFFIX):
        fs.rm(path)
    with pytest.raises(shards.ShardError, match="need the byte ranges preprocessing writes"):
        shards.MelSource(url)
    with pytest.raises(FileNotFoundError, match="not a preprocessed shard directory"):
        shards.MelSource(gcs.url("nothing_here"))


def test_the_workdir_lock_on_a_bucket(gcs):
    """Exactly one of several runs takes a lock object at once (an upload with a precondition);
    the others are refused naming it; a holder whose heartbeat stopped is taken over."""
    folder = gcs.url("locks/a")
    locks = [dirlock.DirLock(folder, "trainer") for _ in range(6)]
    outcomes = [None] * len(locks)

    def take(k):
        try:
            locks[k].acquire()
            outcomes[k] = "held"
        except dirlock.LockedError as e:
            outcomes[k] = str(e)

    threads = [threading.Thread(target=take, args=(k,)) for k in range(len(locks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("held") == 1, outcomes
    holder = locks[outcomes.index("held")]
    assert all("is in use by another trainer" in o for o in outcomes if o != "held")
    assert json.loads(storage.read_text(holder.path))["token"] == holder._token  # pylint: disable=protected-access
    holder.release()
    assert not storage.exists(holder.path)

    # A holder on another host that stopped beating 2 s ago, with a 1 s lease: gone.
    dead = {"what": "trainer", "host": "elsewhere", "pid": 1, "lease_s": 1.0, "token": "x"}
    storage.write_text(holder.path, json.dumps(dead))
    time.sleep(2.0)
    with dirlock.DirLock(folder, "trainer", lease_s=1.0) as taker:
        assert taker.took_over["host"] == "elsewhere"
        first = storage.mtime(taker.path)
        time.sleep(0.6)  # the heartbeat (every lease / 6 s) rewrites the object
        assert storage.mtime(taker.path) > first
    assert not storage.exists(taker.path)


def test_metrics_on_a_bucket_are_rewritten_and_truncated_on_resume(gcs):
    """No append on a bucket: the writer keeps the rows and rewrites the object; a resume from
    step 2 drops what the interrupted run logged after it, as on a local disk."""
    from matpac_jax.train import metrics  # pylint: disable=g-import-not-at-top

    workdir = gcs.url("metrics_run")
    writer = metrics.MetricWriter(workdir)
    for step in (1, 2, 3):
        writer.write(step, {"loss": 10.0 - step})
    writer.close()
    assert [r["step"] for r in metrics.read_metrics(workdir)] == [1, 2, 3]
    writer = metrics.MetricWriter(workdir, resume_step=2)
    writer.write(3, {"loss": 0.5})
    writer.close()
    rows = metrics.read_metrics(workdir)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 9.0), (2, 8.0), (3, 0.5)]
    events = storage.glob(storage.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert len(events) == 2 and all(len(storage.read_bytes(e)) > 100 for e in events)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(cwd, module, *args, env=None):
    out = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return out


def _train_args(data_dir, workdir, steps):
    return [
        "--config=" + os.path.join(ROOT, "configs/matpac_pp.py:runlocal"),
        f"--workdir={workdir}", f"--config.data.dir={data_dir}", "--config.data.crop_frames=64",
        "--config.batch_size=4", f"--config.total_steps={steps}", "--config.log_every=1",
        "--config.checkpoint_every=2", "--config.evals=", "--config.data.read_threads=4",
    ]  # fmt: skip


def _tones(folder, count=10):
    """Tones of three pitches, 0.8-1.4 s (long enough for 64-frame crops), and a task CSV."""
    import soundfile as sf  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(5)
    os.makedirs(folder / "clips")
    rows = ["path,label,split"]
    for i in range(count):
        label = ("low", "mid", "high")[i % 3]
        freq = {"low": 220.0, "mid": 880.0, "high": 3520.0}[label] * rng.uniform(0.97, 1.03)
        t = np.arange(int(16_000 * rng.uniform(0.8, 1.4))) / 16_000
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.normal(size=t.size)
        sf.write(folder / "clips" / f"{i}.wav", wave, 16_000)
        rows.append(f"clips/{i}.wav,{label},{('train', 'train', 'valid', 'test')[i % 4]}")
    (folder / "tones.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_preprocess_train_embed_and_probe_on_a_bucket(gcs, tmp_path):
    """Every command on gs:// paths, from a folder that stays empty: two preprocessing tasks
    give the shards of a local run byte for byte; training on the bucket's shards into a
    bucket workdir logs the losses of the local twin exactly, resumes from its checkpoint, and
    writes nothing local; embed and probe read the bucket's encoder."""
    env = {**subprocess_env(1), **gcs.env}
    local = tmp_path / "local"
    _tones(local / "audio")
    audio_url = gcs.upload(str(local / "audio"), "e2e/audio")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    pre = ["--min_frames", "64", "--records_per_shard", "4", "--num_workers", "0"]
    module = "matpac_jax.audio.preprocess"
    _command(local, module, "--input_dir", "audio", "--output_dir", "mels", *pre, env=env)
    mels = gcs.url("e2e/mels")
    for task in ("0", "1"):
        split = ["--num_tasks", "2", "--task_index", task]
        _command(cwd, module, "--input_dir", audio_url, "--output_dir", mels, *pre, *split, env=env)
    gcs.download("e2e/mels", str(tmp_path / "mels_copy"))
    names = sorted(storage.files_under(str(local / "mels")))
    assert names == sorted(n for n in storage.files_under(str(tmp_path / "mels_copy")))
    assert any(n.endswith(".ranges.npy") for n in names) and ".lock" not in names
    for name in names:
        ours, theirs = (local / "mels" / name).read_bytes(), (tmp_path / "mels_copy" / name)
        if name == "index.json":  # the one difference: where the audio was read from
            a, b = json.loads(ours), json.loads(theirs.read_bytes())
            assert (a.pop("input_dir"), b.pop("input_dir")) == (str(local / "audio"), audio_url)
            assert a == b
        else:
            assert ours == theirs.read_bytes(), name

    module = "matpac_jax.train"
    _command(ROOT, module, *_train_args(local / "mels", local / "run", 4), env=env)
    run = gcs.url("e2e/run")
    out = _command(cwd, module, *_train_args(mels, run, 4), env=env)
    assert f"data: {mels} (10 records)" in out.stderr
    from matpac_jax.train import metrics  # pylint: disable=g-import-not-at-top

    def losses(workdir):
        return {r["step"]: r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r}

    near = losses(str(local / "run"))
    assert sorted(near) == [1, 2, 3, 4] and losses(run) == near
    for name in ("run.json", "checkpoints/4/commit_success.txt", "export/config.json"):
        assert storage.exists(storage.join(run, name)), name
    assert storage.glob(storage.join(run, "tensorboard", "events.out.tfevents.*"))
    assert not storage.exists(storage.join(run, dirlock.LOCK_NAME))  # released
    out = _command(cwd, module, *_train_args(mels, run, 6), env=env)
    assert "restored checkpoint step 4" in out.stderr
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]

    module = "matpac_jax.inference.embed"
    emb = gcs.url("e2e/emb.npz")
    _command(cwd, module, "--encoder", run, "--input_dir", audio_url, "--out", emb, env=env)
    with storage.local_copy(emb) as path:
        far = dict(np.load(path))
    assert sorted(far["paths"].tolist()) == sorted(f"clips/{i}.wav" for i in range(10))
    assert far["embeddings"].shape[0] == 10 and np.isfinite(far["embeddings"]).all()

    module = "matpac_jax.evaluation.probe"
    args = ["--encoder", f"{run}/export", "--task_csv", local / "audio" / "tones.csv"]
    _command(cwd, module, *args, "--seeds", "1", "--out", tmp_path / "probe", env=env)
    report = json.loads((tmp_path / "probe" / "report.json").read_text())
    assert report["encoder"] == f"{run}/export" and report["tasks"][0]["n_test"] == [2]
    assert os.listdir(cwd) == []  # nothing written locally by any of the bucket commands


@pytest.mark.parametrize(
    "module, args, message",
    [
        (
            "matpac_jax.evaluation.probe",
            ["--encoder", "logmel", "--task_csv", "t.csv", "--out", "gs://matpac-test/probe"],
            "--out gs://matpac-test/probe: writing to gs:// is not supported here",
        ),
        (
            "matpac_jax.train.finetune",
            ["--config=CONFIG", "--config.data.train_dir=gs://matpac-test/as",
             "--config.data.eval_dir=gs://matpac-test/ev", "--workdir=w", "--init=random"],
            "--config.data.train_dir gs://matpac-test/as: reading from gs:// is not supported",
        ),
    ],
)  # fmt: skip
def test_what_stays_local_refuses_a_bucket_in_one_line(gcs, tmp_path, module, args, message):
    """Before, a gs:// output became a local folder named `gs:`."""
    (tmp_path / "t.csv").write_text("path,label,split\n")
    args = [a.replace("CONFIG", f"{ROOT}/configs/finetune_audioset.py:runlocal") for a in args]
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        check=False,
        cwd=tmp_path,
        env={**os.environ, **gcs.env, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert sorted(os.listdir(tmp_path)) == ["t.csv"]  # no local gs: folder, no output


@pytest.mark.parametrize("where", ["bucket", "local"])
def test_an_encoder_is_fingerprinted_by_its_files(gcs, tmp_path, where):
    """The probe's embedding cache is keyed by the encoder's files: their sizes and versions
    (a bucket object's generation, a local file's time), so a rewrite of the same size changes
    it; what a running trainer rewrites (metrics, TensorBoard, the lock, an unfinished save)
    does not. One rule for both (tasks._fingerprinted)."""
    from matpac_jax.evaluation import tasks  # pylint: disable=g-import-not-at-top

    run = gcs.url("fingerprinted") if where == "bucket" else str(tmp_path / "run")
    storage.makedirs(storage.join(run, "export"))
    storage.makedirs(storage.join(run, "checkpoints", "4"))
    storage.makedirs(storage.join(run, "checkpoints", "6.orbax-checkpoint-tmp"))
    storage.makedirs(storage.join(run, "tensorboard"))
    storage.write_text(storage.join(run, "export", "config.json"), "{}")
    storage.write_bytes(storage.join(run, "checkpoints", "4", "state"), b"a" * 10)
    first = tasks.encoder_fingerprint(run)
    assert first != run and tasks.encoder_fingerprint(run) == first
    storage.write_text(storage.join(run, "metrics.jsonl"), '{"step": 1}\n')
    storage.write_text(storage.join(run, dirlock.LOCK_NAME), "{}")
    storage.write_bytes(storage.join(run, "tensorboard", "events.out.tfevents.1"), b"e")
    storage.write_bytes(storage.join(run, "checkpoints", "6.orbax-checkpoint-tmp", "x"), b"t")
    assert tasks.encoder_fingerprint(run) == first
    time.sleep(0.05)  # a local file's time has ns resolution, but a coarse file system's may not
    storage.write_bytes(storage.join(run, "checkpoints", "4", "state"), b"b" * 10)
    assert tasks.encoder_fingerprint(run) != first
