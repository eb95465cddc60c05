r"""Learning curves of a training run as PNGs: losses, collapse monitors, evaluations.

  python -m matpac_jax.tools.plot_run WORKDIR [--out DIR]
  python -m matpac_jax.tools.run_summary WORKDIR --plot        # the same, after the summary

Reads WORKDIR/metrics.jsonl (and WORKDIR/eval_baselines.json, written by the trainer when the
run has `config.evals`) and writes, against steps, into DIR (default WORKDIR/plots):

- losses.png: the total, prediction and classification losses;
- monitors.png: the collapse monitors of docs/method.md, section 6: classification perplexity,
  distinct teacher targets, MCL win rates, teacher target std, prediction (head) std, learning
  rate, MCL temperature;
- evals.png (when the run logged `eval/*`): one panel per task and metric, the student (and the
  teacher, if evaluated) with each score's 95% interval over the test clips as a band, and the
  scores of the run's initial weights (its step-0 evaluation) and of the log-mel statistics as
  horizontal lines with their own bands.

Prints the paths written. Exit status 2 for a usage error (no such workdir, nothing logged).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from matpac_jax import cli
from matpac_jax.evaluation import evaluators
from matpac_jax.train import metrics as metric_writer

PROG = "python -m matpac_jax.tools.plot_run"
# (title, key prefix, log scale) per panel of monitors.png; a prefix gathers keys like /0, /1.
MONITORS = (
    ("classification perplexity", "cls/perplexity", False),
    ("distinct teacher targets", "cls/distinct_targets", False),
    ("MCL win rate per head", "mcl/win_rate/", False),
    ("teacher target std", "teacher/target_std", True),
    ("prediction std per head", "mcl/head_std/", True),
    ("learning rate", "lr", False),
    ("MCL temperature", "mcl_temperature", True),
)
LOSSES = ("loss", "loss_pred", "loss_cls")
BASELINE_STYLES = {
    "init": ("initial weights", "--", "tab:gray"),
    "logmel": ("log-mel", ":", "k"),
}


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that logged `key`."""
    pairs = [(r["step"], r[key]) for r in rows if key in r]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], np.float64)


def keys_under(rows: list[dict], prefix: str) -> list[str]:
    """The logged keys equal to `prefix` or, for a prefix ending in '/', under it (sorted)."""
    found = {
        k for r in rows for k in r if k == prefix or (prefix.endswith("/") and k.startswith(prefix))
    }
    return sorted(found, key=lambda k: (len(k), k))  # head 10 after head 9


def eval_panels(rows: list[dict]) -> list[str]:
    """One panel per `eval/<task>/<metric>`, the teacher's key folded into the student's."""
    keys = {k.replace("/teacher_", "/") for r in rows for k in r if k.startswith("eval/")}
    return sorted(k for k in keys - {"eval/seconds"} if not k.endswith(evaluators.CI_SUFFIX))


def _figure(num_panels: int):
    # The Agg canvas directly, not pyplot: no display and no global state (safe in notebooks).
    # pylint: disable=g-import-not-at-top
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, num_panels)
    rows = math.ceil(num_panels / cols)
    fig = Figure(figsize=(5.0 * cols, 3.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(num_panels)]
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return fig, axes


def _save(fig, path: str, title: str) -> str:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_losses(rows: list[dict], path: str, title: str) -> str:
    """losses.png: the three losses on one panel."""
    fig, (ax,) = _figure(1)
    for key in LOSSES:
        steps, values = series(rows, key)
        if len(steps):
            ax.plot(steps, values, label=key)
    ax.set_ylabel("loss")
    ax.legend()
    return _save(fig, path, title)


def plot_monitors(rows: list[dict], path: str, title: str) -> str:
    """monitors.png: one panel per collapse monitor that the run logged."""
    panels = [(t, keys_under(rows, p), log) for t, p, log in MONITORS if keys_under(rows, p)]
    fig, axes = _figure(max(1, len(panels)))
    for ax, (name, keys, log) in zip(axes, panels):
        for key in keys:
            ax.plot(*series(rows, key), label=key.rsplit("/", 1)[-1] if len(keys) > 1 else None)
        ax.set_title(name, fontsize=10)
        if log:
            ax.set_yscale("log")
        if len(keys) > 1:
            ax.legend(title="head", fontsize=8)
    return _save(fig, path, title)


def plot_evals(rows: list[dict], baselines: dict, path: str, title: str) -> str:
    """evals.png: one panel per task and metric, baselines as horizontal lines."""
    panels = eval_panels(rows)
    fig, axes = _figure(len(panels))
    for ax, key in zip(axes, panels):
        task, metric = key.split("/")[1:]
        teacher = f"eval/{task}/teacher_{metric}"
        for curve, marker, label in ((key, "o", "student"), (teacher, "s", "teacher")):
            if not keys_under(rows, curve):
                continue
            steps, values = series(rows, curve)
            (line,) = ax.plot(steps, values, marker=marker, label=label)
            half = np.array(
                [r.get(curve + evaluators.CI_SUFFIX, np.nan) for r in rows if curve in r]
            )
            if np.isfinite(half).any():
                ax.fill_between(
                    steps, values - half, values + half, color=line.get_color(), alpha=0.2
                )
        for name, (label, style, color) in BASELINE_STYLES.items():
            scores = baselines.get(name, {})
            if key in scores:
                ax.axhline(scores[key], linestyle=style, color=color, label=label)
                half = scores.get(key + evaluators.CI_SUFFIX)
                if half:
                    ax.axhspan(scores[key] - half, scores[key] + half, color=color, alpha=0.08)
        ax.set_title(f"{task}: {metric}", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path, title)


def plot_run(workdir: str, out_dir: str | None = None) -> list[str]:
    """Writes the PNGs of a run (module docstring); returns their paths.

    Raises:
      cli.UserError: no such workdir, or no logged step in it.
    """
    workdir = cli.input_dir(workdir, "workdir")
    out_dir = cli.output_dir(out_dir or os.path.join(workdir, "plots"), "--out")
    rows = metric_writer.read_metrics(workdir)
    if not rows:
        raise cli.UserError(f"workdir {workdir}: no logged step (no metrics.jsonl, or it is empty)")
    cli.make_dir(out_dir, "--out")
    name = os.path.basename(workdir.rstrip("/"))
    train = [r for r in rows if "loss" in r]
    paths = []
    if train:
        paths.append(plot_losses(train, os.path.join(out_dir, "losses.png"), f"{name}: losses"))
        paths.append(
            plot_monitors(train, os.path.join(out_dir, "monitors.png"), f"{name}: monitors")
        )
    if eval_panels(rows):
        evals = os.path.join(out_dir, "evals.png")
        paths.append(
            plot_evals(rows, evaluators.read_baselines(workdir), evals, f"{name}: evaluations")
        )
    return paths


def _main(argv) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("workdir", help="a training workdir (holding metrics.jsonl)")
    p.add_argument("--out", help="folder for the PNGs (default WORKDIR/plots)")
    args = p.parse_args(argv)
    for path in plot_run(args.workdir, args.out):
        print(path)
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
