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
        "vs_MATPAC++": "below",
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
    assert "| **ours** (`logmel`) | – | 50.0 ± 2.0 ↓ | – | – | 25.0 ↓ | – | – | 37.5 | – |" in md
    assert (
        "| MATPAC++ | 85.6 ± 0.1 | 76.8 ± 0.2 | 87.6 ± 0.0 | 40.8 ± 0.1 | 56.1 ± 0.1 | 93.1 ± 0.1 "
        "| 89.7 ± 0.3 | 66.5 | 75.7 |"
    ) in md
    assert "| HTS-AT (s) | 86.3 ± 0.0 | 70.0 ± 0.2 |" in md
    assert "Not found under --data_root: openmic, gtzan, magnatagatune, esc50." in md
    json.dumps(t, allow_nan=False)  # valid JSON: no NaN


def test_the_whole_published_table_and_its_averages():
    """Table 1's fifteen rows with their intervals; each row's average, computed from its seven
    figures, is the table's own average column up to the figures' rounding (seven values
    rounded to 0.1 move their mean by at most 0.05, the printed average by 0.05 more)."""
    rows = suite.PUBLISHED
    assert len(rows) == 15 and list(rows)[-3:] == ["M2D", "MATPAC", "MATPAC++"]
    assert [n for n, r in rows.items() if r["supervised"]] == ["HTS-AT", "BEATs iter3+", "PaSST"]
    assert rows["ATST-Clip"]["scores"][2] == 79.5 and rows["ATST-Clip"]["ci95"][2] == 1.8
    for name, row in rows.items():
        assert len(row["scores"]) == len(row["ci95"]) == 7
        assert abs(sum(row["scores"]) / 7 - row["avg"]) <= 0.1 + 1e-9, name
    t = suite.table({}, "x", [], "evar")
    assert {n: r["avg_published"] for n, r in t["published"].items()} == {
        n: r["avg"] for n, r in rows.items()
    }


def test_our_row_is_marked_against_the_matpac_pp_interval():
    assert suite.mark(93.3, 93.1, 0.1) == "above"
    assert suite.mark(93.2, 93.1, 0.1) == "within"  # the interval's edge is inside
    assert suite.mark(93.0, 93.1, 0.1) == "within"
    assert suite.mark(87.5, 87.6, 0.0) == "below"
    entries = {"esc50": _entry(0.933, 0.004), "gtzan": _entry(0.876, 0.01)}
    scores = suite.table(entries, "x", [], "evar")["ours"]["scores"]
    assert scores["esc50"]["vs_MATPAC++"] == "above" and scores["gtzan"]["vs_MATPAC++"] == "within"


def test_the_protocol_line_of_a_grid_row_and_of_the_baseline():
    entries = {"esc50": _entry(0.5, 0.01)}
    baseline = suite.render_table(suite.table(entries, "logmel", [], "grid"))
    assert "The log-mel baseline is probed under `grid`" in baseline
    other = suite.render_table(suite.table(entries, "runs/b", [], "grid"))
    assert "Protocol `grid` chooses the learning rate on validation: not the published" in other
    published = suite.render_table(suite.table(entries, "runs/b", [], "evar"))
    assert "not the published" not in published and "baseline" not in published


def test_magnatagatune_defaults_to_every_clip_as_marble_splits_them(tmp_path):
    """MARBLE's MTT preprocessing (behind the published figure) keeps every clip, by folder:
    by default the suite does too; the fake layout's clip 24 has no top-50 tag."""
    fake_layouts.magnatagatune_layout(tmp_path / "mtt")
    args = suite._parser().parse_args(["--encoder", "x", "--data_root", "d", "--out", "o"])  # pylint: disable=protected-access
    assert args.mtt == "all" and args.clips == "evar" and args.crop_seed == 0
    (found,), _ = suite.find_tasks(str(tmp_path), ["magnatagatune"], mtt=args.mtt)
    suite.write_tasks([found], str(tmp_path / "out"))
    rels = sorted(os.path.relpath(p, tmp_path / "mtt") for p in found.task.paths)
    # By hand from fake_layouts.MTT: every decodable clip; 35644 is left out (empty file).
    assert rels == sorted(
        ["f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3",
         "0/artist_a-album-01-track-0-29.mp3", "b/artist_b-album-02-song-30-59.mp3",
         "1/artist_c-album-03-song-0-29.mp3", "c/artist_d-album-04-song-0-29.mp3",
         "d/artist_e-album-05-song-59-88.mp3"]
    )  # fmt: skip
    (tagged,), _ = suite.find_tasks(str(tmp_path), ["magnatagatune"], mtt="tagged")
    suite.write_tasks([tagged], str(tmp_path / "out_tagged"))
    assert len(tagged.task.paths) == 5


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
        # The published protocol's clips: each task's EVAR length (MTT whole, as MARBLE's).
        assert report[key]["clip_seconds"] == suite.EVAR_SECONDS[key]
        random = key in ("openmic", "nsynth", "gtzan", "fsd50k")  # split tasks, cut to a length
        assert ("random offset" in report[key]["clips"]) == random, report[key]["clips"]
    assert table["ours"]["scores"]["fsd50k"]["skipped_clips"] == 1
    # OpenMIC's partial labels reach the probe as a mask: its 18 unknown instruments per clip.
    assert report["openmic"]["n_test"] == [2] and len(report["openmic"]["classes"]) == 20
    assert report["esc50"]["folds"] == ["1", "2", "3", "4", "5"]
    assert table["ours"]["avg_present"] == pytest.approx(
        np.mean([s["mean"] for s in table["ours"]["scores"].values()])
    )
    md = (out / "table.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and " ± " in line]
    assert len(rows) == 16 and len([r for r in rows if "(s) |" in r]) == 3
    for name in ("MATPAC++", "MATPAC", "M2D", "ASiT", "HuBERT"):
        assert f"| {name} | " in md
    # The log-mel baseline at its best: the grid protocol, said beside the table.
    assert table["protocol"] == "grid" and "The log-mel baseline is probed under `grid`" in md
    assert (out / "table.png").stat().st_size > 10_000
    assert all(not math.isnan(s["mean"]) for s in table["ours"]["scores"].values())
