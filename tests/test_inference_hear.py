"""Tests for matpac_jax/inference/hear.py: the HEAR 2021 API's shapes, units, timestamp grid and
agreement with Encoder; with torch installed, the torch path the benchmark's tools take (the
official validator too, when `hearvalidator` is installed: docs/inference.md)."""

import subprocess
import sys

import numpy as np
import pytest
from numerics import assert_close, encoder_depth

from matpac_jax.inference import hear
from matpac_jax.inference.encoder import Encoder

DEPTH = encoder_depth(2)  # random:mu, two blocks: two programs compare by tests/numerics.py
SOUNDS = (0.1 * np.random.default_rng(0).normal(size=(3, 16_000))).astype(np.float32)


@pytest.fixture(scope="module")
def encoder():
    return Encoder.load("random:mu")


def test_hear_api_matches_encoder(encoder):
    model = hear.load_model("random:mu", hop_ms=160)
    assert model.sample_rate == 16_000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 160
    scene = hear.get_scene_embeddings(SOUNDS, model)
    assert scene.shape == (3, 160) and scene.dtype == np.float32
    assert_close(scene[2], encoder.embed(SOUNDS[2], 16_000), depth=DEPTH)

    emb, ts = hear.get_timestamp_embeddings(SOUNDS.tolist(), model)  # any array-like
    steps = -(-(1 + (16_000 - 400) // 160) // 16)  # 98 frames -> padded to 112 -> 7 steps
    assert emb.shape == (3, steps, 160) and ts.shape == (3, steps)
    np.testing.assert_allclose(ts[1], 87.5 + 160 * np.arange(steps))  # centres, milliseconds
    assert_close(emb.mean(axis=1), scene, depth=DEPTH)
    alone = encoder.embed(SOUNDS[0], 16_000, timestamps=True)
    assert_close(emb[0], alone.steps, depth=DEPTH)

    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(SOUNDS[0], model)
    with pytest.raises(ValueError, match="hop_ms=50"):
        hear.load_model("random:mu", hop_ms=50)


def test_a_finer_hop_interleaves_time_shifted_copies(encoder):
    model = hear.load_model("random:mu")  # the default grid: 40 ms
    assert model.hop_ms == hear.DEFAULT_HOP_MS == 40
    emb, ts = hear.get_timestamp_embeddings(SOUNDS, model)
    assert emb.shape == (3, 4 * 7, 160)
    np.testing.assert_array_equal(np.diff(ts, axis=1), 40.0)  # regular to the bit
    assert ts[0, 0] == 87.5
    # Step s of the copy shifted by j * 40 ms is embedding 4 s + j, centred 40 ms later.
    for j in range(4):
        copy = np.concatenate([SOUNDS[1, j * 640 :], np.zeros(j * 640, np.float32)])
        want = encoder.embed(copy, 16_000, timestamps=True).steps
        assert_close(emb[1, j::4], want, depth=DEPTH)
    coarse = hear.get_timestamp_embeddings(SOUNDS, hear.load_model("random:mu", hop_ms=160))
    assert_close(emb[:, ::4], coarse[0], depth=DEPTH)
    # Scene embeddings do not depend on the grid.
    np.testing.assert_array_equal(
        hear.get_scene_embeddings(SOUNDS, model),
        hear.get_scene_embeddings(SOUNDS, hear.load_model("random:mu", hop_ms=160)),
    )


@pytest.mark.slow
def test_without_torch_numpy_in_numpy_out_and_no_torch_import():
    if hear.torch_available():
        pytest.skip("torch is installed here: the torch tests below cover this environment")
    code = (
        "import sys, numpy as np\n"
        "from matpac_jax.inference import hear\n"
        "m = hear.load_model('random:mu')\n"
        "e, t = hear.get_timestamp_embeddings(np.zeros((2, 8000), np.float32), m)\n"
        "s = hear.get_scene_embeddings(np.zeros((2, 8000), np.float32), m)\n"
        "assert type(m).__name__ == 'HearModel', type(m)\n"
        "assert e.dtype == s.dtype == np.float32 and t.dtype == np.float64\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# ------------------------------------------------------------------------------ with torch


def test_torch_module_and_tensors_equal_the_numpy_path():
    torch = pytest.importorskip("torch")
    model = hear.load_model("random:mu")
    assert isinstance(model, torch.nn.Module)
    assert model.to("cpu") is model and list(model.parameters()) == []
    for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        assert type(getattr(model, name)) is int
    audio = torch.from_numpy(SOUNDS)
    scene = hear.get_scene_embeddings(audio, model)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert scene.dtype == emb.dtype == torch.float32 and ts.dtype == torch.float64
    assert scene.device == audio.device
    # The same program on the same numbers: equal exactly.
    np.testing.assert_array_equal(scene.numpy(), hear.get_scene_embeddings(SOUNDS, model))
    np_emb, np_ts = hear.get_timestamp_embeddings(SOUNDS, model)
    np.testing.assert_array_equal(emb.numpy(), np_emb)
    np.testing.assert_array_equal(ts.numpy(), np_ts)
    np.testing.assert_array_equal(model(audio).numpy(), scene.numpy())  # forward: scene


def test_the_benchmark_tools_checks_pass():
    """The validator's checks, as `hear-validator` 2021.0.2 makes them, and the type checks of
    heareval 2021.1.3's embedding runner (`Embedding` in heareval/embeddings/task_embeddings.py)."""
    torch = pytest.importorskip("torch")
    model = hear.load_model("random:mu")
    if not isinstance(model, torch.nn.Module):  # the runner's `Unsupported model type`
        raise TypeError("Unsupported model type")
    model.to("cpu")
    audio = torch.rand((16, 32_000)) * 2 - 1
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.shape[0] == 16 and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    diff = torch.diff(ts)
    average = torch.mean(diff.float())
    assert average <= 50.0  # no warning
    assert torch.all(torch.abs(diff - average) < 1e-3)
    scene = hear.get_scene_embeddings(torch.rand((8, int(3.74 * 16_000))) * 2 - 1, model)
    assert scene.dtype == torch.float32 and scene.shape == (8, model.scene_embedding_size)
    # heareval reads embeddings back with .detach().cpu().numpy().
    assert emb.detach().cpu().numpy().dtype == np.float32
    assert ts.detach().cpu().numpy().shape == emb.shape[:2]


def _mu_export(path):
    """An export of the random `mu` encoder at `path`; returns the encoder."""
    from matpac_jax.inference import export  # pylint: disable=g-import-not-at-top

    enc = Encoder.load("random:mu")
    config = {"model": {"variant": "mu"}, "front_end": enc.front_end.to_dict()}
    export.write_export(str(path), enc.params(), config)
    return enc


def test_the_official_validator_accepts_an_export(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    pytest.importorskip("hearvalidator")
    _mu_export(tmp_path / "export")
    out = subprocess.run(
        ["hear-validator", "matpac_jax.inference.hear", "-m", str(tmp_path / "export")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Looks good!" in out.stdout or "Validation complete" in out.stdout, out.stdout


def _hear_task(root, name, embedding_type):
    """A tiny task in the layout heareval's runner reads (HEAR 2021's preprocessed tasks)."""
    import json  # pylint: disable=g-import-not-at-top

    import soundfile as sf  # pylint: disable=g-import-not-at-top

    task = root / name
    rng = np.random.default_rng(1)
    meta = {
        "task_name": name,
        "version": "0",
        "embedding_type": embedding_type,
        "prediction_type": "multilabel" if embedding_type == "event" else "multiclass",
        "split_mode": "trainvaltest",
        "sample_duration": 2.0,
        "splits": ["train", "valid", "test"],
    }
    (task / "16000").mkdir(parents=True)
    (task / "task_metadata.json").write_text(json.dumps(meta))
    (task / "labelvocabulary.csv").write_text("idx,label\n0,a\n1,b\n")
    for split in meta["splits"]:
        (task / "16000" / split).mkdir()
        labels = {}
        for i in range(3):
            name_i = f"{split}{i}.wav"
            sf.write(task / "16000" / split / name_i, 0.1 * rng.normal(size=32_000), 16_000)
            if embedding_type == "event":
                labels[name_i] = [{"start": 250.0, "end": 900.0, "label": "ab"[i % 2]}]
            else:
                labels[name_i] = ["ab"[i % 2]]
        (task / f"{split}.json").write_text(json.dumps(labels))


def test_heareval_runner_embeds_tasks_with_an_export(tmp_path):
    """heareval 2021.1.3's own runner (`python -m heareval.embeddings.runner`) on two tiny tasks
    in its layout, a scene one and an event one."""
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    pytest.importorskip("heareval.embeddings.runner")
    enc = _mu_export(tmp_path / "export")
    _hear_task(tmp_path / "tasks", "tiny-scene", "scene")
    _hear_task(tmp_path / "tasks", "tiny-event", "event")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "heareval.embeddings.runner",
            "matpac_jax.inference.hear",
            *("--model", "export", "--tasks-dir", "tasks", "--embeddings-dir", "embeddings"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    done = tmp_path / "embeddings" / "matpac_jax.inference.hear"
    scene = np.load(done / "tiny-scene" / "test" / "test0.wav.embedding.npy")
    assert_close(
        scene,
        enc.embed(sf_read(tmp_path / "tasks/tiny-scene/16000/test/test0.wav"), 16_000),
        depth=DEPTH,
    )
    event = np.load(done / "tiny-event" / "train" / "train1.wav.embedding.npy")
    assert event.shape == (4 * 13, 160) and event.dtype == np.float32
    for task in ("tiny-scene", "tiny-event"):
        assert (done / task / ".done.embeddings").exists()


def sf_read(path):
    import soundfile as sf  # pylint: disable=g-import-not-at-top

    return sf.read(str(path), dtype=np.float32)[0]
