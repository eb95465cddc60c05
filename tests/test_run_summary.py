"""Run summary (matpac_jax/tools/run_summary.py): the collapse checks on synthetic logs."""

import json

import numpy as np

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
