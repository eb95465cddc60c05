"""Tests for matpac_jax/evaluation/suite.py: the papers' seven-task table from one command, on
fake copies of the datasets' official layouts (tests/fake_layouts.py)."""

import json
import math
import os
import subprocess
import sys

import fake_layouts
import numpy as np
import pytest
from conftest import subprocess_env

from matpac_jax.evaluation import suite
from matpac_jax.evaluation import tasks as probe_data

ALL = [key for key, *_ in suite.TASKS]


def _entry(mean, ci95, n_test=10, auc=None):
    entry = {"mean": mean, "ci95": ci95, "n_test": [n_test], "skipped": {}}
    if auc is not None:
        entry["auc_mean"] = auc
    return entry


def test_table_averages_over_the_tasks_present_by_hand():
    entries = {"nsynth": _entry(0.5, 0.02), "fsd50k": _entry(0.25, None, auc=float("nan"))}
    t = suite.table(entries, "logmel", ["openmic", "gtzan", "magnatagatune", "esc50"], "evar")
    assert t["present"] == ["nsynth", "fsd50k"]  # the table's column order
    assert t["ours"]["scores"]["nsynth"] == {
        "mean": 50.0, "ci95": 2.0, "metric": "acc", "n_test": 10, "skipped_clips": 0,
    }  # fmt: skip
    assert t["ours"]["scores"]["fsd50k"]["roc_auc"] is None  # undefined, not NaN
    assert t["ours"]["avg_present"] == pytest.approx((50.0 + 25.0) / 2)
    # Published rows: MATPAC++ NSynth 76.8 and FSD50K 56.1; all seven average 75.7.
    row = t["published"]["MATPAC++"]
    assert row["avg_present"] == pytest.approx((76.8 + 56.1) / 2)
    assert round(row["avg_all"], 1) == 75.7
    assert round(t["published"]["MATPAC"]["avg_all"], 1) == 75.2
    assert round(t["published"]["M2D"]["avg_all"], 1) == 74.3
    md = suite.render_table(t)
    assert "| **ours** (`logmel`) | – | 50.0 ± 2.0 | – | – | 25.0 | – | – | 37.5 | – |" in md
    assert "| MATPAC++ | 85.6 | 76.8 | 87.6 | 40.8 | 56.1 | 93.1 | 89.7 | 66.5 | 75.7 |" in md
    assert "Not found under --data_root: openmic, gtzan, magnatagatune, esc50." in md
    json.dumps(t, allow_nan=False)  # valid JSON: no NaN


def test_tasks_found_by_folder_and_rows_that_did_not_decode_left_out(tmp_path):
    (tmp_path / "ESC-50").mkdir()
    (tmp_path / "mtt").mkdir()
    found, missing = suite.find_tasks(str(tmp_path), ALL, mtt="all")
    assert [(f.key, f.dataset, os.path.basename(f.manual_dir)) for f in found] == [
        ("magnatagatune", "magnatagatune/all", "mtt"),
        ("esc50", "esc50", "ESC-50"),
    ]
    assert missing == ["openmic", "nsynth", "gtzan", "fsd50k", "urbansound8k"]
    task = probe_data.Task(
        "t", "t.csv", ["a", "b", "c"], [("x",), (), ("y",)], ["x", "y"], True, False,
        ["train", "valid", "test"], [(), ("x",), ()],
    )  # fmt: skip
    kept = suite.without_rows(task, {1: "truncated"})
    assert kept.paths == ["a", "c"] and kept.labels == [("x",), ("y",)]
    assert kept.groups == ["train", "test"] and kept.unknown == [(), ()]


def _suite(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "matpac_jax.evaluation.suite", *args],
        cwd=cwd,
        env=subprocess_env(devices=1),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_mistakes_are_one_line_errors(tmp_path):
    (tmp_path / "data" / "esc50").mkdir(parents=True)  # a folder without the layout
    (tmp_path / "empty").mkdir()
    cases = [
        (["--data_root", "empty"], "none of the tasks' folders is there"),
        (["--data_root", "nowhere"], "--data_root nowhere: no such folder"),
        (["--data_root", "data"], "data/esc50: not a complete esc50 copy"),
        (["--data_root", "data", "--tasks", "esc50,audioset"], "--tasks: unknown audioset"),
        (["--data_root", "data", "--crop", "fsd50k:7.64"], "unknown task 'fsd50k:7.64'"),
        (["--data_root", "data", "--crop", "fsd50k=-1"], "must be greater than 0"),
        (["--data_root", "data", "--seeds", "0"], "must be at least 1"),
    ]
    fake_layouts.esc50_layout(tmp_path / "good" / "esc50", n=40, classes=4)
    cases.append((["--data_root", "good", "--encoder", "randm:B"], "randm:B"))
    for args, message in cases:
        out = _suite(["--encoder", "logmel", "--out", "out", *args], tmp_path)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert not (tmp_path / "out").exists()  # a failed start leaves no output folder


@pytest.mark.slow
def test_the_table_from_a_fresh_data_root_and_a_second_run_embeds_nothing_again(tmp_path):
    fake_layouts.papers_data_root(tmp_path / "data")
    user = tmp_path / "elsewhere"  # relative paths from the user's own folder
    user.mkdir()
    args = ["--encoder", "logmel", "--data_root", "../data", "--out", "suite", "--seeds", "2"]
    first = _suite([*args, "--tasks", "openmic,esc50"], user)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "not found under" not in first.stdout  # a subset asked for is not "missing"
    # The corrupt OpenMIC clip is reported and left out; the run goes on.
    corrupt = f"openmic/audio/000/{fake_layouts.OPENMIC_CORRUPT}.ogg: unreadable"
    assert "openmic: left out" in first.stderr and corrupt in first.stderr
    second = _suite(args, user)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = {line.split(":")[0]: line for line in second.stdout.splitlines() if "(" in line}
    assert "(cached" in lines["openmic"] and "(cached" in lines["esc50"]
    for key in ("nsynth", "gtzan", "magnatagatune", "fsd50k", "urbansound8k"):
        assert "(embedded" in lines[key], second.stdout
    out = user / "suite"
    table = json.loads((out / "table.json").read_text())
    assert table["present"] == ALL and table["missing"] == []
    report = {e["task"]: e for e in json.loads((out / "report.json").read_text())["tasks"]}
    for key, score in table["ours"]["scores"].items():
        assert score["mean"] == pytest.approx(100 * report[key]["mean"])
        assert score["metric"] == ("mAP" if report[key]["multilabel"] else "acc")
        assert report[key]["clip_seconds"] is None  # whole clips
    assert table["ours"]["scores"]["fsd50k"]["skipped_clips"] == 1
    # OpenMIC's partial labels reach the probe as a mask: its 18 unknown instruments per clip.
    assert report["openmic"]["n_test"] == [2] and len(report["openmic"]["classes"]) == 20
    assert report["esc50"]["folds"] == ["1", "2", "3", "4", "5"]
    assert table["ours"]["avg_present"] == pytest.approx(
        np.mean([s["mean"] for s in table["ours"]["scores"].values()])
    )
    md = (out / "table.md").read_text()
    for name in ("MATPAC++", "MATPAC", "M2D"):
        assert f"| {name} |" in md
    assert (out / "table.png").stat().st_size > 10_000
    assert all(not math.isnan(s["mean"]) for s in table["ours"]["scores"].values())
