"""Tests for matpac_jax/tools/agreement.py: the run's last evaluation and its baselines ranked
against the probe table's three rows, on a hand-made run and reports."""

import json
import os

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
    # pitch: 0.80 - 0.02 = 0.78 against 0.76 + 0.03 = 0.79: inside; event: 0.76 > 0.68: outside.
    assert out[-1].endswith("pitch +4.0 (inside), event +13.0 (outside)")


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
