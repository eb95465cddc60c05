"""Preprocessing on many machines (matpac_jax/audio/preprocess.py, `--num_tasks/--task_index`,
`--finalize`): tasks running at once write their shards into one folder, and the result is byte
for byte that of a single run. The tasks run as a user starts them: `python -m
matpac_jax.audio.preprocess` subprocesses, from another folder, with relative paths."""

import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG = "matpac_jax.audio.preprocess"
SR = 16000


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding `audio/`: 11 distinct clips (10 kept, one too short)."""
    d = tmp_path_factory.mktemp("work")
    (d / "audio").mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        seconds = 1.0 if i == 7 else 6.2 + 0.1 * i
        t = np.arange(int(SR * seconds)) / SR
        x = 0.2 * np.sin(2 * np.pi * (200 + 90 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(d / "audio" / f"clip{i:02d}.flac", x, SR)
    return d


def _run(cwd, *args, check=True):
    out = subprocess.run(
        [sys.executable, "-m", PROG, "--input_dir", "audio", "--records_per_shard", "2", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


def _files(folder):
    """Every file of an output folder, relative, but the lock files of the runs."""
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, f), folder) for f in files]
    return sorted(f for f in found if not os.path.basename(f).startswith(".lock"))


def test_tasks_at_once_then_the_same_bytes_as_one_run(work):
    one = _run(work, "--output_dir", "one", "--num_workers", "0")
    assert "10 written, 1 skipped" in one.stdout
    procs = [
        subprocess.Popen(
            [
                sys.executable, "-m", PROG, "--input_dir", "audio", "--records_per_shard", "2",
                "--output_dir", "split", "--num_workers", "0",
                "--num_tasks", "3", "--task_index", str(i),
            ],
            cwd=work,
            env={**os.environ, "PYTHONPATH": ROOT},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-1500:] for _, e in outs]
    # The last task to finish wrote the index; the others said what they wait for.
    assert os.path.exists(work / "split" / "index.json")
    assert sum("10 written, 1 skipped" in o for o, _ in outs) >= 1
    assert _files(work / "one") == _files(work / "split")
    for name in _files(work / "one"):
        assert filecmp.cmp(work / "one" / name, work / "split" / name, shallow=False), name
    # --finalize writes the same index again from the sidecars.
    os.remove(work / "split" / "index.json")
    _run(work, "--output_dir", "split", "--finalize")
    assert filecmp.cmp(work / "one" / "index.json", work / "split" / "index.json", shallow=False)


def test_a_task_leaves_the_others_shards_and_temporary_files_alone(work):
    """Before, a second machine's run redid the shards from 0 and deleted the first machine's
    temporary files; a task removes only what an interrupted run of its own left."""
    first = _run(work, "--output_dir", "part", "--num_workers", "0", "--num_tasks", "2",
                 "--task_index", "0")  # fmt: skip
    assert "3 of 6 shards wait for the other tasks" in first.stderr
    assert not os.path.exists(work / "part" / "index.json")
    shards = work / "part" / "shards"
    theirs = shards / "mels-00001-of-00006.array_record.tmp-othermachine-123"
    ours = shards / "mels-00000-of-00006.array_record.tmp-othermachine-456"
    theirs.write_bytes(b"being written by task 1")
    ours.write_bytes(b"left by an interrupted task 0")
    done = {n: (shards / n).stat().st_mtime_ns for n in os.listdir(shards) if n.endswith(".json")}
    assert sorted(done) == [f"mels-{i:05d}-of-00006.json" for i in (0, 2, 4)]
    _run(work, "--output_dir", "part", "--num_workers", "0", "--num_tasks", "2",
         "--task_index", "0")  # fmt: skip
    assert theirs.exists() and not ours.exists()
    assert {n: (shards / n).stat().st_mtime_ns for n in done} == done  # not written again
    out = _run(work, "--output_dir", "part", "--finalize", check=False)
    assert out.returncode == 2
    assert "3 of 6 shards are not done yet, e.g. shards/mels-00001-of-00006" in out.stderr
    theirs.unlink()
    _run(work, "--output_dir", "part", "--num_workers", "0", "--num_tasks", "2",
         "--task_index", "1")  # fmt: skip
    assert filecmp.cmp(work / "one" / "index.json", work / "part" / "index.json", shallow=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--num_tasks", "2", "--task_index", "2"), "--task_index 2 of --num_tasks 2"),
        (("--num_tasks", "2", "--task_index", "0", "--overwrite"), "one task would delete"),
        (("--finalize", "--num_tasks", "2"), "--finalize only reads the tasks' shards"),
    ],
)
def test_task_mistakes_are_one_line(work, args, message):
    out = _run(work, "--output_dir", "mistake", *args, check=False)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(work / "mistake")


def test_finalize_of_a_folder_without_a_run(work):
    (work / "empty").mkdir()
    out = _run(work, "--output_dir", "empty", "--finalize", check=False)
    assert out.returncode == 2 and "no plan.json: no preprocessing ran there" in out.stderr
