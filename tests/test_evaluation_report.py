"""Tests for matpac_jax/evaluation/report.py: class order, the confusion picture, report rendering."""

import numpy as np
import pytest

from matpac_jax.evaluation import report as probe_report


def test_natural_class_order():
    assert probe_report.natural_order(["10", "2", "1.5", "-3"]) == ["-3", "1.5", "2", "10"]
    pitch = ["A", "A#", "B", "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#"]
    assert probe_report.natural_order(pitch) == pitch[3:] + pitch[:3]
    assert probe_report.natural_order(["C4", "A3", "C#4", "Bb3", "B3"]) == [
        "A3",
        "Bb3",
        "B3",
        "C4",
        "C#4",
    ]
    assert probe_report.natural_order(["dog", "Cat", "bird"]) == ["Cat", "bird", "dog"]
    assert probe_report.natural_order(["C", "C4"]) == ["C", "C4"]  # mixed: alphabetical


def test_confusion_picture(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    classes = ["A", "C", "C#", "G"]  # drawn C, C#, G, A
    matrix = np.array([[5, 0, 1, 0], [0, 7, 0, 0], [2, 0, 3, 0], [0, 0, 0, 0]])
    path = tmp_path / "c.png"
    probe_report.plot_confusion(matrix, classes, str(path), title="pitch, encoder x")
    pixels = image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200


def test_learning_rate_texts():
    assert [probe_report.lr_text(v) for v in (3e-5, 1e-4, 3.2e-4, 1e-2, 0.5)] == [
        "3e-5",
        "1e-4",
        "3.2e-4",
        "1e-2",
        "5e-1",
    ]
    assert probe_report.chosen_text({"learning_rate": [[1e-3], [1e-3]]}) == "1e-3"
    three = {"learning_rate": [[3e-3, 1e-3], [1e-3, 1e-3]]}
    assert probe_report.chosen_text(three) == "1e-3 ×3, 3e-3 ×1"


def _entry(task, folds, chosen, valid):
    return {
        "task": task,
        "metric": "accuracy",
        "folds": folds,
        "seeds": [0, 1],
        "mean": 0.8,
        "ci95": 0.1,
        "n_train": [10] * len(chosen[0]),
        "n_valid": [2] * len(chosen[0]),
        "n_test": [3] * len(chosen[0]),
        "clip_seconds": 1.0,
        "embedding_dim": 160,
        "epochs_run": [[30] * len(chosen[0])] * 2,
        "best_epoch": [[10] * len(chosen[0])] * 2,
        "learning_rate": chosen,
        "valid_by_lr": valid,
    }


def test_report_names_the_protocol_and_the_chosen_learning_rates():
    grid = [1e-4, 1e-3, 1e-2]
    split = _entry("pitch", None, [[1e-3], [1e-2]], [[[0.5, 0.9, 0.7]], [[0.5, 0.7, 0.9]]])
    kfold = _entry(
        "esc",
        ["1", "2"],
        [[1e-3, 1e-3], [1e-4, 1e-3]],
        [[[0.1, 0.8, 0.3]] * 2, [[0.6, 0.6, 0.3]] * 2],
    )
    report = {
        "encoder": "logmel",
        "protocol": {"name": "grid", "learning_rates": grid},
        "tasks": [split, kfold],
    }
    md = probe_report.render_report(report).splitlines()
    assert "Protocol `grid`" in md[2]
    assert (
        md[6]
        == "| pitch | accuracy | 80.0 ± 10.0 | 1e-3 ×1, 1e-2 ×1 | 10 / 2 / 3 | 1 | 160 | 30 (10) |"
    )
    assert md[7].startswith("| esc (2 folds) | accuracy | 80.0 ± 10.0 | 1e-4 ×1, 1e-3 ×3 |")
    grid_at = md.index("## Learning rates chosen on validation")
    assert md[grid_at + 4 : grid_at + 8] == [
        "| task | 1e-4 | 1e-3 | 1e-2 |",
        "|---|---|---|---|",
        "| pitch | 50.0 | 80.0 ×1 | 80.0 ×1 |",
        "| esc | 35.0 ×1 | 70.0 ×3 | 30.0 |",
    ]
    assert md[grid_at + 9 : grid_at + 11] == [
        "- pitch: seed 0: 1e-3; seed 1: 1e-2",
        "- esc: seed 0: fold 1 1e-3, fold 2 1e-3; seed 1: fold 1 1e-4, fold 2 1e-3",
    ]

    # One learning rate (EVAR's): a column, no grid section.
    evar = dict(report, protocol={"name": "evar", "learning_rates": [3e-5]})
    evar["tasks"] = [_entry("pitch", None, [[3e-5], [3e-5]], [[[0.5]], [[0.6]]])]
    md = probe_report.render_report(evar)
    assert "| pitch | accuracy | 80.0 ± 10.0 | 3e-5 |" in md and "Learning rates chosen" not in md


def test_score_text_gives_the_roc_auc_beside_the_map_or_says_it_is_undefined():
    entry = {"mean": 0.408, "ci95": 0.003, "auc_mean": 0.91, "auc_ci95": 0.001}
    assert probe_report.score_text(entry) == "40.8 ± 0.3 (ROC-AUC 91.0 ± 0.1)"
    assert (
        probe_report.score_text({**entry, "auc_mean": float("nan")}) == "40.8 ± 0.3 (ROC-AUC n/a)"
    )
    assert probe_report.score_text({"mean": 0.5, "ci95": None}) == "50.0"
