r"""Summarises a training run from its `metrics.jsonl`: losses, collapse monitors, a verdict.

  python -m matpac_jax.tools.run_summary WORKDIR [--rows 8] [--plot [--plot_dir DIR]]

Prints a table of the logged steps (evenly spaced) and checks the collapse signs of
docs/method.md, section 6: loss not falling, classification perplexity near 1, one teacher
class for all tokens, a prediction head that never wins, skipped (non-finite) steps. A run with
evaluators (`config.evals`) gets one line per `eval/*` score: first, last (with its 95%
interval over the test clips) and best value, and the baselines: the run's initial weights (its
step-0 evaluation) and the log-mel statistics. `--plot` also writes the learning curves as PNGs
(matpac_jax/tools/plot_run.py) and prints their paths.

Exit status: 0 when every check passes, 1 when one fails (a `WARN` line says which), 2 for a
usage error (no such workdir, no metrics.jsonl in it).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from matpac_jax import cli
from matpac_jax.evaluation import evaluators
from matpac_jax.tools import plot_run  # matplotlib only when a plot is drawn
from matpac_jax.train import metrics as metric_writer

COLUMNS = (
    ("step", "{:>6.0f}"),
    ("loss", "{:8.4f}"),
    ("loss_pred", "{:9.4f}"),
    ("loss_cls", "{:8.4f}"),
    ("cls/perplexity", "{:14.1f}"),
    ("cls/distinct_targets", "{:20.0f}"),
    ("mcl_temperature", "{:15.2e}"),
    ("lr", "{:9.2e}"),
)


def health(rows: list[dict]) -> list[tuple[bool, str]]:
    """(passed, message) for each collapse check."""
    tenth = max(1, len(rows) // 10)
    first = float(np.mean([r["loss"] for r in rows[:tenth]]))
    last = float(np.mean([r["loss"] for r in rows[-tenth:]]))
    final = rows[-1]
    checks = [
        (last < first, f"loss fell from {first:.4f} (first tenth) to {last:.4f} (last)"),
        (
            final["cls/perplexity"] > 2.0,
            f"teacher class perplexity {final['cls/perplexity']:.1f} (collapse -> 1)",
        ),
        (
            final["cls/distinct_targets"] > 1,
            f"{final['cls/distinct_targets']:.0f} distinct teacher classes in the last batch",
        ),
        (sum(r["skipped"] for r in rows) == 0, "no logged step was skipped (non-finite)"),
    ]
    heads = sorted(k for k in final if k.startswith("mcl/win_rate/"))
    if len(heads) > 1:
        late = rows[-tenth:]
        rates = [float(np.mean([r[k] for r in late])) for k in heads]
        dead = [i for i, r in enumerate(rates) if r < 0.01]
        checks.append(
            (
                not dead,
                "win rate per head over the last tenth: "
                + ", ".join(f"{r:.2f}" for r in rates)
                + (f" (heads {dead} almost never win)" if dead else ""),
            )
        )
    return checks


PROG = "python -m matpac_jax.tools.run_summary"


def eval_lines(rows: list[dict], baselines: dict) -> list[str]:
    """One line per `eval/*` score: first, last (with its 95% interval) and best, and the
    baselines when known: the run's initial weights (`init`, its step-0 evaluation) and the
    log-mel statistics."""
    keys = sorted(
        k
        for k in {k for r in rows for k in r if k.startswith("eval/")}
        if k != "eval/seconds" and not k.endswith(evaluators.CI_SUFFIX)
    )
    lines = []
    for key in keys:
        logged = [(r["step"], r[key], r.get(key + evaluators.CI_SUFFIX)) for r in rows if key in r]
        best = max(logged, key=lambda p: p[1])
        last = f"step {logged[-1][0]} {logged[-1][1]:.3f}"
        if logged[-1][2] is not None:
            last += f" ± {logged[-1][2]:.3f}"
        parts = [
            f"step {logged[0][0]} {logged[0][1]:.3f}",
            last,
            f"best {best[1]:.3f} (step {best[0]})",
        ]
        parts += [
            f"{name} {baselines[name][key]:.3f}"
            for name in ("init", "logmel")
            if key in baselines.get(name, {})
        ]
        lines.append(f"  {key[5:]}: " + ", ".join(parts))
    seconds = [r["eval/seconds"] for r in rows if "eval/seconds" in r]
    if seconds:
        lines.append(f"  {len(seconds)} evaluations, {sum(seconds):.1f} s in all")
    return lines


def _main(argv=None) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("workdir", help="a training workdir (holding metrics.jsonl)")
    p.add_argument("--rows", type=int, default=8, help="logged steps shown, evenly spaced")
    p.add_argument("--plot", action="store_true", help="also write the learning curves (PNGs)")
    p.add_argument("--plot_dir", help="folder for the PNGs (default WORKDIR/plots)")
    args = p.parse_args(argv)
    workdir = cli.input_dir(args.workdir, "workdir")
    if args.rows < 1:
        raise cli.UserError(f"--rows {args.rows}: must be at least 1")
    plots = os.path.join(workdir, "plots")
    plot_dir = args.plot and cli.output_dir(args.plot_dir or plots, "--plot_dir")  # before work
    logged = metric_writer.read_metrics(workdir)
    rows = [r for r in logged if "loss" in r]  # a step-0 row holds evaluations alone
    if not rows:
        raise cli.UserError(
            f"workdir {args.workdir}: no logged step (no metrics.jsonl, or it is empty): not a "
            "training workdir, or its run has not logged yet"
        )
    picks = sorted(set(np.linspace(0, len(rows) - 1, min(args.rows, len(rows))).astype(int)))
    print("  ".join(name.rjust(len(fmt.format(0))) for name, fmt in COLUMNS))
    for i in picks:
        print("  ".join(fmt.format(rows[i].get(name, float("nan"))) for name, fmt in COLUMNS))
    ok = True
    for passed, message in health(rows):
        ok &= passed
        print(("  ok    " if passed else "  WARN  ") + message)
    for line in eval_lines(logged, evaluators.read_baselines(workdir)):
        print(line)
    if plot_dir:
        for path in plot_run.plot_run(workdir, plot_dir):
            print(path)
    return 0 if ok else 1


def main(argv=None) -> int:
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
