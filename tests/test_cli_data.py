"""The data commands as a user types them: each runs as a subprocess from another working
directory with relative paths (preprocess, embed, datasets.prepare, data.demo_corpus), and a
table of mistakes, each answered by one `error:` line, exit status 2, no traceback and nothing
left behind."""

import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import subprocess_env

from matpac_jax.dirlock import DirLock

SR = 16000


def _tone(seconds, freq=440.0):
    t = np.arange(int(SR * seconds)) / SR
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory holding tiny inputs; every command below runs from it."""
    w = tmp_path_factory.mktemp("cwd")
    (w / "audio").mkdir()
    sf.write(w / "audio" / "a.wav", _tone(6.2), SR)  # 618 frames
    sf.write(w / "audio" / "b.flac", _tone(6.2, 880), SR)
    sf.write(w / "audio" / "short.wav", _tone(5.0), SR)  # 498 frames < 608
    data = (w / "audio" / "a.wav").read_bytes()
    (w / "audio" / "truncated.wav").write_bytes(data[: 44 + (len(data) - 44) // 2])
    nan = _tone(6.2)
    nan[100] = np.nan
    sf.write(w / "audio" / "nan.wav", nan, SR, subtype="FLOAT")
    (w / "short").mkdir()
    for i in range(3):  # 6.08 s: 606 frames, two short of the 608-frame crop
        sf.write(w / "short" / f"{i}.wav", _tone(6.08), SR)
    (w / "bad").mkdir()
    (w / "bad" / "garbage.wav").write_bytes(b"RIFF, but not a WAV file at all")
    sf.write(w / "bad" / "tiny.wav", _tone(0.05), SR)  # 800 samples < 1,200
    (w / "no_audio").mkdir()
    (w / "no_audio" / "notes.txt").write_text("not audio")
    (w / "a_file").write_text("a file, not a folder")
    (w / "a_folder").mkdir()
    return w


def run(cwd, module, *args, timeout=300):
    """`python -m matpac_jax.MODULE ARGS` from `cwd`: (exit status, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", f"matpac_jax.{module}", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def strict_json(path):
    """JSON that must hold no NaN/Infinity (which Python's json would otherwise accept)."""

    def refuse(name):
        raise AssertionError(f"{name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------- end to end, relative paths


def test_demo_corpus_then_prepare_with_relative_paths(work):
    code, out, err = run(
        work,
        "data.demo_corpus",
        *("--out", "corpus", "--num_pretrain", "1", "--num_labelled", "72", "--format", "wav"),
        *("--num_tagging", "8"),
    )
    assert code == 0, err
    manifest = strict_json(work / "corpus" / "manifest.json")
    assert manifest["labelled"]["count"] == 72

    args = ("--dataset", "demo/timbre", "--manual_dir", "corpus", "--task_csv", "csv/timbre.csv")
    code, out, err = run(work, "datasets.prepare", *args)
    assert code == 0, err
    rows = (work / "csv" / "timbre.csv").read_text().splitlines()
    assert rows[0] == "path,label,split" and len(rows) > 1
    first = rows[1].split(",")[0]
    assert os.path.isabs(first) and os.path.isfile(first)
    assert first.startswith(str(work / "corpus"))


def test_preprocess_with_relative_paths_summarises_skips(work):
    args = ("--input_dir", "audio", "--output_dir", "mels", "--num_workers", "0")
    code, out, err = run(work, "audio.preprocess", *args, "--records_per_shard", "2")
    assert code == 0, err
    assert "skipped 3 of 5 inputs" in out
    assert "  1 non_finite (e.g. nan.wav)" in out
    assert "  1 truncated (e.g. truncated.wav)" in out
    assert "  1 too_short: 498 frames < --min_frames 608 (e.g. short.wav)" in out
    assert f"5 inputs: 2 written, 3 skipped -> {work}/mels/index.json" in out
    index = strict_json(work / "mels" / "index.json")
    assert index["input_dir"] == str(work / "audio") and index["num_records"] == 2
    assert not (work / "mels" / ".lock.owner").exists()

    # The same run again resumes (nothing to do) and still prints the summary.
    code, out, err = run(work, "audio.preprocess", *args, "--records_per_shard", "2")
    assert code == 0 and "  1 truncated (e.g. truncated.wav)" in out, err

    # Other parameters into the same OUT: refused, OUT untouched.
    plan = (work / "mels" / "plan.json").read_text()
    code, out, err = run(work, "audio.preprocess", *args, "--records_per_shard", "3")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        f"python -m matpac_jax.audio.preprocess: error: --output_dir {work}/mels: holds a run with "
        "other records_per_shard; resuming would mix them: use a new --output_dir, or "
        "--overwrite to start afresh"
    )
    assert (work / "mels" / "plan.json").read_text() == plan


def test_preprocess_that_writes_nothing_exits_1(work):
    code, out, err = run(
        work, "audio.preprocess", "--input_dir", "short", "--output_dir", "mels_short"
    )
    assert code == 1
    assert "  3 too_short: 606 frames < --min_frames 608 (e.g. 0.wav)" in out
    assert "3 inputs: 0 written, 3 skipped" in out and "(no frames)" in out
    assert err.strip().splitlines()[-1] == (
        "python -m matpac_jax.audio.preprocess: error: nothing written: all 3 inputs were skipped "
        "(reasons above)"
    )
    assert "Traceback" not in err
    index = strict_json(work / "mels_short" / "index.json")
    assert index["num_records"] == 0 and index["mean"] is None and index["std"] is None


def test_embed_with_relative_paths(work):
    args = ("--encoder", "logmel", "--input_dir", "audio", "--out", "emb/e.npz", "--no_progress")
    code, out, err = run(work, "inference.embed", *args)
    assert code == 0, err
    assert "  1 truncated (e.g. truncated.wav)" in out and "  1 non_finite (e.g. nan.wav)" in out
    npz = np.load(work / "emb" / "e.npz")
    assert list(npz["paths"]) == ["a.wav", "b.flac", "short.wav"]
    assert npz["embeddings"].shape == (3, 160)


def test_embed_with_no_usable_file_exits_1_and_writes_nothing(work):
    args = ("--encoder", "logmel", "--input_dir", "bad", "--out", "emb_bad/e.npz")
    code, out, err = run(work, "inference.embed", *args)
    assert code == 1 and "Traceback" not in err
    assert "skipped 2 of 2 files:" in out and "  1 unreadable (e.g. garbage.wav)" in out
    assert err.strip().splitlines()[-1] == (
        "python -m matpac_jax.inference.embed: error: nothing written: all 2 files were skipped "
        "(reasons above)"
    )
    assert not (work / "emb_bad").exists()


# ---------------------------------------------------------------- mistakes: one line, exit 2

PP, EMB, PREP, DEMO = "audio.preprocess", "inference.embed", "datasets.prepare", "data.demo_corpus"
PP_ARGS = ("--input_dir", "audio", "--output_dir", "out")
EMB_ARGS = ("--encoder", "logmel", "--input_dir", "audio")
PREP_ARGS = ("--dataset", "esc50", "--manual_dir")

# (id, module, args, text the one line must hold, paths (relative to cwd) that must not exist)
MISTAKES = [
    ("pp-input-missing", PP, ("--input_dir", "nope", "--output_dir", "out"),
     "--input_dir nope: no such folder", ["out"]),
    ("pp-input-file", PP, ("--input_dir", "a_file", "--output_dir", "out"),
     "--input_dir a_file: is a file, expected a folder", ["out"]),
    ("pp-input-no-audio", PP, ("--input_dir", "no_audio", "--output_dir", "out"),
     "no_audio: no audio files (extensions ", ["out"]),
    ("pp-output-under-file", PP, ("--input_dir", "audio", "--output_dir", "a_file/out"),
     "--output_dir a_file/out: cannot be created, ", []),
    ("pp-output-unwritable", PP, ("--input_dir", "audio", "--output_dir", "/proc/1/out"),
     "--output_dir /proc/1/out: cannot be created, /proc/1 is not writable", []),
    ("pp-output-uncreatable", PP, ("--input_dir", "audio", "--output_dir", "/proc/x/out"),
     "--output_dir /proc/x/out: cannot create it (No such file or directory)", []),
    ("pp-workers", PP, (*PP_ARGS, "--num_workers", "-1"),
     "argument --num_workers: -1: must be at least 0", ["out"]),
    ("pp-records", PP, (*PP_ARGS, "--records_per_shard", "0"),
     "argument --records_per_shard: 0: must be at least 1", ["out"]),
    ("pp-min-frames", PP, (*PP_ARGS, "--min_frames", "0"),
     "argument --min_frames: 0: must be at least 1", ["out"]),
    ("pp-not-a-number", PP, (*PP_ARGS, "--min_frames", "many"),
     "argument --min_frames: 'many' is not an integer", ["out"]),
    ("pp-no-input-flag", PP, ("--output_dir", "out"),
     "the following arguments are required: --input_dir", ["out"]),
    ("pp-locked", PP, ("--input_dir", "audio", "--output_dir", "a_folder"),
     "a_folder is in use by another preprocessing run (pid ", ["a_folder/plan.json"]),
    ("emb-out-folder", EMB, (*EMB_ARGS, "--out", "a_folder"),
     "--out a_folder: is a folder, expected a file", []),
    ("emb-out-under-file", EMB, (*EMB_ARGS, "--out", "a_file/e.npz"),
     "--out a_file/e.npz: ", []),
    ("emb-out-unwritable", EMB, (*EMB_ARGS, "--out", "/proc/1/e.npz"),
     "--out /proc/1/e.npz: folder /proc/1 is not writable", []),
    ("emb-out-uncreatable", EMB, (*EMB_ARGS, "--out", "/proc/x/e.npz"),
     "--out /proc/x: cannot create it (No such file or directory)", []),
    ("emb-input-missing", EMB, ("--encoder", "logmel", "--input_dir", "nope", "--out", "e/x.npz"),
     "--input_dir nope: no such folder", ["e"]),
    ("emb-input-no-audio", EMB,
     ("--encoder", "logmel", "--input_dir", "no_audio", "--out", "e/x.npz"),
     "no_audio: no audio files (extensions ", ["e"]),
    ("emb-batch", EMB, (*EMB_ARGS, "--out", "e/x.npz", "--batch_size", "0"),
     "argument --batch_size: 0: must be at least 1", ["e"]),
    ("emb-encoder-unknown", EMB,
     ("--encoder", "nowhere", "--input_dir", "audio", "--out", "e/x.npz"),
     "encoder 'nowhere': no such path; ", ["e"]),
    ("prep-unknown-dataset", PREP, ("--dataset", "esc51", "--manual_dir", "a_folder"),
     "argument --dataset: invalid choice: 'esc51' (choose from ", []),
    ("prep-no-manual-dir-flag", PREP, ("--dataset", "esc50", "--task_csv", "t.csv"),
     "the following arguments are required: --manual_dir", ["t.csv"]),
    ("prep-nothing-to-do", PREP, (*PREP_ARGS, "a_folder"),
     "nothing to do: give --data_dir (build), --task_csv (CSV) or both", []),
    ("prep-manual-dir-missing", PREP, (*PREP_ARGS, "nope", "--task_csv", "t.csv"),
     "--manual_dir nope: no such folder", ["t.csv"]),
    ("prep-layout-csv", PREP, (*PREP_ARGS, "no_audio", "--task_csv", "t/t.csv"),
     "--manual_dir no_audio: not a complete esc50 copy: ", ["t"]),
    ("prep-layout-build", PREP,
     ("--dataset", "demo/pitch", "--manual_dir", "no_audio", "--data_dir", "tfds"),
     "no_audio/manifest.json does not exist", ["tfds"]),
    ("prep-csv-folder", PREP, (*PREP_ARGS, "a_folder", "--task_csv", "a_folder"),
     "--task_csv a_folder: is a folder, expected a file", []),
    ("demo-too-few", DEMO, ("--out", "corpus2", "--num_labelled", "10"),
     "argument --num_labelled: 10: must be at least 72", ["corpus2"]),
    ("demo-workers", DEMO, ("--out", "corpus2", "--num_workers", "-2"),
     "argument --num_workers: -2: must be at least 0", ["corpus2"]),
    ("demo-out-under-file", DEMO, ("--out", "a_file/corpus"),
     "--out a_file/corpus: cannot be created, ", []),
    ("demo-out-unwritable", DEMO, ("--out", "/proc/1/corpus"),
     "--out /proc/1/corpus: cannot be created, /proc/1 is not writable", []),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, args, says, absent", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_a_mistake_is_one_line_and_leaves_nothing(work, module, args, says, absent):
    locked = module == PP and "a_folder" in args  # another run holds it, here this process
    lock = DirLock(str(work / "a_folder"), "preprocessing run")
    start = time.monotonic()
    with lock if locked else contextlib.nullcontext():
        code, out, err = run(work, module, *args)
    elapsed = time.monotonic() - start
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"python -m matpac_jax.{module}: error: "), err
    assert says in lines[0], err
    for path in absent:
        assert not (work / path).exists(), path
    assert set(os.listdir(work / "a_folder")) <= {".lock"}  # the lock file of `locked`
    if module == EMB and "--out" in lines[0]:
        assert elapsed < 60  # refused before any clip: no encoder, no jax import, no compile
