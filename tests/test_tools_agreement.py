"""Tests for matpac_jax/tools/agreement.py: the run's last evaluation and its baselines ranked
against the probe table's three rows, on a hand-made run and reports."""

import json
import os

import numpy as np

from matpac_jax.evaluation import paired
from matpac_jax.tools import agreement


def _run(workdir, last: dict, init: dict, logmel: dict):
    os.makedirs(workdir)
    rows = [{"step": 0, **init, "eval/seconds": 1.0}, {"step": 500, "loss": 1.0}]
    rows.append({"step": 1000, **last, "eval/seconds": 1.0})
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(workdir, "eval_baselines.json"), "w") as f:
        json.dump({"init": init, "logmel": logmel}, f)


def _report(folder, means: dict, ci: float):
    os.makedirs(folder)
    tasks = [{"task": t, "mean": m, "ci95": ci} for t, m in means.items()]
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump({"encoder": str(folder), "tasks": tasks}, f)
    return str(folder)


def test_rankings_verdicts_and_the_pretrained_vs_init_line(tmp_path, capsys):
    # pitch: the curves put the run below its initial weights, the table above them.
    last = {"eval/pitch/linear_acc": 0.50, "eval/event/linear_acc": 0.80}
    init = {"eval/pitch/linear_acc": 0.60, "eval/event/linear_acc": 0.60}
    logmel = {"eval/pitch/linear_acc": 0.90, "eval/event/linear_acc": 0.50}
    last.update({"eval/pitch/knn_acc": 0.7, "eval/pitch/linear_acc_ci95": 0.05})
    init.update({"eval/pitch/knn_acc": 0.6})
    logmel.update({"eval/pitch/knn_acc": 0.5})
    _run(str(tmp_path / "run"), last, init, logmel)
    reports = [
        _report(tmp_path / "pre", {"pitch": 0.80, "event": 0.78}, 0.02),
        _report(tmp_path / "init", {"pitch": 0.76, "event": 0.65}, 0.03),
        _report(tmp_path / "logmel", {"pitch": 0.85, "event": 0.62}, 0.02),
    ]
    assert agreement.main([str(tmp_path / "run"), "--reports", *reports]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "  pitch: curves log-mel > init > pretrained; table log-mel > pretrained > init  (differ)"
        in out
    )
    assert "  event: curves pretrained > init > log-mel; table pretrained > init > log-mel" in out
    assert (
        "agreement (linear, step 1000): the curves and the table rank the encoders alike on "
        "1 of 2 tasks" in out
    )
    assert (
        "agreement (knn, step 1000): the curves and the table rank the encoders alike on 0 of 1 tasks"
        in out
    )
    # No stored predictions: the difference's interval is the seeds' alone, sqrt(2² + 3²) = 3.6.
    assert out[-1] == (
        "pretrained vs initial weights in the table (points, ± the 95% interval of the "
        "difference: the classifier seeds alone on pitch, event: a report holds no test "
        "predictions (probe again to store them)): pitch +4.0 ± 3.6 (pretrained better), "
        "event +13.0 ± 3.6 (pretrained better)"
    )


def _with_predictions(folder, task, correct, ci):
    """A report of one two-class task whose every seed is right exactly where `correct` says."""
    n = len(correct)
    labels = np.arange(n) % 2
    logits = np.eye(2, dtype=np.float32)[np.where(correct, labels, 1 - labels)][None]
    os.makedirs(folder)
    np.savez(folder / f"predictions_{task}.npz", rows=np.arange(n),
             paths=np.array([f"{i}.wav" for i in range(n)]), fold=np.zeros(n, np.int32),
             labels=labels, logits=np.repeat(logits, 3, axis=0))  # fmt: skip
    entry = {"task": task, "mean": float(np.mean(correct)), "ci95": ci}
    entry["predictions"] = f"predictions_{task}.npz"
    with open(folder / "report.json", "w") as f:
        json.dump({"encoder": str(folder), "tasks": [entry]}, f)
    return str(folder)


def test_the_verdict_is_paired_over_the_test_clips(tmp_path, capsys):
    # 300 test clips. The pretrained encoder is right on the twin's clips and 9 more (+3 points,
    # decided: the difference is 9 clips), and on 8 more clips than log-mel, which errs on other
    # clips: the old "intervals do not overlap" would call both differences, the paired
    # bootstrap only the first.
    twin = np.arange(300) < 240
    pre = np.arange(300) < 249
    _run(str(tmp_path / "run"), {"eval/pitch/linear_acc": 0.8}, {"eval/pitch/linear_acc": 0.7},
         {"eval/pitch/linear_acc": 0.6})  # fmt: skip
    reports = [
        _with_predictions(tmp_path / "pre", "pitch", pre, 0.005),
        _with_predictions(tmp_path / "init", "pitch", twin, 0.005),
        _with_predictions(tmp_path / "logmel", "pitch", np.random.default_rng(0).permutation(
            np.arange(300) < 241), 0.005),
    ]  # fmt: skip
    assert agreement.main([str(tmp_path / "run"), "--reports", *reports]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(
        "pretrained vs initial weights in the table (points, ± the 95% interval of the "
        "difference: a paired bootstrap over the test clips (1,000 draws, the same clips for "
        "both encoders) combined with both reports' seed intervals): pitch +3.0 ± "
    )
    assert last.endswith(" (pretrained better)")
    # The log-mel report against the pretrained one, as `probe compare` sets them: undecided.
    entries = [json.loads((tmp_path / r / "report.json").read_text())["tasks"][0] for r in reports]
    c = paired.compare(
        entries[0], paired.load_predictions(reports[0], entries[0]),
        entries[2], paired.load_predictions(reports[2], entries[2]),
    )  # fmt: skip
    assert abs(c["difference"] - 8 / 300) < 1e-12 and paired.verdict(c) == "undecided"
    # Initial weights probed on other test clips: refused in one line, not compared.
    shifted = dict(np.load(tmp_path / "init" / "predictions_pitch.npz"))
    shifted["rows"] = shifted["rows"] + 1
    np.savez(tmp_path / "init" / "predictions_pitch.npz", **shifted)
    assert agreement.main([str(tmp_path / "run"), "--reports", *reports]) == 2
    assert "did not score the same test clips" in capsys.readouterr().err


def test_ranking_ties_keep_the_roles_order():
    assert agreement.ranking({"log-mel": 0.5, "init": 0.5, "pretrained": 0.5}) == agreement.ROLES


def test_a_run_without_evaluations_is_a_one_line_error(tmp_path, capsys):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    reports = [_report(tmp_path / n, {"pitch": 0.5}, 0.1) for n in ("a", "b", "c")]
    assert agreement.main([str(tmp_path / "run"), "--reports", *reports]) == 2
    assert "no evaluation with baselines" in capsys.readouterr().err
    assert agreement.main([str(tmp_path / "run"), "--reports", "x", "y", "z"]) == 2
    assert "--reports x: no such probe output" in capsys.readouterr().err
