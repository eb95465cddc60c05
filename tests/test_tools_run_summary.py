"""Run summary (matpac_jax/tools/run_summary.py): the collapse checks on synthetic logs."""

import json
import os

import numpy as np
import pytest

from matpac_jax.tools import run_summary


def _rows(n=40, perplexity=30.0, win=(0.3, 0.3, 0.4), loss_end=1.0, skipped_at=None):
    rows = []
    for i in range(n):
        r = {
            "step": 10 * (i + 1),
            "loss": 3.0 + (loss_end - 3.0) * i / (n - 1),
            "loss_pred": 1.0,
            "loss_cls": 2.0,
            "cls/perplexity": perplexity,
            "cls/distinct_targets": 12.0,
            "mcl_temperature": 0.1,
            "lr": 1e-3,
            "skipped": float(i == skipped_at),
        }
        r.update({f"mcl/win_rate/{k}": w for k, w in enumerate(win)})
        rows.append(r)
    return rows


def _failed(rows):
    return [m for ok, m in run_summary.health(rows) if not ok]


def test_healthy_run_passes():
    assert _failed(_rows()) == []


def test_each_collapse_sign_is_flagged():
    assert any("loss fell" in m for m in _failed(_rows(loss_end=3.5)))
    assert any("perplexity" in m for m in _failed(_rows(perplexity=1.1)))
    assert any("never win" in m for m in _failed(_rows(win=(0.6, 0.4, 0.0))))
    assert any("skipped" in m for m in _failed(_rows(skipped_at=5)))


def test_cli_prints_table_and_exit_code(tmp_path, capsys):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in _rows(win=(0.5, 0.5, 0.0)))
    assert run_summary.main([str(tmp_path), "--rows", "4"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 + 4 + 5 and "WARN" in out
    losses = np.array([r["loss"] for r in _rows()])
    assert f"from {losses[:4].mean():.4f} (first tenth) to {losses[-4:].mean():.4f}" in out


def _write_run(workdir, rows, baselines=None):
    """A fake workdir: metrics.jsonl (a step-0 row of evaluations first, as the trainer writes
    it, then evaluations every 100 steps) and eval_baselines.json."""
    os.makedirs(workdir, exist_ok=True)
    evals = [{"step": 0}] + [r for r in rows if r["step"] % 100 == 0]
    for i, r in enumerate(evals):
        r.update({"eval/pitch/knn_acc": 0.2 + 0.05 * i, "eval/pitch/teacher_knn_acc": 0.3})
        r.update({"eval/pitch/knn_acc_ci95": 0.05})
        r.update({"eval/event/knn_acc": 0.5, "eval/seconds": 1.5})
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in [evals[0], *rows])
    if baselines:
        with open(os.path.join(workdir, "eval_baselines.json"), "w") as f:
            json.dump(baselines, f)


BASELINES = {
    "init": {"eval/pitch/knn_acc": 0.25, "eval/event/knn_acc": 0.4},
    "logmel": {"eval/pitch/knn_acc": 0.7, "eval/event/knn_acc": 0.6},
}


def test_summary_lists_evaluations_and_plots(tmp_path, capsys):
    from matplotlib import image

    workdir = str(tmp_path / "run")
    rows = _rows()
    for r in rows:
        r.update({"teacher/target_std": 0.1, "mcl_temperature": 0.01, "mcl/head_std/0": 0.05})
    _write_run(workdir, rows, BASELINES)
    assert run_summary.main([workdir, "--rows", "4", "--plot"]) == 0
    out = capsys.readouterr().out
    expected = (
        "step 0 0.200, step 400 0.400 ± 0.050, best 0.400 (step 400), init 0.250, logmel 0.700"
    )
    assert f"  pitch/knn_acc: {expected}" in out
    assert "  pitch/teacher_knn_acc: step 0 0.300, step 400 0.300, best 0.300 (step 0)" in out
    assert "5 evaluations, 7.5 s in all" in out
    paths = [line for line in out.splitlines() if line.endswith(".png")]
    names = ("losses.png", "monitors.png", "evals.png")
    assert [os.path.basename(p) for p in paths] == list(names)
    for path in paths:
        assert os.path.dirname(path) == os.path.join(workdir, "plots")
        pixels = image.imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200 and pixels.std() > 0


def test_plot_tool_without_baselines_or_evaluations(tmp_path, capsys):
    from matpac_jax.tools import plot_run

    workdir = str(tmp_path / "run")
    _write_run(workdir, _rows())  # no eval_baselines.json: curves without the lines
    out = str(tmp_path / "pngs")
    assert plot_run.main([workdir, "--out", out]) == 0
    assert sorted(os.listdir(out)) == ["evals.png", "losses.png", "monitors.png"]
    assert capsys.readouterr().out.splitlines()[-1] == os.path.join(out, "evals.png")
    plain = str(tmp_path / "plain")
    os.makedirs(plain)
    with open(os.path.join(plain, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in _rows())
    assert [os.path.basename(p) for p in plot_run.plot_run(plain)] == ["losses.png", "monitors.png"]


@pytest.mark.parametrize("tool", ["summary", "plot"])
def test_missing_workdir_is_a_one_line_error(tool, tmp_path, capsys):
    from matpac_jax.tools import plot_run

    missing = str(tmp_path / "nope")
    if tool == "summary":
        status = run_summary.main([missing, "--plot"])
    else:
        status = plot_run.main([missing])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "no such folder" in err, err
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    assert plot_run.main([empty]) == 2
    assert "no logged step" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(empty, "plots"))


def test_unwritable_plot_dir_is_refused_before_the_summary(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    _write_run(workdir, _rows())
    afile = tmp_path / "afile"
    afile.write_text("")
    assert run_summary.main([workdir, "--plot", "--plot_dir", str(afile / "pngs")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "afile is a file" in err and err.count("\n") == 1
